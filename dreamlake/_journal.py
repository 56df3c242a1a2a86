"""A session's crash journal: every appended row, as bytes, in a memory-mapped ring.

With the C hot path (:mod:`._hotpath`), ``append()`` copies its row as a
binary record into this process's journal of the session before it returns.
The journal is a ``MAP_SHARED`` file mapping, so the bytes are in the kernel's
page cache the moment they are copied: a ``kill -9`` of the process cannot take
them back. The writer reads records from the ring, writes them to the store and
then advances, per stream, a *mark* in the same mapping; the next open of the
session (in any process, the agent included) replays each dead journal past its
marks, exactly once, and deletes it.

File ``/dev/shm/dreamlake-<uid>/<session key>/<pid>-<token>.ring`` (or the
session's ``.journal/`` where there is no ``/dev/shm``)::

    0         header: magic, version, capacity (u64 at 8), tail (u64 at 16)
    4096      marks: u64 per stream id; rows of that stream with key >= mark are unwritten
    DATA_AT   ring of records (see _hotpath.c); logical offset o lives at DATA_AT + o % capacity

Row ``k`` of the record at offset ``o`` has the key ``o << 16 | k``. Stream
names live beside it in ``<pid>-<token>.names`` (one JSON line per stream): the
ring may lap, names must not. The ring file is ``flock``-ed by its owner for its
whole life: a journal whose lock can be taken belongs to a dead process.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import mmap
import os
import secrets
import shutil
import stat
import struct
from typing import Any, Callable

import msgspec

from ._hotpath import BATCH, DATA_AT, KEY_SHIFT, MARKS_AT, MAX_STREAMS, PACK, Ring

__all__ = ["Journal", "recover", "recover_session", "capacity_for", "start", "attach", "unwritten_rows", "KEY_SHIFT", "PACK", "BATCH"]

log = logging.getLogger("dreamlake")

JOURNAL_DIR = ".journal"
SHM = "/dev/shm"
SESSION_FILE = "session"
MAGIC = b"DLR1"
HEADER = struct.Struct("<4sIQQ")  # magic, version, capacity, tail
MIN_CAPACITY = 64 << 10
MAX_CAPACITY = 32 << 20
#: rows a killed writer may have stored but not yet marked: at most one write of one stream
MAX_RECHECK = 1 << 16

_U64 = struct.Struct("<Q")
_decode_pack = msgspec.msgpack.Decoder().decode


def capacity_for(memory_budget: int, room: int | None = None) -> int:
    """Half the memory budget, within bounds (32 MiB for the default 64 MiB), and
    at most an eighth of the ``room`` free where the ring lives: the ring holds
    only what the writer has not yet written; a full ring makes producers wait
    (``block``) or counts drops (``drop``), like the queue budget. It is shared
    memory allocated up front, so a small ``/dev/shm`` (a container's 64 MB)
    gets a small ring rather than none for the next sessions.

    Why 32 MiB: a robot loop of 50,000 ticks in a tight burst (~15 MB of
    records) fills an 8 MiB ring and then waits for the writer; with 32 MiB the
    W2 p99.99 fell from ~6.5 ms to ~17 µs (benchmarks, 2026-11-29)."""
    capacity = min(MAX_CAPACITY, memory_budget // 2)
    if room is not None:
        capacity = min(capacity, room // 8)
    return max(MIN_CAPACITY, capacity) // 4096 * 4096


def free_room(directory: str) -> int | None:
    """Bytes free to unprivileged users on the filesystem that holds (or will hold)
    ``directory``; None where that cannot be told."""
    while directory and not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    try:
        stats = os.statvfs(directory or "/")
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def ring_state(ring: Ring) -> dict:
    """What ``health()["journal"]`` shows of a ring, whoever holds it."""
    return {
        "capacity": ring.capacity,
        "used_bytes": ring.head - ring.tail,
        "unread_rows": ring.rows_in - ring.rows_out,
        "closed": ring.closed,
    }


class Journal:
    """One per (process, open session): the ring file, its mapping and :attr:`ring`
    (the C object producers and the writer use)."""

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
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # allocated up front: a store into a sparse mapping on a full disk is a SIGBUS;
            # this fails now (ENOSPC) instead, and the session opens without a journal
            os.posix_fallocate(fd, 0, DATA_AT + capacity)
            # pages mapped now, not on the hot path's first touch of each
            self._mm = mmap.mmap(fd, DATA_AT + capacity, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
            HEADER.pack_into(self._mm, 0, MAGIC, 1, capacity, 0)
            self.ring = Ring(self._mm, capacity)
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise
        self._fd = fd
        self._names_fd = os.open(self.names_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def declare(self, sid: int, name: str, is_log: bool) -> None:
        if sid >= MAX_STREAMS:
            raise ValueError(f"a session may hold at most {MAX_STREAMS} streams")
        os.write(self._names_fd, json.dumps({"sid": sid, "name": name, "log": is_log}).encode() + b"\n")

    def remove(self) -> None:
        """The session closed with everything written: the journal has no more use."""
        self.close()
        _delete(self.path)

    def close(self) -> None:
        """Release the mapping and the lock (the files stay, for recovery)."""
        if self._fd < 0:
            return
        self.ring.release()
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
        self.ring.release()
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

    def state(self) -> dict:
        return {"path": self.path, **ring_state(self.ring)}


class MemoryRing:
    """The ring in private anonymous memory, for sessions whose rows no later
    open could recover from a file (remote and fan-out sessions, and remote
    sessions through the agent: their crash safety is the remote spool, once the
    writer has taken the rows). It gives them the same C hot path as a local
    session; it survives no crash. Same interface as :class:`Journal`."""

    path = None

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # private: a forked child must not share the parent's unwritten rows
        flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0x20) | getattr(mmap, "MAP_POPULATE", 0)
        self._mm = mmap.mmap(-1, DATA_AT + capacity, flags=flags)
        HEADER.pack_into(self._mm, 0, MAGIC, 1, capacity, 0)
        self.ring = Ring(self._mm, capacity)
        self._open = True

    def declare(self, sid: int, name: str, is_log: bool) -> None:
        if sid >= MAX_STREAMS:
            raise ValueError(f"a session may hold at most {MAX_STREAMS} streams")

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self.ring.release()
        try:
            self._mm.close()
        except (BufferError, ValueError):
            pass

    remove = close
    forget_in_child = close

    def state(self) -> dict:
        return {"path": None, "crash_safe": False, **ring_state(self.ring)}


def attach_in_memory(pipe: Any, memory_budget: int) -> None:
    """The C hot path without a crash journal (see :class:`MemoryRing`)."""
    try:
        pipe.attach_journal(MemoryRing(capacity_for(memory_budget)))
    except (OSError, ValueError) as exc:
        log.warning("dreamlake: no in-memory ring (%s); appends take the Python path", exc)


# -- recovery ------------------------------------------------------------------------


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
        raw = bytearray(f.read())
    if len(raw) < DATA_AT or raw[:4] != MAGIC:
        return {}
    _, _, capacity, _ = HEADER.unpack_from(raw, 0)
    if len(raw) < DATA_AT + capacity:
        return {}
    ring = Ring(raw, capacity, recover=True)
    out: dict[tuple[str, bool], tuple[list[float], list[dict]]] = {}
    try:
        while True:
            count, streams = ring.read(1 << 16, None, _decode_pack)
            if not count:
                break
            for sid, stamps, rows, keys in streams:
                stream = names.get(sid)
                if stream is None:
                    continue
                mark = _U64.unpack_from(raw, MARKS_AT + 8 * sid)[0]
                for stamp, row, key in zip(stamps, rows, keys):
                    if key >= mark and type(row) is dict:
                        ts_list, kept = out.setdefault(stream, ([], []))
                        ts_list.append(stamp)
                        kept.append(row)
    finally:
        ring.release()
    return out


def journal_dirs(session_dir: str) -> list[str]:
    """Where a session's journals live, the preferred place first: a private
    directory in ``/dev/shm`` (memory: no disk writeback stalling the hot path's
    page writes; it outlives any process, not a reboot), else the session's own
    ``.journal`` directory. Recovery looks in both."""
    local = os.path.join(session_dir, JOURNAL_DIR)
    if os.environ.get("DREAMLAKE_JOURNAL_DIR") == "session" or not os.path.isdir(SHM) or not os.access(SHM, os.W_OK):
        return [local]
    key = hashlib.sha256(os.path.realpath(session_dir).encode()).hexdigest()[:32]
    return [os.path.join(SHM, f"dreamlake-{os.getuid()}", key), local]


def _make_private_dir(directory: str) -> None:
    """Create ``directory`` (0700 where it is ours to make); refuse a shared-memory
    directory another user owns or that is a link (someone else's files)."""
    if directory.startswith(SHM + os.sep):
        parent = os.path.dirname(directory)
        for path in (parent, directory):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
        for path in (parent, directory):
            info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
                raise PermissionError(f"{path} is not a private directory of this user")
    else:
        os.makedirs(directory, exist_ok=True)


def dead_journals_in(directory: str) -> list[tuple[str, int]]:
    """The dead journals in one directory, each with its lock taken (the caller
    closes the fd once done)."""
    try:
        entries = [os.path.join(directory, e) for e in sorted(os.listdir(directory)) if e.endswith(".ring")]
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    found = []
    for path in entries:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
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
    are recognised there and not written twice."""
    from ._batcher import merge_events

    replayed = 0
    for directory in journal_dirs(session_dir):
        for path, fd in dead_journals_in(directory):
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
    """Remove a journal (ring and names) and its directory once empty of journals."""
    for path in (ring_path, ring_path[: -len(".ring")] + ".names"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    directory = os.path.dirname(ring_path)
    try:
        if not any(e.endswith(".ring") for e in os.listdir(directory)):
            for leftover in os.listdir(directory):
                os.unlink(os.path.join(directory, leftover))
            os.rmdir(directory)
    except OSError:
        pass  # another process's journal appeared meanwhile, or it is gone already


def _canonical(row: Any) -> bytes:
    from ._format import _has_nonfinite

    return repr(row).encode() if _has_nonfinite(row) else msgspec.json.encode(row, order="sorted")


def _already_stored(tail: list, wanted: list) -> int:
    """How many leading ``wanted`` rows are the store's last rows (the largest
    such k); rows are compared in a canonical form."""
    for k in range(min(len(tail), len(wanted)), 0, -1):
        if tail[-k:] == wanted[:k]:
            return k
    return 0


def _log_key(entry: dict) -> tuple:
    from ._format import _iso

    return (entry.get("level"), entry.get("message"), _canonical(entry.get("metadata")), _iso(entry["_ts"]))


def _stored_log_key(line: dict) -> tuple:
    return (line.get("level"), line.get("message"), _canonical(line.get("metadata")), line.get("timestamp"))


# -- the session's side ------------------------------------------------------------


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

    try:
        return recover(session_dir, sink.write_rows, tail_rows)
    finally:
        sink.flush()
        for files in sink._streams.values():
            files.close()


def sweep_shared_memory() -> int:
    """Free the shared memory of dead journals of *other* sessions: one with
    nothing unwritten, or whose session directory is gone, is deleted; one with
    rows to recover moves into its session's ``.journal`` directory on disk,
    where the next open of that session finds it. Returns the journals handled."""
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
    return handled


def start(pipe: Any, session_dir: str, memory_budget: int, journal: bool) -> None:
    """On opening a session: recover what dead journals of it hold, then (with
    ``journal``) journal this process's rows. A store where neither works
    (read-only, no space) still opens: rows then wait in memory until written,
    as without a journal, and ``health()`` shows ``journal: None``."""
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
    if journal:
        attach(pipe, session_dir, memory_budget)


def attach(pipe: Any, session_dir: str, memory_budget: int) -> None:
    """Journal this process's rows of the session (see :func:`start`)."""
    try:
        room = free_room(journal_dirs(session_dir)[0])
        pipe.attach_journal(Journal(session_dir, capacity_for(memory_budget, room)))
    except OSError as exc:
        log.warning("dreamlake: no crash journal for %s (%s); rows wait in memory until written", session_dir, exc)
