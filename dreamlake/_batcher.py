"""Grouping rows per stream and applying the ``_ts`` merge rule.

Pure bookkeeping: no I/O, no clock (the caller passes ``now``), so it is unit
tested directly and shared by the writer thread and the agent.

Merge rule: within a stream, consecutive rows with equal ``_ts`` become one row
(later fields win) as long as that row is still *open*. A stream's newest row
stays open until a row with a different ``_ts`` arrives on that stream, the
stream is flushed, or the row is older than ``max_open_age`` seconds.
Streams created with ``merge=False`` (logs) never merge.
"""

from __future__ import annotations

from typing import Any, Hashable, Iterable

__all__ = ["Batcher", "merge_rows"]


def merge_rows(rows: Iterable[tuple[float, dict]]) -> list[dict]:
    """Reference form of the merge rule over one stream's rows, in order."""
    out: list[dict] = []
    last_ts: Any = None
    for ts, fields in rows:
        if out and ts == last_ts:
            out[-1].update(fields)
        else:
            out.append({"_ts": ts, **fields})
            last_ts = ts
    return out


class Batcher:
    """Per-stream open rows plus the closed rows waiting to be written."""

    __slots__ = ("_open", "closed", "closed_count")

    def __init__(self) -> None:
        # stream -> [ts, row, opened_at]
        self._open: dict[Hashable, list] = {}
        # stream -> (rows, ts_list); rows are dicts starting with "_ts"
        self.closed: dict[Hashable, tuple[list[dict], list[float]]] = {}
        self.closed_count = 0

    def _close(self, stream: Hashable, entry: list) -> None:
        bucket = self.closed.get(stream)
        if bucket is None:
            bucket = self.closed[stream] = ([], [])
        bucket[0].append(entry[1])
        bucket[1].append(entry[0])
        self.closed_count += 1

    def add(self, stream: Hashable, ts: float, fields: dict, now: float, merge: bool = True) -> None:
        entry = self._open.get(stream)
        if entry is not None:
            if merge and entry[0] == ts:
                entry[1].update(fields)
                return
            self._close(stream, entry)
        row = {"_ts": ts}
        row.update(fields)
        self._open[stream] = [ts, row, now]

    def add_many(self, stream: Hashable, rows: Iterable[tuple[float, dict]], now: float, merge: bool = True) -> None:
        for ts, fields in rows:
            self.add(stream, ts, fields, now, merge)

    def close_open(self, streams: Iterable[Hashable] | None = None, older_than: float | None = None) -> None:
        """Close open rows: of the given streams (all when None), or only those
        opened at or before ``older_than``."""
        keys = list(self._open) if streams is None else [s for s in streams if s in self._open]
        for stream in keys:
            entry = self._open[stream]
            if older_than is not None and entry[2] > older_than:
                continue
            del self._open[stream]
            self._close(stream, entry)

    def take_closed(self, streams: Iterable[Hashable] | None = None) -> dict[Hashable, tuple[list[dict], list[float]]]:
        """Hand over closed rows (of the given streams, or all)."""
        if streams is None:
            taken, self.closed = self.closed, {}
            self.closed_count = 0
            return taken
        taken = {}
        for stream in streams:
            bucket = self.closed.pop(stream, None)
            if bucket is not None:
                taken[stream] = bucket
                self.closed_count -= len(bucket[0])
        return taken

    def forget(self, streams: Iterable[Hashable]) -> None:
        for stream in streams:
            self._open.pop(stream, None)
            bucket = self.closed.pop(stream, None)
            if bucket is not None:
                self.closed_count -= len(bucket[0])

    @property
    def open_count(self) -> int:
        return len(self._open)
