"""The embedded backend: the local store format under ``--root``.

Written by the same code as local mode (``LocalSink``, ``StreamFiles``,
``FileStore``), so ``dreamlake ls/show/tail --root DIR`` read the server's
data. Per session the server keeps one :class:`_Live` (its lock, its sink, its
ingest journal); every write to a session runs under that session's lock, so
requests from many clients get consecutive indices. Reads take no lock: a
stream's index is written after its rows, so a reader sees whole rows only.

Memory stays bounded however many sessions a server sees: a session no
request is using is *evicted* (its files flushed and fsynced, its journal
closed, its ``_Live`` dropped) once more than ``Settings.max_live_sessions``
are held or it has been idle ``Settings.session_idle_seconds``; the next
request reopens it from disk, and its journal (``applied.json`` + journal,
:mod:`._journal`) brings back the exactly-once record, so a late retry of a
batch acknowledged before the eviction is still a duplicate.

The server must be the only writer of its root while it runs (the journal's
plan relies on it); local-mode processes may read it at any time.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from operator import itemgetter
from pathlib import Path
from typing import Any, Iterator, Sequence

from .._fsutil import read_json
from .._names import check_track_name
from .._local_sink import (
    LocalSink,
    list_track_names,
    read_page,
    read_ts_page,
    stream_files,
    track_stats,
)
from .._pipe import LOG_STREAM
from .._stream_files import StreamFiles
from ..ui._sample_read import read_rows_at as read_scattered
from ._errors import Forbidden, NotFound
from ._journal import IngestJournal, JournalRecord, fsync_path, ranges_of
from ._local_uploads import LocalUploads
from ._prepare import check_session_name, check_workspace
from ._settings import Settings
from ._storage import PreparedBatch, SessionRef, StreamRows
from ._uploads import Sweeper, UploadSpec
from .wire import IngestAck, StreamRange

__all__ = ["LocalStorage", "session_id_for"]

log = logging.getLogger("dreamlake.server")

_END_STATUSES = ("completed", "failed", "interrupted")
#: sessions evicted by one request at most (the rest go on the next ones)
_EVICT_PER_CALL = 8
_get_ts = itemgetter("_ts")


def session_id_for(workspace: str, name: str) -> str:
    """A stable id for ``workspace/name``: URL-safe base64 of the prefix, so the
    local store needs no catalog and any session already on disk has an id."""
    return base64.urlsafe_b64encode(f"{workspace}/{name}".encode()).decode().rstrip("=")


def _prefix_of(session_id: str) -> tuple[str, str]:
    try:
        padded = session_id + "=" * (-len(session_id) % 4)
        workspace, name = base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8").split("/")
        return check_workspace(workspace), check_session_name(name)
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        raise NotFound(f"no session with id {session_id!r}") from None


def _record(workspace: str, name: str, meta: dict) -> dict:
    keep = ("name", "workspace", "prefix", "description", "tags", "folder", "metadata", "status", "error",
            "createdAt", "updatedAt", "closedAt")
    record = {"id": session_id_for(workspace, name), **{k: meta.get(k) for k in keep}}
    record["name"], record["workspace"] = name, workspace
    record["writeProtected"] = bool(meta.get("writeProtected"))
    return record


class _Live:
    """What the server holds for one session it has touched."""

    def __init__(self, ref: SessionRef, directory: str, settings: Settings) -> None:
        self.ref = ref
        self.directory = directory
        self.lock = threading.Lock()
        #: requests holding this session now (changed under LocalStorage._live_lock); never evicted above 0
        self.users = 0
        self.last_used = time.monotonic()
        self.sink = LocalSink(directory)
        self.journal = IngestJournal(directory, settings.fsync != "never", settings.journal_compact_bytes)
        self._counters: dict[tuple[str, bool], StreamFiles] = {}
        #: files written by journalled batches and not fsynced yet (the journal covers them)
        self.unsynced: set[str] = set()

    def sync(self) -> None:
        for path in sorted(self.unsynced):
            fsync_path(path)
        self.unsynced.clear()

    def count(self, name: str, is_log: bool) -> int:
        """Rows in a stream (its index brought up to date once per server life)."""
        files = self._counters.get((name, is_log))
        if files is None:
            files = self._counters[(name, is_log)] = stream_files(self.directory, name, is_log)
            files.reconcile()
            files.close()
        return files.count()

    def release_handles(self) -> None:
        """Close every file descriptor (all reopen on the next write)."""
        self.sink.flush()
        self.sink.after_fork_in_child()  # LocalSink's "close my descriptors, keep my state"
        self.journal.close()

    def close(self, sync: bool) -> None:
        self.sink.flush()
        if sync:
            self.sync()
        self.journal.close()

    def evict(self, sync: bool) -> None:
        """Make everything durable and close every descriptor: this object is dropped."""
        self.close(sync)
        self.sink.after_fork_in_child()


class LocalStorage:
    """:class:`~._storage.Storage` on the local store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = os.path.abspath(settings.root)
        os.makedirs(self.root, exist_ok=True)
        self._sync_batches = settings.fsync in ("batches", "always")
        self._sync_rest = settings.fsync == "always"
        self._live: OrderedDict[str, _Live] = OrderedDict()  # least recently used first
        self._live_lock = threading.Lock()
        self.evicted = 0  # sessions evicted so far (for /metrics)
        self._open: OrderedDict[str, _Live] = OrderedDict()  # sessions holding handles, oldest first
        self.uploads = LocalUploads(Path(settings.state_dir) / "uploads", settings.upload_ttl,
                                    settings.fsync == "always")
        self._sweep_uploads = Sweeper(self.uploads.sweep, settings.upload_ttl)

    # -- sessions --------------------------------------------------------------
    def _directory(self, workspace: str, name: str) -> str:
        return os.path.join(self.root, workspace, name)

    def _meta(self, directory: str) -> dict | None:
        return read_json(os.path.join(directory, "session.json"), default=None)

    def _live_for(self, workspace: str, name: str, create: bool, pin: bool = False) -> _Live:
        """The session's ``_Live``, loaded on first use. ``pin``: count the
        caller as a user (it must call :meth:`_unpin`), so it is not evicted
        while the caller holds it."""
        session_id = session_id_for(workspace, name)
        with self._live_lock:
            live = self._live.get(session_id)
            if live is None:
                directory = self._directory(workspace, name)
                meta = self._meta(directory)
                if meta is None and not create:
                    raise NotFound(f"no session {workspace}/{name}")
                ref = SessionRef(session_id, workspace, name, bool((meta or {}).get("writeProtected")))
                live = _Live(ref, directory, self.settings)
                if meta is not None:
                    with live.lock:
                        redone = live.journal.load(lambda record, rows_only: self._apply(live, record, rows_only))
                    if redone:
                        log.warning("session %s/%s: redid %d ingest batch(es) after a crash", workspace, name, redone)
                self._live[session_id] = live
            else:
                self._live.move_to_end(session_id)
            live.last_used = time.monotonic()
            if pin:
                live.users += 1
            self._evict_locked(keep=session_id)
            return live

    def _unpin(self, live: _Live) -> None:
        with self._live_lock:
            live.users -= 1
            live.last_used = time.monotonic()

    @contextlib.contextmanager
    def _using(self, ref: SessionRef, write: bool = False) -> Iterator[_Live]:
        """The session's ``_Live``, pinned for the block; ``write``: Forbidden
        for a write-protected session, and its files kept open."""
        live = self._live_for(ref.workspace, ref.name, create=False, pin=True)
        try:
            if write:
                if live.ref.write_protected:
                    raise Forbidden(f"session {ref.workspace}/{ref.name} is write-protected")
                self._keep_open(live)
            yield live
        finally:
            self._unpin(live)

    def _check_writable(self, ref: SessionRef) -> None:
        """NotFound or Forbidden, as a write would raise."""
        with self._using(ref, write=True):
            pass

    def _evict_locked(self, keep: str) -> None:
        """Drop sessions beyond ``max_live_sessions`` or idle past
        ``session_idle_seconds``, oldest first, skipping any in use; at most
        ``_EVICT_PER_CALL`` per call, so no request pays for a crowd of them."""
        limit, idle = self.settings.max_live_sessions, self.settings.session_idle_seconds
        cutoff = time.monotonic() - idle
        victims: list[tuple[str, _Live]] = []
        for session_id, live in self._live.items():  # no copy: a request must not pay O(sessions held)
            if len(victims) >= _EVICT_PER_CALL or (len(self._live) - len(victims) <= limit and live.last_used > cutoff):
                break  # LRU order: every later session was used more recently
            if session_id != keep and not live.users:
                victims.append((session_id, live))
        for session_id, live in victims:
            if not live.lock.acquire(blocking=False):
                continue  # a thread still finishing with it (it holds no pin): next time
            try:
                live.evict(self._sync_batches)  # rows fsynced, so the reloaded journal has nothing to redo
            finally:
                live.lock.release()
            del self._live[session_id]
            self._open.pop(session_id, None)
            self.evicted += 1

    def held(self) -> dict[str, int]:
        """What this backend holds in memory per session (for /metrics, on the
        event loop: len() of a dict is atomic, so no lock is taken)."""
        return {"sessions": len(self._live), "open": len(self._open), "evicted": self.evicted}

    def get_session(self, session_id: str) -> SessionRef:
        workspace, name = _prefix_of(session_id)
        return self._live_for(workspace, name, create=False).ref

    def cached_session(self, session_id: str) -> SessionRef | None:
        live = self._live.get(session_id)  # a dict read: atomic, never waits for a load
        return live.ref if live is not None else None

    def find_session(self, workspace: str, name: str) -> SessionRef | None:
        try:
            return self._live_for(check_workspace(workspace), check_session_name(name), create=False).ref
        except NotFound:
            return None

    def session_record(self, ref: SessionRef) -> dict:
        return _record(ref.workspace, ref.name, self._meta(self._directory(ref.workspace, ref.name)) or {})

    def list_sessions(self) -> list[dict]:
        """Read from each ``session.json``; holds nothing in memory for them."""
        found = []
        for meta_path in sorted(Path(self.root).glob("*/*/session.json")):
            workspace, name = meta_path.parent.parent.name, meta_path.parent.name
            if workspace.startswith(".") or name.startswith("."):
                continue
            meta = read_json(str(meta_path), default=None)
            if isinstance(meta, dict):
                found.append(_record(workspace, name, meta))
        return found

    def upsert_session(self, workspace: str, name: str, fields: dict[str, Any]) -> dict:
        workspace, name = check_workspace(workspace), check_session_name(name)
        live = self._live_for(workspace, name, create=True, pin=True)
        try:
            return self._upsert(live, workspace, name, fields)
        finally:
            self._unpin(live)

    def _upsert(self, live: _Live, workspace: str, name: str, fields: dict[str, Any]) -> dict:
        with live.lock:
            if live.ref.write_protected:
                return self.session_record(live.ref)  # continues nothing, changes nothing
            info = {"name": name, "workspace": workspace, "prefix": f"{workspace}/{name}"}
            for key in ("description", "tags", "folder", "metadata"):
                if fields.get(key) is not None:
                    info[key] = fields[key]
            if fields.get("writeProtected"):
                info["writeProtected"] = True
            live.sink.open(info)
            status = fields.get("status")
            if status in _END_STATUSES:
                live.sink.close(status, fields.get("error"))
            if info.get("writeProtected"):
                live.ref = SessionRef(live.ref.id, workspace, name, True)
            return self.session_record(live.ref)

    # -- writes ----------------------------------------------------------------
    def _keep_open(self, live: _Live) -> None:
        """Bound open descriptors: a fleet of sessions must not run the server
        out of them. The least recently written session beyond the limit
        releases its handles (when no request is using it right now)."""
        with self._live_lock:
            self._open.pop(live.ref.id, None)
            self._open[live.ref.id] = live
            while len(self._open) > self.settings.max_open_sessions:
                _, oldest = self._open.popitem(last=False)
                if oldest.lock.acquire(blocking=False):
                    try:
                        oldest.release_handles()
                    finally:
                        oldest.lock.release()
                else:  # busy: keep it, try the next time
                    self._open[oldest.ref.id] = oldest
                    break

    def _write(self, live: _Live, kind: str, name: str, rows: list, ts: list, sync: bool) -> int:
        is_log = kind == "log"
        first = live.sink.write_rows(LOG_STREAM if is_log else name, is_log, rows, ts)
        if sync:
            fsync_path(stream_files(live.directory, LOG_STREAM if is_log else name, is_log).data_path)
        return first

    def append_rows(self, ref: SessionRef, rows: StreamRows) -> dict:
        with self._using(ref, write=True) as live, live.lock:
            first = self._write(live, "track", rows.name, rows.rows, rows.ts, self._sync_rest) if rows.rows else None
        n = len(rows.rows)
        return {
            "trackId": rows.name,
            "startIndex": first,
            "endIndex": None if first is None else first + n - 1,
            "count": n,
        }

    def append_logs(self, ref: SessionRef, rows: StreamRows) -> tuple[int, int]:
        with self._using(ref, write=True) as live, live.lock:
            if rows.rows:
                first = self._write(live, "log", "", rows.rows, rows.ts, self._sync_rest)
            else:
                first = live.count(LOG_STREAM, True)
        return first, first + len(rows.rows) - 1

    def set_params(self, ref: SessionRef, flat: dict[str, Any]) -> dict:
        with self._using(ref, write=True) as live, live.lock:
            live.sink.write_params(flat)
            if self._sync_rest:
                fsync_path(os.path.join(live.directory, "parameters.json"))
            return self._params(live)

    def ingest(self, ref: SessionRef, batch: PreparedBatch) -> IngestAck:
        with self._using(ref, write=True) as live, live.lock:
            ranges = live.journal.duplicate(batch.client, batch.seq)
            if ranges is not None:
                return IngestAck(batch.client, batch.seq, True, [StreamRange(**r) for r in ranges], ref.id)
            plan = []
            for stream in batch.streams:
                is_log = stream.kind == "log"
                first = live.count(LOG_STREAM if is_log else stream.name, is_log)
                plan.append((stream.kind, stream.name, first, len(stream.rows)))
            record = JournalRecord(
                batch.client, batch.seq, plan, [s.rows for s in batch.streams], batch.params, batch.close
            )
            live.journal.record(record)  # the commit point (fsynced)
            self._apply(live, record)
            live.journal.mark_done(record)
            live.journal.maybe_compact(live.sync if self._sync_batches else live.unsynced.clear)
            return IngestAck(batch.client, batch.seq, False, [StreamRange(**r) for r in ranges_of(record)], ref.id)

    def _apply(self, live: _Live, record: JournalRecord, rows_only: bool = False) -> None:
        """Write a journalled batch (first time, or redo after a crash: rows
        already on disk are skipped). Not fsynced here: the journal holds the rows."""
        for (kind, name, first, n), rows in zip(record.plan, record.rows):
            is_log = kind == "log"
            have = live.count(LOG_STREAM if is_log else name, is_log)
            if have >= first + n or not rows:
                continue
            if have < first:
                log.error("stream %s of %s lost rows below index %d (have %d); appending anyway", name or "logs",
                          live.ref.id, first, have)
            todo = rows[max(0, have - first) :]
            got = self._write(live, kind, name, todo, list(map(_get_ts, todo)), False)
            live.unsynced.add(stream_files(live.directory, LOG_STREAM if is_log else name, is_log).data_path)
            if got != max(first, have):
                log.error("stream %s of %s: rows landed at %d, planned %d", name or "logs", live.ref.id, got, first)
        if rows_only:
            return
        if record.params is not None:
            live.sink.write_params(record.params)
            live.unsynced.add(os.path.join(live.directory, "parameters.json"))
        if record.close is not None:
            live.sink.close(*record.close)

    # -- reads -----------------------------------------------------------------
    def _session_dir(self, ref: SessionRef) -> str:
        """The session's directory (loading the session once, so a crash's redo is done before any read)."""
        return self._live_for(ref.workspace, ref.name, create=False).directory

    def _params(self, live: _Live) -> dict:
        """``params_get()`` is the flat dict; the version is peeked from the file's
        ``{"version", "data"}`` envelope when the store writes one (else None)."""
        raw = read_json(os.path.join(live.directory, "parameters.json"), default={})
        version = raw.get("version") if isinstance(raw, dict) and isinstance(raw.get("data"), dict) else None
        return {"data": live.sink.store.params_get(), "version": version}

    def get_params(self, ref: SessionRef) -> dict:
        with self._using(ref) as live:
            return self._params(live)

    def _track_files(self, ref: SessionRef, track: str) -> StreamFiles:
        files = stream_files(self._session_dir(ref), check_track_name(track))  # never a path out of the session
        if not os.path.exists(files.data_path):
            raise NotFound(f"session {ref.workspace}/{ref.name} has no track {track!r}")
        return files

    def read_rows(self, ref: SessionRef, track: str, start: int, limit: int) -> dict:
        return read_page(self._track_files(ref, track), start, limit)

    def read_rows_at(self, ref: SessionRef, track: str, indices: Sequence[int]) -> list[tuple[int, float, dict]]:
        return read_scattered(self._track_files(ref, track), indices)  # O(1) per row via the offsets index

    def read_rows_by_ts(self, ref, track, start_ts, end_ts, limit) -> dict:
        return read_ts_page(self._track_files(ref, track), start_ts, end_ts, limit)

    def read_logs(self, ref: SessionRef, start: int, limit: int) -> dict:
        return read_page(stream_files(self._session_dir(ref), LOG_STREAM, True), start, limit)

    def track_stats(self, ref: SessionRef, track: str) -> dict:
        self._track_files(ref, track)
        return track_stats(self._session_dir(ref), track)

    def list_tracks(self, ref: SessionRef) -> list[dict]:
        directory = self._session_dir(ref)
        return [track_stats(directory, name) for name in list_track_names(directory)]

    # -- files -----------------------------------------------------------------
    def upload_file(self, ref, staged: Path, folder, description, tags, metadata) -> dict:
        with self._using(ref, write=True) as live:
            return live.sink.files.upload(str(staged), folder, description, tags, metadata)

    def list_files(self, ref, folder, tags) -> list[dict]:
        with self._using(ref) as live:
            return live.sink.files.list(folder, tags)

    def get_file(self, ref: SessionRef, file_id: str) -> dict:
        for entry in self.list_files(ref, None, None):
            if entry.get("id") == file_id:
                return entry
        raise NotFound(f"no file with id {file_id!r} in session {ref.workspace}/{ref.name}")

    def export_file(self, ref: SessionRef, file_id: str, dest_dir: Path) -> Path:
        self.get_file(ref, file_id)
        with self._using(ref) as live:
            return Path(live.sink.files.download(file_id, str(dest_dir)))

    def update_file(self, ref: SessionRef, file_id: str, changes: dict[str, Any]) -> dict:
        self.get_file(ref, file_id)
        with self._using(ref, write=True) as live:
            return live.sink.files.update(file_id, changes)

    def delete_file(self, ref: SessionRef, file_id: str) -> dict:
        self.get_file(ref, file_id)
        with self._using(ref, write=True) as live:
            return live.sink.files.delete(file_id)

    # -- chunked uploads (rules in _uploads.py, staging in _local_uploads.py) ----------
    def upload_create(self, ref: SessionRef, spec: UploadSpec) -> dict:
        self._check_writable(ref)
        self._sweep_uploads()
        return self.uploads.create(ref.id, spec)

    def upload_status(self, ref: SessionRef, upload_id: str) -> dict:
        return self.uploads.status(ref.id, upload_id)

    def upload_chunk(self, ref: SessionRef, upload_id: str, offset: int, data: bytes) -> tuple[dict, int]:
        self._check_writable(ref)
        return self.uploads.chunk(ref.id, upload_id, offset, data)

    def upload_complete(self, ref: SessionRef, upload_id: str) -> dict:
        def store(staged: Path, spec: UploadSpec) -> dict:
            # size and sha256 were just checked: linked into the session's files, not copied and hashed again
            with self._using(ref, write=True) as live:
                return live.sink.files.upload(str(staged), spec.folder, spec.description, spec.tags, spec.metadata,
                                              verified=(spec.size, spec.checksum))

        return self.uploads.complete(ref.id, upload_id, store)

    def upload_abort(self, ref: SessionRef, upload_id: str) -> dict:
        return self.uploads.abort(ref.id, upload_id)

    # -- lifecycle -------------------------------------------------------------
    def scratch_dir(self) -> Path:
        """A private directory under the root for staged uploads and downloads."""
        path = Path(self.settings.state_dir) / "tmp"
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Path(tempfile.mkdtemp(dir=path))

    def close(self) -> None:
        with self._live_lock:
            lives = list(self._live.values())
        for live in lives:
            with live.lock:
                live.close(self._sync_batches)
        scratch = Path(self.settings.state_dir) / "tmp"
        for leftover in scratch.glob("tmp*"):  # staged uploads/downloads of this run
            shutil.rmtree(leftover, ignore_errors=True)
