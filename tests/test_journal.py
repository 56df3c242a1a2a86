"""The crash journal: whatever append() returned before a kill -9 is in the store
after the next open of the session, once, gap-free. Real subprocesses killed with
SIGKILL; the recovery's corner (rows stored but not yet marked) built directly."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from disk import read_all
from test_agent_processes import agents  # noqa: F401  (fixture: agents on a private socket)
from dreamlake import Session
from dreamlake._journal import Journal, journal_dirs, recover_session
from dreamlake._local_sink import LocalSink
from dreamlake._pipe import SessionPipe
from dreamlake._values import encode_fields

PREFIX = "ws/run"

BURST = """
import sys
import numpy as np
from dreamlake import Session
s = Session(prefix="ws/run", root=sys.argv[1], **eval(sys.argv[3]))
s.open()
n = int(sys.argv[2])
plain, robot, cam = s.track("plain"), s.track("robot/pose"), s.track("camera")
for i in range(n):
    plain.append(i=i, loss=1.0 / (i + 1))
    if i % 5 == 0:
        t = 1000.0 + i
        robot.append(i=i, q=[0.1 * i, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], _ts=t)
        robot.append(v=np.arange(7.0) + i, _ts=-1)          # merges into the row above
        cam.append({"frame": i, "meta": {"w": 640, "h": 480}, "name": "left"}, _ts=-1)
    if i % 1000 == 0:
        s.log(f"step {i}", metadata={"i": i})
print("done", flush=True)
sys.stdin.read()  # the parent kills us here, at once
"""


def _run_and_kill(tmp_path, n, extra="{}"):
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(BURST), str(tmp_path), str(n), extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "done", f"child failed: {proc.stderr.read()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        proc.stdin.close()
    assert proc.returncode == -signal.SIGKILL


def _check_everything_back(tmp_path, n):
    with Session(prefix=PREFIX, root=str(tmp_path)) as s:
        plain = [p["data"] for p in read_all(s.track("plain"))]
        assert [r["i"] for r in plain] == list(range(n)), "rows missing, duplicated or out of order"
        assert [p["index"] for p in read_all(s.track("plain"))] == list(range(n))
        ticks = list(range(0, n, 5))
        robot = [p["data"] for p in read_all(s.track("robot/pose"))]
        assert [r["i"] for r in robot] == ticks
        assert all(r["v"] == [float(k + r["i"]) for k in range(7)] and len(r["q"]) == 7 for r in robot)
        assert [r["_ts"] for r in robot] == [1000.0 + i for i in ticks]
        cam = [p["data"] for p in read_all(s.track("camera"))]
        assert [(r["frame"], r["_ts"], r["meta"]) for r in cam] == [(i, 1000.0 + i, {"w": 640, "h": 480}) for i in ticks]
        logs = [p["data"]["message"] for p in read_all_logs(s)]
        assert logs == [f"step {i}" for i in range(0, n, 1000)]
        health = s.health()
    journals = _journal_files(tmp_path / "ws" / "run")
    assert journals == [], f"recovered journals must be deleted, found {journals}"
    return health


def _journal_files(session_dir):
    found = []
    for directory in journal_dirs(str(session_dir)):
        if os.path.isdir(directory):
            found += [name for name in os.listdir(directory) if name.endswith((".ring", ".names"))]
    return found


def read_all_logs(s):
    out, start = [], 0
    while True:
        page = s.logs(start_index=start, limit=1000)
        out.extend(page["data"])
        if not page["hasMore"] or not page["data"]:
            return out
        start = page["data"][-1]["index"] + 1


def test_kill9_right_after_a_burst_keeps_every_returned_append(tmp_path):
    n = 50_000
    _run_and_kill(tmp_path, n)
    health = _check_everything_back(tmp_path, n)
    assert health["journal"] is not None


def test_kill9_with_a_tiny_budget_blocks_on_the_journal_and_loses_nothing(tmp_path):
    # a 64 KiB budget: the ring and the queue fill many times over during the burst
    n = 20_000
    _run_and_kill(tmp_path, n, "{'memory_budget': 64 << 10}")
    _check_everything_back(tmp_path, n)


def test_a_second_kill_during_recovery_still_loses_nothing(tmp_path):
    n = 20_000
    _run_and_kill(tmp_path, n)
    # a process that opens (recovering), appends a burst of its own and is killed too
    _run_and_kill_second = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, os, signal
            from dreamlake import Session
            s = Session(prefix="ws/run", root=sys.argv[1]).open()
            t = s.track("plain")
            for i in range(int(sys.argv[2]), int(sys.argv[2]) + 5000):
                t.append(i=i, loss=1.0 / (i + 1))
            os.kill(os.getpid(), signal.SIGKILL)
        """), str(tmp_path), str(n)],
        capture_output=True, text=True, timeout=60,
    )
    assert _run_and_kill_second.returncode == -signal.SIGKILL, _run_and_kill_second.stderr
    with Session(prefix=PREFIX, root=str(tmp_path)) as s:
        rows = [p["data"]["i"] for p in read_all(s.track("plain"))]
    assert rows == list(range(n + 5000))


def _journaled_pipe(directory):
    sink = LocalSink(str(directory))
    sink.open({})
    pipe = SessionPipe(sink)
    pipe.attach_journal(Journal(str(directory), 2 << 20))
    return sink, pipe


def test_rows_stored_but_not_yet_marked_are_not_written_twice(tmp_path):
    """The writer stores a batch, then marks it; a kill between the two leaves
    a journal whose marks lag the store. Recovery recognises the stored rows."""
    sdir = tmp_path / "s"
    sink, pipe = _journaled_pipe(sdir)
    stream = pipe.stream("t")
    for i in range(10):
        pipe.put_row(stream.sid, {"i": i, "x": [1.0, float(i)]}, float(i), lambda: None)
    # the "writer" stored the first 6 rows and died before marking them
    rows = [{"i": i, "x": [1.0, float(i)], "_ts": float(i)} for i in range(6)]
    sink.write_rows("t", False, rows, [float(i) for i in range(6)])
    pipe.journal.close()  # the process is gone: its lock with it
    assert recover_session(str(sdir)) == 4
    reader = LocalSink(str(sdir))
    got = reader.read("t", False, 0, 100)["data"]
    assert [(p["index"], p["data"]["i"]) for p in got] == [(i, i) for i in range(10)]
    assert recover_session(str(sdir)) == 0  # the journal is gone: nothing twice


def test_marked_rows_are_not_replayed_and_equal_ts_rows_merge_on_replay(tmp_path):
    sdir = tmp_path / "s"
    sink, pipe = _journaled_pipe(sdir)
    stream = pipe.stream("t")
    pipe.put_row(stream.sid, {"a": 1}, 1.0, lambda: None)
    pipe.put_row(stream.sid, {"b": 2}, 2.0, lambda: None)
    sink.write_rows("t", False, [{"a": 1, "_ts": 1.0}], [1.0])
    first_key = 0  # the first record starts at offset 0
    pipe.journal.set_mark(stream.sid, first_key + 1)
    pipe.put_row(stream.sid, {"c": 3}, 2.0, lambda: None)  # same _ts as b: one row
    pipe.journal.close()
    assert recover_session(str(sdir)) == 1
    got = LocalSink(str(sdir)).read("t", False, 0, 100)["data"]
    assert [p["data"] for p in got] == [{"a": 1, "_ts": 1.0}, {"b": 2, "c": 3, "_ts": 2.0}]


def test_a_live_sessions_journal_is_left_alone(tmp_path):
    sdir = tmp_path / "s"
    sink, pipe = _journaled_pipe(sdir)
    pipe.put_row(pipe.stream("t").sid, {"a": 1}, 1.0, lambda: None)
    assert recover_session(str(sdir)) == 0  # its owner (this process) holds the lock
    assert os.path.exists(pipe.journal.path)
    pipe.journal.remove()


def test_a_clean_close_leaves_no_journal(tmp_path):
    with Session(prefix=PREFIX, root=str(tmp_path)) as s:
        s.track("t").append(a=1)
        assert s.health()["journal"]
    assert _journal_files(tmp_path / "ws" / "run") == []


def test_queued_rows_are_not_tracked_by_the_cyclic_gc(tmp_path):
    """What the hot path queues — for list, array, dict and string rows too — is
    ints, floats and bytes: nothing a collection has to walk."""
    np = pytest.importorskip("numpy")
    pipe = SessionPipe(sink=None)  # no writer: everything stays queued
    sid = pipe.stream("t").sid
    for i in range(200):
        pipe.put_row(sid, {"q": [0.1] * 7, "a": np.arange(7.0), "m": {"w": 1}, "s": "left", "f": np.float32(i)}, None, lambda: None)
        pipe.put_row(sid, {"loss": 0.5, "step": i}, -1, lambda: None)
    big = "x" * 4000  # a large row goes as one weighted item: bytes too
    pipe.put_row(sid, {"blob": big}, None, lambda: None)
    assert len(pipe.queue) == 3 * 401
    tracked = [item for item in pipe.queue if gc.is_tracked(item)]
    assert tracked == []


def test_bad_values_are_refused_at_the_call_in_one_rule(tmp_path):
    np = pytest.importorskip("numpy")
    for bad, error in [
        ({"x": 1 << 64}, ValueError),
        ({"x": -(1 << 63) - 1}, ValueError),
        ({"x": "a\ud800b"}, ValueError),
        ({"x": {"k\udc00": 1}}, ValueError),
        ({"x": np.complex64(1)}, TypeError),
        ({"x": 1j}, TypeError),
        ({"x": object()}, TypeError),
        ({"x": {1: 2}}, TypeError),
    ]:
        with pytest.raises(error):
            encode_fields(bad)
    encode_fields({"x": (1 << 64) - 1, "y": -(1 << 63)})  # the edges are fine


def test_kill9_in_agent_mode_after_a_burst_keeps_every_returned_append(agents):
    """Agent mode: the client journals too; rows it had not yet sent to the agent
    come back on the next open, rows the agent had are not written twice."""
    from test_agent_processes import meta, wait_until

    agents.start()
    root = agents.root
    n = 30_000
    _run_and_kill(root, n, repr({"agent": agents.address}))
    sdir = root / "ws" / "run"
    wait_until(lambda: meta(sdir)["status"] == "interrupted", what="the agent to finish the killed client's session")
    _check_everything_back(root, n)


def test_a_full_journal_with_drop_counts_the_loss_by_reason(tmp_path):
    sink = LocalSink(str(tmp_path / "s"))
    pipe = SessionPipe(sink, on_full="drop")  # no writer: nothing frees the ring
    pipe.attach_journal(Journal(str(tmp_path / "s"), 4096))
    sid = pipe.stream("t").sid
    kept = sum(pipe.put_row(sid, {"i": i, "pad": "x" * 40}, None, lambda: None) for i in range(200))
    health = pipe.health()
    assert 0 < kept < 200
    assert health["lost"] == {"queue_full": 0, "journal_full": 200 - kept, "sink_failing": 0}
    assert health["dropped"] == 200 - kept
    assert health["backlog_rows"] == kept
    pipe.journal.remove()


def test_dead_journals_in_shared_memory_are_swept_to_disk_or_deleted(tmp_path):
    from dreamlake._journal import SHM, sweep_shared_memory

    if not journal_dirs(str(tmp_path))[0].startswith(SHM):
        pytest.skip("no /dev/shm here: journals live in the session directory")
    done, pending, gone = tmp_path / "done", tmp_path / "pending", tmp_path / "gone"
    journals = {}
    for sdir in (done, pending, gone):
        sink, pipe = _journaled_pipe(sdir)
        sid = pipe.stream("t").sid
        pipe.put_row(sid, {"a": 1}, 1.0, lambda: None)
        if sdir is done:
            sink.write_rows("t", False, [{"a": 1, "_ts": 1.0}], [1.0])
            pipe.journal.set_mark(sid, 1)  # written and marked: nothing to recover
        pipe.journal.close()  # its process is gone
        journals[sdir] = pipe.journal.path
    import shutil

    shutil.rmtree(gone)
    assert sweep_shared_memory() >= 3
    assert not any(os.path.exists(path) for path in journals.values())  # shared memory freed
    assert os.listdir(pending / ".journal")  # the rows to recover now wait on disk
    assert recover_session(str(pending)) == 1
    assert [p["data"] for p in LocalSink(str(pending)).read("t", False, 0, 10)["data"]] == [{"a": 1, "_ts": 1.0}]
    assert recover_session(str(done)) == 0
