"""The dreamlake command, run as a real subprocess against a real store."""

import json
import subprocess
import sys

from dreamlake import Session


def _cli(*args, cwd=None):
    result = subprocess.run(
        [sys.executable, "-m", "dreamlake.cli", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _make(tmp_path):
    with Session(prefix="ws/cli", root=str(tmp_path)) as s:
        s.params.set(lr=0.01)
        s.log("hello from the test")
        for i in range(25):
            s.track("robot/pose").append(x=i)


def test_ls_show_tail(tmp_path):
    _make(tmp_path)
    listing = _cli("ls", "--root", str(tmp_path))
    assert "ws/cli" in listing and "completed" in listing and " 25" in listing

    shown = _cli("show", "ws/cli", "--root", str(tmp_path))
    assert "lr = 0.01" in shown
    assert "robot/pose" in shown and "25 rows" in shown and '"x": 24' in shown
    assert "hello from the test" in shown

    tail = [json.loads(line) for line in _cli("tail", "ws/cli", "robot/pose", "-n", "3", "--root", str(tmp_path)).splitlines()]
    assert [(row["index"], row["x"]) for row in tail] == [(22, 22), (23, 23), (24, 24)]


def test_ls_shows_a_session_whose_process_died_as_interrupted(tmp_path):
    script = (
        "import os, sys\n"
        "from dreamlake import Session\n"
        f"s = Session(prefix='ws/dead', root={str(tmp_path)!r}).open()\n"
        "s.track('t').append(x=1); s.tracks.flush()\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    listing = _cli("ls", "--root", str(tmp_path))
    assert "ws/dead" in listing and "interrupted" in listing


def test_show_of_a_missing_session_fails_clearly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dreamlake.cli", "show", "ws/none", "--root", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0 and "no session" in result.stderr
