"""The crash journal: whatever append() returned before a kill -9 is in the store
after the next open of the session, once, gap-free. Real subprocesses killed with
SIGKILL; the recovery's corner (rows stored but not yet marked) built directly."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from disk import disk_logs, disk_rows
from dreamlake import Session
from dreamlake._pipe import HOTPATH, SessionPipe

pytestmark = pytest.mark.skipif(not HOTPATH, reason="the journal comes with the C hot path")

if HOTPATH:
    from dreamlake._journal import Journal, journal_dirs, recover_session
    from dreamlake._local_sink import LocalSink

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
    if i % 7000 == 0:
        plain.append_batch([{"batch": i, "k": k} for k in range(3)])
print("done", flush=True)
sys.stdin.read()  # the parent kills us here, at once
"""


def _run_and_kill(root, n, extra="{}", script=BURST):
    """Run ``script`` (argv: root, n, extra), wait for its "done", kill -9 it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), str(root), str(n), extra],
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
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            stream.close()
    assert proc.returncode == -signal.SIGKILL


def _expected_plain(n):
    out = []
    for i in range(n):
        out.append(("i", i))
        if i % 7000 == 0:
            out += [("batch", i)] * 3
    return out


def _check_everything_back(root, n):
    sdir = root / "ws" / "run"
    with Session(prefix=PREFIX, root=str(root)) as s:
        s.tracks.flush()
        health = s.health()
    plain = disk_rows(sdir, "plain")  # also checks indices 0, 1, 2, ... without gaps
    assert [("i", r["i"]) if "i" in r else ("batch", r["batch"]) for r in plain] == _expected_plain(n), \
        "rows missing, duplicated or out of order"
    ticks = list(range(0, n, 5))
    robot = disk_rows(sdir, "robot/pose")
    assert [r["i"] for r in robot] == ticks
    assert all(r["v"] == [float(k + r["i"]) for k in range(7)] and len(r["q"]) == 7 for r in robot)
    assert [r["_ts"] for r in robot] == [1000.0 + i for i in ticks]
    cam = disk_rows(sdir, "camera")
    assert [(r["frame"], r["_ts"], r["meta"]) for r in cam] == [(i, 1000.0 + i, {"w": 640, "h": 480}) for i in ticks]
    assert [e["message"] for e in disk_logs(sdir)] == [f"step {i}" for i in range(0, n, 1000)]
    assert _journal_files(sdir) == [], "recovered journals must be deleted"
    return health


def _journal_files(session_dir):
    found = []
    for directory in journal_dirs(str(session_dir)):
        if os.path.isdir(directory):
            found += [name for name in os.listdir(directory) if name.endswith((".ring", ".names"))]
    return found


def test_kill9_right_after_a_burst_keeps_every_returned_append(tmp_path):
    n = 50_000
    _run_and_kill(tmp_path, n)
    health = _check_everything_back(tmp_path, n)
    assert health["journal"] is not None and health["hot_path"] == "c"


def test_kill9_with_a_tiny_budget_blocks_on_the_journal_and_loses_nothing(tmp_path):
    # a 64 KiB budget: the ring fills many times over during the burst
    n = 20_000
    _run_and_kill(tmp_path, n, "{'memory_budget': 64 << 10}")
    _check_everything_back(tmp_path, n)


def test_a_second_kill_after_recovery_still_loses_nothing(tmp_path):
    n = 20_000
    _run_and_kill(tmp_path, n)
    second = subprocess.run(
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
    assert second.returncode == -signal.SIGKILL, second.stderr
    with Session(prefix=PREFIX, root=str(tmp_path)):
        pass
    rows = [r.get("i", ("batch", r.get("batch"))) for r in disk_rows(tmp_path / "ws" / "run", "plain")]
    expected = [i if kind == "i" else ("batch", i) for kind, i in _expected_plain(n)] + list(range(n, n + 5000))
    assert rows == expected


def _journaled_pipe(directory, capacity=1 << 20, on_full="block"):
    sink = LocalSink(str(directory))
    sink.open({})
    pipe = SessionPipe(None, on_full=on_full)  # no writer, no sink: rows stay in the ring
    pipe.sink = sink
    pipe.attach_journal(Journal(str(directory), capacity))
    return sink, pipe


def _put(pipe, sid, ts, **fields):
    return pipe.put_row(sid, ts, {**fields, "_ts": ts})


def test_rows_stored_but_not_yet_marked_are_not_written_twice(tmp_path):
    """The writer stores a batch, then marks it; a kill between the two leaves
    a journal whose marks lag the store. Recovery recognises the stored rows."""
    sdir = tmp_path / "s"
    sink, pipe = _journaled_pipe(sdir)
    stream = pipe.stream("t")
    for i in range(10):
        _put(pipe, stream.sid, float(i), i=i, x=[1.0, float(i)])
    # the "writer" stored the first 6 rows and died before marking them
    rows = [{"i": i, "x": [1.0, float(i)], "_ts": float(i)} for i in range(6)]
    sink.write_rows("t", False, rows, [float(i) for i in range(6)])
    pipe.journal.close()  # the process is gone: its lock with it
    assert recover_session(str(sdir)) == 4
    assert [(r["i"], r["_ts"]) for r in disk_rows(sdir, "t")] == [(i, float(i)) for i in range(10)]
    assert recover_session(str(sdir)) == 0  # the journal is gone: nothing twice


def test_marked_rows_are_not_replayed_and_equal_ts_rows_merge_on_replay(tmp_path):
    sdir = tmp_path / "s"
    sink, pipe = _journaled_pipe(sdir)
    stream = pipe.stream("t")
    _put(pipe, stream.sid, 1.0, a=1)
    second = pipe.ring.head
    _put(pipe, stream.sid, 2.0, b=2)
    sink.write_rows("t", False, [{"a": 1, "_ts": 1.0}], [1.0])
    pipe.ring.set_mark(stream.sid, second << 16)  # the first record is stored and marked
    _put(pipe, stream.sid, 2.0, c=3)  # same _ts as b: one row
    pipe.journal.close()
    assert recover_session(str(sdir)) == 1
    assert disk_rows(sdir, "t") == [{"a": 1, "_ts": 1.0}, {"b": 2, "c": 3, "_ts": 2.0}]


def test_a_live_sessions_journal_is_left_alone(tmp_path):
    sdir = tmp_path / "s"
    sink, pipe = _journaled_pipe(sdir)
    _put(pipe, pipe.stream("t").sid, 1.0, a=1)
    assert recover_session(str(sdir)) == 0  # its owner (this process) holds the lock
    assert os.path.exists(pipe.journal.path)
    pipe.journal.remove()


def test_a_clean_close_leaves_no_journal(tmp_path):
    with Session(prefix=PREFIX, root=str(tmp_path)) as s:
        s.track("t").append(a=1)
        assert s.health()["journal"]["path"]
    assert _journal_files(tmp_path / "ws" / "run") == []


def test_appended_rows_are_not_tracked_by_the_cyclic_gc(tmp_path):
    """The C path queues nothing on the Python heap: list, array and string rows
    are bytes in the ring, so the collector has nothing new to walk."""
    np = pytest.importorskip("numpy")
    with Session(prefix=PREFIX, root=str(tmp_path)) as s:
        t = s.track("t")
        s.tracks.flush()
        gc.collect()
        gc.disable()
        try:
            before = len(gc.get_objects())
            for i in range(2000):
                t.append(q=[0.1] * 7, a=np.arange(7.0), s="left", f=np.float32(i), _ts=float(i))
            after = len(gc.get_objects())
        finally:
            gc.enable()
    # the writer thread may hold a few objects of its own at the moment we count
    assert after - before < 200, f"{after - before} new GC-tracked objects for 2000 appends"


def test_a_full_journal_with_drop_counts_the_loss_by_reason(tmp_path):
    sdir = tmp_path / "s"
    sink, pipe = _journaled_pipe(sdir, capacity=4096, on_full="drop")
    sid = pipe.stream("t").sid
    kept = sum(_put(pipe, sid, float(i), i=i, pad="x" * 40) for i in range(200))
    health = pipe.health()
    assert 0 < kept < 200
    assert health["lost"]["dropped_for_budget"] == 200 - kept
    assert health["journal"]["dropped_ring_full"] == 200 - kept
    assert health["dropped"] == 200 - kept
    assert health["backlog"]["rows"] == kept
    pipe.journal.remove()


def test_fork_children_log_without_touching_the_parents_journal(tmp_path):
    with Session(prefix=PREFIX, root=str(tmp_path)) as s:
        t = s.track("t")
        t.append(who="parent", i=0, _ts=1.0)
        pid = os.fork()
        if pid == 0:  # the child: its own rows wait in memory, then are written
            code = 1
            try:
                t.append(who="child", i=1, _ts=2.0)
                s.track("child").append(x=1.0)
                s.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        t.append(who="parent", i=2, _ts=3.0)
    rows = disk_rows(tmp_path / "ws" / "run", "t")
    assert sorted((r["who"], r["i"]) for r in rows) == [("child", 1), ("parent", 0), ("parent", 2)]
    assert _journal_files(tmp_path / "ws" / "run") == []


def test_dead_journals_in_shared_memory_are_swept_to_disk_or_deleted(tmp_path):
    from dreamlake._journal import SHM, sweep_shared_memory

    if not journal_dirs(str(tmp_path))[0].startswith(SHM):
        pytest.skip("no /dev/shm here: journals live in the session directory")
    done, pending, gone = tmp_path / "done", tmp_path / "pending", tmp_path / "gone"
    journals = {}
    for sdir in (done, pending, gone):
        sink, pipe = _journaled_pipe(sdir)
        sid = pipe.stream("t").sid
        _put(pipe, sid, 1.0, a=1)
        if sdir is done:
            sink.write_rows("t", False, [{"a": 1, "_ts": 1.0}], [1.0])
            pipe.ring.set_mark(sid, 1)  # written and marked: nothing to recover
        pipe.journal.close()  # its process is gone
        journals[sdir] = pipe.journal.path
    shutil.rmtree(gone)
    assert sweep_shared_memory() >= 3
    assert not any(os.path.exists(path) for path in journals.values())  # shared memory freed
    assert os.listdir(pending / ".journal")  # the rows to recover now wait on disk
    assert recover_session(str(pending)) == 1
    assert disk_rows(pending, "t") == [{"a": 1, "_ts": 1.0}]
    assert recover_session(str(done)) == 0


def test_a_torn_last_record_ends_recovery_without_losing_earlier_rows(tmp_path):
    """A kill in the middle of a copy: the record's commit word was never written."""
    sdir = tmp_path / "s"
    sink, pipe = _journaled_pipe(sdir)
    sid = pipe.stream("t").sid
    for i in range(5):
        _put(pipe, sid, float(i), i=i)
    torn_at = pipe.ring.head
    _put(pipe, sid, 9.0, i=9)
    path = pipe.journal.path
    pipe.journal.close()
    from dreamlake._hotpath import DATA_AT

    with open(path, "r+b") as f:  # the sixth record's commit word: zeroed
        f.seek(DATA_AT + torn_at)
        f.write(b"\0" * 8)
    assert recover_session(str(sdir)) == 5
    assert [r["i"] for r in disk_rows(sdir, "t")] == [0, 1, 2, 3, 4]


def test_an_open_row_of_a_rare_track_is_relocated_not_lost_and_not_doubled(tmp_path):
    """A track's newest row stays open for merging; with a small ring and a busy
    track beside it, the writer journals the open row again at the ring's head
    instead of letting it pin the ring (until it ages out and is written). A kill
    afterwards loses nothing and doubles nothing."""
    script = textwrap.dedent("""
        import sys
        from dreamlake import Session
        s = Session(prefix="ws/run", root=sys.argv[1], memory_budget=64 << 10).open()
        rare, busy = s.track("rare"), s.track("busy")
        rare.append(a=1.0, _ts=1.0)
        for i in range(int(sys.argv[2])):
            busy.append(i=i, pad="x" * 20)
        print("done", flush=True)
        sys.stdin.read()
    """)
    _run_and_kill(tmp_path, 30_000, script=script)
    with Session(prefix=PREFIX, root=str(tmp_path)):
        pass
    sdir = tmp_path / "ws" / "run"
    assert disk_rows(sdir, "rare") == [{"a": 1.0, "_ts": 1.0}]
    assert [r["i"] for r in disk_rows(sdir, "busy")] == list(range(30_000))


def test_kill9_in_agent_mode_after_a_burst_keeps_every_returned_append(tmp_path):
    """Agent mode: the client journals too; rows it had not yet sent to the agent
    come back when the agent next opens the session, rows the agent had are not
    written twice."""
    from test_agent_processes import Agents, meta, wait_until

    sockdir = tempfile.mkdtemp(dir="/tmp", prefix="dla-")  # short: AF_UNIX paths are limited
    agents = Agents(sockdir, tmp_path / "root")
    try:
        agents.start()
        address, root = agents.sock, agents.root
        n = 30_000
        _run_and_kill(root, n, repr({"agent": address}))
        sdir = root / "ws" / "run"
        wait_until(lambda: meta(sdir)["status"] == "interrupted", what="the agent to finish the killed client's session")
        with Session(prefix=PREFIX, root=str(root), agent=address) as s:
            assert s.health()["journal"] is not None
        _check_everything_back(root, n)
    finally:
        agents.stop_all()
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_no_room_for_the_journal_opens_without_one_and_writes_everything(tmp_path, monkeypatch, caplog):
    """The ring is allocated up front (a store into a sparse mapping on a full disk
    would be a SIGBUS): where it does not fit, the session opens without it, says
    so, and rows wait in memory until written, as without the extension."""
    from test_store_faults import fill, small_tmpfs

    monkeypatch.setenv("DREAMLAKE_JOURNAL_DIR", "session")  # on the session's own (tiny) disk
    with small_tmpfs("2m") as where:
        filler = fill(where, leave=40 << 10)  # less than the smallest ring
        with caplog.at_level("WARNING", logger="dreamlake"):
            with Session(prefix=PREFIX, root=where) as s:
                assert s.health()["journal"] is None
                os.unlink(filler)  # room again for the rows themselves
                t = s.track("t")
                for i in range(1000):
                    t.append(i=i, q=[0.5] * 3)
        assert any("no crash journal" in r.getMessage() for r in caplog.records)
        assert [r["i"] for r in disk_rows(Path(where) / "ws" / "run", "t")] == list(range(1000))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_small_journal_filesystem_gets_a_small_ring_not_none(tmp_path, monkeypatch):
    """A container's small /dev/shm must not go to the first session alone: the
    ring takes at most an eighth of the room free where it lives."""
    from test_store_faults import small_tmpfs

    monkeypatch.setenv("DREAMLAKE_JOURNAL_DIR", "session")
    with small_tmpfs("16m") as where:
        room = os.statvfs(where).f_bavail * os.statvfs(where).f_frsize
        with Session(prefix=PREFIX, root=where) as s:
            journal = s.health()["journal"]
            assert journal is not None and 64 << 10 <= journal["capacity"] <= room // 8
            t = s.track("t")
            for i in range(20_000):
                t.append(i=i, q=[0.5] * 7)
        assert [r["i"] for r in disk_rows(Path(where) / "ws" / "run", "t")] == list(range(20_000))


def test_ring_capacity_is_half_the_budget_within_bounds_and_room():
    from dreamlake._journal import MAX_CAPACITY, MIN_CAPACITY, capacity_for

    assert capacity_for(64 << 20) == MAX_CAPACITY == 32 << 20  # the default budget
    assert capacity_for(8 << 20) == 4 << 20
    assert capacity_for(1 << 10) == MIN_CAPACITY
    assert capacity_for(64 << 20, room=64 << 20) == 8 << 20  # a container's 64 MB /dev/shm
    assert capacity_for(64 << 20, room=0) == MIN_CAPACITY  # then allocation fails and says so


def test_large_rows_against_a_small_ring_block_and_lose_nothing(tmp_path):
    """4 KB rows into a 128 KiB ring: the writer's held rows are too large to
    journal again at the head; it must still free room (by writing) and never
    fail its cycle."""
    pad = "x" * 4000
    with Session(prefix=PREFIX, root=str(tmp_path), memory_budget=256 << 10) as s:
        t = s.track("t")
        for i in range(2000):
            t.append(i=i, blob=pad)
        assert s.health()["dropped"] == 0
    assert [r["i"] for r in disk_rows(tmp_path / "ws" / "run", "t")] == list(range(2000))


def _paused_writer(monkeypatch):
    """Make the writer stop before it reads the ring, until the returned event is set."""
    import threading

    from dreamlake._writer import Writer

    go = threading.Event()
    take = Writer._take_ring

    def waiting(self, pipe, upto):
        go.wait()
        return take(self, pipe, upto)

    monkeypatch.setattr(Writer, "_take_ring", waiting)
    return go


def test_append_batch_journals_the_callers_rows_without_copying_them(tmp_path, monkeypatch):
    """The common batch is checked and journaled straight from the caller's dicts:
    no per-row Python objects (the copies made W4's append_batch 13 % slower than
    before the journal). With the writer held, the call's peak allocation stays
    far below one dict per row."""
    import tracemalloc

    go = _paused_writer(monkeypatch)
    n = 10_000
    rows = [{"loss": 1.0 / (i + 1), "acc": i * 1e-6, "step": i} for i in range(n)]
    given = [{"_ts": 5000.0 + i, "x": i} for i in range(n)]
    with Session(prefix=PREFIX, root=str(tmp_path)) as s:
        try:  # the writer goes on before the session closes, whatever fails
            t = s.track("t")
            t.append_batch(rows[:10])  # warm the scratch buffer
            tracemalloc.start()
            try:
                tracemalloc.reset_peak()
                base = tracemalloc.get_traced_memory()[0]
                t.append_batch(rows[10:])
                peak = tracemalloc.get_traced_memory()[1] - base
            finally:
                tracemalloc.stop()
            assert peak < 20 * n, f"{peak} bytes allocated at peak for {n} rows"
            assert rows[0] == {"loss": 1.0, "acc": 0.0, "step": 0}  # the caller's rows are not stamped
            e = s.track("e")
            e.append_batch(given)
            e.append(y=1, _ts=-1)  # borrows the batch's last explicit stamp
        finally:
            go.set()
    stored = disk_rows(tmp_path / "ws" / "run", "t")
    assert [r["step"] for r in stored] == list(range(n))
    stamps = [r["_ts"] for r in stored]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))  # auto stamps strictly increase
    explicit = disk_rows(tmp_path / "ws" / "run", "e")
    assert [r["_ts"] for r in explicit] == [5000.0 + i for i in range(n)]
    assert explicit[-1] == {"_ts": 5000.0 + n - 1, "x": n - 1, "y": 1}


def test_a_bad_row_in_a_batch_journals_none_of_it(tmp_path, monkeypatch):
    go = _paused_writer(monkeypatch)
    with Session(prefix=PREFIX, root=str(tmp_path)) as s:
        try:
            t = s.track("t")
            ring = t._pipe.ring
            before = ring.rows_in
            for bad in ([{"a": 1.0}] * 50 + [{"a": 1 << 64}], [{"a": 1.0}] * 50 + [{}],
                        [{"a": 1.0}] * 50 + [{1: 2.0}], [{"a": 1.0, "_ts": 1.0}] * 50 + [{"a": 1.0, "_ts": float("nan")}]):
                with pytest.raises((ValueError, TypeError)):
                    t.append_batch(bad)
                assert ring.rows_in == before
        finally:
            go.set()
    assert disk_rows(tmp_path / "ws" / "run", "t") == []


def test_a_batch_larger_than_the_ring_waits_for_room_and_loses_nothing(tmp_path):
    n = 20_000  # ~1.6 MB of records against a 128 KiB ring
    with Session(prefix=PREFIX, root=str(tmp_path), memory_budget=256 << 10) as s:
        t = s.track("t")
        assert t._pipe.ring.capacity < n * 40
        t.append_batch([{"i": i, "_ts": float(i)} for i in range(n)])
        t.append_batch([{"j": i} for i in range(n)])
        assert s.health()["dropped"] == 0
    stored = disk_rows(tmp_path / "ws" / "run", "t")
    assert [r.get("i", r.get("j")) for r in stored] == list(range(n)) * 2
    assert [r["_ts"] for r in stored[:n]] == [float(i) for i in range(n)]


REOPEN = """
import sys
from dreamlake import Session
s = Session(prefix="ws/run", root=sys.argv[1]).open()
print(s._pipe.recovered_rows, flush=True)
s.close()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_rows_a_failed_close_still_owns_are_not_recovered_by_another_process(tmp_path, monkeypatch):
    """close() fails on a full disk with rows unwritten: this process keeps them
    and writes them when space comes back, so its journal stays locked meanwhile.
    Another process opening the session then must not replay them (they would be
    written twice); once this process has written them, the journal is gone."""
    import threading

    from dreamlake import SinkError
    from dreamlake._writer import Writer
    from test_store_faults import fill, small_tmpfs, wait_for

    go = threading.Event()
    retry = Writer._write_retry

    def held_retry(self, pipe):  # after the failed close: no retry until the other process is done
        if pipe.close_request is not None:
            go.wait()
        return retry(self, pipe)

    monkeypatch.setattr(Writer, "_write_retry", held_retry)
    with small_tmpfs("32m") as fs:  # room, once freed, for a dead journal swept to the session's disk
        root = os.path.join(fs, "store")
        sdir = Path(root) / "ws" / "run"
        s = Session(prefix=PREFIX, root=root, timeout=30).open()
        try:
            t = s.track("t")
            for i in range(100):
                t.append(i=i)
            s.flush()
            filler = fill(fs, leave=0)
            for i in range(100, 1100):
                t.append(i=i, pad="p" * 50)
            wait_for(lambda: s.health()["write_errors"] > 0, what="a failed write")
            pipe = s._pipe
            with pytest.raises(SinkError):
                s.close()
            os.unlink(filler)
            other = subprocess.run([sys.executable, "-c", REOPEN, root], capture_output=True, text=True, timeout=60)
            assert other.returncode == 0, other.stderr
            assert other.stdout.split() == ["0"], "the other process replayed rows this one still owns"
        finally:
            go.set()
        wait_for(lambda: pipe not in s._writer.pipes(), timeout=30, what="the deferred close")
        assert [r["i"] for r in disk_rows(sdir, "t")] == list(range(1100))
        assert _journal_files(sdir) == []


def test_a_flat_dict_value_is_journaled_by_the_c_path(tmp_path, monkeypatch):
    """A camera's ``meta={"width": 640, ...}`` is a binary record the C path
    writes, like a list of floats; before, such rows took the Python path (its
    p50 was ~15x a list row's in W2). Record kinds: 1 BIN (C), 2 PACK (Python)."""
    import struct

    from dreamlake._hotpath import DATA_AT

    go = _paused_writer(monkeypatch)
    with Session(prefix=PREFIX, root=str(tmp_path)) as s:
        try:
            t = s.track("camera")
            t.append(meta={"width": 640, "height": 480, "frame_id": 7, "name": "left"}, _ts=1.0)
            t.append(meta={"deep": {"x": 1}}, _ts=2.0)  # a dict in the dict: Python's
            with open(s._pipe.journal.path, "rb") as f:
                f.seek(DATA_AT)
                first = f.read(4096)
            kinds = []
            off = 0
            for _ in range(2):
                length, = struct.unpack_from("<I", first, off + 8)
                kinds.append(struct.unpack_from("<I", first, off + 24)[0])
                off += length
            assert kinds == [1, 2]
        finally:
            go.set()
    assert disk_rows(tmp_path / "ws" / "run", "camera") == [
        {"_ts": 1.0, "meta": {"width": 640, "height": 480, "frame_id": 7, "name": "left"}},
        {"_ts": 2.0, "meta": {"deep": {"x": 1}}},
    ]
