"""Percentiles, memory and disk figures shared by every runner.

Pure standard library so a peer's subprocess imports nothing extra.
"""

from __future__ import annotations

import math
import os
import resource
from pathlib import Path
from typing import Iterable, Sequence

__all__ = [
    "PERCENTILES",
    "percentile",
    "summarize_ns",
    "median",
    "current_rss",
    "reset_peak_rss",
    "peak_rss",
    "dir_bytes",
]

#: Percentiles reported for every latency, next to max.
PERCENTILES = (50.0, 99.0, 99.9, 99.99)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (no interpolation).

    Nearest rank keeps every reported figure a latency that really happened:
    p99.99 of 100,000 calls is the 10th slowest call.
    """
    n = len(sorted_values)
    if n == 0:
        return float("nan")
    rank = max(1, math.ceil(p / 100.0 * n))
    return sorted_values[min(rank, n) - 1]


def summarize_ns(samples: Iterable[int]) -> dict:
    """``{"n", "mean", "p50", "p99", "p99.9", "p99.99", "max"}`` of per-call nanoseconds."""
    values = sorted(samples)
    out: dict = {"n": len(values)}
    if not values:
        return out
    out["mean"] = sum(values) / len(values)
    for p in PERCENTILES:
        out[f"p{p:g}"] = percentile(values, p)
    out["max"] = values[-1]
    return out


def median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 50.0)


def current_rss() -> int:
    """Resident set size of this process now, in bytes."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss()


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark (VmHWM) to the current RSS.

    Linux only (``/proc/self/clear_refs``, value 5). Returns False when the
    reset is unavailable; :func:`peak_rss` then reports the lifetime peak.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident set size of this process (since the last reset), in bytes."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def dir_bytes(path: str | os.PathLike) -> int:
    """Total size of the regular files under ``path`` (what a run wrote)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(Path(root, name)).st_size
            except OSError:
                pass
    return total
