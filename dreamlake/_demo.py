"""``dreamlake demo``: a realistic run on the embedded local store.

For ``seconds``, a simulated training loop (params, per-step metrics, epoch
logs) and a simulated robot thread (three streams at 1 kHz, ``_ts=-1`` so they
share one stamp per tick) run side by side, both on absolute deadlines so the
run lasts what it says. Then a short tight-loop burst of 3-float rows (the row
of the README's headline figures), a checkpoint upload and close.

Every append is timed on the caller's side and reported by row kind: a paced
loop's append runs with cold caches and a writer thread sharing the GIL, so its
p50 sits above the burst's.
The robot's missed deadlines are ticks whose three appends ended after the
tick's 1 ms slot.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import threading
import time
from array import array
from pathlib import Path

from ._session import Session

__all__ = ["run_demo", "print_report"]

ROBOT_PERIOD = 0.001
BURST_SECONDS = 0.3
_BLOCK = bytes(64 << 10)


def _percentile(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return float("nan")
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0


def _summary(ns: "list[int] | array") -> dict:
    ordered = sorted(ns)
    quantiles = (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999), ("p99.99", 0.9999))
    return {name: _percentile(ordered, q) for name, q in quantiles} | {
        "max": ordered[-1] / 1000.0 if ordered else float("nan"),
        "count": len(ordered),
    }


def _sleep_until(deadline: float) -> None:
    delay = deadline - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def _compute(until: float) -> None:
    """The "model" working until ``until``: CPU work that, like numpy or torch
    kernels, releases the GIL (hashing a 64 KiB block does), so the robot thread
    runs meanwhile. A pure-Python busy loop would hold the GIL for whole 5 ms
    switch intervals and make the robot miss its deadlines for that reason alone."""
    while time.perf_counter() < until:
        hashlib.sha256(_BLOCK).digest()


def _robot(session: Session, ticks: int, list_ns: list[int], scalar_ns: list[int], out: dict, start: threading.Event) -> None:
    pose, vel, cam = session.track("robot/pose"), session.track("robot/vel"), session.track("camera/left")
    clock = time.perf_counter_ns
    missed = missed_appending = 0
    start.wait()
    began = time.perf_counter()
    for tick in range(ticks):
        phase = tick * ROBOT_PERIOD
        q = [math.sin(phase + j) for j in range(7)]
        dq = [math.cos(phase + j) for j in range(7)]
        t0 = clock()
        pose.append(q=q)
        t1 = clock()
        vel.append(dq=dq, _ts=-1)
        t2 = clock()
        cam.append(width=640, height=480, frame_id=tick, _ts=-1)
        t3 = clock()
        list_ns.extend((t1 - t0, t2 - t1))
        scalar_ns.append(t3 - t2)
        deadline = began + (tick + 1) * ROBOT_PERIOD
        if time.perf_counter() > deadline:
            missed += 1
            if t0 / 1e9 <= deadline:  # on time until the appends ran
                missed_appending += 1
        _sleep_until(deadline)
    out.update(ticks=ticks, missed=missed, missed_appending=missed_appending)


def _train(session: Session, seconds: float, steps: int, scalar_ns: list[int], start: threading.Event) -> None:
    train, val = session.track("train"), session.track("val")
    clock = time.perf_counter_ns
    step_time = seconds / max(1, steps)
    loss = 2.5
    start.wait()
    began = time.perf_counter()
    for step in range(steps):
        _compute(time.perf_counter() + step_time * 0.5)
        loss = loss * 0.999 + random.random() * 0.002
        t0 = clock()
        train.append(loss=loss, lr=3e-4, step=step)
        scalar_ns.append(clock() - t0)
        if step % 100 == 99:
            t0 = clock()
            val.append(loss=loss * 1.1, accuracy=1 - loss / 3, step=step)
            scalar_ns.append(clock() - t0)
            session.log(f"step {step + 1}/{steps}", metadata={"loss": loss})
        _sleep_until(began + (step + 1) * step_time)


def _burst(session: Session, seconds: float) -> tuple[array, float]:
    """Appends of a 3-float row in a tight loop for ``seconds``, then a flush;
    returns the per-call latencies and the end-to-end rows/s (flush included).
    The latencies go to an ``array``, not a list: the cyclic GC walks a young
    list of ~400,000 ints (ms) and charged that to whichever append ran then."""
    track = session.track("burst")
    clock = time.perf_counter_ns
    ns = array("q")
    began = time.perf_counter()
    stop = began + seconds
    i = 0
    while True:
        for _ in range(1000):
            t0 = clock()
            track.append(a=1.0, b=2.0, c=float(i))
            ns.append(clock() - t0)
            i += 1
        if time.perf_counter() >= stop:
            break
    track.flush()
    return ns, len(ns) / (time.perf_counter() - began)


def run_demo(
    root: str | os.PathLike = ".dreamlake",
    seconds: float = 3.0,
    steps: int = 3000,
    burst_seconds: float = BURST_SECONDS,
) -> dict:
    if seconds <= 0 or steps <= 0:
        raise ValueError("seconds and steps must be positive")
    name = time.strftime("demo-%Y%m%d-%H%M%S")
    list_ns: list[int] = []
    scalar_ns: list[int] = []
    robot_out: dict = {}
    started = time.perf_counter()
    with Session(
        name=name,
        workspace="demo",
        local_path=root,
        description="dreamlake demo: training loop + 1 kHz robot",
        tags=["demo"],
    ) as session:
        session.params.set(learning_rate=3e-4, batch_size=64, model={"arch": "mlp", "layers": 4})
        session.log("training started", level="info")
        go = threading.Event()
        robot_scalar_ns: list[int] = []
        robot = threading.Thread(
            target=_robot, args=(session, int(seconds / ROBOT_PERIOD), list_ns, robot_scalar_ns, robot_out, go), name="robot"
        )
        robot.start()
        loop_began = time.perf_counter()
        go.set()
        _train(session, seconds, steps, scalar_ns, go)
        robot.join()
        loop_s = time.perf_counter() - loop_began
        paced_rows = sum(t["totalDataPoints"] for t in session.tracks.list())
        burst_ns, burst_rate = _burst(session, burst_seconds)
        checkpoint = Path(session.directory) / "checkpoint.tmp"
        checkpoint.write_bytes(os.urandom(256 << 10))
        session.files.upload(str(checkpoint), path="/checkpoints", tags=["final"], metadata={"step": steps})
        checkpoint.unlink()
        session.log("training finished", level="info")
        session.tracks.flush()
        tracks = session.tracks.list()
        health = session.health()
    elapsed = time.perf_counter() - started
    size = sum(p.stat().st_size for p in Path(session.directory).rglob("*") if p.is_file())
    return {
        "directory": str(session.directory),
        "tracks": {t["name"]: t["totalDataPoints"] for t in tracks},
        "rows": sum(t["totalDataPoints"] for t in tracks),
        "elapsed_s": elapsed,
        "loop_s": loop_s,
        "paced_rows_per_s": paced_rows / loop_s,
        "burst_rows_per_s": burst_rate,
        "bytes": size,
        "latency_us": {
            "scalar rows (paced)": _summary(scalar_ns + robot_scalar_ns),
            "7-float list rows (paced)": _summary(list_ns),
            "3-float rows (burst)": _summary(burst_ns),
        },
        "robot_ticks": robot_out.get("ticks", 0),
        "missed_deadlines": robot_out.get("missed", 0),
        "missed_while_appending": robot_out.get("missed_appending", 0),
        "dropped": health.get("dropped", 0),
        "write_errors": health.get("write_errors", 0),
    }


def print_report(report: dict) -> None:
    directory = Path(report["directory"])
    print(f"dreamlake demo: {report['loop_s']:.1f} s of training loop + 1 kHz robot, "
          f"then a burst; {report['elapsed_s']:.1f} s in all")
    print(f"  data:     {directory}")
    for name, count in report["tracks"].items():
        print(f"    tracks/{name:<16} {count:>9,} rows")
    print(f"  written:  {report['rows']:,} rows, {report['bytes'] / 1e6:.2f} MB on disk "
          f"(dropped {report['dropped']}, write errors {report['write_errors']})")
    print(f"  rows/s:   {report['paced_rows_per_s']:,.0f} while paced (what the loops asked for), "
          f"{report['burst_rows_per_s']:,.0f} in the burst (appended and written)")
    print(f"  1 kHz robot: missed deadlines {report['missed_deadlines']:,} of {report['robot_ticks']:,} ticks "
          f"(a tick's appends ended after its 1 ms slot); {report['missed_while_appending']:,} of them began in time "
          "(the rest woke late: OS scheduling, a busy machine)")
    print("  append latency on the caller's thread (µs):")
    for kind, lat in report["latency_us"].items():
        print(f"    {kind:<27} " + ", ".join(f"{k} {v:.2f}" for k, v in lat.items() if k != "count")
              + f"  ({lat['count']:,} calls)")
    print("  (the README's headline p50 is the burst's kind of row on an idle machine; a paced loop's append runs\n"
          "   with cold caches beside the writer thread, so its p50 is higher)")
    print(f"  look at it: dreamlake show {directory.parent.name}/{directory.name} --root {directory.parent.parent}")
