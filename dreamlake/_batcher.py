"""The ``_ts`` merge rule and the open-row split, as pure functions.

The writer keeps each stream's rows (dicts that already hold ``"_ts"``) and
their ``_ts`` in two parallel lists, in arrival order, and when it writes calls:

* :func:`open_group_start` — where the stream's trailing group of equal-``_ts``
  rows begins. That group is the stream's *open* row: it is held back (it may
  still merge) until a row with another ``_ts`` arrives, a barrier flushes it,
  or it is older than the writer's ``ROW_MAX_AGE``.
* :func:`merge_events` — the rows to write: consecutive equal ``_ts`` merged
  (later fields win). The common case (no two consecutive ``_ts`` equal) is found
  by one C-level pass.

No I/O and no clock here: unit tested directly, shared by the writer thread and
the agent.
"""

from __future__ import annotations

from itertools import islice
from operator import eq
from typing import Sequence

__all__ = ["merge_events", "open_group_start", "merge_rows"]


def open_group_start(ts: Sequence[float]) -> int:
    """Index of the first row of the trailing equal-``_ts`` group."""
    k = len(ts) - 1
    if k < 0:
        return 0
    last = ts[k]
    while k > 0 and ts[k - 1] == last:
        k -= 1
    return k


def merge_events(ts: list[float], rows: list[dict], merge: bool = True) -> tuple[list[dict], list[float]]:
    """One stream's rows (in arrival order, ``ts[i]`` the ``_ts`` of ``rows[i]``)
    with consecutive equal ``_ts`` merged, and their ``_ts``."""
    if not merge or not any(map(eq, ts, islice(ts, 1, None))):  # no consecutive equal _ts: nothing to merge
        return rows, ts
    out_rows: list = []
    out_ts: list[float] = []
    previous = object()
    for stamp, row in zip(ts, rows):
        if stamp == previous:
            out_rows[-1].append(row)
        else:
            out_rows.append([row])
            out_ts.append(stamp)
            previous = stamp
    return [group[0] if len(group) == 1 else _merged(group) for group in out_rows], out_ts


def _merged(rows: list[dict]) -> dict:
    merged = rows[0]  # the writer owns the row dicts: merge in place
    for row in rows[1:]:
        merged.update(row)
    return merged


def merge_rows(rows: Sequence[tuple[float, dict]]) -> list[dict]:
    """The rule over ``(ts, fields)`` pairs (for tests and docs)."""
    return merge_events([ts for ts, _ in rows], [{**fields, "_ts": ts} for ts, fields in rows])[0]
