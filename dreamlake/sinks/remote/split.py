"""Delivering one batch, in pieces when the server refuses it as too large
(413): halves, down to one row, sent in order.

Pieces need sequence numbers of their own, between the batch's predecessor
and the batch, so the server still applies each once. The slot hands out
sequence numbers ``SEQ_STRIDE`` apart (see spool.py); a piece covering rows
``[lo, hi)`` of a batch of ``R`` rows with number ``S`` is numbered
``S - (R - hi)``: its *end*.

The piece boundaries are durable: the first split is recorded in the slot
(``state.json``) before any piece is sent, and so is every later halving of
a piece, before its halves are sent. Whoever sends the batch again (this
process after an outage, the next process, ``dreamlake sync``) sends exactly
the recorded pieces, never the whole batch, and splits further only inside a
recorded piece. So every piece the server applied ends at a recorded
boundary and comes back as a duplicate, whatever the server's limit is by
then: a raised limit cannot make a resent piece span rows already applied.

What the server refuses for good (a single row still too large, or a batch
or piece refused for another reason) is kept in the slot's ``rejected.zst``
at once, under its own seq, and reported to the caller once; a resend skips
it rather than sending it again. The other rows go on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import msgspec
import zstandard

from ...server.wire import IngestAck, IngestBatch, StreamBatch, encode_batch
from .config import SEQ_STRIDE, ZSTD_LEVEL
from .service import Rejected, TooLarge
from .spool import ClientSlot

__all__ = ["splittable", "piece", "SlotBook", "HandedOver", "Outcome", "deliver"]

#: (piece seq, piece body, why, None or why it could not be kept)
OnRefused = Callable[[int, bytes, Rejected, "str | None"], None]


class HandedOver(Exception):
    """The slot was taken away (closing) while a batch was being delivered."""


def splittable(seq: int) -> bool:
    """Numbers from before the stride (old spools) have no room for pieces."""
    return seq % SEQ_STRIDE == 0


def _decode(body: bytes) -> IngestBatch:
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(body)
    return msgspec.msgpack.decode(raw, type=IngestBatch)


def _rows(batch: IngestBatch) -> int:
    return sum(len(stream.rows) for stream in batch.streams)


def piece(batch: IngestBatch, lo: int, hi: int) -> IngestBatch:
    """Rows ``[lo, hi)`` of the batch (streams in order), numbered by their
    end; the params go with the first piece, the close with the last."""
    total = _rows(batch)
    streams: list[StreamBatch] = []
    seen = 0
    for stream in batch.streams:
        n = len(stream.rows)
        start, end = max(lo - seen, 0), min(hi - seen, n)
        if start < end:
            streams.append(StreamBatch(stream.name, stream.rows[start:end], stream.kind))
        seen += n
    params = batch.params if lo == 0 else None
    close = batch.close if hi == total else None
    return IngestBatch(batch.client, batch.seq - (total - hi), streams, params, close, batch.version)


class SlotBook:
    """Where a batch's split is recorded and refused pieces are kept: the
    slot's ``state.json`` and ``rejected.zst``. ``on_refused`` hears of each
    piece kept (or that could not be kept), once."""

    def __init__(self, slot: ClientSlot, on_refused: OnRefused) -> None:
        self.slot = slot
        self.on_refused = on_refused

    def split_ends(self, seq: int) -> list[int] | None:
        return self.slot.split_ends(seq)

    def record_split(self, seq: int, ends: list[int]) -> None:
        self.slot.record_split(seq, ends)

    def refused_before(self, seq: int) -> bool:
        return self.slot.rejected.has(seq)

    def keep_refused(self, seq: int, body: bytes, why: Rejected) -> bool:
        """Keep a refused piece; True if it was not kept before."""
        try:
            if not self.slot.rejected.keep(seq, body):
                return False
        except OSError as exc:
            self.on_refused(seq, body, why, str(exc))
            return True
        self.on_refused(seq, body, why, None)
        return True


@dataclass
class Outcome:
    acks: list[IngestAck] = field(default_factory=list)
    refused: int = 0  # pieces refused for good by this delivery (not by an earlier one)
    split: bool = False  # delivered in pieces


def deliver(seq: int, body: bytes, send: Callable[[bytes], IngestAck], book: SlotBook) -> Outcome:
    """Send batch ``seq``: whole, or as the pieces recorded for it, halving a
    piece the server refuses as too large (recorded first). Retryable and
    auth errors propagate: the batch is sent again later, as its recorded
    pieces, and those already applied come back as duplicates."""
    out = Outcome()

    def refuse(piece_seq: int, piece_body: bytes, why: Rejected) -> None:
        out.refused += book.keep_refused(piece_seq, piece_body, why)

    if book.refused_before(seq):  # kept by an attempt that ended before its acknowledgement was saved
        return out
    ends = book.split_ends(seq)
    if ends is None:
        try:
            out.acks.append(send(body))
            return out
        except TooLarge as exc:
            batch = _decode(body)
            total = _rows(batch)
            if not splittable(seq) or not 2 <= total <= SEQ_STRIDE:
                refuse(seq, body, exc)
                return out
            ends = [total // 2, total]
            book.record_split(seq, ends)
        except Rejected as exc:
            refuse(seq, body, exc)
            return out
    else:
        batch = _decode(body)
    out.split = True

    def send_piece(lo: int, hi: int) -> None:
        part = piece(batch, lo, hi)
        if book.refused_before(part.seq):
            return
        encoded = encode_batch(part, ZSTD_LEVEL)
        try:
            out.acks.append(send(encoded))
        except TooLarge as exc:
            if hi - lo < 2:
                refuse(part.seq, encoded, exc)
                return
            mid = lo + (hi - lo) // 2
            ends.append(mid)
            ends.sort()
            book.record_split(seq, ends)
            send_piece(lo, mid)
            send_piece(mid, hi)
        except Rejected as exc:
            refuse(part.seq, encoded, exc)

    lo = 0
    for hi in list(ends):  # the recorded pieces; halvings recurse inside one
        send_piece(lo, hi)
        lo = hi
    return out
