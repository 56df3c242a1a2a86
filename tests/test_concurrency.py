"""Many producers at once: threads, processes sharing one session directory,
``os.fork()`` children (DataLoader workers), and a fork while a thread appends.

Every test checks the rows on disk: all present exactly once, consecutive
indices, each producer's order preserved, every line a whole JSON object.
Forking scenarios run in a child interpreter with a timeout, so a deadlock
fails the test instead of hanging the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import pytest

from disk import disk_logs, disk_rows, read_all, strict_loads
from dreamlake import Session

PREFIX = "ws/run"








def assert_each_producer_complete_and_ordered(rows, key, producers, per_producer):
    seen = {}
    for row in rows:
        seen.setdefault(row[key], []).append(row["i"])
    assert sorted(seen) == sorted(producers)
    for who, seq in seen.items():
        assert seq == list(range(per_producer)), f"producer {who}: rows lost, duplicated or reordered"


def run_script(script, *args, timeout=40):
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"deadlock: script still running after {timeout}s\nstdout:{out}\nstderr:{err}")
    assert proc.returncode == 0, f"stdout:{out}\nstderr:{err}"
    return out


# ---------------------------------------------------------------- threads

THREADS, PER_THREAD = 8, 2000


def _run_threads(target):
    barrier = threading.Barrier(THREADS)
    errors = []

    def body(k):
        try:
            barrier.wait(timeout=10)
            target(k)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a producer thread is stuck"
    assert errors == []


def test_threads_appending_to_one_track(tmp_path):
    sdir = tmp_path / "ws" / "run"
    with Session(prefix=PREFIX, root=str(tmp_path)) as s:

        def produce(k):
            t = s.track("shared")
            for i in range(PER_THREAD):
                t.append(thread=k, i=i)

        _run_threads(produce)
        points = read_all(s.track("shared"))
        assert [p["index"] for p in points] == list(range(THREADS * PER_THREAD))
        health = s.health()
        # API_CONTRACT spells it write_errors; the rest of the API is camelCase: accept both
        write_errors = health["write_errors"] if "write_errors" in health else health["writeErrors"]
        assert health["dropped"] == 0 and write_errors == 0  # on_full="block" is lossless
    rows = disk_rows(sdir, "shared")
    assert len(rows) == THREADS * PER_THREAD
    assert_each_producer_complete_and_ordered(rows, "thread", range(THREADS), PER_THREAD)
    # _ts=None is strictly increasing per session, so no two rows can merge
    assert len({r["_ts"] for r in rows}) == len(rows)


def test_threads_appending_to_distinct_tracks_and_a_shared_one(tmp_path):
    sdir = tmp_path / "ws" / "run"
    with Session(prefix=PREFIX, root=str(tmp_path)) as s:

        def produce(k):
            own = s.track(f"thread/{k}")
            for i in range(PER_THREAD):
                own.append(i=i)
                if i % 4 == 0:
                    s.track("mixed").append(thread=k, i=i // 4)
                if i % 500 == 0:
                    s.log(f"thread {k} at {i}")

        _run_threads(produce)
        for k in range(THREADS):
            points = read_all(s.track(f"thread/{k}"))
            assert [(p["index"], p["data"]["i"]) for p in points] == [(i, i) for i in range(PER_THREAD)]
    for k in range(THREADS):
        assert [r["i"] for r in disk_rows(sdir, f"thread/{k}")] == list(range(PER_THREAD))
    assert_each_producer_complete_and_ordered(disk_rows(sdir, "mixed"), "thread", range(THREADS), PER_THREAD // 4)
    assert len(disk_logs(sdir)) == THREADS * (PER_THREAD // 500)


def test_reads_racing_appenders_see_consistent_prefixes(tmp_path):
    with Session(prefix=PREFIX, root=str(tmp_path)) as s:
        stop = threading.Event()
        problems = []

        def reader():
            last_total = 0
            while not stop.is_set():
                page = s.track("raced").read(start_index=max(0, last_total - 50), limit=100)
                idx = [p["index"] for p in page["data"]]
                if idx != list(range(idx[0], idx[0] + len(idx))) if idx else False:
                    problems.append(f"gap in {idx}")
                count = int(s.track("raced").stats()["totalDataPoints"])
                if count < last_total:
                    problems.append(f"count went back {last_total} -> {count}")
                last_total = count

        r = threading.Thread(target=reader)
        r.start()

        def produce(k):
            t = s.track("raced")
            for i in range(PER_THREAD // 2):
                t.append(thread=k, i=i)

        try:
            _run_threads(produce)
        finally:
            stop.set()
            r.join(timeout=30)
        assert not r.is_alive() and problems == []
        points = read_all(s.track("raced"))
        assert [p["index"] for p in points] == list(range(THREADS * PER_THREAD // 2))
    rows = disk_rows(tmp_path / "ws" / "run", "raced")
    assert_each_producer_complete_and_ordered(rows, "thread", range(THREADS), PER_THREAD // 2)


# ---------------------------------------------------------------- processes

PROCS, PER_PROC = 4, 3000

PROC_WRITER = """
import sys, time
from dreamlake import Session
root, p, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with Session(prefix="ws/run", root=root) as s:
    t = s.track("shared")
    print("ready", flush=True)
    sys.stdin.readline()          # start together
    for i in range(n):
        t.append(proc=p, i=i, pad="y" * 30)
        if i % 300 == 0:
            s.log(f"proc {p} at {i}")
        # spread the writes over many small batches so the processes' appends
        # to the file really overlap: explicit flushes in half of them, writer
        # ticks in the other half
        if i % 50 == 49:
            if p % 2:
                t.flush()
            else:
                time.sleep(0.002)
print("done", flush=True)
"""


def test_processes_appending_to_the_same_track(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROC_WRITER, str(tmp_path), str(p), str(PER_PROC)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(PROCS)
    ]
    try:
        for proc in procs:
            line = proc.stdout.readline()
            assert line.strip() == "ready", proc.stderr.read()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            out, err = proc.communicate(timeout=40)
            assert proc.returncode == 0 and "done" in out, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    sdir = tmp_path / "ws" / "run"
    rows = disk_rows(sdir, "shared")
    assert len(rows) == PROCS * PER_PROC
    assert_each_producer_complete_and_ordered(rows, "proc", range(PROCS), PER_PROC)
    assert len(disk_logs(sdir)) == PROCS * (PER_PROC // 300)
    strict_loads((sdir / "session.json").read_text())  # concurrent metadata updates left valid JSON
    with Session(prefix=PREFIX, root=str(tmp_path)) as s:
        t = s.track("shared")
        points = read_all(t)
        assert [p["index"] for p in points] == list(range(PROCS * PER_PROC))
        assert int(t.stats()["totalDataPoints"]) == PROCS * PER_PROC
        t.append(proc=-1, i=0)
        assert t.read(start_index=PROCS * PER_PROC, limit=5)["data"][0]["data"]["proc"] == -1


# ---------------------------------------------------------------- fork

FORK_CHILDREN_LOG = """
import os, sys, traceback
from dreamlake import Session
root, exit_style = sys.argv[1], sys.argv[2]
s = Session(prefix="ws/run", root=root)
s.open()
shared = s.track("shared")
for i in range(500):
    shared.append(who="parent", i=i)

pids = []
for k in range(4):
    pid = os.fork()
    if pid == 0:  # a DataLoader-style worker using the inherited session
        code = 1
        try:
            own = s.track(f"child/{k}")
            for i in range(500):
                own.append(i=i)
                s.track("shared").append(who=f"child{k}", i=i)
            s.log(f"child {k} done")
            code = 0
        except BaseException:
            traceback.print_exc()
        if exit_style == "os_exit":
            if code == 0:
                s.tracks.flush()
            os._exit(code)
        sys.exit(code)  # normal interpreter exit: atexit handlers run in the child
    pids.append(pid)
    for i in range(500 + 500 * k, 1000 + 500 * k):  # the parent keeps logging meanwhile
        shared.append(who="parent", i=i)

for pid in pids:
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"child {pid} failed"
for i in range(2500, 3000):  # the parent's session still works after its children exited
    shared.append(who="parent", i=i)
s.log("parent done")
s.close()
print("ok", flush=True)
"""


# Workers usually leave via os._exit after an explicit flush (multiprocessing does),
# but a plain forked script may also just exit: its atexit flush must not break the parent.
@pytest.mark.parametrize("exit_style", ["os_exit", "sys_exit"])
def test_fork_children_log_while_parent_logs(tmp_path, exit_style):
    out = run_script(FORK_CHILDREN_LOG, tmp_path, exit_style)
    assert out.strip() == "ok"
    sdir = tmp_path / "ws" / "run"
    rows = disk_rows(sdir, "shared")
    seen = {}
    for row in rows:
        seen.setdefault(row["who"], []).append(row["i"])
    assert seen.pop("parent") == list(range(3000))
    assert seen == {f"child{k}": list(range(500)) for k in range(4)}
    for k in range(4):
        assert [r["i"] for r in disk_rows(sdir, f"child/{k}")] == list(range(500))
    messages = [entry["message"] for entry in disk_logs(sdir)]
    assert sorted(m for m in messages if m.startswith("child")) == [f"child {k} done" for k in range(4)]
    assert "parent done" in messages
    assert strict_loads((sdir / "session.json").read_text())["status"] == "completed"
    with Session(prefix=PREFIX, root=str(tmp_path)) as s:
        assert [p["index"] for p in read_all(s.track("shared"))] == list(range(len(rows)))


FORK_WHILE_APPENDING = """
import os, sys, threading, time
from dreamlake import Session
root = sys.argv[1]
s = Session(prefix="ws/run", root=root)
s.open()
stop, warmed_up = threading.Event(), threading.Event()
count = [0]

def background():
    t = s.track("bg")
    i = 0
    while not stop.is_set():
        t.append(i=i)
        i += 1
        if i == 2000:
            warmed_up.set()
    count[0] = i

th = threading.Thread(target=background)
th.start()
assert warmed_up.wait(10)
for k in range(20):
    pid = os.fork()
    if pid == 0:
        try:
            f = s.track("forked")
            f.append(k=k)
            f.flush()
            os._exit(0)
        except BaseException:
            os._exit(1)
    deadline = time.monotonic() + 10
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            print(f"child {k} deadlocked", flush=True)
            sys.exit(1)
        time.sleep(0.002)  # poll interval of a bounded wait
    if os.waitstatus_to_exitcode(status) != 0:
        print(f"child {k} failed", flush=True)
        sys.exit(1)
stop.set()
th.join(10)
s.close()
print(count[0], flush=True)
"""


def test_fork_while_another_thread_is_mid_append(tmp_path):
    out = run_script(FORK_WHILE_APPENDING, tmp_path)
    n_bg = int(out.strip())
    sdir = tmp_path / "ws" / "run"
    assert [r["k"] for r in disk_rows(sdir, "forked")] == list(range(20))
    assert [r["i"] for r in disk_rows(sdir, "bg")] == list(range(n_bg))


_MP_WORKERS = r"""
import multiprocessing as mp, sys
from dreamlake import Session

def work(k):
    # a DataLoader-style worker: logs and returns; multiprocessing ends it with os._exit
    track = session.track("workers")
    for i in range(50):
        track.append(worker=k, i=i)

if __name__ == "__main__":
    session = Session(prefix="ws/mp", root=sys.argv[1]).open()
    session.track("main").append(x=1)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=work, args=(k,)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0, p.exitcode
    session.close()
"""


def test_multiprocessing_fork_workers_rows_land_without_explicit_flush(tmp_path):
    """multiprocessing children leave through os._exit; their rows must still be written."""
    script = tmp_path / "mp_workers.py"
    script.write_text(_MP_WORKERS)
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, timeout=60)
    rows = disk_rows(tmp_path / "ws" / "mp", "workers")
    assert sorted((r["worker"], r["i"]) for r in rows) == [(k, i) for k in range(3) for i in range(50)]
    meta = json.loads((tmp_path / "ws" / "mp" / "session.json").read_text())
    assert meta["status"] == "completed"  # the workers did not close the parent's session
