"""The chunk codec: a run of rows ↔ one zstd frame holding a msgpack array.

msgpack keeps every value the API accepts (NaN and ±inf included, which
JSON cannot); zstd at a low level costs little CPU and shrinks typical rows
5-10×. A chunk holds at most :data:`CHUNK_ROWS` rows, so a read of ``limit``
rows decodes at most ``limit / CHUNK_ROWS + 2`` chunks: O(limit).
"""

from __future__ import annotations

import threading
from typing import Iterator

import msgspec
import zstandard

__all__ = ["CHUNK_ROWS", "MERGE_ROWS", "encode_chunk", "decode_chunk", "decode_rows_at", "split"]

#: most rows in one chunk (a batch larger than this becomes several chunks)
CHUNK_ROWS = 512
#: a write smaller than this is merged into the stream's last chunk while that
#: one is smaller than this too, so row-by-row appends do not leave a million
#: one-row chunks (the merge re-encodes at most this many rows)
MERGE_ROWS = 256

_LEVEL = 1
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list).decode
_decode_raw = msgspec.msgpack.Decoder(list[msgspec.Raw]).decode  # splits the array, builds no rows
_decode_row = msgspec.msgpack.Decoder().decode
_local = threading.local()  # zstd contexts are not thread-safe; one pair per thread


def _codecs() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    pair = getattr(_local, "pair", None)
    if pair is None:
        pair = _local.pair = (zstandard.ZstdCompressor(level=_LEVEL), zstandard.ZstdDecompressor())
    return pair


def encode_chunk(rows: list[dict]) -> bytes:
    return _codecs()[0].compress(_encode(rows))


def decode_chunk(data: bytes) -> list[dict]:
    return _decode(_codecs()[1].decompress(data))


def decode_rows_at(data: bytes, positions: list[int]) -> list[tuple[int, dict]]:
    """(position, row) for ``positions`` within a chunk: the other
    rows are skipped over as raw bytes, never turned into Python objects."""
    raw = _decode_raw(_codecs()[1].decompress(data))
    return [(p, _decode_row(raw[p])) for p in positions if p < len(raw)]


def split(rows: list, size: int = CHUNK_ROWS) -> Iterator[tuple[int, list]]:
    """(offset, piece) pieces of at most ``size`` rows."""
    for offset in range(0, len(rows), size):
        yield offset, rows[offset : offset + size]
