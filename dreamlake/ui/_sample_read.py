"""Reading many scattered rows of one local stream with its files opened once.

``StreamFiles.read(i, 1)`` opens three files per call (~150 µs); the
downsampler asks for thousands of scattered rows, so it would spend most of a
second opening files. This reads the same rows through the stream's offsets
index (``index.offsets``: little-endian uint64 per row, ``index.ts``: float64,
see :mod:`dreamlake._stream_files`), both memory-mapped, with one ``pread`` per
row for its line, and decodes each line with the store's own line rules (:mod:`dreamlake._format`).

It belongs in ``StreamFiles`` (as ``read_at(indices)``); it lives here only
while the store's files are being reshaped. ``tests/test_ui_api.py`` checks it
returns exactly what ``StreamFiles.read`` returns, so a change to the line
format shows up there.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Any, Sequence

from .._format import decode_line, line_payload
from .._stream_files import StreamFiles

__all__ = ["read_rows_at"]

#: Bytes read per row before looking for its newline (rows longer than this take more reads).
_LINE_GUESS = 512
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")


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
    with open(files.offsets_path, "rb") as off, open(files.ts_path, "rb") as tsf, open(files.data_path, "rb") as data:
        # the two index files are mapped: a sampled row costs one pread (its line), not three
        with mmap.mmap(off.fileno(), 0, access=mmap.ACCESS_READ) as offsets, mmap.mmap(tsf.fileno(), 0, access=mmap.ACCESS_READ) as stamps:
            limit = min(len(offsets), len(stamps)) // 8
            data_fd = data.fileno()
            for index in wanted:
                if index >= limit:
                    break
                line = _line(data_fd, _U64.unpack_from(offsets, index * 8)[0])
                if line is None:
                    break
                out.append((index, _F64.unpack_from(stamps, index * 8)[0], line_payload(decode_line(line))))
    return out
