"""W&B (offline mode: ``WANDB_MODE=offline``, no network) on the shared workloads.

Mapping:
- W1: ``run.log({"loss": l, "acc": a}, step=i)``.
- W2/W3: three ``run.log({...}, step=i)`` calls per tick with the same step
  (``robot/pose/x``..., ``robot/vel/v0``..., ``camera/left/width``...); W&B merges
  calls with the same step into one history row, which is what ``_ts=-1`` does.
- W4 per row: as W1; "on disk" = ``run.finish()`` returned (W&B has no
  flush: finish is its only durability barrier). W4 batch: n/a.
- W5: n/a (an offline run has no read API; ``wandb.Api`` reads from a server).
- W6: n/a (no memory budget or overflow policy).
Defaults otherwise, except ``console="off"`` (console capture would wrap the
stdout this runner reports on).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from benchmarks.workloads import Target, child_main


class WandbTarget(Target):
    name = "wandb"
    na = {
        "batch": "no batch API: wandb.log takes one step per call",
        "read": "offline runs have no read API (wandb.Api needs a server)",
        "overload": "no memory budget / overflow policy",
    }

    def __init__(self) -> None:
        import wandb

        self.wandb = wandb
        self.version = wandb.__version__
        self.run: Any = None

    def open(self, workdir: Path, label: str) -> None:
        self.dir = workdir / label
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(
            project="dreamlake-bench",
            name=label,
            dir=str(self.dir),
            mode="offline",
            settings=self.wandb.Settings(console="off"),
        )

    def flush(self) -> None:
        # W&B's only durability barrier; a later close() is then a no-op.
        self.close()

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

    def output_dir(self) -> Path | None:
        return self.dir

    def scalar_call(self) -> Callable:
        log = self.run.log
        return lambda i, loss, acc: log({"loss": loss, "acc": acc}, step=i)

    def robot_calls(self) -> tuple[Callable, Callable, Callable]:
        log = self.run.log
        return (
            lambda i, x, y, z, qx, qy, qz, qw: log(
                {"robot/pose/x": x, "robot/pose/y": y, "robot/pose/z": z, "robot/pose/qx": qx,
                 "robot/pose/qy": qy, "robot/pose/qz": qz, "robot/pose/qw": qw}, step=i),
            lambda i, a, b, c, d, e, f, g: log(
                {"robot/vel/v0": a, "robot/vel/v1": b, "robot/vel/v2": c, "robot/vel/v3": d,
                 "robot/vel/v4": e, "robot/vel/v5": f, "robot/vel/v6": g}, step=i),
            lambda i, w, h, fid: log({"camera/left/width": w, "camera/left/height": h, "camera/left/frame_id": fid}, step=i),
        )


def _make(args: Any) -> Target:
    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    # keep W&B's config/cache/data out of $HOME (the parent points these at its temp dir)
    scratch = None
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        if var not in os.environ:
            scratch = scratch or tempfile.mkdtemp(prefix="dlbench-wandb-")
            os.environ[var] = os.path.join(scratch, var.lower())
    return WandbTarget()


if __name__ == "__main__":
    sys.exit(child_main(_make))
