"""Rerun (``RecordingStream.save`` to an .rrd file, default batcher) on the shared workloads.

Mapping:
- W1: ``set_time("step", sequence=i)``, then ``log("train/loss", Scalars(l))``
  and ``log("train/acc", Scalars(a))``.
- W2/W3: ``pose`` sets the tick's time (``set_time("step", sequence=i)``) and
  logs ``Transform3D(translation, quaternion)`` to ``robot/pose``; ``vel``
  logs ``Scalars([7 floats])`` to ``robot/vel`` and ``cam`` logs
  ``AnyValues(width, height, frame_id)`` to ``camera/left`` at the time already
  set, which is what ``_ts=-1`` does.
- W4 per row: as W1; "on disk" = ``flush(blocking)``. W4 batch:
  ``send_columns`` with a ``TimeColumn("step")`` and ``Scalars.columns`` per
  field (numpy arrays prepared outside the timed region).
- W5: build with ``send_columns`` (timelines ``step`` and ``time``=_ts).
  Reads via ``rerun.chunk.RrdReader(path).stream().filter(content=...)``, then
  the rows wanted selected from the chunks' Arrow record batches (this SDK
  version has no ``rerun.dataframe``; its DataFusion reader needs the optional
  ``datafusion`` package). Both reads scan the recording.
- W6: n/a (no memory budget or overflow policy).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from benchmarks.workloads import TS0, TS_STEP, Target, child_main


class RerunTarget(Target):
    name = "rerun"
    na = {"overload": "no memory budget / overflow policy"}

    def __init__(self) -> None:
        import numpy as np
        import rerun as rr

        self.rr, self.np = rr, np
        self.version = rr.__version__
        self.rec: Any = None

    def open(self, workdir: Path, label: str) -> None:
        self.dir = workdir / label
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "recording.rrd"
        self.rec = self.rr.RecordingStream("dreamlake-bench")
        self.rec.save(str(self.path))

    def flush(self) -> None:
        self.rec.flush()

    def close(self) -> None:
        if self.rec is not None:
            self.rec.flush()
            self.rec.disconnect()
            self.rec = None

    def output_dir(self) -> Path | None:
        return self.dir

    def scalar_call(self) -> Callable:
        rec, Scalars = self.rec, self.rr.Scalars
        set_time, log = rec.set_time, rec.log

        def call(i: int, loss: float, acc: float) -> None:
            set_time("step", sequence=i)
            log("train/loss", Scalars(loss))
            log("train/acc", Scalars(acc))

        return call

    def robot_calls(self) -> tuple[Callable, Callable, Callable]:
        rr = self.rr
        set_time, log = self.rec.set_time, self.rec.log
        Transform3D, Quaternion, Scalars, AnyValues = rr.Transform3D, rr.Quaternion, rr.Scalars, rr.AnyValues

        def pose(i: int, x: float, y: float, z: float, qx: float, qy: float, qz: float, qw: float) -> None:
            set_time("step", sequence=i)
            log("robot/pose", Transform3D(translation=[x, y, z], quaternion=Quaternion(xyzw=[qx, qy, qz, qw])))

        def vel(i: int, a: float, b: float, c: float, d: float, e: float, f: float, g: float) -> None:
            log("robot/vel", Scalars([a, b, c, d, e, f, g]))

        def cam(i: int, w: int, h: int, fid: int) -> None:
            log("camera/left", AnyValues(width=w, height=h, frame_id=fid))

        return pose, vel, cam

    def batch_payload(self, start: int, n: int) -> Any:
        np = self.np
        i = np.arange(start, start + n)
        return i, 1.0 / (i + 1.0), i * 1e-6

    def batch_call(self) -> Callable[[Any], Any]:
        rr = self.rr
        send, TimeColumn, columns = self.rec.send_columns, rr.TimeColumn, rr.Scalars.columns

        def call(payload: Any) -> None:
            steps, loss, acc = payload
            idx = [TimeColumn("step", sequence=steps)]
            send("train/loss", indexes=idx, columns=columns(scalars=loss))
            send("train/acc", indexes=idx, columns=columns(scalars=acc))

        return call

    def build_track(self, n: int, chunk: int, deadline_ns: int) -> int:
        import time

        np, rr = self.np, self.rr
        done = 0
        while done < n:
            end = min(n, done + chunk)
            i = np.arange(done, end)
            self.rec.send_columns(
                "big",
                indexes=[rr.TimeColumn("step", sequence=i), rr.TimeColumn("time", timestamp=TS0 + i * TS_STEP)],
                columns=rr.Scalars.columns(scalars=1.0 / (i + 1.0)),
            )
            done = end
            if time.perf_counter_ns() > deadline_ns:
                break
        return done

    def reopen_for_read(self) -> None:
        self.close()  # footer written; reads open the file like a later process would

    def _select(self, column: str, lo: Any, hi: Any) -> int:
        import pyarrow.compute as pc
        from rerun.chunk import RrdReader

        rows = 0
        for chunk in RrdReader(self.path).stream().filter(content="/big").to_chunks():
            batch = chunk.to_record_batch()
            if column not in batch.schema.names:
                continue
            col = batch.column(column)
            mask = pc.and_(pc.greater_equal(col, lo), pc.less(col, hi))
            rows += batch.filter(mask).num_rows
        return rows

    def read_tail(self, total: int, k: int) -> int:
        return self._select("step", total - k, total)

    def read_ts_range(self, start_index: int, end_index: int) -> int:
        import pyarrow as pa

        ns = pa.timestamp("ns")
        lo = pa.scalar(int(round((TS0 + start_index * TS_STEP) * 1e9)), type=ns)
        hi = pa.scalar(int(round((TS0 + end_index * TS_STEP) * 1e9)), type=ns)
        return self._select("time", lo, hi)


def _make(args: Any) -> Target:
    return RerunTarget()


if __name__ == "__main__":
    sys.exit(child_main(_make))
