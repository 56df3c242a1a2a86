"""Reading many scattered rows of one local stream with its files opened once.

``StreamFiles.read(i, 1)`` opens three files per call (~150 µs); the
downsampler asks for thousands of scattered rows, so it would spend most of a
second opening files. This reads the same rows through the stream's offsets
index (``index.offsets``: little-endian uint64 per row, ``index.ts``: float64,
see :mod:`dreamlake._stream_files`) with one open per file and two ``pread``
per row, and decodes each line with the store's own decoder.

It belongs in ``StreamFiles`` (as ``read_at(indices)``); it lives here only
while the store's files are being reshaped. ``tests/test_ui_api.py`` checks it
returns exactly what ``StreamFiles.read`` returns, so a change to the line
format shows up there.
"""

from __future__ import annotations

import os
import sys
from array import array
from typing import Any, Sequence

from .._stream_files import StreamFiles, decode_row

__all__ = ["read_rows_at"]

_LITTLE = sys.byteorder == "little"
#: Bytes read per row before looking for its newline (rows longer than this take more reads).
_LINE_GUESS = 512


def _one(kind: str, raw: bytes) -> Any:
    arr = array(kind)
    arr.frombytes(raw)
    if not _LITTLE:
        arr.byteswap()
    return arr[0]


def _row(decoded: Any) -> Any:
    """The row as logged, whether the line holds the row itself or wraps it as
    ``{"index": i, "data": {...}}`` (the store's newer line format)."""
    if isinstance(decoded, dict) and len(decoded) == 2 and "data" in decoded and "index" in decoded:
        return decoded["data"]
    return decoded


def _line(fd: int, start: int) -> bytes | None:
    size = _LINE_GUESS
    while True:
        chunk = os.pread(fd, size, start)
        newline = chunk.find(b"\n")
        if newline >= 0:
            return chunk[:newline]
        if len(chunk) < size:
            return None  # torn last line: not a complete row yet
        size *= 4


def read_rows_at(files: StreamFiles, indices: Sequence[int]) -> list[tuple[int, float, Any]]:
    """``(index, ts, row)`` for each of ``indices`` (ascending) that exists."""
    total = files.count()
    wanted = [i for i in indices if 0 <= i < total]
    if not wanted:
        return []
    out = []
    fds = [os.open(p, os.O_RDONLY) for p in (files.offsets_path, files.ts_path, files.data_path)]
    try:
        off_fd, ts_fd, data_fd = fds
        for index in wanted:
            start = _one("Q", os.pread(off_fd, 8, index * 8))
            ts = _one("d", os.pread(ts_fd, 8, index * 8))
            line = _line(data_fd, start)
            if line is None:
                break
            out.append((index, ts, _row(decode_row(line))))
    finally:
        for fd in fds:
            os.close(fd)
    return out
