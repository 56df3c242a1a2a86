"""Delivering a batch the server refused as too large (413): split it in
halves, down to one row, and send the pieces in order.

Pieces need sequence numbers of their own, between the batch's predecessor
and the batch, so the server still applies each once. The slot hands out
sequence numbers ``SEQ_STRIDE`` apart (see spool.py); a piece covering rows
``[lo, hi)`` of a batch of ``R`` rows with number ``S`` is numbered
``S - (R - hi)``: its *end*. Halving is deterministic, so a batch resent after
a crash or an outage splits at the same places and the pieces the server
already applied come back as duplicates. (Were the server's limit raised in
between so that a resent piece spans an applied end, its applied rows would
be applied twice: duplicated rather than lost.)

A single row the server still refuses is given back to the caller, which
keeps it in ``rejected.zst`` and counts it; the other rows go on.
"""

from __future__ import annotations

from typing import Callable

import msgspec
import zstandard

from ...server.wire import IngestAck, IngestBatch, StreamBatch, encode_batch
from .config import SEQ_STRIDE, ZSTD_LEVEL
from .service import Rejected, TooLarge

__all__ = ["splittable", "halves", "deliver_split"]


def splittable(seq: int) -> bool:
    """Numbers from before the stride (old spools, ``dreamlake sync``) have no room for pieces."""
    return seq % SEQ_STRIDE == 0


def _decode(body: bytes) -> IngestBatch:
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(body)
    return msgspec.msgpack.decode(raw, type=IngestBatch)


def _rows(batch: IngestBatch) -> int:
    return sum(len(stream.rows) for stream in batch.streams)


def halves(batch: IngestBatch) -> tuple[IngestBatch, IngestBatch] | None:
    """The first and second half of the batch's rows (streams in order); the
    params go with the first, the close with the second. None: one row or none."""
    total = _rows(batch)
    if total < 2:
        return None
    cut = total // 2
    left: list[StreamBatch] = []
    right: list[StreamBatch] = []
    seen = 0
    for stream in batch.streams:
        n = len(stream.rows)
        take = max(0, min(n, cut - seen))
        if take:
            left.append(StreamBatch(stream.name, stream.rows[:take], stream.kind))
        if take < n:
            right.append(StreamBatch(stream.name, stream.rows[take:], stream.kind))
        seen += n
    first = IngestBatch(batch.client, batch.seq - (total - cut), left, batch.params, None, batch.version)
    second = IngestBatch(batch.client, batch.seq, right, None, batch.close, batch.version)
    return first, second


def deliver_split(body: bytes, send: Callable[[bytes], IngestAck]) -> tuple[list[IngestAck], list[tuple[bytes, Rejected]]]:
    """Send the refused ``body`` in pieces: (acknowledgements, refused pieces
    with why). Retryable and auth errors propagate: the whole batch is sent
    again later and the pieces already applied are duplicates then."""
    acks: list[IngestAck] = []
    refused: list[tuple[bytes, Rejected]] = []

    def send_pieces(batch: IngestBatch, piece_body: bytes, exc: Rejected) -> None:
        pair = halves(batch) if isinstance(exc, TooLarge) else None
        if pair is None:
            refused.append((piece_body, exc))
            return
        for piece in pair:
            encoded = encode_batch(piece, ZSTD_LEVEL)
            try:
                acks.append(send(encoded))
            except Rejected as again:
                send_pieces(piece, encoded, again)

    send_pieces(_decode(body), body, TooLarge("refused as too large"))
    return acks, refused
