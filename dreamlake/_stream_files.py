"""One stream on disk: ``data.jsonl`` plus a derived binary index.

Layout of a stream (a track directory, or ``logs/`` for the log stream):

    data.jsonl      one JSON line per row (``logs.jsonl`` for logs; see :mod:`._format`)
    index.offsets   little-endian uint64 per row: byte offset of the row's line
    index.ts        little-endian float64 per row: the row's ``_ts``
    index.unsorted  present once a row's ``_ts`` went backwards (range reads scan)
    .lock           flock target serialising appenders across processes

The index is derived and rebuildable: before every append (under the lock) the
files are reconciled — a torn last line is cut off, complete lines not yet in
the index are indexed, and an index that runs ahead of the data is rebuilt.
So several processes can append to one stream, each row gets the next index,
and a crash at any point never breaks reading or loses earlier rows.
"""

from __future__ import annotations

import bisect
import fcntl
import logging
import os
import sys
from array import array
from itertools import islice
from operator import gt
from typing import Any

import msgspec

from ._format import decode_line, encode_log_chunk, encode_log_lines, encode_track_chunk, encode_track_lines, line_payload, line_ts
from ._gil import Pace

__all__ = ["StreamFiles", "ENCODE_CHUNK_ROWS", "IndexCorrupt", "index_lines"]

#: Index entries checked against the data when a process first opens a stream.
SPOT_CHECKS = 16


def index_lines(lines: bytes, position: int) -> tuple[list[int], list[float]]:
    """The index entries of complete lines that start at byte ``position``: each
    row line's offset and ``_ts``. A garbage line stays in the file but is never
    indexed."""
    starts: list[int] = []
    stamps: list[float] = []
    for line in lines.split(b"\n")[:-1]:
        try:
            ts = line_ts(decode_line(line))
        except msgspec.DecodeError:
            ts = None
        if ts is not None:
            starts.append(position)
            stamps.append(ts)
        position += len(line) + 1
    return starts, stamps


class IndexCorrupt(Exception):
    """The derived index disagrees with the data (bad offsets, wrong ``_ts``):
    :meth:`StreamFiles.rebuild_index` makes it again from the data."""


def _row_matches(obj: Any, position: int, stamp: float) -> bool:
    """Does a stored line agree with its index entry (its index and its ``_ts``)?"""
    if type(obj) is dict and type(obj.get("data")) is dict and "index" in obj and obj["index"] != position:
        return False
    ts = line_ts(obj)
    # a log entry keeps its time as ISO text with microseconds: equal to the microsecond
    return ts is None or ts == stamp or abs(ts - stamp) < 1e-6

#: Rows encoded per C call; bounds how long the writer holds the GIL (~0.2 ms).
ENCODE_CHUNK_ROWS = 1024
#: ...and bytes per chunk, so large rows do not make large transient buffers.
ENCODE_CHUNK_BYTES = 256 << 10

log = logging.getLogger("dreamlake")

_LITTLE = sys.byteorder == "little"
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)


def _u64(values) -> bytes:
    arr = array("Q", values)
    if not _LITTLE:
        arr.byteswap()
    return arr.tobytes()


def _f64(values) -> bytes:
    arr = array("d", values)
    if not _LITTLE:
        arr.byteswap()
    return arr.tobytes()


def _load(kind: str, raw: bytes) -> array:
    arr = array(kind)
    arr.frombytes(raw)
    if not _LITTLE:
        arr.byteswap()
    return arr


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class StreamFiles:
    """One stream's files. ``is_log`` picks the line format (log entries or track rows)."""

    def __init__(self, directory: str, data_path: str | None = None, is_log: bool = False) -> None:
        self.directory = directory
        self._encode = encode_log_lines if is_log else encode_track_lines
        self._encode_chunk = encode_log_chunk if is_log else encode_track_chunk
        self.data_path = data_path or os.path.join(directory, "data.jsonl")
        self.offsets_path = os.path.join(directory, "index.offsets")
        self.ts_path = os.path.join(directory, "index.ts")
        self.unsorted_path = os.path.join(directory, "index.unsorted")
        self.lock_path = os.path.join(directory, ".lock")
        self._fds: tuple[int, int, int, int] | None = None
        # what we know after our own last append: (data size, rows, last ts)
        self._known: tuple[int, int, float] | None = None
        # (data size, rows) before an append that failed part-way: its lines may have landed
        self._unsure: tuple[int, int] | None = None
        self._chunk_rows = 64  # learned from the bytes per row of earlier chunks

    # -- file handles --------------------------------------------------------
    def _open(self) -> tuple[int, int, int, int]:
        if self._fds is None:
            os.makedirs(self.directory, exist_ok=True)
            self._fds = tuple(
                os.open(p, _OPEN_FLAGS, 0o644)
                for p in (self.data_path, self.offsets_path, self.ts_path, self.lock_path)
            )  # type: ignore[assignment]
            self._known = None
        return self._fds  # type: ignore[return-value]

    def close(self) -> None:
        if self._fds is not None:
            for fd in self._fds:
                os.close(fd)
            self._fds = None
            self._known = None

    def forget_handles(self) -> None:
        """After fork: the inherited descriptors share flock state with the parent."""
        if self._fds is not None:
            for fd in self._fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fds = None
        self._known = None

    # -- reconciliation ------------------------------------------------------
    def _reconcile(self, data_fd: int, off_fd: int, ts_fd: int) -> tuple[int, int, float]:
        """Make index and data agree; returns (data size, rows, last ts)."""
        data_size = os.fstat(data_fd).st_size
        off_size = os.fstat(off_fd).st_size
        ts_size = os.fstat(ts_fd).st_size
        known = self._known
        if known is not None and known[0] == data_size and known[1] * 8 == off_size == ts_size:
            return known
        rows = min(off_size, ts_size) // 8
        if known is None and rows and not self._spot_check(data_fd, off_fd, ts_fd, rows, data_size):
            log.warning("dreamlake: the index of %s disagrees with its data; rebuilding it from the data", self.data_path)
            rows = 0  # index everything again below
            if os.path.exists(self.unsorted_path):
                os.unlink(self.unsorted_path)
        indexed_end = 0
        last_ts = float("-inf")
        while rows:
            start = int(_load("Q", os.pread(off_fd, 8, (rows - 1) * 8))[0])
            if start < data_size:
                chunk = os.pread(data_fd, min(data_size - start, 1 << 20), start)
                newline = chunk.find(b"\n")
                if newline >= 0:
                    indexed_end = start + newline + 1
                    last_ts = _load("d", os.pread(ts_fd, 8, (rows - 1) * 8))[0]
                    break
            rows -= 1  # index entry points past the data: drop it
        if off_size != rows * 8:
            os.ftruncate(off_fd, rows * 8)
        if ts_size != rows * 8:
            os.ftruncate(ts_fd, rows * 8)
        if data_size > indexed_end:
            tail = os.pread(data_fd, data_size - indexed_end, indexed_end)
            complete = tail.rfind(b"\n") + 1
            if complete < len(tail):  # a torn last line: never acknowledged, cut it
                os.ftruncate(data_fd, indexed_end + complete)
                data_size = indexed_end + complete
            starts, stamps = index_lines(tail[:complete], indexed_end)
            if starts:
                if any(b < a for a, b in zip([last_ts, *stamps], stamps)):
                    self._mark_unsorted()
                _write_all(off_fd, _u64(starts))
                _write_all(ts_fd, _f64(stamps))
                rows += len(starts)
                last_ts = stamps[-1]
        return data_size, rows, last_ts

    def _spot_check(self, data_fd: int, off_fd: int, ts_fd: int, rows: int, data_size: int) -> bool:
        """A few index entries, evenly spread and the last, point at the start of a
        line that carries their index and ``_ts``: cheap enough for every first open
        (O(SPOT_CHECKS)), and it catches a zeroed or shifted index."""
        for k in sorted({rows - 1, *(rows * j // SPOT_CHECKS for j in range(SPOT_CHECKS))}):
            start = int(_load("Q", os.pread(off_fd, 8, k * 8))[0])
            stamp = _load("d", os.pread(ts_fd, 8, k * 8))[0]
            if start >= data_size:
                continue  # runs ahead of the data: the reconcile below drops it
            if start and os.pread(data_fd, 1, start - 1) != b"\n":
                return False
            line = os.pread(data_fd, min(data_size - start, 1 << 20), start).split(b"\n", 1)[0]
            try:
                if not _row_matches(decode_line(line), k, stamp):
                    return False
            except msgspec.DecodeError:
                return False
        return True

    def rebuild_index(self) -> None:
        """Make the derived index again from the data (after :class:`IndexCorrupt`)."""
        data_fd, off_fd, ts_fd, lock_fd = self._open()
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            log.warning("dreamlake: the index of %s disagrees with its data; rebuilding it from the data", self.data_path)
            os.ftruncate(off_fd, 0)
            os.ftruncate(ts_fd, 0)
            if os.path.exists(self.unsorted_path):
                os.unlink(self.unsorted_path)
            self._known = None
            self._known = self._reconcile(data_fd, off_fd, ts_fd)
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)

    def _mark_unsorted(self) -> None:
        if not os.path.exists(self.unsorted_path):
            with open(self.unsorted_path, "w") as marker:
                marker.write("a _ts went backwards in this stream; _ts range reads scan\n")

    # -- appending -----------------------------------------------------------
    def append(
        self,
        rows: list[dict],
        ts: list[float],
        pace: Pace | None = None,
    ) -> int:
        """Append rows under the stream lock; returns the index of the first.

        ``rows`` are dicts (``_ts`` included); each line records its index.
        ``pace`` (the writer thread's) sizes the chunks and runs between them.

        Exactly once: when an append fails part-way (ENOSPC on a later chunk, a
        short write, EROFS) the files are cut back to where they were; where
        that is impossible (a read-only remount), the next append — the writer's
        retry of the same rows, possibly with more behind them — first skips the
        rows whose lines did land, recognised byte for byte (each line carries
        its index). No duplicates, no gaps.
        """
        data_fd, off_fd, ts_fd, lock_fd = self._open()
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            data_size, first, last_ts = self._reconcile(data_fd, off_fd, ts_fd)
            batch_first = first  # where this batch's first row is (reported to flush windows)
            if self._unsure is not None:
                landed = self._landed(rows, data_fd, data_size, first)
                if landed:
                    batch_first = self._unsure[1]
                    rows, ts = rows[landed:], ts[landed:]
                self._unsure = None
            if not rows:
                return batch_first
            if ts and (ts[0] < last_ts or any(map(gt, ts, islice(ts, 1, None)))):
                self._mark_unsorted()
            start = (data_size, first)
            try:
                data_size = self._write_chunks(rows, ts, data_fd, off_fd, ts_fd, data_size, first, pace)
            except BaseException:
                self._unsure = start
                self._known = None
                self._cut_back(data_fd, off_fd, ts_fd, *start)
                raise
            self._known = (data_size, first + len(rows), ts[-1] if ts else last_ts)
            return batch_first
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)

    def _write_chunks(self, rows, ts, data_fd, off_fd, ts_fd, data_size, first, pace) -> int:
        written = 0
        while written < len(rows):
            step = self._chunk_rows if pace is None else pace.step_rows(self._chunk_rows)
            chunk = rows[written : written + step]
            buf, starts, data_size = self._encode_chunk(chunk, first + written, data_size)
            per_row = len(buf) // len(chunk) + 1
            self._chunk_rows = max(8, min(ENCODE_CHUNK_ROWS, ENCODE_CHUNK_BYTES // per_row))
            _write_all(data_fd, buf)
            _write_all(off_fd, starts if type(starts) is bytes else _u64(starts))
            _write_all(ts_fd, _f64(ts[written : written + len(chunk)]))
            written += len(chunk)
            if pace is not None and written < len(rows):
                pace.pause()
        return data_size

    @staticmethod
    def _cut_back(data_fd: int, off_fd: int, ts_fd: int, data_size: int, rows: int) -> None:
        """Make the files as if the failed append never happened, if the disk lets us."""
        try:
            os.ftruncate(data_fd, data_size)
            os.ftruncate(off_fd, rows * 8)
            os.ftruncate(ts_fd, rows * 8)
        except OSError:
            pass  # e.g. EROFS: the next append recognises what landed (see append)

    def _landed(self, rows: list[dict], data_fd: int, data_size: int, count: int) -> int:
        """How many leading ``rows`` are already on disk from the failed append
        recorded in ``_unsure``: lines from its start offset that are, byte for
        byte, what encoding those rows at those indices gives."""
        offset, first = self._unsure  # type: ignore[misc]
        if count <= first or data_size <= offset:
            return 0
        stored = os.pread(data_fd, data_size - offset, offset)
        expected = self._encode(rows[: count - first], first)
        landed = 0
        for mine, theirs in zip(expected.split(b"\n"), stored.split(b"\n")):
            if mine != theirs or not mine:
                break
            landed += 1
        return landed

    # -- reading -------------------------------------------------------------
    def count(self) -> int:
        try:
            return min(os.path.getsize(self.offsets_path), os.path.getsize(self.ts_path)) // 8
        except FileNotFoundError:
            return 0

    def reconcile(self) -> None:
        """Bring the index up to date with the data (e.g. written by a crashed process)."""
        if not os.path.exists(self.data_path):
            return
        data_fd, off_fd, ts_fd, lock_fd = self._open()
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            self._known = self._reconcile(data_fd, off_fd, ts_fd)
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)

    def read(self, start: int, limit: int) -> tuple[list[tuple[int, float, Any]], int]:
        """Rows ``start .. start+limit-1`` as (index, ts, row); also the total."""
        total = self.count()
        start = max(0, start)
        end = min(total, start + max(0, limit))
        if start >= end:
            return [], total
        with open(self.offsets_path, "rb") as off, open(self.ts_path, "rb") as tsf, open(self.data_path, "rb") as data:
            off.seek(start * 8)
            starts = _load("Q", off.read((end - start + 1) * 8))
            tsf.seek(start * 8)
            stamps = _load("d", tsf.read((end - start) * 8))
            base = starts[0]
            data.seek(base)
            if len(starts) > end - start:
                buf = data.read(starts[-1] - base)
            else:
                buf = data.read()
        out = []
        for i in range(end - start):
            s = starts[i] - base
            e = buf.find(b"\n", s)
            if e < 0 or s < 0 or (s and buf[s - 1 : s] != b"\n" and starts[i] != 0):
                raise IndexCorrupt(self.data_path)
            try:
                obj = decode_line(buf[s:e])
            except msgspec.DecodeError:
                raise IndexCorrupt(self.data_path) from None
            if not _row_matches(obj, start + i, stamps[i]):
                raise IndexCorrupt(self.data_path)
            out.append((start + i, stamps[i], line_payload(obj)))
        return out, total

    def index_range(self, start_ts: float | None, end_ts: float | None) -> tuple[int, int]:
        """Row indices [lo, hi) whose _ts lies in [start_ts, end_ts), when sorted."""
        total = self.count()
        if total == 0:
            return 0, 0
        with open(self.ts_path, "rb") as tsf:
            if os.path.exists(self.unsorted_path):
                raise _Unsorted
            view = _PreadFloats(tsf.fileno(), total)
            lo = 0 if start_ts is None else bisect.bisect_left(view, start_ts)
            hi = total if end_ts is None else bisect.bisect_left(view, end_ts)
        return lo, max(lo, hi)

    def scan_ts(self, start_ts: float | None, end_ts: float | None, limit: int) -> list[int]:
        """Indices of rows whose _ts is in range, for streams whose _ts is not sorted."""
        found: list[int] = []
        lo_ok = float("-inf") if start_ts is None else start_ts
        hi_ok = float("inf") if end_ts is None else end_ts
        with open(self.ts_path, "rb") as tsf:
            base = 0
            while len(found) < limit:
                raw = tsf.read(8 << 16)
                if not raw:
                    break
                stamps = _load("d", raw[: len(raw) // 8 * 8])
                found.extend(base + i for i, t in enumerate(stamps) if lo_ok <= t < hi_ok)
                base += len(stamps)
        return found[:limit]

    def first_last_ts(self) -> tuple[float | None, float | None]:
        total = self.count()
        if total == 0:
            return None, None
        with open(self.ts_path, "rb") as tsf:
            first = _load("d", tsf.read(8))[0]
            tsf.seek((total - 1) * 8)
            last = _load("d", tsf.read(8))[0]
        return first, last


class _Unsorted(Exception):
    pass


class _PreadFloats:
    """A read-only float64 sequence over an index file, for bisect: O(log n) reads."""

    def __init__(self, fd: int, length: int) -> None:
        self._fd = fd
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: int) -> float:
        return _load("d", os.pread(self._fd, 8, i * 8))[0]
