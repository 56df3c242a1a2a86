"""MLflow (file store in a temp dir) on the shared workloads, sync or async.

``--variant sync`` passes ``synchronous=True`` to every call, ``async`` passes
``synchronous=False`` (MLflow's async logging queue); durability for async is
``mlflow.flush_async_logging()``. MLflow 3 refuses the file store unless
``MLFLOW_ALLOW_FILE_STORE=true``; we set it, as the brief asks for the file store.

Mapping:
- W1: ``mlflow.log_metrics({"loss": l, "acc": a}, step=i)``.
- W2/W3: three ``log_metrics`` calls per tick with the same ``step=i``
  (``robot/pose/x``..., ``robot/vel/v0``..., ``camera/left/width``...);
  MLflow has no row merge: step alignment is how its UI joins them.
- W4 batch: ``MlflowClient.log_batch(run_id, metrics=[Metric(...)])``, one
  ``Metric`` per field per row; a 1000-row chunk is 2000 metrics, sent as two
  calls because MLflow caps a batch at 1000 metrics.
- W4/W5 use at most 100,000 rows (see ``max_rows``).
- W5: build with ``log_batch`` (1000 ``loss`` metrics per call, step=i,
  timestamp=_ts in ms). Tail: ``get_metric_history(run_id, "loss")[-100:]``
  (MLflow has no offset/limit read). Range: MLflow has no time-range query, so
  ``get_metric_history`` then a filter on ``timestamp``.
- W6: n/a (no memory budget or overflow policy).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

from benchmarks.workloads import TS0, TS_STEP, Target, child_main


class MlflowTarget(Target):
    na = {"overload": "no memory budget / overflow policy"}
    # W4/W5 rows: get_metric_history loads the whole history (~70-120 µs a row:
    # 50-120 s per read at 0.7-1M rows) and the async queue drains ~7k rows/s
    # after the loop returns, which no loop time cap bounds; the table shows
    # the size actually used.
    max_rows = 100_000

    def __init__(self, variant: str) -> None:
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        import mlflow
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        self.mlflow, self.Client, self.Metric = mlflow, MlflowClient, Metric
        self.sync = variant == "sync"
        self.name = f"mlflow-{variant}"
        self.version = mlflow.__version__
        self.run: Any = None

    def open(self, workdir: Path, label: str) -> None:
        self.dir = workdir / label
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mlflow.set_tracking_uri(self.dir.as_uri())
        self.mlflow.set_experiment("dreamlake-bench")  # a fresh file store has no default experiment
        self.client = self.Client()
        self.run = self.mlflow.start_run(run_name=label)
        self.run_id = self.run.info.run_id

    def flush(self) -> None:
        if not self.sync:
            self.mlflow.flush_async_logging()

    def close(self) -> None:
        if self.run is not None:
            self.flush()
            self.mlflow.end_run()
            self.run = None

    def output_dir(self) -> Path | None:
        return self.dir

    def scalar_call(self) -> Callable:
        log, sync = self.mlflow.log_metrics, self.sync
        return lambda i, loss, acc: log({"loss": loss, "acc": acc}, step=i, synchronous=sync)

    def scalar_rows(self) -> int | None:
        return len(self.client.get_metric_history(self.run_id, "loss"))

    def robot_calls(self) -> tuple[Callable, Callable, Callable]:
        log, sync = self.mlflow.log_metrics, self.sync
        return (
            lambda i, x, y, z, qx, qy, qz, qw: log(
                {"robot/pose/x": x, "robot/pose/y": y, "robot/pose/z": z, "robot/pose/qx": qx,
                 "robot/pose/qy": qy, "robot/pose/qz": qz, "robot/pose/qw": qw}, step=i, synchronous=sync),
            lambda i, a, b, c, d, e, f, g: log(
                {"robot/vel/v0": a, "robot/vel/v1": b, "robot/vel/v2": c, "robot/vel/v3": d,
                 "robot/vel/v4": e, "robot/vel/v5": f, "robot/vel/v6": g}, step=i, synchronous=sync),
            lambda i, w, h, fid: log(
                {"camera/left/width": w, "camera/left/height": h, "camera/left/frame_id": fid}, step=i, synchronous=sync),
        )

    def robot_rows(self) -> dict[str, int] | None:
        h = self.client.get_metric_history
        return {k: len(h(self.run_id, f"{k}/{f}")) for k, f in
                (("robot/pose", "x"), ("robot/vel", "v0"), ("camera/left", "width"))}

    def batch_payload(self, start: int, n: int) -> Any:
        M = self.Metric
        ts = int(TS0 * 1000)
        loss = [M("loss", 1.0 / (i + 1), ts, i) for i in range(start, start + n)]
        acc = [M("acc", i * 1e-6, ts, i) for i in range(start, start + n)]
        half = n // 2
        # <= 1000 metrics per log_batch call
        return [loss[:half] + acc[:half], loss[half:] + acc[half:]]

    def batch_call(self) -> Callable[[Any], Any]:
        log_batch, run_id, sync = self.client.log_batch, self.run_id, self.sync

        def send(parts: list) -> None:
            for metrics in parts:
                log_batch(run_id, metrics=metrics, synchronous=sync)

        return send

    def build_track(self, n: int, chunk: int, deadline_ns: int) -> int:
        import time

        M, log_batch, run_id, sync = self.Metric, self.client.log_batch, self.run_id, self.sync
        done = 0
        while done < n:
            end = min(n, done + chunk)
            log_batch(run_id, metrics=[M("loss", 1.0 / (i + 1), int((TS0 + i * TS_STEP) * 1000), i)
                                       for i in range(done, end)], synchronous=sync)
            done = end
            if time.perf_counter_ns() > deadline_ns:
                break
        return done

    def reopen_for_read(self) -> None:
        run_id = self.run_id
        self.close()
        self.client = self.Client()
        self.run_id = run_id

    def read_tail(self, total: int, k: int) -> int:
        return len(self.client.get_metric_history(self.run_id, "loss")[-k:])

    def read_ts_range(self, start_index: int, end_index: int) -> int:
        lo, hi = int((TS0 + start_index * TS_STEP) * 1000), int((TS0 + end_index * TS_STEP) * 1000)
        return sum(1 for m in self.client.get_metric_history(self.run_id, "loss") if lo <= m.timestamp < hi)


def _make(args: Any) -> Target:
    return MlflowTarget(args.variant)


if __name__ == "__main__":
    sys.exit(child_main(_make, extra=lambda ap: ap.add_argument("--variant", choices=("sync", "async"), default="sync")))
