"""``dreamlake plot``: an image file of a track's curves, and clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from ui_server import write_store

pytest.importorskip("matplotlib", reason="the plot extra is not installed")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("store"))
    write_store(root, runs=1)
    return root


def plot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dreamlake.cli", "plot", *args], capture_output=True, text=True, timeout=60)


def test_plot_writes_a_png_of_the_chosen_fields(store, tmp_path):
    out = tmp_path / "curve.png"
    done = plot("ws/run0", "train", "loss", "--x", "step", "-o", str(out), "--root", store)
    assert done.returncode == 0, done.stderr
    assert "1 curve(s), 300 points" in done.stdout
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_plot_svg_of_all_fields_and_nested_track(store, tmp_path):
    out = tmp_path / "pose.svg"
    done = plot("ws/run0", "robot/arm/pose", "-o", str(out), "--root", store)
    assert done.returncode == 0, done.stderr
    assert "3 curve(s)" in done.stdout and out.read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize(
    "args, message",
    [
        (["ws/nope", "train"], "no session 'ws/nope'"),
        (["ws/run0", "nope"], "no track 'nope'"),
        (["ws/run0", "train", "accuracy"], "no numeric values for accuracy"),
    ],
)
def test_plot_errors_name_the_problem(store, tmp_path, capsys, args, message):
    from dreamlake.cli import main

    out = tmp_path / "x.png"
    assert main(["plot", *args, "-o", str(out), "--root", store]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_plot_without_matplotlib_says_how_to_install_it(store, tmp_path):
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # makes 'import matplotlib' raise ImportError
        "from dreamlake.cli import main\n"
        f"sys.exit(main(['plot', 'ws/run0', 'train', '-o', {str(tmp_path / 'x.png')!r}, '--root', {store!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "pip install 'dreamlake[plot]'" in done.stderr
    assert not (tmp_path / "x.png").exists()
