"""``dreamlake demo``: what it writes and what it prints, in-process and as the command."""

import os
import subprocess
import sys

from dreamlake import open_session
from dreamlake._demo import print_report, run_demo


def test_demo_writes_every_stream_and_reports_the_figures(tmp_path, capsys):
    report = run_demo(root=tmp_path, seconds=0.3, steps=200, burst_seconds=0.05)
    prefix = "demo/" + os.path.basename(report["directory"])
    reader = open_session(prefix, root=tmp_path)
    counts = {t["name"]: t["totalDataPoints"] for t in reader.tracks.list()}
    assert counts == report["tracks"]
    assert counts["robot/pose"] == counts["robot/vel"] == counts["camera/left"] == report["robot_ticks"] == 300
    assert counts["train"] == 200 and counts["val"] == 2 and counts["burst"] > 0
    assert report["rows"] == sum(counts.values()) and report["dropped"] == report["write_errors"] == 0
    assert 0 <= report["missed_while_appending"] <= report["missed_deadlines"] <= 300

    pose = reader.track("robot/pose").read(0, 300)["data"]
    vel = reader.track("robot/vel").read(0, 300)["data"]
    cam = reader.track("camera/left").read(0, 300)["data"]
    # _ts=-1: one stamp per tick, borrowed from the robot thread's own pose append
    assert [r["data"]["_ts"] for r in pose] == [r["data"]["_ts"] for r in vel] == [r["data"]["_ts"] for r in cam]
    assert [r["data"]["frame_id"] for r in cam] == list(range(300)) and len(pose[0]["data"]["q"]) == 7
    assert reader.params["model.arch"] == "mlp" and reader.status == "completed"
    assert reader.files.list(path="/checkpoints")[0]["metadata"] == {"step": 200}
    assert [e["data"]["message"] for e in reader.logs()["data"]][-1] == "training finished"
    assert report["latency_us"]["7-float list rows (paced)"]["count"] == 600
    assert report["latency_us"]["scalar rows (paced)"]["count"] == 200 + 2 + 300

    print_report(report)
    out = capsys.readouterr().out
    assert "rows/s" in out and f"missed deadlines {report['missed_deadlines']:,} of 300 ticks" in out
    assert "3-float rows (burst)" in out and "README's headline p50" in out
    assert f"{counts['robot/pose']:,} rows" in out and report["directory"] in out


def _demo(env_root, *extra, cwd):
    env = {**os.environ, "DREAMLAKE_ROOT": str(env_root)}
    return subprocess.run(
        [sys.executable, "-m", "dreamlake", "demo", "--seconds", "0.2", "--steps", "100", "--burst", "0.02", *extra],
        capture_output=True, text=True, timeout=60, cwd=cwd, env=env,
    )


def test_demo_command_honours_dreamlake_root_and_root(tmp_path):
    (tmp_path / "cwd").mkdir()
    result = _demo(tmp_path / "from-env", cwd=tmp_path / "cwd")
    assert result.returncode == 0, result.stderr
    written = list((tmp_path / "from-env" / "demo").iterdir())
    assert len(written) == 1 and str(written[0]) in result.stdout
    assert "missed deadlines" in result.stdout and "rows/s" in result.stdout
    assert open_session(f"demo/{written[0].name}", root=tmp_path / "from-env").track("robot/pose").stats()["totalDataPoints"] == 200

    result = _demo(tmp_path / "from-env", "--root", str(tmp_path / "from-flag"), cwd=tmp_path / "cwd")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "from-flag" / "demo").iterdir())) == 1
    assert len(list((tmp_path / "from-env" / "demo").iterdir())) == 1  # --root wins
    assert not (tmp_path / "cwd" / ".dreamlake").exists()
