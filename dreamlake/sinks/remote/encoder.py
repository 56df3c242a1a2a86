"""Sealed batch -> request body: the wire types of :mod:`dreamlake.server.wire`,
msgpack, one zstd frame."""

from __future__ import annotations

import msgspec

from ...server.wire import IngestBatch, SessionClose, StreamBatch, encode_batch
from .batch import SealedBatch
from .config import ZSTD_LEVEL

__all__ = ["encode", "estimate_row_bytes"]

_msgpack = msgspec.msgpack.Encoder()


def _encodable(rows: list) -> list:
    keep = []
    for row in rows:
        try:
            _msgpack.encode(row)
        except (TypeError, ValueError, OverflowError):
            continue
        keep.append(row)
    return keep


def encode(batch: SealedBatch, client: str, level: int = ZSTD_LEVEL) -> tuple[bytes, int]:
    """The request body, and how many rows had to be quarantined (a value
    msgpack cannot carry, such as an int above 64 bits); they are counted,
    the rest of the batch goes on."""
    streams = [
        StreamBatch(name="" if is_log else name, rows=rows, kind="log" if is_log else "track")
        for (name, is_log), rows in batch.streams.items()
    ]
    close = SessionClose(status=batch.close[0], error=batch.close[1]) if batch.close else None
    wire = IngestBatch(client=client, seq=batch.seq, streams=streams, params=batch.params or None, close=close)
    try:
        return encode_batch(wire, level), 0
    except (TypeError, ValueError, OverflowError):
        dropped = 0
        for stream in streams:
            kept = _encodable(stream.rows)
            dropped += len(stream.rows) - len(kept)
            stream.rows = kept
        return encode_batch(wire, level), dropped


def estimate_row_bytes(rows: list) -> int:
    """msgpack size of a sample row: the batch byte limit counts with it."""
    try:
        return max(16, len(_msgpack.encode(rows[0])))
    except (TypeError, ValueError, IndexError):
        return 256
