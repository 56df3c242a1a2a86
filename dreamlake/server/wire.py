"""The batched-ingest wire format, shared by the server and its clients.

Importable without the server's dependencies (only msgspec and zstandard), so
the remote sink and tests use the very same types. The format is specified in
``docs/protocol.md`` ("Batched ingest") precisely enough for a C++ client:

``POST /ingest/{workspace}/{name}`` with
``Content-Type: application/vnd.dreamlake.batch+msgpack`` and
``Content-Encoding: zstd``; the body is one zstd frame holding one msgpack
:class:`IngestBatch`. The reply is JSON: an :class:`IngestAck`.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import msgspec
import zstandard

__all__ = [
    "BATCH_CONTENT_TYPE",
    "PROTOCOL_VERSION",
    "StreamBatch",
    "SessionClose",
    "IngestBatch",
    "StreamRange",
    "IngestAck",
    "encode_batch",
    "decode_ack",
]

PROTOCOL_VERSION = 1
BATCH_CONTENT_TYPE = "application/vnd.dreamlake.batch+msgpack"


class StreamBatch(msgspec.Struct, forbid_unknown_fields=True):
    """Rows for one stream. ``kind="track"``: each row a map holding a finite
    ``_ts`` and at least one more field. ``kind="log"``: each row a map with
    ``_ts``, ``level``, ``message`` and optionally ``metadata``; ``name`` is
    ignored (send ``""``)."""

    name: str
    rows: list[dict[str, Any]]
    kind: Literal["track", "log"] = "track"


class SessionClose(msgspec.Struct, forbid_unknown_fields=True):
    """Optional last act of a batch: record the session's final status."""

    status: Literal["completed", "failed", "interrupted"]
    error: str | None = None


class IngestBatch(msgspec.Struct, forbid_unknown_fields=True):
    """One request. ``client`` names the sending process (a stable random id,
    1–128 characters); ``seq`` numbers its batches for this session, rising
    (gaps allowed: our client leaves room for the pieces of a split batch).
    A batch whose ``seq`` is not above the highest applied for
    (session, client) is a duplicate: acknowledged, never applied again."""

    client: str
    seq: int
    streams: list[StreamBatch] = []
    params: dict[str, Any] | None = None
    close: SessionClose | None = None
    version: int = PROTOCOL_VERSION


class StreamRange(msgspec.Struct):
    """Indices assigned to one stream of the batch (after the ``_ts`` merge:
    ``count`` rows, ``startIndex`` .. ``endIndex`` inclusive; both ``None``
    when the stream had no rows)."""

    name: str
    kind: str
    startIndex: int | None
    endIndex: int | None
    count: int


class IngestAck(msgspec.Struct):
    """The reply: ``duplicate`` is true when this (client, seq) had been applied
    before; ``ranges`` then repeats what was assigned the first time."""

    client: str
    seq: int
    duplicate: bool
    ranges: list[StreamRange]
    sessionId: str


_encoder = msgspec.msgpack.Encoder()
_ack_decoder = msgspec.json.Decoder(IngestAck)
_compressors = threading.local()  # a ZstdCompressor is not thread-safe; reused per thread and level


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_compressors, "by_level", None)
    if cache is None:
        cache = _compressors.by_level = {}
    compressor = cache.get(level)
    if compressor is None:
        compressor = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return compressor


def encode_batch(batch: IngestBatch, level: int = 3) -> bytes:
    """msgpack, then one zstd frame (with its content size, so the server can
    refuse an oversized batch before decompressing it). zstandard's
    ``compress`` releases the GIL."""
    return _compressor(level).compress(_encoder.encode(batch))


def decode_ack(body: bytes) -> IngestAck:
    return _ack_decoder.decode(body)
