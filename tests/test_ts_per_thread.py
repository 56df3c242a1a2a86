"""``_ts=-1`` borrows the calling thread's own last stamp: a new thread that the
OS gives a dead thread's ident starts fresh (the stamp dies with its thread), on
the C path and on the pure-Python one. Each path runs in its own subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from dreamlake._pipe import HOTPATH

SCRIPT = r"""
import json, sys, threading, time
from dreamlake import Session
from dreamlake._pipe import HOTPATH

out = {"hot": HOTPATH}
with Session(prefix="ws/run", root=sys.argv[1]) as s:
    a, b = s.track("a"), s.track("b")
    clock = a._pipe.clock
    seen = {}
    def first():
        a.append(x=1.0, _ts=123.0)
        seen["ident"] = threading.get_ident()
    def second():
        seen["reused"] = threading.get_ident() == seen["ident"]
        seen["last"] = clock.last  # this thread has stamped nothing yet
        b.append(y=1.0, _ts=-1)
    for _ in range(200):  # glibc hands a new thread the stack (and so the ident) of a joined one
        th = threading.Thread(target=first)
        th.start()
        th.join()
        th = threading.Thread(target=second)
        th.start()
        th.join()
        if seen["reused"]:
            break
    out["reused"] = seen["reused"]
    out["last_seen_by_new_thread"] = seen["last"]
    out["now"] = time.time()
import os
rows = [json.loads(l)["data"] for l in open(os.path.join(sys.argv[1], "ws", "run", "tracks", "b", "data.jsonl"))]
out["b_last_ts"] = rows[-1]["_ts"]
print(json.dumps(out))
"""


def _run(script: str, tmp_path, pure: bool) -> dict:
    """``script`` in a subprocess on the C path or (``pure``) the pure-Python one;
    its JSON output."""
    if not pure and not HOTPATH:
        pytest.skip("the C hot path is not built here")
    env = dict(os.environ)
    env.pop("DREAMLAKE_PURE_PYTHON", None)
    if pure:
        env["DREAMLAKE_PURE_PYTHON"] = "1"
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("pure", [False, True], ids=["c", "pure"])
def test_a_new_thread_with_a_dead_threads_ident_does_not_borrow_its_stamp(tmp_path, pure):
    out = _run(SCRIPT, tmp_path, pure)
    assert out["hot"] is (not pure)
    assert out["reused"], "no new thread got a joined thread's ident: the condition was not reached"
    assert out["last_seen_by_new_thread"] == 0.0
    assert out["b_last_ts"] != 123.0
    assert abs(out["b_last_ts"] - out["now"]) < 600  # a fresh auto stamp


ORDER_SCRIPT = """
import json, os, sys, threading
sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
from dreamlake import Session
with Session(prefix="ws/run", root=sys.argv[1]) as s:
    track = s.track("auto")
    start = threading.Barrier(3)
    def run():
        start.wait()
        for _ in range(2000):
            track.append(v=1.0)
    threads = [threading.Thread(target=run) for _ in range(3)]
    [th.start() for th in threads]
    [th.join() for th in threads]
stamps = [json.loads(l)["data"]["_ts"] for l in open(os.path.join(sys.argv[1], "ws", "run", "tracks", "auto", "data.jsonl"))]
print(json.dumps({"count": len(stamps), "backwards": sum(1 for a, b in zip(stamps, stamps[1:]) if b <= a),
                  "unsorted": os.path.exists(os.path.join(sys.argv[1], "ws", "run", "tracks", "auto", "index.unsorted"))}))
"""


@pytest.mark.parametrize("pure", [False, True], ids=["c", "pure"])
def test_auto_stamped_rows_of_many_threads_are_stored_in_stamp_order(tmp_path, pure):
    """A thread switch between stamping a row and queueing it let another
    thread's later row in first (the pure path, ~1 run in 6 at the default
    switch interval): the file then went backwards in _ts."""
    out = _run(ORDER_SCRIPT, tmp_path, pure)
    assert out["count"] == 6000
    assert out["backwards"] == 0
    assert out["unsorted"] is False  # _ts range reads of the track still bisect
