"""The ledger under real concurrency and real crashes: separate processes that
start together (a ready/go handshake, no sleeps), writers that die mid-write
and writers killed with SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dreamlake.project import Project
from disk import disk_rows

WORKERS = 16

pytestmark = pytest.mark.timeout(60)


def start_child(script, *args):
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_together(script, root, count=WORKERS):
    """Start ``count`` children, wait until each has imported everything and says
    "ready", then release them at once; return each child's stdout lines."""
    children = [start_child(script, root, i) for i in range(count)]
    try:
        for child in children:
            line = child.stdout.readline()
            assert line == "ready\n", child.stderr.read()
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = []
        for child in children:
            out, err = child.communicate(timeout=30)
            assert child.returncode == 0, err
            outputs.append(out.split())
        return outputs
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def ledger(root):
    return json.loads((Path(root) / "ledger.json").read_text())


ONE_RUN_EACH = """
    import sys
    from dreamlake.project import Project
    root, worker = sys.argv[1], int(sys.argv[2])
    project = Project(root)
    print("ready", flush=True)
    sys.stdin.readline()
    run = project.session("train", params={"worker": worker})
    run.start()
    run.track("loss").append(value=worker)
    run.log(f"worker {worker}")
    run.path("model.pt").write_text(str(worker))
    run.attach_files({"model": run.path("model.pt")})
    run.done()
    print(run.uid)
"""


def test_sixteen_processes_get_sixteen_uids_and_lose_no_update(tmp_path):
    outputs = run_together(ONE_RUN_EACH, tmp_path)
    uid_of = {worker: out[0] for worker, out in enumerate(outputs)}
    assert sorted(uid_of.values()) == [f"{n:04d}" for n in range(1, WORKERS + 1)]
    runs = ledger(tmp_path)["projects"]["."]["train"]
    assert len(runs) == WORKERS
    for worker, uid in uid_of.items():
        rec = runs[uid]
        assert rec["status"] == "done" and rec["params"] == {"worker": worker}
        assert rec["files"] == {"model": f"train/{uid}/model.pt"}
        folder = tmp_path / "train" / uid
        assert (folder / "model.pt").read_text() == str(worker)
        assert json.loads((folder / "session.json").read_text())["status"] == "completed"
        assert [row["value"] for row in disk_rows(folder, "loss")] == [worker]
    assert all(r.is_done() for r in Project(tmp_path).runs())


MANY_RUNS_EACH = """
    import sys
    from dreamlake.project import Project, ExistingRun
    root, worker = sys.argv[1], int(sys.argv[2])
    project = Project(root, storage_mode="prefix")
    print("ready", flush=True)
    sys.stdin.readline()
    for j in range(4):
        run = project.session("ab"[j % 2], {"w": worker, "j": j})
        run.attach_files({f"f{j}": run.path("x")})
        run.done()
        print(run.identifier + run.uid)
    # everyone races to RESUME-or-create the same shared config
    shared = project.session("shared", {"same": True}, ExistingRun.RESUME)
    print("shared" + shared.uid)
"""


def test_contended_ledger_keeps_every_run_and_status(tmp_path):
    outputs = run_together(MANY_RUNS_EACH, tmp_path)
    created = [line for out in outputs for line in out if not line.startswith("shared")]
    assert len(created) == len(set(created)) == WORKERS * 4
    section = ledger(tmp_path)["projects"]["."]
    for ident in "ab":
        assert sorted(section[ident]) == [f"{n:04d}" for n in range(1, WORKERS * 2 + 1)]
        assert all(rec["status"] == "done" and len(rec["files"]) == 1 for rec in section[ident].values())
    # No DONE run existed for the shared params, so each process got its own PENDING run.
    assert len(section["shared"]) == WORKERS


CRASH_MID_WRITE = """
    import os, sys
    from dreamlake.project import Project
    project = Project(sys.argv[1])
    project.session("train", {"n": 1}).done()
    # die inside the next write: before its fsync, or with the new ledger complete but not in place
    setattr(os, sys.argv[2], lambda *a, **k: os._exit(3))
    project.session("train", {"n": 2})
"""


@pytest.mark.parametrize("dies_in", ["fsync", "replace"])
def test_writer_dying_mid_write_leaves_the_ledger_readable(tmp_path, dies_in):
    child = start_child(CRASH_MID_WRITE, tmp_path, dies_in)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 3, err
    assert list(ledger(tmp_path)["projects"]["."]["train"]) == ["0001"]
    assert list(tmp_path.glob(".ledger.json.*.tmp"))  # the dead writer's leftover
    run = Project(tmp_path).session("train", {"n": 2})
    # 0002 was claimed on disk (its folder) before the crash, so it is not reused.
    assert run.uid == "0003"
    assert not list(tmp_path.glob(".ledger.json.*.tmp"))
    assert sorted(ledger(tmp_path)["projects"]["."]["train"]) == ["0001", "0003"]


HAMMER = """
    import sys
    from dreamlake.project import Project
    project = Project(sys.argv[1])
    while True:
        run = project.session("train", {})
        run.done()
        print(run.uid, flush=True)
"""


def test_sigkill_never_loses_committed_runs_or_breaks_the_ledger(tmp_path):
    acknowledged = []
    for round_ in range(3):
        child = start_child(HAMMER, tmp_path)
        try:
            for _ in range(10 + 7 * round_):
                line = child.stdout.readline()
                assert line, child.stderr.read()
                acknowledged.append(line.strip())
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.communicate()
        runs = ledger(tmp_path)["projects"]["."]["train"]  # parses, whatever the timing
        assert set(acknowledged) <= set(runs)
        assert all(runs[uid]["status"] == "done" for uid in acknowledged)
    after = Project(tmp_path).session("train", {})
    assert int(after.uid) > max(map(int, ledger(tmp_path)["projects"]["."]["train"].keys() - {after.uid}))


EXITS_WHILE_RUNNING = """
    import sys
    from dreamlake.project import Project
    run = Project(sys.argv[1]).session("train", {"how": sys.argv[2]}).start()
    run.track("loss").append(value=1)
    if sys.argv[2] == "raises":
        raise RuntimeError("diverged")
"""


@pytest.mark.parametrize("how", ["returns", "raises"])
def test_a_run_left_running_at_exit_is_marked_error(tmp_path, how):
    child = start_child(EXITS_WHILE_RUNNING, tmp_path, how)
    _, err = child.communicate(timeout=30)
    assert child.returncode == (1 if how == "raises" else 0), err
    rec = ledger(tmp_path)["projects"]["."]["train"]["0001"]
    assert rec["status"] == "error"
    expected = "RuntimeError: diverged" if how == "raises" else "exited before done()"
    assert expected in rec["error"]
    sdir = tmp_path / "train" / "0001"
    assert json.loads((sdir / "session.json").read_text())["status"] == "failed"
    assert [row["value"] for row in disk_rows(sdir, "loss")] == [1]
    # RESUME does not take it for finished
    assert Project(tmp_path).session("train", {"how": how}, "resume").uid == "0002"


def test_projects_and_runs_travel_to_worker_processes(tmp_path):
    import multiprocessing
    import pickle

    run = Project(tmp_path).sub("pool").session("train", {"lr": 1})
    run.attach_files({"m": run.path("m.pt")})
    copy = pickle.loads(pickle.dumps(run))
    assert (copy.uid, copy.folder, copy.files["m"]) == (run.uid, run.folder, run.files["m"])
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        uid = pool.apply(_finish_in_worker, (run,))
    assert uid == run.uid and run.is_done()
    assert json.loads((run.folder / "session.json").read_text())["status"] == "completed"


def _finish_in_worker(run):
    with run:
        run.log("from a worker")
    return run.uid


def test_sigterm_while_running_marks_the_run_error_in_the_ledger(tmp_path):
    """The session is closed as interrupted by DreamLake's SIGTERM handler; the
    run hears it through Session.on_close, so the ledger never stays RUNNING."""
    script = textwrap.dedent(
        f"""
        import sys
        from dreamlake.project import Project
        run = Project({str(tmp_path)!r}).session("train", params={{"lr": 0.1}})
        run.start()
        run.track("loss").append(value=1.0)
        print("ready", flush=True)
        sys.stdin.read()
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == -signal.SIGTERM
    finally:
        child.kill()
    rec = ledger(tmp_path)["projects"]["."]["train"]["0001"]
    assert rec["status"] == "error" and "SIGTERM" in rec["error"]
    sdir = tmp_path / "train" / "0001"
    assert json.loads((sdir / "session.json").read_text())["status"] == "interrupted"
    assert len((sdir / "tracks" / "loss" / "data.jsonl").read_text().splitlines()) == 1
