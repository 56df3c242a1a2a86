"""Peer loggers measured with the same workloads as DreamLake.

Each module here is runnable as ``python -m benchmarks.peers.<peer>`` and prints
one ``BENCH-RESULT {json}`` line (see :func:`benchmarks.workloads.child_main`).
Run them with ``-m`` only: run as a script, ``benchmarks/peers`` would land on
``sys.path`` and ``import wandb`` would find this package's ``wandb.py``.

``PEERS`` maps a table column to ``(module, extra argv, top-level module to probe)``.
"""

from __future__ import annotations

__all__ = ["PEERS"]

PEERS: dict[str, tuple[str, list[str], str]] = {
    "wandb": ("benchmarks.peers.wandb", [], "wandb"),
    "mlflow-sync": ("benchmarks.peers.mlflow", ["--variant", "sync"], "mlflow"),
    "mlflow-async": ("benchmarks.peers.mlflow", ["--variant", "async"], "mlflow"),
    "tensorboardX": ("benchmarks.peers.tensorboardx", [], "tensorboardX"),
    "rerun": ("benchmarks.peers.rerun", [], "rerun"),
}
