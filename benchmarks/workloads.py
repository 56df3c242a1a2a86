"""The six workloads, written once, and the DreamLake system they measure.

A *system* is a :class:`Target`: it maps each workload step (one scalar row,
one robot tick, a batch, a tail read, ...) onto its own API. The loops below
are shared, so DreamLake, the floor and every peer run exactly the same code
around their calls; only the mapping differs (see ``benchmarks/peers``).

Each call under test is wrapped in a small function (a lambda or ``def``)
built by the target; the floor pays the same wrapper, so ratios to the floor
cancel it out.

Run one system for some workloads in this process and print one JSON line::

    python -m benchmarks.workloads --mode thread --only W1,W2 [--quick]

The parent (``python -m benchmarks``) runs one subprocess per system and
workload, so peak RSS and imports never mix.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from benchmarks._stats import current_rss, dir_bytes, median, peak_rss, reset_peak_rss, summarize_ns

__all__ = ["MODES", "WORKLOADS", "Sizes", "FULL", "QUICK", "Target", "DreamLakeTarget", "run_workload", "child_main"]

#: DreamLake process modes, one column each: a mode is extra Session kwargs.
#: Adding a mode is one line here, e.g. ``"agent": {"agent": "auto"},``.
MODES: dict[str, dict[str, Any]] = {
    "thread": {},
    "agent": {"agent": "auto"},  # the parent points $DREAMLAKE_AGENT_SOCKET at its scratch dir
    # a local dreamlake-server the parent starts: url from $DREAMLAKE_BENCH_URL, key from
    # $DREAMLAKE_API_KEY (benchmarks/_server.py); the spool lives under the workload's directory
    "remote": {"url": None},
}

#: Workloads a mode does not run, and why (their cells show n/a).
MODE_SKIPS: dict[str, dict[str, str]] = {
    "remote": {w: "remote mode measures the hot path (W1-W3); end to end, wire bytes and spool "
                  "replay: python -m benchmarks.remote" for w in ("W4", "W5", "W6")},
}

WORKLOADS = ("W1", "W2", "W2s", "W2k", "W3", "W4", "W5", "W6")

#: Marker that starts the one result line a runner prints (libraries under
#: test may print to stdout too).
RESULT_MARKER = "BENCH-RESULT "

now = time.perf_counter_ns


@dataclass(frozen=True)
class Sizes:
    w1_calls: int  # W1 appends
    w2_ticks: int  # W2 ticks (3 appends each)
    w3_steps: int  # W3 paced 1 kHz steps per pass (3 passes: base, logged, base)
    w3_cpu_steps: int  # W3 unpaced steps per pass
    w4_rows: int  # W4 rows, per-row and batched each
    w5_rows: int  # W5 track size
    w6_rows: int  # W6 rows per policy
    w6_row_bytes: int  # W6 payload per row
    w6_budget: int  # W6 Session(memory_budget=...)
    batch: int = 1000  # append_batch chunk (W4, W5)
    cap_s: float = 10.0  # time cap per timed loop, for peers far slower than the sizes assume
    build_cap_s: float = 30.0  # time cap on building the W5 track
    read_repeats: int = 10  # W5 reads per kind (fewer once a kind has taken READ_BUDGET_S)


FULL = Sizes(
    w1_calls=100_000,
    w2_ticks=50_000,
    w3_steps=3_000,
    w3_cpu_steps=20_000,
    w4_rows=1_000_000,
    w5_rows=1_000_000,
    w6_rows=50_000,
    w6_row_bytes=4096,
    w6_budget=8 << 20,
)
QUICK = Sizes(
    w1_calls=5_000,
    w2_ticks=2_000,
    w3_steps=200,
    w3_cpu_steps=2_000,
    w4_rows=50_000,
    w5_rows=20_000,
    w6_rows=5_000,
    w6_row_bytes=4096,
    w6_budget=1 << 20,
    cap_s=2.0,
    build_cap_s=5.0,
    read_repeats=3,
)

#: W5 rows carry ``_ts = TS0 + index * TS_STEP`` (seconds), so a ``_ts`` range
#: maps to a known index range.
TS0 = 1_700_000_000.0
TS_STEP = 1e-3

#: W3 alternates this many pairs of unlogged/logged 1 kHz blocks.
W3_BLOCKS = 6

#: W5 stops repeating a kind of read once it has taken this long (slow peers).
READ_BUDGET_S = 5.0

#: W4 batches cycle through this many prepared chunks (prepared outside the
#: timed region, in each system's natural batch format).
BATCH_POOL = 10


class NotApplicable(Exception):
    """A workload (or part of one) has no meaningful mapping onto a system."""


class Target:
    """One system under test. Subclasses map each workload onto their API.

    ``na`` maps a capability (``"batch"``, ``"read"``, ``"overload"``) to the
    reason it has no faithful mapping; those cells show ``n/a``.
    """

    name = "?"
    version = ""
    na: dict[str, str] = {}
    #: Rows cap for W4 and W5, for a system whose end-to-end cost the loop's
    #: time cap cannot bound (an async queue that drains later, O(n) reads).
    max_rows: int | None = None

    # lifecycle -----------------------------------------------------------
    def open(self, workdir: Path, label: str) -> None:
        """Start one run/session writing under ``workdir``."""

    def flush(self) -> None:
        """Return once everything logged so far is on disk."""

    def close(self) -> None:
        """Finish the run; everything is on disk."""

    def output_dir(self) -> Path | None:
        """Directory holding what this run wrote (bytes per row)."""
        return None

    # W1 / W4 -------------------------------------------------------------
    def scalar_call(self) -> Callable[[int, float, float], Any]:
        """``call(i, loss, acc)`` logs one row ``loss, acc, step=i``."""
        raise NotImplementedError

    def scalar_rows(self) -> int | None:
        """Rows of the scalar track on disk after close (None: no read API)."""
        return None

    # W2 / W3 -------------------------------------------------------------
    def robot_calls(self) -> tuple[Callable, Callable, Callable]:
        """``(pose(i, x, y, z, qx, qy, qz, qw), vel(i, v0..v6), cam(i, width, height, frame_id))``.

        The three calls of tick ``i`` share one timestamp: ``pose`` stamps it,
        ``vel`` and ``cam`` reuse it (DreamLake ``_ts=-1``).
        """
        raise NotImplementedError

    def robot_rows(self) -> dict[str, int] | None:
        return None

    def robot_array_calls(self) -> tuple[Callable, Callable, Callable]:
        """W2, what a robot logs: ``(pose(t, q), vel(t, v), cam(t, meta))`` with an
        explicit ``_ts=t`` each: ``q`` a list of 7 floats, ``v`` a numpy array of
        7 floats, ``meta`` a small dict."""
        raise NotApplicable(self.na.get("robot_arrays", "no mapping of list/array rows written yet"))

    # W2k -------------------------------------------------------------------
    def row_kind_call(self) -> Callable[[dict], Any]:
        """``call(row)`` logs one row given as a dict of fields (W2k's row kinds)."""
        raise NotApplicable(self.na.get("row_kinds", "no mapping written yet"))

    # W4 batch --------------------------------------------------------------
    def batch_payload(self, start: int, n: int) -> Any:
        """Rows ``start..start+n`` (loss, acc, step) in the system's batch format."""
        raise NotApplicable(self.na.get("batch", "no batch API"))

    def batch_call(self) -> Callable[[Any], Any]:
        raise NotApplicable(self.na.get("batch", "no batch API"))

    # W5 ------------------------------------------------------------------
    def build_track(self, n: int, chunk: int, deadline_ns: int) -> int:
        """Write rows ``_ts=TS0+i*TS_STEP, loss, step=i`` fast; return how many (may stop at the deadline)."""
        raise NotApplicable(self.na.get("read", "no read API"))

    def reopen_for_read(self) -> None:
        """Close the writer and open the data as a reader would (a later process)."""

    def read_tail(self, total: int, k: int) -> int:
        """Read the last ``k`` rows; return how many came back."""
        raise NotApplicable(self.na.get("read", "no read API"))

    def read_ts_range(self, start_index: int, end_index: int) -> int:
        """Read rows with ``TS0+start*TS_STEP <= _ts < TS0+end*TS_STEP``; return how many."""
        raise NotApplicable(self.na.get("read", "no read API"))

    # W6 ------------------------------------------------------------------
    def overload(self, workdir: Path, policy: str, budget: int, rows: int, row_bytes: int, cap_s: float) -> dict:
        raise NotApplicable(self.na.get("overload", "no memory budget / overflow policy in the API"))

    def health(self) -> dict | None:
        return None

    def skip(self, workload: str) -> str | None:
        """Why this system does not run ``workload`` at all (None: it does)."""
        return None


class _Floor:
    """The floor: a bare method taking ``**kwargs`` that appends to a deque."""

    def __init__(self) -> None:
        self.q: deque = deque()

    def append(self, **kwargs: Any) -> None:
        self.q.append(kwargs)


class FloorTarget(Target):
    """Same call shapes as :class:`DreamLakeTarget`, into :class:`_Floor`."""

    name = "floor"

    def open(self, workdir: Path | None = None, label: str = "") -> None:
        self.train, self.pose, self.vel, self.cam = _Floor(), _Floor(), _Floor(), _Floor()

    def scalar_call(self) -> Callable:
        append = self.train.append
        return lambda i, loss, acc: append(loss=loss, acc=acc, step=i)

    def robot_array_calls(self) -> tuple[Callable, Callable, Callable]:
        p, v, c = self.pose.append, self.vel.append, self.cam.append
        return (
            lambda t, q: p(q=q, _ts=t),
            lambda t, vel: v(v=vel, _ts=t),
            lambda t, meta: c(meta=meta, _ts=t),
        )

    def row_kind_call(self) -> Callable[[dict], Any]:
        append = self.train.append
        return lambda row: append(**row)

    def robot_calls(self) -> tuple[Callable, Callable, Callable]:
        p, v, c = self.pose.append, self.vel.append, self.cam.append
        return (
            lambda i, x, y, z, qx, qy, qz, qw: p(x=x, y=y, z=z, qx=qx, qy=qy, qz=qz, qw=qw),
            lambda i, a, b, c_, d, e, f, g: v(_ts=-1, v0=a, v1=b, v2=c_, v3=d, v4=e, v5=f, v6=g),
            lambda i, w, h, fid: c(_ts=-1, width=w, height=h, frame_id=fid),
        )


class DreamLakeTarget(Target):
    """DreamLake in one mode (``MODES[mode]`` are extra Session kwargs)."""

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise SystemExit(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        self.mode = mode
        self.extra = dict(MODES[mode])
        if "url" in self.extra:
            from benchmarks._server import ENV_URL

            self.extra["url"] = os.environ.get(ENV_URL)
            if not self.extra["url"]:
                raise ImportError(f"remote mode needs a server in ${ENV_URL} (python -m benchmarks starts one)")
        self.name = f"dreamlake[{mode}]"
        self.session: Any = None
        try:
            from importlib.metadata import version

            self.version = version("dreamlake")
        except Exception:
            self.version = ""

    def _session(self, workdir: Path, label: str, **kw: Any) -> Any:
        from dreamlake import Session

        if self.extra.get("url"):  # remote only: no root (that would also write locally); the spool goes here
            os.environ["DREAMLAKE_ROOT"] = str(workdir)
            s = Session(prefix=f"bench/{label}-{os.getpid()}", **self.extra, **kw)
        else:
            s = Session(prefix=f"bench/{label}", root=str(workdir), **self.extra, **kw)
        s.open()
        return s

    def skip(self, workload: str) -> str | None:
        return MODE_SKIPS.get(self.mode, {}).get(workload)

    def open(self, workdir: Path, label: str) -> None:
        self.workdir, self.label = workdir, label
        self.session = self._session(workdir, label)
        self.train = self.session.track("train")
        self.tracks = [self.train]

    def flush(self) -> None:
        for t in self.tracks:
            t.flush()

    def close(self) -> None:
        if self.session is not None:
            self.last_health = self.session.health()
            self.session.close()

    def output_dir(self) -> Path | None:
        if self.extra.get("url"):
            return None  # the rows are in the server (the directory holds an empty spool)
        return Path(self.session.directory)

    def health(self) -> dict | None:
        h = getattr(self, "last_health", None)
        if h is None and self.session is not None:
            h = self.session.health()
        return _jsonable(h)

    def scalar_call(self) -> Callable:
        append = self.train.append
        return lambda i, loss, acc: append(loss=loss, acc=acc, step=i)

    def _rows_after_close(self, names: list[str]) -> dict[str, int]:
        """Rows per track as a later reader sees them: re-open the closed session."""
        s = self._session(self.workdir, self.label)
        try:
            return {name: s.track(name).stats()["totalDataPoints"] for name in names}
        finally:
            s.close()

    def scalar_rows(self) -> int | None:
        return self._rows_after_close(["train"])["train"]

    def robot_calls(self) -> tuple[Callable, Callable, Callable]:
        s = self.session
        self.robot = {name: s.track(name) for name in ("robot/pose", "robot/vel", "camera/left")}
        self.tracks = list(self.robot.values())
        p = self.robot["robot/pose"].append
        v = self.robot["robot/vel"].append
        c = self.robot["camera/left"].append
        return (
            lambda i, x, y, z, qx, qy, qz, qw: p(x=x, y=y, z=z, qx=qx, qy=qy, qz=qz, qw=qw),
            lambda i, a, b, c_, d, e, f, g: v(_ts=-1, v0=a, v1=b, v2=c_, v3=d, v4=e, v5=f, v6=g),
            lambda i, w, h, fid: c(_ts=-1, width=w, height=h, frame_id=fid),
        )

    def robot_rows(self) -> dict[str, int] | None:
        return self._rows_after_close(list(self.robot))

    def robot_array_calls(self) -> tuple[Callable, Callable, Callable]:
        s = self.session
        self.robot = {name: s.track(name) for name in ("robot/pose", "robot/vel", "camera/left")}
        self.tracks = list(self.robot.values())
        p = self.robot["robot/pose"].append
        v = self.robot["robot/vel"].append
        c = self.robot["camera/left"].append
        return (
            lambda t, q: p(q=q, _ts=t),
            lambda t, vel: v(v=vel, _ts=t),
            lambda t, meta: c(meta=meta, _ts=t),
        )

    def row_kind_call(self) -> Callable[[dict], Any]:
        append = self.train.append
        return lambda row: append(**row)

    def batch_payload(self, start: int, n: int) -> Any:
        # no _ts: the session stamps each row (like append())
        return [{"loss": 1.0 / (i + 1), "acc": i * 1e-6, "step": i} for i in range(start, start + n)]

    def batch_call(self) -> Callable[[Any], Any]:
        return self.train.append_batch

    def build_track(self, n: int, chunk: int, deadline_ns: int) -> int:
        big = self.session.track("big")
        self.tracks = [big]
        append_batch = big.append_batch
        done = 0
        while done < n:
            end = min(n, done + chunk)
            append_batch([{"_ts": TS0 + i * TS_STEP, "loss": 1.0 / (i + 1), "step": i} for i in range(done, end)])
            done = end
            if now() > deadline_ns:
                break
        return done

    def reopen_for_read(self) -> None:
        self.close()
        self.session = self._session(self.workdir, self.label)
        self.big = self.session.track("big")

    def read_tail(self, total: int, k: int) -> int:
        return len(self.big.read(start_index=total - k, limit=k)["data"])

    def read_ts_range(self, start_index: int, end_index: int) -> int:
        got = self.big.read(start_ts=TS0 + start_index * TS_STEP, end_ts=TS0 + end_index * TS_STEP, limit=1000)
        return len(got["data"])

    def overload(self, workdir: Path, policy: str, budget: int, rows: int, row_bytes: int, cap_s: float) -> dict:
        """A producer far faster than the sink: distinct ~row_bytes strings, so
        queued rows really cost memory, against a small budget."""
        s = self._session(workdir, f"w6-{policy}", memory_budget=budget, on_full=policy)
        t = s.track("overload")
        append = t.append
        pad = "x" * (row_bytes - 8)
        gc.collect()
        reset_ok = reset_peak_rss()
        base = current_rss()
        deadline = now() + int(cap_s * 1e9)
        t0 = now()
        produced = rows
        for i in range(rows):
            append(i=i, blob=pad + f"{i:08d}")  # a new row_bytes str each row
            if not i & 1023 and now() > deadline:
                produced = i + 1
                break
        t1 = now()
        t.flush()
        t2 = now()
        peak = peak_rss()
        health = _jsonable(s.health())
        on_disk = t.stats()["totalDataPoints"]
        s.close()
        lines = _count_lines(Path(s.directory) / "tracks" / "overload" / "data.jsonl")
        return {
            "policy": policy,
            "budget_bytes": budget,
            "row_bytes": row_bytes,
            "produced": produced,
            "produce_rows_per_s": produced / ((t1 - t0) / 1e9),
            "drain_ms": (t2 - t1) / 1e6,
            "rss_base_bytes": base,
            "rss_peak_bytes": peak,
            "rss_peak_delta_bytes": max(0, peak - base),
            "peak_reset": reset_ok,
            "dropped": (health or {}).get("dropped"),
            "rows_read_back": on_disk,
            "rows_in_file": lines,
            # rows produced but not readable: with "block" this must be 0; with
            # "drop" it should equal the dropped counter
            "missing": produced - on_disk,
            "health": health,
        }


def _argmax(values: list[int]) -> int | None:
    return max(range(len(values)), key=values.__getitem__) if values else None


def _count_lines(path: Path) -> int | None:
    try:
        with open(path, "rb") as f:
            return sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return None


def _jsonable(obj: Any) -> Any:
    try:
        return json.loads(json.dumps(obj, default=str))
    except (TypeError, ValueError):
        return repr(obj)


# ---------------------------------------------------------------------------
# timed loops


def _timer_overhead(n: int = 20_000) -> int:
    lat = [0] * n
    for i in range(n):
        t0 = now()
        lat[i] = now() - t0
    return summarize_ns(lat)["p50"]


def _settle_gc() -> None:
    """Collect once after allocating the latency lists, before the timed loop.
    Young, they are walked by the first one or two cyclic-GC passes inside the
    loop (~1 ms each for 150,000 slots), which then lands on whichever call
    allocates at that moment: the harness's cost, not the target's. Every
    target, floor and naive included, is timed after the same collection."""
    gc.collect()


def _time_scalar(call: Callable, n: int, cap_ns: int) -> list[int]:
    lat = [0] * n
    _settle_gc()
    deadline = now() + cap_ns
    for i in range(n):
        loss = 1.0 / (i + 1)
        acc = i * 1e-6
        t0 = now()
        call(i, loss, acc)
        t1 = now()
        lat[i] = t1 - t0
        if t1 > deadline and not i & 1023:
            return lat[: i + 1]
    return lat


def _time_robot(calls: tuple, n: int, cap_ns: int) -> tuple[list[int], list[int], list[int]]:
    pose, vel, cam = calls
    lp, lv, lc = [0] * n, [0] * n, [0] * n
    _settle_gc()
    deadline = now() + cap_ns
    for i in range(n):
        f = i * 1e-3
        t0 = now()
        pose(i, f, -f, 0.5, 0.0, 0.0, 0.7071, 0.7071)
        t1 = now()
        vel(i, f, f + 1.0, f + 2.0, f + 3.0, f + 4.0, f + 5.0, f + 6.0)
        t2 = now()
        cam(i, 640, 480, i)
        t3 = now()
        lp[i], lv[i], lc[i] = t1 - t0, t2 - t1, t3 - t2
        if t3 > deadline and not i & 1023:
            return lp[: i + 1], lv[: i + 1], lc[: i + 1]
    return lp, lv, lc


def _drain_close(target: Target) -> dict:
    t0 = now()
    target.flush()
    t1 = now()
    target.close()
    t2 = now()
    return {"flush_ms": (t1 - t0) / 1e6, "close_ms": (t2 - t1) / 1e6}


def _bytes(target: Target) -> int | None:
    d = target.output_dir()
    return dir_bytes(d) if d is not None else None


# ---------------------------------------------------------------------------
# workloads


def w1_scalars(target: Target, sz: Sizes, workdir: Path) -> dict:
    """W1: one track, append(loss=..., acc=..., step=i), per-call latency."""
    floor = FloorTarget()
    floor.open()
    floor_lat = _time_scalar(floor.scalar_call(), sz.w1_calls, 1 << 62)
    del floor
    gc.collect()
    target.open(workdir, "w1")
    lat = _time_scalar(target.scalar_call(), sz.w1_calls, int(sz.cap_s * 1e9))
    out = {"calls": len(lat), "latency_ns": summarize_ns(lat), "max_at_call": _argmax(lat),
           "floor_ns": summarize_ns(floor_lat), "floor_max_at_call": _argmax(floor_lat)}
    del lat, floor_lat
    out.update(_drain_close(target))
    out["timer_ns"] = _timer_overhead()
    out["bytes"] = _bytes(target)
    out["bytes_per_row"] = out["bytes"] / out["calls"] if out["bytes"] else None
    out["rows_on_disk"] = _maybe(target.scalar_rows)
    out["health"] = target.health()
    return out


def _time_robot_arrays(calls: tuple, n: int, cap_ns: int) -> tuple[list[int], list[int], list[int]]:
    import numpy as np

    pose, vel, cam = calls
    lp, lv, lc = [0] * n, [0] * n, [0] * n
    _settle_gc()
    deadline = now() + cap_ns
    base = np.arange(7.0)
    for i in range(n):
        t = TS0 + i * 1e-3
        f = i * 1e-3
        q = [f, -f, 0.5, 0.0, 0.0, 0.7071, 0.7071]  # made by the robot's code, outside the timing
        v = base + f
        meta = {"width": 640, "height": 480, "frame_id": i}
        t0 = now()
        pose(t, q)
        t1 = now()
        vel(t, v)
        t2 = now()
        cam(t, meta)
        t3 = now()
        lp[i], lv[i], lc[i] = t1 - t0, t2 - t1, t3 - t2
        if t3 > deadline and not i & 1023:
            return lp[: i + 1], lv[: i + 1], lc[: i + 1]
    return lp, lv, lc


def _w2(target: Target, sz: Sizes, workdir: Path, time_ticks, calls_of) -> dict:
    """A W2 run: ``time_ticks(calls, ticks, cap_ns)`` times ``calls_of(target)``'s
    three calls per tick, on the floor first and then on the target."""
    floor = FloorTarget()
    floor.open()
    fp, fv, fc = time_ticks(calls_of(floor), sz.w2_ticks, 1 << 62)
    floor_all = summarize_ns(fp + fv + fc)
    del floor, fp, fv, fc
    gc.collect()
    target.open(workdir, "w2")
    lp, lv, lc = time_ticks(calls_of(target), sz.w2_ticks, int(sz.cap_s * 1e9))
    ticks = len(lp)
    out = {
        "ticks": ticks,
        "calls": 3 * ticks,
        "latency_ns": summarize_ns(lp + lv + lc),
        "max_at_tick": {"pose": _argmax(lp), "vel": _argmax(lv), "camera": _argmax(lc)},
        "by_call_ns": {"pose": summarize_ns(lp), "vel": summarize_ns(lv), "camera": summarize_ns(lc)},
        "floor_ns": floor_all,
    }
    del lp, lv, lc
    out.update(_drain_close(target))
    out["bytes"] = _bytes(target)
    out["bytes_per_tick"] = out["bytes"] / ticks if out["bytes"] else None
    out["rows_on_disk"] = _maybe(target.robot_rows)
    out["health"] = target.health()
    return out


def w2_robot_arrays(target: Target, sz: Sizes, workdir: Path) -> dict:
    """W2: what a robot logs per tick, explicit _ts on each: pose q (list of 7
    floats), vel v (numpy array of 7 floats), camera meta (a small dict)."""
    return _w2(target, sz, workdir, _time_robot_arrays, lambda t: t.robot_array_calls())


#: W2k's row kinds: each the same three fields, in different types.
def _row_kinds() -> dict[str, dict]:
    import numpy as np

    return {
        "plain": {"a": 0.5, "b": 0.25, "c": 3},
        "numpy_scalars": {"a": np.float32(0.5), "b": np.float64(0.25), "c": np.int64(3)},
        "list7": {"a": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], "b": 0.25, "c": 3},
        "array7": {"a": np.arange(7.0), "b": 0.25, "c": 3},
        "short_str": {"a": "left", "b": "ok", "c": 3},
    }


def w7_row_kinds(target: Target, sz: Sizes, workdir: Path) -> dict:
    """W2k: p50 of one append per row kind (plain floats, numpy scalars, a 7-float
    list, a 7-float array, short strings), interleaved in blocks so drift hits
    every kind alike; DESIGN §7 wants each within 2× the plain row."""
    kinds = _row_kinds()
    target.open(workdir, "w7")
    call = target.row_kind_call()
    samples: dict[str, list[int]] = {k: [] for k in kinds}
    block = 1000
    rounds = max(1, sz.w1_calls // (block * len(kinds)))
    deadline = now() + int(sz.cap_s * 1e9)
    for _ in range(rounds):
        for kind, row in kinds.items():
            lat = samples[kind]
            for _ in range(block):
                t0 = now()
                call(row)
                lat.append(now() - t0)
        if now() > deadline:
            break
    out = {kind: summarize_ns(lat) for kind, lat in samples.items()}
    plain = out["plain"]["p50"]
    out["ratio_p50"] = {kind: out[kind]["p50"] / plain for kind in kinds}
    out["worst_ratio_p50"] = max(out["ratio_p50"].values())
    out.update(_drain_close(target))
    return out


def w2_robot(target: Target, sz: Sizes, workdir: Path) -> dict:
    """W2s: per tick pose (7 floats), vel (7 floats, _ts=-1), camera {w,h,id} (_ts=-1)."""
    return _w2(target, sz, workdir, _time_robot, lambda t: t.robot_calls())


def _busy(k: int) -> int:
    x = 0
    for _ in range(k):
        x += 1
    return x


def _calibrate_busy(target_ns: int = 50_000) -> int:
    k = 1000
    for _ in range(3):
        samples = []
        for _ in range(30):
            t0 = now()
            _busy(k)
            samples.append(now() - t0)
        k = max(1, int(k * target_ns / median(samples)))
    return k


def _paced(steps: int, k: int, calls: tuple | None, period: int = 1_000_000) -> tuple[list[int], int]:
    """A 1 kHz loop: sleep to the next deadline, ~50 µs busy work, 3 appends.

    A step's time runs from its scheduled start (so late wake-ups, e.g. waiting
    for the GIL, count) to the end of its appends. A step that overruns the
    next deadline is a miss; the schedule then restarts from now.
    """
    step_ns = [0] * steps
    missed = 0
    sleep = time.sleep
    nxt = now() + period
    for i in range(steps):
        d = nxt - now()
        if d > 0:
            sleep(d / 1e9)
        _busy(k)
        if calls is not None:
            f = i * 1e-3
            calls[0](i, f, -f, 0.5, 0.0, 0.0, 0.7071, 0.7071)
            calls[1](i, f, f + 1.0, f + 2.0, f + 3.0, f + 4.0, f + 5.0, f + 6.0)
            calls[2](i, 640, 480, i)
        end = now()
        step_ns[i] = end - nxt
        nxt += period
        if end > nxt:
            missed += 1
            nxt = end
    return step_ns, missed


def _paced_summary(step_ns: list[int], missed: int) -> dict:
    s = summarize_ns(step_ns)
    return {"steps": len(step_ns), "mean_ns": s["mean"], "p50_ns": s["p50"], "p99_ns": s["p99"],
            "max_ns": s["max"], "missed": missed}


def _unpaced(steps: int, k: int, calls: tuple | None, cap_ns: int) -> dict:
    """The same step back to back (a CPU-bound loop): mean time per step."""
    deadline = now() + cap_ns
    t0 = now()
    done = steps
    for i in range(steps):
        _busy(k)
        if calls is not None:
            f = i * 1e-3
            calls[0](i, f, -f, 0.5, 0.0, 0.0, 0.7071, 0.7071)
            calls[1](i, f, f + 1.0, f + 2.0, f + 3.0, f + 4.0, f + 5.0, f + 6.0)
            calls[2](i, 640, 480, i)
            if not i & 255 and now() > deadline:
                done = i + 1
                break
    return {"steps": done, "mean_ns": (now() - t0) / done}


def w3_loop(target: Target, sz: Sizes, workdir: Path) -> dict:
    """W3: slowdown of a 1 kHz loop (~50 µs work + 3 appends) vs the same loop unlogged.

    Paced (1 kHz): unlogged and logged blocks alternate (AB BA AB ...) in one
    open run, so background load that drifts over seconds hits both alike.
    CPU-bound: unlogged before the run starts and after it closes, averaged.
    """
    k = _calibrate_busy()
    busy_ns = median([_timed(_busy, k) for _ in range(50)])
    cap = int(sz.cap_s * 1e9)
    cbase1 = _unpaced(sz.w3_cpu_steps, k, None, 1 << 62)
    target.open(workdir, "w3")
    calls = target.robot_calls()
    blocks = W3_BLOCKS if sz.w3_steps >= 20 * W3_BLOCKS else 1
    per = max(1, sz.w3_steps // blocks)
    base_ns: list[int] = []
    log_ns: list[int] = []
    base_missed = log_missed = 0
    for b in range(blocks):
        for logged_block in ((False, True) if b % 2 == 0 else (True, False)):
            ns, missed = _paced(per, k, calls if logged_block else None)
            if logged_block:
                log_ns += ns
                log_missed += missed
            else:
                base_ns += ns
                base_missed += missed
    clogged = _unpaced(sz.w3_cpu_steps, k, calls, cap)
    target.close()
    cbase2 = _unpaced(sz.w3_cpu_steps, k, None, 1 << 62)
    base = _paced_summary(base_ns, base_missed)
    logged = _paced_summary(log_ns, log_missed)
    cbase_mean = (cbase1["mean_ns"] + cbase2["mean_ns"]) / 2
    extra = logged["mean_ns"] - base["mean_ns"]
    return {
        "busy_ns": busy_ns,
        "period_ns": 1_000_000,
        # headline: extra time per step as a share of the 1 ms period
        "slowdown_pct": 100.0 * extra / 1_000_000,
        "extra_ns_per_step": extra,
        "extra_pct_of_step": 100.0 * extra / base["mean_ns"],
        "paced": {"blocks": blocks, "base": base, "logged": logged},
        "cpu_slowdown_pct": 100.0 * (clogged["mean_ns"] / cbase_mean - 1.0),
        "cpu": {"base_before": cbase1, "logged": clogged, "base_after": cbase2},
        "health": target.health(),
    }


def _timed(fn: Callable, *args: Any) -> int:
    t0 = now()
    fn(*args)
    return now() - t0


def w4_throughput(target: Target, sz: Sizes, workdir: Path) -> dict:
    """W4: rows/s from the first append until flush() returns (rows on disk)."""
    out: dict = {}
    n = min(sz.w4_rows, target.max_rows or sz.w4_rows)
    cap = int(sz.cap_s * 1e9)
    target.open(workdir, "w4-row")
    call = target.scalar_call()
    gc.collect()
    t0 = now()
    deadline = t0 + cap
    done = n
    for i in range(n):
        call(i, 1.0 / (i + 1), i * 1e-6)
        if not i & 4095 and now() > deadline:
            done = i + 1
            break
    t1 = now()
    target.flush()
    t2 = now()
    row = {
        "rows": done,
        "rows_per_s": done / ((t2 - t0) / 1e9),
        "append_rows_per_s": done / ((t1 - t0) / 1e9),
        "flush_ms": (t2 - t1) / 1e6,
    }
    target.close()
    row["bytes"] = _bytes(target)
    row["bytes_per_row"] = row["bytes"] / done if row["bytes"] else None
    row["rows_on_disk"] = _maybe(target.scalar_rows)
    row["health"] = target.health()
    out["row"] = row

    target.open(workdir, "w4-batch")
    try:
        pool = [target.batch_payload(j * sz.batch, sz.batch) for j in range(BATCH_POOL)]
        send = target.batch_call()
    except NotApplicable as e:
        target.close()
        out["batch"] = {"status": "n/a", "reason": str(e)}
        return out
    chunks = max(1, n // sz.batch)
    gc.collect()
    t0 = now()
    deadline = t0 + cap
    sent = chunks
    for j in range(chunks):
        send(pool[j % BATCH_POOL])
        if now() > deadline:
            sent = j + 1
            break
    t1 = now()
    target.flush()
    t2 = now()
    rows = sent * sz.batch
    batch = {
        "rows": rows,
        "chunk": sz.batch,
        "rows_per_s": rows / ((t2 - t0) / 1e9),
        "append_rows_per_s": rows / ((t1 - t0) / 1e9),
        "flush_ms": (t2 - t1) / 1e6,
    }
    target.close()
    batch["bytes"] = _bytes(target)
    batch["bytes_per_row"] = batch["bytes"] / rows if batch["bytes"] else None
    batch["rows_on_disk"] = _maybe(target.scalar_rows)
    batch["health"] = target.health()
    out["batch"] = batch
    return out


def w5_read(target: Target, sz: Sizes, workdir: Path) -> dict:
    """W5: read the last 100 rows of a large track, and a 100-row _ts range in its middle."""
    if "read" in target.na:
        raise NotApplicable(target.na["read"])
    target.open(workdir, "w5")
    t0 = now()
    built = target.build_track(min(sz.w5_rows, target.max_rows or sz.w5_rows), sz.batch,
                               now() + int(sz.build_cap_s * 1e9))
    target.flush()
    t1 = now()
    target.reopen_for_read()
    k = 100
    a = built // 2
    tail, got_tail = _repeat(lambda: target.read_tail(built, k), sz.read_repeats)
    rng, got_rng = _repeat(lambda: target.read_ts_range(a, a + k), sz.read_repeats)
    out = {
        "track_rows": built,
        "build_rows_per_s": built / ((t1 - t0) / 1e9),
        "reads": len(tail),
        "tail_first_ms": tail[0] / 1e6,
        "tail_median_ms": median(tail) / 1e6,
        "tail_rows": got_tail,
        "range_first_ms": rng[0] / 1e6,
        "range_median_ms": median(rng) / 1e6,
        "range_rows": got_rng,
    }
    target.close()
    out["bytes"] = _bytes(target)
    out["bytes_per_row"] = out["bytes"] / built if out["bytes"] else None
    out["health"] = target.health()
    return out


def _repeat(read: Callable[[], int], times: int) -> tuple[list[int], int]:
    """Time ``read()`` up to ``times`` times (at least once, stop after READ_BUDGET_S)."""
    samples, got = [], 0
    spent = 0
    for _ in range(times):
        t = now()
        got = read()
        samples.append(now() - t)
        spent += samples[-1]
        if spent > READ_BUDGET_S * 1e9:
            break
    return samples, got


def w6_overload(target: Target, sz: Sizes, workdir: Path) -> dict:
    """W6: producer far faster than the sink, small memory budget, drop and block."""
    if "overload" in target.na:
        raise NotApplicable(target.na["overload"])
    out = {}
    for policy in ("drop", "block"):
        out[policy] = target.overload(workdir, policy, sz.w6_budget, sz.w6_rows, sz.w6_row_bytes, sz.build_cap_s)
        gc.collect()
    return out


RUNNERS: dict[str, Callable[[Target, Sizes, Path], dict]] = {
    "W1": w1_scalars,
    "W2": w2_robot_arrays,
    "W2s": w2_robot,
    "W2k": w7_row_kinds,
    "W3": w3_loop,
    "W4": w4_throughput,
    "W5": w5_read,
    "W6": w6_overload,
}


def _maybe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:  # a read-back failure is a finding, not a crash
        return {"error": f"{type(e).__name__}: {e}"}


def run_workload(target: Target, workload: str, sz: Sizes, workdir: Path) -> dict:
    """Run one workload; never raises: ``{"status": "ok"|"n/a"|"error", ...}``."""
    wd = Path(tempfile.mkdtemp(prefix=f"{workload.lower()}-", dir=workdir))
    t0 = time.perf_counter()
    try:
        skipped = target.skip(workload)
        if skipped:
            raise NotApplicable(skipped)
        res = RUNNERS[workload](target, sz, wd)
        res = {"status": "ok", **res}
    except NotApplicable as e:
        res = {"status": "n/a", "reason": str(e)}
    except Exception as e:
        res = {"status": "error", "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8)}
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    res["wall_s"] = time.perf_counter() - t0
    res["peak_rss_bytes"] = peak_rss()
    agent = _agent_peak_rss()
    if agent is not None:  # agent mode: its process is part of the cost
        res["client_peak_rss_bytes"] = res["peak_rss_bytes"]
        res["agent_peak_rss_bytes"] = agent
        res["peak_rss_bytes"] += agent
    return res


def _agent_peak_rss() -> int | None:
    """Peak RSS (VmHWM) of the agent serving ``$DREAMLAKE_AGENT_SOCKET``, if any
    (Linux /proc); the agent lives across workloads, so this is its peak so far."""
    import os

    sock = os.environ.get("DREAMLAKE_AGENT_SOCKET")
    if not sock or not os.path.isdir("/proc"):
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if b"agent" not in argv or sock.encode() not in argv:
                continue
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            continue
    return None


# ---------------------------------------------------------------------------
# subprocess entry point (shared by the peers)


def child_args(argv: list[str] | None, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Run benchmark workloads for one system; print one JSON line.")
    ap.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads (default: all)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke)")
    ap.add_argument("--rows-read", type=int, default=None, help="W5 track size")
    ap.add_argument("--workdir", default=None, help="parent temp dir (default: a new one)")
    if extra:
        extra(ap)
    return ap.parse_args(argv)


def child_main(make_target: Callable[[argparse.Namespace], Target], argv: list[str] | None = None,
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """Parse args, run the workloads, print ``BENCH-RESULT {json}`` and return 0.

    A system that cannot be imported reports ``status: skipped`` with the reason.
    """
    args = child_args(argv, extra)
    sz = QUICK if args.quick else FULL
    if args.rows_read:
        # the build cap is for slow peers: allow ~100k rows/s before it bites
        sz = replace(sz, w5_rows=args.rows_read, build_cap_s=max(sz.build_cap_s, args.rows_read / 1e5))
    canonical = {w.upper(): w for w in RUNNERS}
    only = [canonical.get(w.strip().upper(), w.strip()) for w in args.only.split(",") if w.strip()]
    bad = [w for w in only if w not in RUNNERS]
    if bad:
        raise SystemExit(f"unknown workload(s): {', '.join(bad)}")
    own_dir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="dlbench-")) if own_dir else Path(args.workdir)
    result: dict[str, Any] = {"sizes": asdict(sz), "workloads": {}}
    try:
        try:
            target = make_target(args)
        except ImportError as e:
            result.update(status="skipped", reason=f"not importable: {e}")
            return _emit(result)
        result.update(status="ok", system=target.name, version=target.version)
        for w in only:
            result["workloads"][w] = run_workload(target, w, sz, workdir)
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    return _emit(result)


def _emit(result: dict) -> int:
    sys.stdout.flush()
    sys.stdout.write(RESULT_MARKER + json.dumps(result, default=str, allow_nan=True) + "\n")
    sys.stdout.flush()
    return 0


def _make_dreamlake(args: argparse.Namespace) -> Target:
    import dreamlake  # noqa: F401  (ImportError -> skipped)

    return DreamLakeTarget(args.mode)


if __name__ == "__main__":
    sys.exit(
        child_main(
            _make_dreamlake,
            extra=lambda ap: ap.add_argument("--mode", default="thread", choices=sorted(MODES)),
        )
    )
