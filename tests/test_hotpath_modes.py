"""The C hot path and the pure-Python one (``DREAMLAKE_PURE_PYTHON=1``) behave
alike: the same stored bytes for every kind of row, the same errors at the call,
the same ``_ts`` rules and merges. Each path runs in its own subprocess (the
choice is made at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from dreamlake._pipe import HOTPATH

SCRIPT = r"""
import json, os, sys, threading
import numpy as np
from dreamlake import Session
from dreamlake._pipe import HOTPATH

out = {"hot": HOTPATH}
root = sys.argv[1]
with Session(prefix="ws/run", root=root) as s:
    t = s.track("t")
    rows = [
        dict(a=1.0, b=2, c=True, d=None, e="hi"),
        dict(big=(1 << 64) - 1, small=-(1 << 63), neg=-5),
        dict(q=[0.1, 0.2, 0.3], mixed=[1, 2.5, None, True], tup=(1.0, 2.0), empty=[]),
        dict(f32=np.float32(0.1), f64=np.float64(0.2), i64=np.int64(-3), u8=np.uint8(7), b=np.bool_(False)),
        dict(arr=np.arange(7.0), f32a=np.array([0.1, 0.2], dtype=np.float32), ia=np.arange(3, dtype=np.int16),
             ua=np.array([2**64 - 1], dtype=np.uint64), ba=np.array([True, False]), strided=np.arange(6.0)[::2]),
        dict(nan=float("nan"), inf=float("inf"), ninf=[float("-inf"), 1.0]),
        dict(text="héllo", nested={"a": [1, {"b": 2}]}, strs=["a", "b"], h16=np.float16(1.5)),
        dict(be=np.array([1.0, 2.0], dtype=">f8"), two_d=np.ones((2, 2))),
        dict(meta={"width": 640, "height": 480, "id": "left", "q": [0.1, 0.2], "n": None, "ok": True,
                   "nan": float("nan"), "big": (1 << 64) - 1, "f32": np.float32(0.5)}, empty={}),
        dict(tag={"$float": "nan"}, esc={"$esc": 1}, deep={"a": {"b": 1}}, text={"k": "héllo"}),
    ]
    for i, row in enumerate(rows):
        t.append(**row, _ts=float(i))
    t.append({"pos": 1.0, "_ts": 100.0})
    t.append(x=1.0, _ts=200)           # an int _ts
    t.append(y=2.0, _ts=200.0)         # merges
    t.append(z=3.0, _ts=-1)            # borrows 200.0: merges too
    t.append(w=4.0, _ts=np.float64(300.0))
    errors = []
    for bad in [dict(x=1 << 64), dict(x=-(1 << 63) - 1), dict(x="a\ud800b"), dict(x=object()), dict(x=1j),
                dict(x=np.complex64(1)), dict(), dict(x=[object()]), dict(x=b"bytes"),
                dict(x={"a": 1 << 64}), dict(x={1: 2.0}), dict(x={"a": object()})]:
        try:
            t.append(**bad, _ts=500.0)
            errors.append(None)
        except Exception as exc:
            errors.append(type(exc).__name__)
    for bad_ts in [float("nan"), "now", True, float("inf")]:
        try:
            t.append(x=1.0, _ts=bad_ts)
            errors.append(None)
        except Exception as exc:
            errors.append(type(exc).__name__)
    try:
        t.append(5)
    except Exception as exc:
        errors.append(type(exc).__name__)
    out["errors"] = errors
    # auto stamps: strictly increasing across threads; -1 is per thread
    a = s.track("auto")
    stamps = []
    def run():
        for _ in range(2000):
            a.append(v=1.0)
    threads = [threading.Thread(target=run) for _ in range(3)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    s.track("other").append(v=1.0, _ts=42.0)
    done = threading.Event()
    def other_thread():
        s.track("other").append(v=2.0, _ts=-1)  # this thread's first stamp: now, not 42.0
        done.set()
    threading.Thread(target=other_thread).start()
    done.wait()
    s.track("other").append(v=3.0, _ts=-1)  # this thread's last: 42.0
    t.append_batch([{"k": 1, "_ts": 700.0}, {"k": 2, "_ts": -1}, {"k": [1.0, 2.0], "_ts": 701.0}])
    s.log("hello", metadata={"x": [1, 2]})
sdir = os.path.join(root, "ws", "run")
out["t"] = open(os.path.join(sdir, "tracks", "t", "data.jsonl")).read()
auto = [json.loads(l)["data"]["_ts"] for l in open(os.path.join(sdir, "tracks", "auto", "data.jsonl"))]
out["auto_count"] = len(auto)
out["auto_increasing"] = all(b > a for a, b in zip(auto, auto[1:]))
other = [json.loads(l)["data"] for l in open(os.path.join(sdir, "tracks", "other", "data.jsonl"))]
out["other"] = [(r["v"], r["_ts"] == 42.0) for r in other]
out["logs"] = [json.loads(l)["message"] for l in open(os.path.join(sdir, "logs", "logs.jsonl"))]
print(json.dumps(out))
"""


def _run(tmp_path, pure):
    env = dict(os.environ)
    env.pop("DREAMLAKE_PURE_PYTHON", None)
    if pure:
        env["DREAMLAKE_PURE_PYTHON"] = "1"
    root = tmp_path / ("pure" if pure else "c")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(root)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(not HOTPATH, reason="the C hot path is not built here")
def test_both_paths_store_the_same_bytes_and_raise_the_same_errors(tmp_path):
    c, pure = _run(tmp_path, False), _run(tmp_path, True)
    assert c["hot"] is True and pure["hot"] is False
    assert c["t"] == pure["t"]  # byte for byte
    assert c["errors"] == pure["errors"]
    assert c["errors"] == ["ValueError", "ValueError", "ValueError", "TypeError", "TypeError", "TypeError",
                           "ValueError", "TypeError", "TypeError", "ValueError", "TypeError", "TypeError",
                           "ValueError", "ValueError", "ValueError", "ValueError", "TypeError"]
    for out in (c, pure):
        assert out["auto_count"] == 6000 and out["auto_increasing"]
        assert out["other"] == [[1.0, True], [2.0, False], [3.0, True]]
        assert out["logs"] == ["hello"]


def test_the_pure_python_path_runs_when_asked(tmp_path):
    pure = _run(tmp_path, True)
    assert pure["hot"] is False
    lines = [json.loads(line) for line in pure["t"].splitlines()]
    assert lines[0] == {"index": 0, "data": {"a": 1.0, "b": 2, "c": True, "d": None, "e": "hi", "_ts": 0.0}}


def test_the_c_hot_path_is_built_unless_switched_off():
    """``pip install -e '.[test]'`` builds the extension with the machine's compiler;
    a CI machine that silently fell back to the pure-Python path would fail here."""
    if os.environ.get("DREAMLAKE_PURE_PYTHON"):
        pytest.skip("DREAMLAKE_PURE_PYTHON is set")
    assert HOTPATH
