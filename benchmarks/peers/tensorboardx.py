"""tensorboardX (``SummaryWriter`` defaults, event file in a temp dir) on the shared workloads.

Mapping:
- W1: ``add_scalar("train/loss", l, i)`` and ``add_scalar("train/acc", a, i)``
  (tensorboardX has one scalar per call; the timed call is both).
- W2/W3: one ``add_scalar(tag, v, global_step=i)`` per field: 7 for
  ``robot/pose/*``, 7 for ``robot/vel/*``, 3 for ``camera/left/*``; the shared
  ``global_step`` plays the role of ``_ts=-1``. Each stream's calls are timed
  as one call.
- W4 per row: as W1, then ``writer.flush()``. W4 batch: n/a.
- W5: n/a (tensorboardX only writes; reading needs tensorboard/TensorFlow).
- W6: n/a (no memory budget or overflow policy).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from benchmarks.workloads import Target, child_main


class TensorboardXTarget(Target):
    name = "tensorboardX"
    na = {
        "batch": "no batch API: add_scalar takes one value per call",
        "read": "tensorboardX has no reader (needs tensorboard/TensorFlow)",
        "overload": "no memory budget / overflow policy",
    }

    def __init__(self) -> None:
        import tensorboardX
        from tensorboardX import SummaryWriter

        self.SummaryWriter = SummaryWriter
        self.version = tensorboardX.__version__
        self.writer: Any = None

    def open(self, workdir: Path, label: str) -> None:
        self.dir = workdir / label
        self.writer = self.SummaryWriter(logdir=str(self.dir))

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def output_dir(self) -> Path | None:
        return self.dir

    def scalar_call(self) -> Callable:
        add = self.writer.add_scalar

        def call(i: int, loss: float, acc: float) -> None:
            add("train/loss", loss, i)
            add("train/acc", acc, i)

        return call

    def robot_calls(self) -> tuple[Callable, Callable, Callable]:
        add = self.writer.add_scalar

        def pose(i: int, x: float, y: float, z: float, qx: float, qy: float, qz: float, qw: float) -> None:
            add("robot/pose/x", x, i)
            add("robot/pose/y", y, i)
            add("robot/pose/z", z, i)
            add("robot/pose/qx", qx, i)
            add("robot/pose/qy", qy, i)
            add("robot/pose/qz", qz, i)
            add("robot/pose/qw", qw, i)

        def vel(i: int, a: float, b: float, c: float, d: float, e: float, f: float, g: float) -> None:
            add("robot/vel/v0", a, i)
            add("robot/vel/v1", b, i)
            add("robot/vel/v2", c, i)
            add("robot/vel/v3", d, i)
            add("robot/vel/v4", e, i)
            add("robot/vel/v5", f, i)
            add("robot/vel/v6", g, i)

        def cam(i: int, w: int, h: int, fid: int) -> None:
            add("camera/left/width", w, i)
            add("camera/left/height", h, i)
            add("camera/left/frame_id", fid, i)

        return pose, vel, cam


def _make(args: Any) -> Target:
    return TensorboardXTarget()


if __name__ == "__main__":
    sys.exit(child_main(_make))
