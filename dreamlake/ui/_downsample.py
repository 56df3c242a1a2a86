"""Turning a track of any length into a chart-sized series, in O(points shown).

Two steps, both bounded by the number of points the chart can show:

1. **Sample.** The index range ``[lo, hi)`` is read in full when it holds at most
   ``SAMPLE_FACTOR * points`` rows; otherwise only the rows at that many evenly
   spaced indices (always including ``lo`` and ``hi - 1``) are read, each found
   in O(1) through the stream's offsets index. Reading cost never depends on the
   track's length.
2. **Min/max per bucket.** The sample is cut into ``points // 2`` contiguous
   buckets (by index); for every field the row holding the bucket's minimum and
   the row holding its maximum are kept, plus the first and last row. A line
   drawn through them has the same envelope as one drawn through every sampled
   row: no spike in the sample is flattened away.

Error bound: when the range holds at most ``SAMPLE_FACTOR * points`` rows the
series is *exact* (every extreme of every bucket is shown; ``exact: true``).
Beyond that, extremes are those of the sample: with stride
``s = (hi - lo - 1) / (SAMPLE_FACTOR * points - 1)`` a feature narrower than
``s`` rows can fall between two samples and be missed (``exact: false`` and
``stride`` say so). Zooming in narrows ``[lo, hi)`` and shrinks ``s`` until the
view is exact again — so at 10 M rows and a 1000-pixel chart, a view of 4,000
rows or fewer shows every row's extreme.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

__all__ = [
    "SAMPLE_FACTOR",
    "sample_indices",
    "flatten_numeric",
    "minmax_keep",
]

#: Rows read per point shown, at most. 4 keeps short spikes visible while the
#: read stays a few thousand rows for a full-width chart.
SAMPLE_FACTOR = 4
#: Numbers in a list field (``q=[...]``) shown as separate series ``q[0]``...
MAX_LIST_ITEMS = 16


def sample_indices(lo: int, hi: int, limit: int) -> list[int]:
    """At most ``limit`` ascending indices evenly spread over ``[lo, hi)``,
    first and last included; every index when the range is that small."""
    count = hi - lo
    if count <= 0:
        return []
    if count <= limit:
        return list(range(lo, hi))
    if limit <= 1:
        return [lo]
    span = count - 1
    return [lo + (i * span) // (limit - 1) for i in range(limit)]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def flatten_numeric(row: dict, prefix: str = "", out: dict | None = None) -> dict[str, float]:
    """The numeric leaves of a row: nested dicts as ``a.b``, short lists as
    ``q[0]``...; ``_ts`` and non-numbers (bools, strings) are left out."""
    out = {} if out is None else out
    for key, value in row.items():
        if not prefix and key == "_ts":
            continue
        name = f"{prefix}{key}"
        number = _number(value)
        if number is not None:
            out[name] = number
        elif isinstance(value, dict):
            flatten_numeric(value, name + ".", out)
        elif isinstance(value, list) and value and len(value) <= MAX_LIST_ITEMS:
            for i, item in enumerate(value):
                number = _number(item)
                if number is not None:
                    out[f"{name}[{i}]"] = number
    return out


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def minmax_keep(columns: Iterable[Sequence[float | None]], length: int, buckets: int) -> list[int]:
    """Positions to keep so every bucket keeps each column's min and max.

    ``columns`` are equally long (``length``); ``None`` and non-finite values
    are skipped. Returns ascending positions, first and last included; at most
    ``2 * buckets * len(columns) + 2`` of them, and all when that is no fewer.
    """
    columns = list(columns)
    if length == 0:
        return []
    if length <= 2 * buckets:
        return list(range(length))
    keep = {0, length - 1}
    size = length / buckets
    for b in range(buckets):
        start, end = int(b * size), min(length, int((b + 1) * size))
        for column in columns:
            lo_pos = hi_pos = -1
            lo_val = hi_val = 0.0
            for pos in range(start, end):
                value = column[pos]
                if not _finite(value):
                    continue
                if lo_pos < 0 or value < lo_val:  # type: ignore[operator]
                    lo_pos, lo_val = pos, value  # type: ignore[assignment]
                if hi_pos < 0 or value > hi_val:  # type: ignore[operator]
                    hi_pos, hi_val = pos, value  # type: ignore[assignment]
            if lo_pos >= 0:
                keep.add(lo_pos)
                keep.add(hi_pos)
    return sorted(keep)
