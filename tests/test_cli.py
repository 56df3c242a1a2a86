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
    assert "ws/cli" in listing and "completed" in listing and " 25" in listing and " local " in listing

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


def _run(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "dreamlake", *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


def test_version_and_python_dash_m_are_the_same_cli(tmp_path):
    import dreamlake

    result = _run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"dreamlake {dreamlake.__version__}"
    _make(tmp_path)
    assert "ws/cli" in _run("ls", "--root", str(tmp_path)).stdout
    helped = _run("--help").stdout
    for command in ("demo", "ls", "show", "tail", "export"):
        assert command in helped


def _make_for_export(root):
    with Session(prefix="ws/exp", root=str(root)) as s:
        for i in range(4):
            s.track("robot/pose").append(q=[i, i + 0.5], ok=i % 2 == 0, _ts=1_700_000_000.0 + i)
        s.track("train").append(loss=float("nan"), step=0, _ts=1_700_000_000.0)
        s.track("train").append(loss=float("inf"), step=1, note="x", _ts=1_700_000_001.0)


def test_export_one_track_to_csv(tmp_path):
    import pandas as pd

    _make_for_export(tmp_path / "store")
    out = _run("export", "ws/exp", "train", "--root", str(tmp_path / "store"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "train: 2 rows" in out.stdout
    table = pd.read_csv(tmp_path / "train.csv", index_col="index")
    assert list(table.columns) == ["_ts", "loss", "step", "note"]
    assert pd.isna(table["loss"][0]) and table["loss"][1] == float("inf") and list(table["step"]) == [0, 1]

    out = _run("export", "ws/exp", "robot/pose", "-o", str(tmp_path / "p.csv"), "--ts", "datetime", "--root", str(tmp_path / "store"))
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "p.csv").read_text().splitlines()
    assert text[0] == "index,_ts,q,ok" and text[1] == '0,2023-11-14 22:13:20+00:00,"[0, 0.5]",True'


def test_export_every_track_to_parquet(tmp_path):
    import pandas as pd

    _make_for_export(tmp_path / "store")
    target = tmp_path / "out"
    out = _run("export", "ws/exp", "--format", "parquet", "-o", str(target), "--root", str(tmp_path / "store"))
    assert out.returncode == 0, out.stderr
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*.parquet")) == ["robot/pose.parquet", "train.parquet"]
    pose = pd.read_parquet(target / "robot" / "pose.parquet")
    assert list(pose.index) == [0, 1, 2, 3] and [list(q) for q in pose["q"]] == [[i, i + 0.5] for i in range(4)]
    train = pd.read_parquet(target / "train.parquet")
    assert train["loss"].isna()[0] and train["loss"][1] == float("inf") and train["_ts"][1] == 1_700_000_001.0


def test_export_errors_are_clear(tmp_path):
    _make_for_export(tmp_path / "store")
    missing = _run("export", "ws/none", "--root", str(tmp_path / "store"))
    assert missing.returncode != 0 and "no session" in missing.stderr
    no_track = _run("export", "ws/exp", "nope", "--root", str(tmp_path / "store"))
    assert no_track.returncode != 0 and "no track 'nope'" in no_track.stderr
    script = (
        "import sys\n"
        "sys.modules['pyarrow'] = None\n"  # as if the export extra were not installed
        "from dreamlake.cli import main\n"
        f"sys.exit(main(['export', 'ws/exp', 'train', '--format', 'parquet', '-o', {str(tmp_path / 'x.parquet')!r}, '--root', {str(tmp_path / 'store')!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "needs pyarrow" in result.stderr and "dreamlake[export]" in result.stderr
    assert not (tmp_path / "x.parquet").exists()


def test_show_lists_how_earlier_openings_ended(tmp_path):
    try:
        with Session(prefix="ws/h", root=str(tmp_path)):
            raise ValueError("first try broke")
    except ValueError:
        pass
    with Session(prefix="ws/h", root=str(tmp_path)):
        pass
    shown = _cli("show", "ws/h", "--root", str(tmp_path))
    assert "[completed]" in shown and "earlier: failed" in shown and "first try broke" in shown
