"""``dreamlake demo``: a realistic run on the embedded local store.

A simulated training loop (params, per-step metrics, epoch logs, a checkpoint
upload) runs while a simulated robot thread logs three streams at 1 kHz with
``_ts=-1`` so they share one timestamp per tick. Every append is timed on the
caller's side; the report says where the data went and what the loop paid.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from pathlib import Path

from ._session import Session

__all__ = ["run_demo"]


def _percentile(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return float("nan")
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0


def _robot(session: Session, seconds: float, latencies: list[int], ready: threading.Event) -> int:
    pose, vel, cam = session.track("robot/pose"), session.track("robot/vel"), session.track("camera/left")
    clock = time.perf_counter_ns
    period = 0.001
    ticks = int(seconds / period)
    start = time.perf_counter()
    ready.set()
    for tick in range(ticks):
        phase = tick * period
        q = [math.sin(phase + j) for j in range(7)]
        dq = [math.cos(phase + j) for j in range(7)]
        t0 = clock()
        pose.append(q=q)
        t1 = clock()
        vel.append(dq=dq, _ts=-1)
        t2 = clock()
        cam.append(width=640, height=480, frame_id=tick, _ts=-1)
        t3 = clock()
        latencies.extend((t1 - t0, t2 - t1, t3 - t2))
        delay = start + (tick + 1) * period - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return ticks


def run_demo(root: str | os.PathLike = ".dreamlake", seconds: float = 3.0, steps: int = 3000) -> dict:
    name = time.strftime("demo-%Y%m%d-%H%M%S")
    latencies: list[int] = []
    robot_latencies: list[int] = []
    clock = time.perf_counter_ns
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
        ready = threading.Event()
        robot = threading.Thread(target=_robot, args=(session, seconds, robot_latencies, ready), name="robot")
        robot.start()
        ready.wait()
        train, val = session.track("train"), session.track("val")
        loss = 2.5
        step_time = seconds / steps
        for step in range(steps):
            busy_until = time.perf_counter() + step_time * 0.5
            while time.perf_counter() < busy_until:  # the "model" working
                pass
            loss = loss * 0.999 + random.random() * 0.002
            t0 = clock()
            train.append(loss=loss, lr=3e-4, step=step)
            latencies.append(clock() - t0)
            if step % 100 == 99:
                t0 = clock()
                val.append(loss=loss * 1.1, accuracy=1 - loss / 3, step=step)
                latencies.append(clock() - t0)
                session.log(f"step {step + 1}/{steps}", metadata={"loss": loss})
            time.sleep(step_time * 0.5)
        robot.join()
        checkpoint = Path(session.directory) / "checkpoint.tmp"
        checkpoint.write_bytes(os.urandom(256 << 10))
        session.files.upload(str(checkpoint), path="/checkpoints", tags=["final"], metadata={"step": steps})
        checkpoint.unlink()
        session.log("training finished", level="info")
        flushed = session.tracks.flush()
        tracks = session.tracks.list()
        health = session.health()
    elapsed = time.perf_counter() - started
    all_ns = sorted(latencies + robot_latencies)
    rows = sum(t["totalDataPoints"] for t in tracks)
    size = sum(p.stat().st_size for p in Path(session.directory).rglob("*") if p.is_file())
    return {
        "directory": str(session.directory),
        "tracks": {t["name"]: t["totalDataPoints"] for t in tracks},
        "rows": rows,
        "appends": len(all_ns),
        "elapsed_s": elapsed,
        "bytes": size,
        "latency_us": {q: _percentile(all_ns, p) for q, p in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999), ("p99.99", 0.9999))}
        | {"max": all_ns[-1] / 1000.0 if all_ns else float("nan")},
        "dropped": health.get("dropped", 0),
        "write_errors": health.get("write_errors", 0),
        "flushed": flushed,
    }


def print_report(report: dict) -> None:
    lat = report["latency_us"]
    print(f"dreamlake demo: {report['appends']:,} appends in {report['elapsed_s']:.1f} s")
    print(f"  data:     {report['directory']}")
    for name, count in report["tracks"].items():
        print(f"    tracks/{name:<16} {count:>7,} rows")
    print(f"  written:  {report['rows']:,} rows, {report['bytes'] / 1e6:.2f} MB on disk "
          f"(dropped {report['dropped']}, write errors {report['write_errors']})")
    print("  append latency on the caller's thread (µs): "
          + ", ".join(f"{k} {v:.2f}" for k, v in lat.items()))
    print(f"  look at it: dreamlake show {Path(report['directory']).parent.name}/{Path(report['directory']).name}"
          f" --root {Path(report['directory']).parent.parent}")
