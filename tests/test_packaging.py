"""The distribution ships every package of the source tree (pyproject lists them
by hand because ``agent/`` installs as ``dreamlake_agent``)."""

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "dreamlake").rglob("__init__.py")
    }
    assert on_disk - listed == set(), "packages missing from pyproject.toml [tool.setuptools] packages"
    assert config["package-dir"] == {"dreamlake_agent": "agent"} and (ROOT / "agent" / "__init__.py").exists()
