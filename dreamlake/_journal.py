"""A session's crash journal: every appended row, as bytes, in a memory-mapped ring.

``append()`` encodes its row (JSON, :func:`._values.encode_fields`) and copies
the bytes into this process's journal of the session before it returns. The
journal is a ``MAP_SHARED`` file mapping, so the bytes are in the kernel's page
cache the moment they are copied: a ``kill -9`` of the process cannot take them
back. The writer moves rows to the store and then advances, per stream, a
*mark* in the same mapping; the next open of the session (in any process)
replays each dead journal past its marks, exactly once, and deletes it.

File ``<session>/.journal/<pid>-<token>.ring``::

    0        header: magic, version, capacity, tail (logical offset, u64)
    4096     marks: u64 per stream id; rows of that stream with key >= mark are unwritten
    DATA_AT  ring of records (logical offset ``o`` lives at ``DATA_AT + o % capacity``)

A record is ``<u64 logical offset><u32 stream id * 4 + kind><u32 length>`` and its
payload: one row (kind ``ROW``, its JSON object holding ``_ts``) or a batch (kind
``BATCH``, the JSON ``[weight, ts list, rows]``). A record that wraps past the
end of the ring continues at ``DATA_AT``. Row ``k`` of the record at offset ``o``
has the *key* ``o << 16 | k``; marks and the tail are keys/offsets, so a stale
record of an earlier lap (its stored offset differs) is never mistaken for a
live one, and a torn last record (its payload does not decode) ends the scan.

Stream names live beside it in ``<pid>-<token>.names`` (one JSON line per
stream, written when the stream is first used): the ring may lap, names must not.

The file is ``flock``-ed by its owner for its whole life: a journal whose lock
can be taken belongs to a dead process and is recovered (:func:`recover`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import hashlib
import secrets
import shutil
import stat
import struct
from typing import Any, Callable

import msgspec

from ._values import decode_row

__all__ = ["Journal", "recover", "recover_session", "capacity_for", "JOURNAL_DIR", "journal_dirs", "ROW", "BATCH", "KEY_SHIFT", "JournalFull"]

log = logging.getLogger("dreamlake")

JOURNAL_DIR = ".journal"
SHM = "/dev/shm"
SESSION_FILE = "session"
MAGIC = b"DLJ1"
MAX_STREAMS = 1 << 16
MARKS_AT = 4096
DATA_AT = MARKS_AT + 8 * MAX_STREAMS
#: record header: logical offset, stream id * 4 + kind, payload length
RECORD = struct.Struct("<QII")
HEADER = struct.Struct("<4sIQQ")  # magic, version, capacity, tail
TAIL_AT = HEADER.size - 8
ROW, BATCH = 0, 1
#: a row's key is ``record offset << KEY_SHIFT | row number in the record``
KEY_SHIFT = 16
MIN_CAPACITY = 2 << 20
#: rows a writer may have stored but not yet marked when it was killed: at most
#: one write of one stream (the writer's batch, or a retried backlog)
MAX_RECHECK = 1 << 16
MAX_CAPACITY = 8 << 20

_U64 = struct.Struct("<Q")
_pack_record = RECORD.pack


class JournalFull(Exception):
    """The ring has no room for a record until the writer catches up."""


def capacity_for(memory_budget: int) -> int:
    """An eighth of the memory budget, within bounds (8 MiB for the default):
    the ring only holds what the writer has not yet written, and a full ring
    only makes producers wait for the writer (``block``) or count drops
    (``drop``), like the queue's own budget. It is allocated up front (shared
    memory), so it is kept small."""
    return max(MIN_CAPACITY, min(MAX_CAPACITY, memory_budget // 8))


class Journal:
    """The writing side: one per (process, open session). Producers call
    :meth:`put` with the session's producer lock held (so journal order is
    queue order); the writer calls :meth:`set_mark` and :meth:`set_tail`."""

    def __init__(self, session_dir: str, capacity: int) -> None:
        self.session_dir = session_dir
        directory = journal_dirs(session_dir)[0]
        _make_private_dir(directory)
        if directory.startswith(SHM + os.sep):  # says whose rows these are, for the sweep
            with open(os.path.join(directory, SESSION_FILE), "w") as owner:
                owner.write(os.path.realpath(session_dir))
        stem = os.path.join(directory, f"{os.getpid()}-{secrets.token_hex(4)}")
        self.path = stem + ".ring"
        self.names_path = stem + ".names"
        self.capacity = capacity
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # allocated up front: a store of a sparse mapping on a full disk is a SIGBUS;
            # this fails now (ENOSPC) instead, and the session opens without a journal
            os.posix_fallocate(fd, 0, DATA_AT + capacity)
            # pages mapped now, not on the hot path's first touch of each
            self._mm = mmap.mmap(fd, DATA_AT + capacity, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise

        self._fd = fd
        self._names_fd = os.open(self.names_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o600)
        HEADER.pack_into(self._mm, 0, MAGIC, 1, capacity, 0)
        self._mm.seek(DATA_AT)
        self.head = 0  # logical offset of the next record
        self.tail = 0  # logical offset of the oldest record not yet written to the store
        self._write = self._mm.write
        self._end = DATA_AT + capacity

    # -- producers (session lock held) -----------------------------------------
    def put(self, sid_kind: int, payload: bytes) -> None:
        """Copy one record into the ring; raises :class:`JournalFull` when the
        writer has not yet freed room for it."""
        head = self.head
        length = len(payload)
        size = RECORD.size + length
        if head + size - self.tail > self.capacity:
            raise JournalFull
        if head % self.capacity + size < self.capacity:  # the common case: no wrap
            self._write(_pack_record(head, sid_kind, length) + payload)
        else:
            self._put_wrapping(_pack_record(head, sid_kind, length) + payload)
        self.head = head + size

    def _put_wrapping(self, record: bytes) -> None:
        """A record that reaches the end of the ring continues at its start."""
        mm = self._mm
        room = self._end - mm.tell()
        self._write(record[:room])
        mm.seek(DATA_AT)
        if len(record) > room:
            self._write(record[room:])

    def declare(self, sid: int, name: str, is_log: bool) -> None:
        if sid >= MAX_STREAMS:
            raise ValueError(f"a session may hold at most {MAX_STREAMS} streams")
        line = json.dumps({"sid": sid, "name": name, "log": is_log}).encode() + b"\n"
        os.write(self._names_fd, line)

    # -- the writer --------------------------------------------------------------
    def set_mark(self, sid: int, key: int) -> None:
        """Rows of stream ``sid`` with a key below ``key`` are in the store."""
        _U64.pack_into(self._mm, MARKS_AT + 8 * sid, key)

    def set_tail(self, offset: int) -> None:
        """Records before ``offset`` are all written: their room may be reused.
        The header is written before producers may overwrite (recovery scans from it)."""
        if offset > self.tail:
            _U64.pack_into(self._mm, TAIL_AT, offset)
            self.tail = offset

    def used(self) -> int:
        return self.head - self.tail

    # -- lifecycle ---------------------------------------------------------------
    def remove(self) -> None:
        """The session closed with everything written: the journal has no more use."""
        self.close()
        _delete(self.path)

    def close(self) -> None:
        """Release the mapping and the lock (the files stay, for recovery)."""
        if self._fd < 0:
            return
        try:
            self._mm.close()
        except (BufferError, ValueError):
            pass
        os.close(self._names_fd)
        os.close(self._fd)
        self._fd = -1

    def forget_in_child(self) -> None:
        """After fork: the mapping and lock are the parent's; drop our copies
        without touching the parent's file."""
        try:
            self._mm.close()
        except (BufferError, ValueError):
            pass
        for fd in (self._fd, self._names_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._fd = -1


# -- recovery ------------------------------------------------------------------------


def _records(raw: Any, capacity: int, tail: int):
    """The valid records from ``tail`` on: (offset, sid, kind, payload)."""
    offset = tail
    ring = raw[DATA_AT : DATA_AT + capacity]
    while True:
        start = offset % capacity
        head = _wrapped(ring, start, RECORD.size, capacity)
        stored, sid_kind, length = RECORD.unpack(head)
        if stored != offset or length > capacity - RECORD.size:
            return
        payload = _wrapped(ring, (start + RECORD.size) % capacity, length, capacity)
        try:
            value = decode_row(payload)
        except msgspec.DecodeError:
            return  # torn by the kill: this append never returned
        yield offset, sid_kind >> 2, sid_kind & 3, value
        offset += RECORD.size + length


def _wrapped(ring: Any, start: int, length: int, capacity: int) -> bytes:
    end = start + length
    if end <= capacity:
        return bytes(ring[start:end])
    return bytes(ring[start:capacity]) + bytes(ring[: end - capacity])


def _read_names(path: str) -> dict[int, tuple[str, bool]]:
    names: dict[int, tuple[str, bool]] = {}
    try:
        with open(path, "rb") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                    names[int(entry["sid"])] = (str(entry["name"]), bool(entry["log"]))
                except (ValueError, KeyError, TypeError):
                    break  # a torn last line
    except FileNotFoundError:
        pass
    return names


def unwritten_rows(ring_path: str) -> dict[tuple[str, bool], tuple[list[float], list[dict]]]:
    """What a dead journal holds that its writer had not marked written, per
    stream, in append order: ``{(name, is_log): (ts list, rows)}``."""
    names = _read_names(ring_path[: -len(".ring")] + ".names")
    with open(ring_path, "rb") as f:
        raw = f.read()
    if len(raw) < DATA_AT or raw[:4] != MAGIC:
        return {}
    _, _, capacity, tail = HEADER.unpack_from(raw, 0)
    if len(raw) < DATA_AT + capacity:
        return {}
    out: dict[tuple[str, bool], tuple[list[float], list[dict]]] = {}
    for offset, sid, kind, value in _records(memoryview(raw), capacity, tail):
        stream = names.get(sid)
        if stream is None:
            continue
        mark = _U64.unpack_from(raw, MARKS_AT + 8 * sid)[0]
        if kind == ROW:
            rows = [value]
        else:
            rows = value[2]
        ts_list, kept = out.setdefault(stream, ([], []))
        base = offset << KEY_SHIFT
        for k, row in enumerate(rows):
            if base + k >= mark and type(row) is dict and "_ts" in row:
                ts_list.append(row["_ts"])
                kept.append(row)
    return {key: value for key, value in out.items() if value[1]}


def journal_dirs(session_dir: str) -> list[str]:
    """Where a session's journals live, the preferred place first: a private
    directory in ``/dev/shm`` (memory: no disk writeback stalling the hot path's
    page writes, and it outlives any process, not a reboot), else the session's
    own ``.journal`` directory. Recovery looks in both."""
    local = os.path.join(session_dir, JOURNAL_DIR)
    if os.environ.get("DREAMLAKE_JOURNAL_DIR") == "session" or not os.path.isdir(SHM) or not os.access(SHM, os.W_OK):
        return [local]
    key = hashlib.sha256(os.path.realpath(session_dir).encode()).hexdigest()[:32]
    return [os.path.join(SHM, f"dreamlake-{os.getuid()}", key), local]


def _make_private_dir(directory: str) -> None:
    """Create ``directory`` (0700 where it is ours to make); refuse a shared-memory
    directory another user owns or that is a link (someone else's files)."""
    if directory.startswith(SHM + os.sep):
        for path in (os.path.dirname(directory), directory):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
        parent = os.path.dirname(directory)
        for path in (parent, directory):
            info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
                raise PermissionError(f"{path} is not a private directory of this user")
    else:
        os.makedirs(directory, exist_ok=True)


def dead_journals(session_dir: str) -> list[tuple[str, int]]:
    """Journals of this session whose owner is gone, each with its lock taken
    (the caller closes the fd once it is done)."""
    found = []
    for directory in journal_dirs(session_dir):
        found += dead_journals_in(directory)
    return found


def dead_journals_in(directory: str) -> list[tuple[str, int]]:
    """The dead journals in one directory, each with its lock taken."""
    try:
        entries = [os.path.join(directory, e) for e in sorted(os.listdir(directory))]
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    found = []
    for entry in entries:
        if not entry.endswith(".ring"):
            continue
        path = entry
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # alive: another process's open session
            os.close(fd)
            continue
        found.append((path, fd))
    return found


def recover(session_dir: str, write: Callable[[str, bool, list, list], int], tail_rows: Callable[[str, bool, int], list]) -> int:
    """Replay every dead journal of the session through ``write(name, is_log,
    rows, ts)`` and delete it; returns the rows replayed.

    ``tail_rows(name, is_log, n)`` returns the stream's last ``n`` stored rows:
    rows the dead writer stored but had not yet marked (a kill between the two)
    are recognised there and not written twice.
    """
    from ._batcher import merge_events

    replayed = 0
    for path, fd in dead_journals(session_dir):
        try:
            for (name, is_log), (ts, rows) in unwritten_rows(path).items():
                rows, ts = merge_events(ts, rows, not is_log)
                stored = tail_rows(name, is_log, min(len(rows), MAX_RECHECK))
                if is_log:
                    done = _already_stored(list(map(_stored_log_key, stored)), list(map(_log_key, rows)))
                else:
                    done = _already_stored(list(map(_canonical, stored)), list(map(_canonical, rows)))
                if done < len(rows):
                    write(name, is_log, rows[done:], ts[done:])
                    replayed += len(rows) - done
            _delete(path)
        finally:
            os.close(fd)
    return replayed


def _delete(ring_path: str) -> None:
    """Remove a journal (ring and names) and its directory once empty."""
    for path in (ring_path, ring_path[: -len(".ring")] + ".names"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    try:
        os.rmdir(os.path.dirname(ring_path))
    except OSError:
        pass  # other journals of the session live there


def _canonical(row: Any) -> bytes:
    return msgspec.json.encode(row, order="sorted") if _finite(row) else repr(row).encode()


def _finite(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return value == value and value not in (float("inf"), float("-inf"))
    if kind is dict:
        return all(map(_finite, value.values()))
    if kind is list:
        return all(map(_finite, value))
    return True


def _already_stored(tail: list, wanted: list) -> int:
    """How many leading ``wanted`` rows are the store's last rows (the largest
    such k); rows are compared in a canonical form."""
    for k in range(min(len(tail), len(wanted)), 0, -1):
        if tail[-k:] == wanted[:k]:
            return k
    return 0


# -- the session's side ------------------------------------------------------------


def _log_key(entry: dict) -> tuple:
    from ._format import _iso

    return (entry.get("level"), entry.get("message"), _canonical(entry.get("metadata")), _iso(entry["_ts"]))


def _stored_log_key(line: dict) -> tuple:
    return (line.get("level"), line.get("message"), _canonical(line.get("metadata")), line.get("timestamp"))


def recover_session(session_dir: str) -> int:
    """Replay into the session's store whatever dead journals of the session
    hold unwritten (see :func:`recover`); returns the rows written."""
    if not any(os.path.isdir(d) for d in journal_dirs(session_dir)):
        return 0
    from ._local_sink import LocalSink

    sink = LocalSink(session_dir)

    def tail_rows(name: str, is_log: bool, n: int) -> list:
        files = sink._files(name, is_log)
        files.reconcile()
        total = files.count()
        got, _ = files.read(max(0, total - n), n)
        return [row for _, _, row in got]

    def write(name: str, is_log: bool, rows: list, ts: list) -> int:
        return sink.write_rows(name, is_log, rows, ts)

    try:
        return recover(session_dir, write, tail_rows)
    finally:
        sink.flush()
        for files in sink._streams.values():
            files.close()


def sweep_shared_memory() -> int:
    """Free the shared memory of dead journals of *other* sessions: one with
    nothing unwritten, or whose session directory is gone, is deleted; one with
    rows to recover moves into its session's ``.journal`` directory on disk, where
    the next open of that session finds it. Returns the journals handled."""
    root = os.path.join(SHM, f"dreamlake-{os.getuid()}")
    try:
        keys = os.listdir(root)
    except OSError:
        return 0
    handled = 0
    for key in keys:
        directory = os.path.join(root, key)
        try:
            with open(os.path.join(directory, SESSION_FILE)) as owner:
                session_dir = owner.read()
        except OSError:
            continue
        for path, fd in dead_journals_in(directory):
            try:
                if os.path.isdir(session_dir) and unwritten_rows(path):
                    target = os.path.join(session_dir, JOURNAL_DIR)
                    os.makedirs(target, exist_ok=True)
                    for source in (path, path[: -len(".ring")] + ".names"):
                        if os.path.exists(source):
                            shutil.copyfile(source, os.path.join(target, os.path.basename(source)))
                _delete(path)
                handled += 1
            except OSError as exc:
                log.warning("dreamlake: could not sweep the dead journal %s (%s)", path, exc)
            finally:
                os.close(fd)
        if not any(name.endswith(".ring") for name in os.listdir(directory)):
            for leftover in os.listdir(directory):
                try:
                    os.unlink(os.path.join(directory, leftover))
                except OSError:
                    pass
            try:
                os.rmdir(directory)
            except OSError:
                pass
    return handled


def start(pipe: Any, session_dir: str, memory_budget: int) -> None:
    """On opening a session: recover what dead journals of it hold, then journal
    this process's rows. A store where neither works (read-only, no space) still
    opens: the rows are then kept in memory until written, as without a journal,
    and ``health()`` shows ``journal: None``."""
    try:
        sweep_shared_memory()
    except Exception as exc:  # never a reason not to open
        log.warning("dreamlake: sweeping dead journals failed (%s: %s)", type(exc).__name__, exc)
    try:
        pipe.recovered_rows = recover_session(session_dir)
        if pipe.recovered_rows:
            log.warning("dreamlake: recovered %d rows a killed process had appended to %s", pipe.recovered_rows, session_dir)
    except Exception as exc:
        log.warning("dreamlake: could not recover the journals of %s (%s: %s); they are kept", session_dir, type(exc).__name__, exc)
    if os.environ.get("DREAMLAKE_JOURNAL", "1").lower() in ("0", "off", "false", "no"):
        return  # opted out (benchmarks compare with it off): rows wait in memory until written
    try:
        pipe.attach_journal(Journal(session_dir, capacity_for(memory_budget)))
    except OSError as exc:
        log.warning("dreamlake: no crash journal for %s (%s); rows wait in memory until written", session_dir, exc)
