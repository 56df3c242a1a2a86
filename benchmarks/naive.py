"""The naive baseline: a synchronous JSONL writer, one ``json.dumps`` and one
buffered ``write`` per call on the caller's thread (no queue, no thread).

It is what a user would write by hand, and the yardstick for the tail: its
worst call is one buffered write reaching the kernel, never a GC pause over a
queue or a wait for another thread. Run with ``python -m benchmarks.naive``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.workloads import Target, child_main

__all__ = ["NaiveJsonlTarget"]


class NaiveJsonlTarget(Target):
    name = "naive-jsonl"
    version = ""
    na = {"read": "no read API", "overload": "no queue: nothing to overload", "batch": "no batch API"}

    def open(self, workdir: Path, label: str) -> None:
        self.dir = Path(workdir) / f"naive-{label}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def _writer(self, name: str) -> Callable[[dict], None]:
        f = open(self.dir / f"{name.replace('/', '_')}.jsonl", "a", encoding="utf-8")
        self.files[name] = f
        self.counts[name] = 0
        write, dumps = f.write, json.dumps

        def log(row: dict) -> None:
            write(dumps(row) + "\n")

        return log

    def flush(self) -> None:
        for f in self.files.values():
            f.flush()

    def close(self) -> None:
        for f in self.files.values():
            f.close()

    def output_dir(self) -> Path | None:
        return self.dir

    def scalar_call(self) -> Callable:
        log = self._writer("train")
        now = time.time
        return lambda i, loss, acc: log({"loss": loss, "acc": acc, "step": i, "_ts": now()})

    def robot_calls(self) -> tuple[Callable, Callable, Callable]:
        p, v, c = self._writer("robot/pose"), self._writer("robot/vel"), self._writer("camera/left")
        now = time.time
        last = [0.0]

        def pose(i, x, y, z, qx, qy, qz, qw):
            last[0] = t = now()
            p({"x": x, "y": y, "z": z, "qx": qx, "qy": qy, "qz": qz, "qw": qw, "_ts": t})

        return (
            pose,
            lambda i, a, b, c_, d, e, f, g: v({"v0": a, "v1": b, "v2": c_, "v3": d, "v4": e, "v5": f, "v6": g, "_ts": last[0]}),
            lambda i, w, h, fid: c({"width": w, "height": h, "frame_id": fid, "_ts": last[0]}),
        )

    def robot_array_calls(self) -> tuple[Callable, Callable, Callable]:
        p, v, c = self._writer("robot/pose"), self._writer("robot/vel"), self._writer("camera/left")
        return (
            lambda t, q: p({"q": q, "_ts": t}),
            lambda t, vel: v({"v": vel.tolist(), "_ts": t}),  # json cannot write numpy: the user converts
            lambda t, meta: c({"meta": meta, "_ts": t}),
        )

    def row_kind_call(self) -> Callable[[dict], Any]:
        log = self._writer("kinds")
        now = time.time

        def call(row: dict) -> None:
            log({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in row.items()} | {"_ts": now()})

        return call


if __name__ == "__main__":
    sys.exit(child_main(lambda args: NaiveJsonlTarget()))
