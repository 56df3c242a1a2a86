"""The on-disk spool and the client slot it lives in.

A *client slot* is ``<session dir>/.remote/<client id>/``: one sending process
owns it (an ``flock`` on ``lock`` for its whole life) and keeps there

* ``state.json`` — the client id, the highest sequence number *reserved*
  (``SEQ_BLOCK`` numbers, ``SEQ_STRIDE`` apart, at a time, written before any
  is used, so a process
  that adopts the slot after a crash never reuses one), the highest sequence
  the server acknowledged from the spool, and the session's open info;
* ``spool.zst`` — append-only frames, one per batch, oldest first::

      magic b"DLS1" | length u32 | crc32 u32 | seq u64 | body (the zstd request body)

  A torn or corrupt tail (``kill -9`` mid-append, disk full) fails the length
  or crc check: it is cut off and everything before it is kept.

A slot whose lock is free belongs to a dead process: the next process for the
session (or ``dreamlake sync``) adopts it and delivers its spool first, in
order, under the same client id — the server then applies each batch once.

Budget policy: a spool holds at most ``spool_budget()`` bytes. When the budget
or the disk is full, :meth:`Spool.append` raises :class:`SpoolFull` and the
batch stays in memory; once memory is full too, the sink refuses rows and the
writer keeps them within the session's memory budget (``on_full`` decides:
``block`` — lossless — or ``drop``, counted). Nothing already spooled is ever
dropped to make room.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import struct
import threading
import zlib
from typing import Any, Iterator

from .config import SEQ_BLOCK, SEQ_STRIDE, spool_budget

__all__ = ["ClientSlot", "Spool", "SpoolFull", "slots_dir", "free_slots", "acquire_new_slot", "pending_in_slots"]

MAGIC = b"DLS1"
_HEADER = struct.Struct(">4sIIQ")
SLOTS = ".remote"


class SpoolFull(OSError):
    """The spool's disk budget (or the disk) is full."""


def slots_dir(session_dir: str) -> str:
    return os.path.join(session_dir, SLOTS)


def _write_json_atomic(path: str, value: dict, sync: bool) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as out:
        json.dump(value, out)
        if sync:
            out.flush()
            os.fsync(out.fileno())
    os.replace(tmp, path)


def _frames(path: str, start: int) -> Iterator[tuple[int, int, int, bytes]]:
    """(offset, end, seq, body) of every intact frame from ``start``; stops at a torn one."""
    try:
        source = open(path, "rb")
    except FileNotFoundError:
        return
    with source:
        source.seek(start)
        offset = start
        while True:
            head = source.read(_HEADER.size)
            if len(head) < _HEADER.size:
                return
            magic, length, crc, seq = _HEADER.unpack(head)
            if magic != MAGIC:
                return
            body = source.read(length)
            if len(body) < length or zlib.crc32(body) != crc:
                return
            end = offset + _HEADER.size + length
            yield offset, end, seq, body
            offset = end


class Spool:
    """Append-only frames of one slot; read in order from the oldest unacked."""

    def __init__(self, path: str, budget: int | None = None) -> None:
        self.path = path
        self.budget = spool_budget() if budget is None else budget
        self._out: Any = None
        self._read_at = 0  # offset of the oldest unacknowledged frame
        self.frames = 0  # frames at or after _read_at
        self.size = self._recover()

    def _recover(self) -> int:
        """Cut a torn tail; count the frames that remain."""
        good, count = 0, 0
        for offset, end, _seq, _body in self._scan(0):
            good, count = end, count + 1
        try:
            if os.path.getsize(self.path) > good:
                os.truncate(self.path, good)
        except FileNotFoundError:
            pass
        self.frames = count
        return good

    def _scan(self, start: int) -> Iterator[tuple[int, int, int, bytes]]:
        return _frames(self.path, start)

    def skip_acked(self, acked: int) -> None:
        """Start reading after the frames the server already acknowledged."""
        for offset, end, seq, _ in self._scan(self._read_at):
            if seq > acked:
                return
            self._read_at = end
            self.frames -= 1

    def append(self, seq: int, body: bytes) -> None:
        frame = _HEADER.pack(MAGIC, len(body), zlib.crc32(body), seq) + body
        if self.size + len(frame) > self.budget:
            raise SpoolFull(errno.ENOSPC, f"spool budget of {self.budget} bytes is full", self.path)
        if self._out is None:
            self._out = open(self.path, "ab", buffering=0)
        try:
            written = self._out.write(frame)
            if written != len(frame):
                raise OSError(errno.ENOSPC, "short write", self.path)
        except OSError as exc:
            self._close_out()
            try:
                os.truncate(self.path, self.size)  # never leave half a frame behind
            except OSError:
                pass
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(exc.errno, f"disk full while spooling: {exc}", self.path) from exc
            raise
        self.size += len(frame)
        self.frames += 1

    def peek(self) -> tuple[int, bytes] | None:
        for _offset, _end, seq, body in self._scan(self._read_at):
            return seq, body
        return None

    def pop(self) -> None:
        """The oldest frame is acknowledged; an empty spool is truncated to zero."""
        for _offset, end, _seq, _body in self._scan(self._read_at):
            self._read_at = end
            self.frames -= 1
            break
        if self.frames <= 0:
            self._close_out()
            try:
                os.truncate(self.path, 0)
            except FileNotFoundError:
                pass
            self._read_at = self.size = self.frames = 0

    def _close_out(self) -> None:
        if self._out is not None:
            try:
                self._out.close()
            except OSError:
                pass
            self._out = None

    def close(self) -> None:
        self._close_out()

    def forget_handles(self) -> None:
        self._out = None


class ClientSlot:
    """The slot this process sends from (see the module docstring)."""

    def __init__(self, directory: str, lock_fd: int, state: dict) -> None:
        self.directory = directory
        self._lock_fd = lock_fd
        self.state = state
        self.client: str = state["client"]
        # the first multiple of SEQ_STRIDE above anything reserved before
        self._next = (int(state.get("reserved", 0)) // SEQ_STRIDE + 1) * SEQ_STRIDE
        # the writer (sequence reservations) and the sender (acknowledged
        # position) both save state.json: one at a time, or an older snapshot
        # could land last and hand out a reserved number again after a crash
        self._save_lock = threading.Lock()
        self.spool = Spool(os.path.join(directory, "spool.zst"))
        self.spool.skip_acked(int(state.get("acked", 0)))

    # -- sequence numbers ------------------------------------------------------
    def next_seq(self) -> int:
        """The next batch's number: ``SEQ_STRIDE`` above the last (room for
        the pieces of a split batch, see split.py)."""
        seq = self._next
        if seq > int(self.state.get("reserved", 0)):
            self.state["reserved"] = seq + (SEQ_BLOCK - 1) * SEQ_STRIDE
            self.save(sync=True)
        self._next = seq + SEQ_STRIDE
        return seq

    def set_acked(self, seq: int, save: bool = True) -> None:
        if seq > int(self.state.get("acked", 0)):
            self.state["acked"] = seq
            if save:
                self.save()

    def save(self, sync: bool = False) -> None:
        with self._save_lock:
            _write_json_atomic(os.path.join(self.directory, "state.json"), self.state, sync)

    @property
    def clean(self) -> bool:
        return self.spool.frames == 0

    def release(self, remove_if_clean: bool = True) -> None:
        """Give the slot up; an empty one is removed (nothing left to deliver)."""
        self.spool.close()
        if remove_if_clean and self.clean and self.state.get("closed"):
            for name in ("spool.zst", "state.json", "lock"):
                try:
                    os.unlink(os.path.join(self.directory, name))
                except FileNotFoundError:
                    pass
            try:
                os.rmdir(self.directory)
            except OSError:
                pass
        else:
            self.save()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def forget_after_fork(self) -> None:
        """In a forked child: the parent keeps the slot and its lock."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # the parent's descriptor keeps the flock
            self._lock_fd = -1
        self.spool.forget_handles()


def _try_lock(directory: str) -> int | None:
    fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _read_state(directory: str) -> dict | None:
    try:
        with open(os.path.join(directory, "state.json")) as source:
            state = json.load(source)
    except (FileNotFoundError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("client"), str) else None


def free_slots(session_dir: str) -> Iterator[ClientSlot]:
    """Slots of dead processes, each locked for the caller while yielded."""
    root = slots_dir(session_dir)
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return
    for name in names:
        directory = os.path.join(root, name)
        if not os.path.isdir(directory):
            continue
        fd = _try_lock(directory)
        if fd is None:
            continue
        state = _read_state(directory)
        if state is None:
            os.close(fd)
            continue
        yield ClientSlot(directory, fd, state)


def acquire_new_slot(session_dir: str, info: dict, owner: bool) -> ClientSlot:
    client = f"c-{secrets.token_hex(8)}"
    directory = os.path.join(slots_dir(session_dir), client)
    os.makedirs(directory, exist_ok=True)
    fd = _try_lock(directory)
    assert fd is not None
    state = {"client": client, "reserved": 0, "acked": 0, "owner": owner, "closed": False, "info": info, "pid": os.getpid()}
    _write_json_atomic(os.path.join(directory, "state.json"), state, True)
    return ClientSlot(directory, fd, state)


def pending_in_slots(session_dir: str) -> tuple[int, int]:
    """(frames, bytes) not yet acknowledged in every slot of a session, read
    only: a live process's spool is counted, never cut or locked."""
    frames = size = 0
    root = slots_dir(session_dir)
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        directory = os.path.join(root, name)
        acked = int((_read_state(directory) or {}).get("acked", 0))
        for offset, end, seq, _body in _frames(os.path.join(directory, "spool.zst"), 0):
            if seq > acked:
                frames += 1
                size += end - offset
    return frames, size
