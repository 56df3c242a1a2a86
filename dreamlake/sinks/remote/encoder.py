"""Sealed batch -> request body: the wire types of :mod:`dreamlake.server.wire`,
msgpack, one zstd frame.

Encoding holds the GIL, so rows are encoded a step at a time with the GIL
handed over between steps (:mod:`dreamlake._paced_pack`): the training thread
waits at most one step behind the sender, not one batch."""

from __future__ import annotations

import msgspec

from ..._paced_pack import rows_in_steps
from ...server.wire import IngestBatch, SessionClose, StreamBatch, encode_batch
from .batch import SealedBatch
from .config import ZSTD_LEVEL

__all__ = ["encode", "estimate_row_bytes", "rows_in_body"]

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
    close = SessionClose(status=batch.close[0], error=batch.close[1]) if batch.close else None
    try:
        streams = [
            StreamBatch(name="" if is_log else name, rows=rows_in_steps(rows), kind="log" if is_log else "track")  # type: ignore[arg-type]
            for (name, is_log), rows in batch.streams.items()
        ]
        wire = IngestBatch(client=client, seq=batch.seq, streams=streams, params=batch.params or None, close=close)
        return encode_batch(wire, level), 0
    except (TypeError, ValueError, OverflowError):
        streams = [
            StreamBatch(name="" if is_log else name, rows=rows, kind="log" if is_log else "track")
            for (name, is_log), rows in batch.streams.items()
        ]
        wire = IngestBatch(client=client, seq=batch.seq, streams=streams, params=batch.params or None, close=close)
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


def rows_in_body(body: bytes) -> int:
    """Rows a request body carries (counting a batch the server refused); 0
    when it cannot be read back."""
    import zstandard

    try:
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        batch = msgspec.msgpack.decode(raw, type=IngestBatch)
    except (zstandard.ZstdError, msgspec.DecodeError, ValueError):
        return 0
    return sum(len(stream.rows) for stream in batch.streams)
