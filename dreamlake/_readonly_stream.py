"""A stream of the local store read without writing a byte.

:class:`._stream_files.StreamFiles` brings its derived index up to date before
reading, which writes. A reader of a finished (or foreign, or read-only) store
must not: it trusts the index as far as it agrees with the data and indexes the
rest in memory — complete lines past the last indexed row (a store written by
upstream DreamLake has no index at all, a crashed writer may leave a tail).
Garbage and torn lines are skipped, as the writer's reconcile would skip them.

It offers the read interface :func:`._local_sink.read_page` and
:func:`._local_sink.read_ts_page` use (``count``, ``read``, ``index_range``,
``scan_ts``, ``rebuild_index``), so pages have exactly the shape of a live
session's reads. Rows the index covers are read by ``StreamFiles.read`` (which
only opens files for reading), so an index that disagrees with the data raises
:class:`._stream_files.IndexCorrupt` as for the writer; "rebuilding" it here
means ignoring it and indexing the whole data file in memory.
"""

from __future__ import annotations

import bisect
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from ._format import decode_line, line_payload
from ._stream_files import StreamFiles, _load, _Unsorted, index_lines

__all__ = ["ReadOnlyStream"]

log = logging.getLogger("dreamlake")


@dataclass(frozen=True)
class _Snapshot:
    indexed: int  # rows covered by the on-disk index
    data_end: int  # end of the last complete line
    tail_starts: list[int] = field(default_factory=list)  # rows past the index, in memory
    tail_ts: list[float] = field(default_factory=list)
    sorted: bool = True

    @property
    def total(self) -> int:
        return self.indexed + len(self.tail_starts)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


class ReadOnlyStream:
    def __init__(self, directory: str, data_path: str | None = None) -> None:
        self.data_path = data_path or os.path.join(directory, "data.jsonl")
        self.offsets_path = os.path.join(directory, "index.offsets")
        self.ts_path = os.path.join(directory, "index.ts")
        self.unsorted_path = os.path.join(directory, "index.unsorted")
        self._cache: tuple[tuple, _Snapshot] | None = None
        self._trust_index = True
        self._indexed = StreamFiles(directory, data_path)  # reads only; never asked to write

    # -- what is on disk now -----------------------------------------------------
    def _snapshot(self) -> _Snapshot:
        try:
            stat = os.stat(self.data_path)
        except FileNotFoundError:
            return _Snapshot(0, 0)
        key = (stat.st_size, stat.st_mtime_ns, stat.st_ino, _size(self.offsets_path), _size(self.ts_path))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        snapshot = self._scan(stat.st_size)
        self._cache = (key, snapshot)
        return snapshot

    def _scan(self, data_size: int) -> _Snapshot:
        rows = min(_size(self.offsets_path), _size(self.ts_path)) // 8 if self._trust_index else 0
        indexed_end, last_ts = 0, float("-inf")
        with open(self.data_path, "rb") as data:
            if rows:
                with open(self.offsets_path, "rb") as off, open(self.ts_path, "rb") as tsf:
                    while rows:  # an index entry past the data (a crash) is not trusted
                        start = int(_load("Q", os.pread(off.fileno(), 8, (rows - 1) * 8))[0])
                        if start < data_size:
                            newline = os.pread(data.fileno(), min(data_size - start, 1 << 20), start).find(b"\n")
                            if newline >= 0:
                                indexed_end = start + newline + 1
                                last_ts = _load("d", os.pread(tsf.fileno(), 8, (rows - 1) * 8))[0]
                                break
                        rows -= 1
            data.seek(indexed_end)
            tail = data.read(data_size - indexed_end)
        complete = tail.rfind(b"\n") + 1
        starts, stamps = index_lines(tail[:complete], indexed_end)
        in_order = all(b >= a for a, b in zip([last_ts, *stamps], stamps))
        return _Snapshot(rows, indexed_end + complete, starts, stamps, in_order and not os.path.exists(self.unsorted_path))

    def _starts_and_ts(self, snap: _Snapshot, lo: int, hi: int) -> tuple[list[int], list[float]]:
        starts: list[int] = []
        stamps: list[float] = []
        if lo < snap.indexed:
            end = min(hi, snap.indexed)
            with open(self.offsets_path, "rb") as off, open(self.ts_path, "rb") as tsf:
                starts.extend(_load("Q", os.pread(off.fileno(), (end - lo) * 8, lo * 8)))
                stamps.extend(_load("d", os.pread(tsf.fileno(), (end - lo) * 8, lo * 8)))
        if hi > snap.indexed:
            first = max(lo, snap.indexed) - snap.indexed
            starts.extend(snap.tail_starts[first : hi - snap.indexed])
            stamps.extend(snap.tail_ts[first : hi - snap.indexed])
        return starts, stamps

    # -- the read interface of StreamFiles ------------------------------------------
    def count(self) -> int:
        return self._snapshot().total

    def read(self, start: int, limit: int) -> tuple[list[tuple[int, float, Any]], int]:
        snap = self._snapshot()
        start = max(0, start)
        end = min(snap.total, start + max(0, limit))
        out: list[tuple[int, float, Any]] = []
        if start < min(end, snap.indexed):  # the writer's reader: opens read-only, checks rows
            out.extend(self._indexed.read(start, min(end, snap.indexed) - start)[0])
        if end > snap.indexed:
            first = max(start, snap.indexed)
            starts, stamps = self._starts_and_ts(snap, first, end)
            with open(self.data_path, "rb") as data:
                data.seek(starts[0])
                buf = data.read(snap.data_end - starts[0])
            for i, begin in enumerate(starts):  # lines indexed in memory from this very data
                s = begin - starts[0]
                out.append((first + i, stamps[i], line_payload(decode_line(buf[s : buf.index(b"\n", s)]))))
        return out, snap.total

    def rebuild_index(self) -> None:
        """After :class:`IndexCorrupt`: index the data in memory from now on (the
        index on disk is left as it is: this stream never writes)."""
        log.warning("dreamlake: the index of %s disagrees with its data; reading the data itself", self.data_path)
        self._trust_index = False
        self._cache = None

    def index_range(self, start_ts: float | None, end_ts: float | None) -> tuple[int, int]:
        snap = self._snapshot()
        if snap.total == 0:
            return 0, 0
        if not snap.sorted:
            raise _Unsorted
        view = _TsView(self, snap)
        lo = 0 if start_ts is None else bisect.bisect_left(view, start_ts)
        hi = snap.total if end_ts is None else bisect.bisect_left(view, end_ts)
        return lo, max(lo, hi)

    def scan_ts(self, start_ts: float | None, end_ts: float | None, limit: int) -> list[int]:
        snap = self._snapshot()
        lo_ok = float("-inf") if start_ts is None else start_ts
        hi_ok = float("inf") if end_ts is None else end_ts
        found: list[int] = []
        step = 1 << 16
        for base in range(0, snap.total, step):
            stamps = self._starts_and_ts(snap, base, min(snap.total, base + step))[1]
            found.extend(base + i for i, t in enumerate(stamps) if lo_ok <= t < hi_ok)
            if len(found) >= limit:
                break
        return found[:limit]

    def first_last_ts(self) -> tuple[float | None, float | None]:
        snap = self._snapshot()
        if snap.total == 0:
            return None, None
        return self._starts_and_ts(snap, 0, 1)[1][0], self._starts_and_ts(snap, snap.total - 1, snap.total)[1][0]


class _TsView:
    """The stream's ``_ts`` as a sequence for bisect: O(log n) reads."""

    def __init__(self, stream: ReadOnlyStream, snap: _Snapshot) -> None:
        self._stream = stream
        self._snap = snap

    def __len__(self) -> int:
        return self._snap.total

    def __getitem__(self, i: int) -> float:
        return self._stream._starts_and_ts(self._snap, i, i + 1)[1][0]
