"""pyproject.toml uses the current metadata forms (no setuptools deprecation warning on install)."""

import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")

PYPROJECT = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())


def test_license_is_an_spdx_expression_and_setuptools_understands_it():
    assert PYPROJECT["project"]["license"] == "MIT"  # PEP 639; the table form is deprecated
    requirement = next(r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools"))
    assert requirement == "setuptools>=77"  # the first release reading PEP 639 license strings


def test_export_extra_and_tests_install_pandas_and_pyarrow():
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra in ("export", "test"):
        names = {r.split(">")[0].split("=")[0] for r in extras[extra]}
        assert {"pandas", "pyarrow"} <= names
    assert PYPROJECT["project"]["scripts"]["dreamlake"] == "dreamlake.cli:main"


def test_every_package_of_the_tree_is_installed():
    """The package list is explicit (agent/ installs as dreamlake_agent), so a new
    subpackage must be added to it, or wheels silently lack it."""
    root = Path(__file__).parent.parent
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "dreamlake").rglob("__init__.py")}
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert found <= listed, f"not installed: {sorted(found - listed)}"
    assert "dreamlake_agent" in listed and PYPROJECT["tool"]["setuptools"]["package-dir"]["dreamlake_agent"] == "agent"
