"""The ingest journal of one session in the local store: exactly-once batches.

Files, in ``<session>/.ingest/`` (a dot directory: readers of the store never
see it):

    journal      append-only frames, ``[u32 length][u32 crc32][msgpack record]``
                 (little-endian): per batch a record, then a ``done`` marker
    applied.json snapshot: per client, the highest seq applied and the ranges
                 of its last few batches (written atomically)

A record is written, and fsynced, *before* the batch's rows are appended; it
holds the batch's rows (already merged) and the plan: for every stream, the
index its first row gets and how many rows. The record is the commit point:

* crash before the record is complete → its frame is torn (length/crc do not
  match); it is cut on load; nothing was acknowledged; the client retries and
  the batch is applied fresh.
* crash after the record, during or before the row appends → on load, every
  record without a ``done`` marker is *redone*: for each stream, rows whose
  index is already on disk are skipped and the missing tail is appended; its
  parameter merge and close are applied again (a merge of the same values).
  So the batch ends up applied exactly once, with the indices the plan
  promised. The marker is written after the rows, not fsynced.
* power loss: only the journal is fsynced per batch (one fsync, not one per
  stream); the stream files are fsynced before the journal is compacted and
  on shutdown. So on load the rows of *every* record are checked against the
  streams (a ``stat`` per stream) and any lost tail is appended again.

Only this server writes the session while it runs (it holds the session's
lock for the whole plan → record → append sequence), so the plan's indices are
the stream's current row counts. Once the journal passes a size limit it is
compacted: the snapshot is written (atomic rename, fsynced), then the journal is
truncated; a crash in between only means records are redone, which is a no-op
for rows already on disk.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import deque
from typing import Any, Callable

import msgspec

from .._fsutil import read_json

__all__ = ["IngestJournal", "JournalRecord", "ranges_of", "fsync_path", "KEEP_ACKS"]

_HEADER = struct.Struct("<II")
#: per client, the ranges of this many most recent batches are kept for duplicate acks
KEEP_ACKS = 16


class JournalRecord(msgspec.Struct, array_like=True):
    client: str
    seq: int
    #: per stream: [kind, name, first index, row count]
    plan: list[tuple[str, str, int, int]]
    rows: list[list[dict]]
    params: dict | None = None
    close: tuple[str, str | None] | None = None
    #: a marker written after the batch was fully applied (plan and rows empty)
    done: bool = False


def ranges_of(record: JournalRecord) -> list[dict]:
    """What the batch was assigned, from its plan (the ack's ``ranges``)."""
    return [
        {"name": name, "kind": kind, "startIndex": first if n else None, "endIndex": first + n - 1 if n else None, "count": n}
        for kind, name, first, n in record.plan
    ]


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(JournalRecord).decode


def fsync_path(path: str) -> None:
    """fsync a file (or a directory) by name."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: str, data: bytes) -> None:
    """Temp file, fsync, rename, fsync the directory: the snapshot is the only
    copy of what the truncated journal held, so it must survive a power loss
    (``_fsutil.write_json_atomic`` does not fsync)."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_path(os.path.dirname(path))


class IngestJournal:
    def __init__(self, session_dir: str, fsync: bool, compact_bytes: int) -> None:
        self.directory = os.path.join(session_dir, ".ingest")
        self.path = os.path.join(self.directory, "journal")
        self.snapshot_path = os.path.join(self.directory, "applied.json")
        self.fsync = fsync
        self.compact_bytes = compact_bytes
        #: client → (highest seq applied, deque of (seq, ranges))
        self.applied: dict[str, tuple[int, deque]] = {}
        self._fd: int | None = None
        self._size = 0

    # -- loading ----------------------------------------------------------------
    def load(self, redo: Callable[[JournalRecord, bool], None]) -> int:
        """Read the snapshot and the journal and call ``redo(record, rows_only)``
        for every batch record: ``rows_only`` when a ``done`` marker follows it
        (its rows are checked — a power loss may have lost them — but its params
        and close are not applied again). Returns how many had no marker."""
        snapshot = read_json(self.snapshot_path, default={}) or {}
        for client, entry in snapshot.items():
            acks = deque(((int(s), r) for s, r in entry.get("acks", [])), maxlen=KEEP_ACKS)
            self.applied[client] = (int(entry["seq"]), acks)
        if not os.path.exists(self.path):
            return 0
        with open(self.path, "rb") as src:
            data = src.read()
        records: list[JournalRecord] = []
        done: set[tuple[str, int]] = set()
        position = 0
        while position + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, position)
            payload = data[position + _HEADER.size : position + _HEADER.size + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            try:
                record = _decode(payload)
            except msgspec.DecodeError:
                break
            if record.done:
                done.add((record.client, record.seq))
            else:
                records.append(record)
            position += _HEADER.size + length
        if position < len(data):  # a torn last frame: never acknowledged
            with open(self.path, "r+b") as out:
                out.truncate(position)
                os.fsync(out.fileno())
        self._size = position
        redone = 0
        for record in records:
            self._remember(record.client, record.seq, ranges_of(record))
            finished = (record.client, record.seq) in done
            redo(record, finished)
            if not finished:
                self.mark_done(record)
                redone += 1
        return redone

    # -- the exactly-once bookkeeping ------------------------------------------
    def duplicate(self, client: str, seq: int) -> list | None:
        """The ranges to acknowledge again if (client, seq) was applied, else None."""
        entry = self.applied.get(client)
        if entry is None or seq > entry[0]:
            return None
        for old_seq, ranges in entry[1]:
            if old_seq == seq:
                return ranges
        return []  # applied long ago: acknowledged without its ranges

    def _remember(self, client: str, seq: int, ranges: list) -> None:
        entry = self.applied.get(client)
        if entry is None:
            entry = self.applied[client] = (seq, deque(maxlen=KEEP_ACKS))
        entry[1].append((seq, ranges))
        self.applied[client] = (max(seq, entry[0]), entry[1])

    def record(self, record: JournalRecord) -> None:
        """Append the record and make it durable: after this the batch counts as applied."""
        self._append(record, self.fsync)
        self._remember(record.client, record.seq, ranges_of(record))

    def mark_done(self, record: JournalRecord) -> None:
        """After the rows are on disk: no redo needed. Not fsynced (a lost marker
        only means a redo, which skips rows already on disk)."""
        self._append(JournalRecord(record.client, record.seq, [], [], done=True), False)

    def _append(self, record: JournalRecord, sync: bool) -> None:
        payload = _encode(record)
        frame = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        if self._fd is None:
            os.makedirs(self.directory, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        view = memoryview(frame)
        while view:
            view = view[os.write(self._fd, view) :]
        if sync:
            os.fsync(self._fd)
        self._size += len(frame)

    def maybe_compact(self, sync_rows: Callable[[], None]) -> None:
        """Past the size limit: ``sync_rows()`` makes every journalled row durable
        in its stream, then the snapshot replaces the journal."""
        if self._size < self.compact_bytes:
            return
        sync_rows()
        snapshot: dict[str, Any] = {
            client: {"seq": seq, "acks": [[s, r] for s, r in acks]} for client, (seq, acks) in self.applied.items()
        }
        _write_synced(self.snapshot_path, msgspec.json.encode(snapshot))
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            if self.fsync:
                os.fsync(self._fd)
        self._size = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
