"""The local store: one session directory of human-readable files.

:class:`LocalSink` writes it, :class:`LocalStore` reads it and keeps its
files. Both run only on the writer thread (or in the agent), so they need no
locks of their own; cross-process safety comes from ``flock`` in
:mod:`._stream_files` and :mod:`._fsutil`. A sink's store shares the sink's
open streams, so a read sees (and reconciles) exactly what the sink wrote.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from typing import Any, Callable

from ._file_store import FileStore
from ._format import params_doc, params_from_doc
from ._fsutil import locked, now_iso, read_json, read_json_to_update, write_json_atomic
from ._status import last_opening_end
from ._stream_files import IndexCorrupt, StreamFiles
from ._gil import WRITER_PACE

__all__ = [
    "LocalSink",
    "LocalStore",
    "track_dir",
    "list_track_names",
    "read_page",
    "read_ts_page",
    "track_stats",
    "read_params",
    "log_paths",
    "reader_stream",
]

log = logging.getLogger("dreamlake")

#: An earlier opening that ended so keeps its status and error while re-opened.
_KEPT_ON_REOPEN = ("failed", "interrupted")

#: Track metadata.json is rewritten at most this often while rows arrive (seconds).
METADATA_INTERVAL = 1.0


def track_dir(session_dir: str, name: str) -> str:
    return os.path.join(session_dir, "tracks", *name.split("/"))


def list_track_names(session_dir: str) -> list[str]:
    root = os.path.join(session_dir, "tracks")
    names = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if "data.jsonl" in files:
            names.append(os.path.relpath(folder, root).replace(os.sep, "/"))
    return sorted(names)


def log_paths(session_dir: str) -> tuple[str, str]:
    """(index directory, data file) of the log stream: ``logs/logs.jsonl`` (upstream's
    path; ``logs.jsonl`` beside it is a link to it), or a store of this project's
    earlier format, whose ``logs.jsonl`` is a plain file indexed under ``.logs/``."""
    current = os.path.join(session_dir, "logs")
    legacy = os.path.join(session_dir, "logs.jsonl")
    if not os.path.exists(os.path.join(current, "logs.jsonl")) and os.path.isfile(legacy) and not os.path.islink(legacy):
        return os.path.join(session_dir, ".logs"), legacy
    return current, os.path.join(current, "logs.jsonl")


def _settle_log_layout(session_dir: str) -> None:
    """Give a session directory the current log layout: move an earlier-format
    ``logs.jsonl`` into ``logs/`` (its derived index is rebuilt there) and link
    ``logs.jsonl`` to ``logs/logs.jsonl``, so both paths name one file."""
    index_dir, data_path = log_paths(session_dir)
    target = os.path.join(session_dir, "logs", "logs.jsonl")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if data_path != target:
        os.replace(data_path, target)
        shutil.rmtree(index_dir, ignore_errors=True)
    link = os.path.join(session_dir, "logs.jsonl")
    if not os.path.lexists(link):
        with open(target, "ab"):
            pass
        os.symlink(os.path.join("logs", "logs.jsonl"), link)


def stream_files(session_dir: str, name: str, is_log: bool = False) -> StreamFiles:
    if is_log:
        index_dir, data_path = log_paths(session_dir)
        return StreamFiles(index_dir, data_path, is_log=True)
    return StreamFiles(track_dir(session_dir, name))


def reader_stream(session_dir: str, name: str, is_log: bool = False) -> StreamFiles:
    """A stream for reading, its derived index brought up to date with the data
    first (a store written by upstream or by a crashed process may lack it). On a
    store this process may not write, it reads what is indexed."""
    files = stream_files(session_dir, name, is_log)
    try:
        files.reconcile()
    except PermissionError:
        pass
    finally:
        files.close()
    return files


def read_params(session_dir: str) -> dict:
    """The flat params of a session (``parameters.json`` in either format)."""
    return params_from_doc(read_json(os.path.join(session_dir, "parameters.json"), default={}))[0]


def _page(rows: list, total: int, start: int) -> dict:
    data = [{"index": index, "timestamp": ts, "data": row} for index, ts, row in rows]
    end = data[-1]["index"] if data else None
    return {
        "data": data,
        "startIndex": data[0]["index"] if data else start,
        "endIndex": end,
        "total": total,
        "hasMore": (end + 1 < total) if end is not None else start < total,
    }


def _rebuilt_on_corruption(read: Callable[[], dict], files: StreamFiles) -> dict:
    """Run a read; if it finds the derived index disagreeing with the data, rebuild
    the index from the data (warned) and read again."""
    try:
        return read()
    except IndexCorrupt:
        files.rebuild_index()
        return read()


def read_page(files: StreamFiles, start_index: int, limit: int) -> dict:
    def read() -> dict:
        rows, total = files.read(start_index, limit)
        return _page(rows, total, start_index)

    return _rebuilt_on_corruption(read, files)


def read_ts_page(files: StreamFiles, start_ts: float | None, end_ts: float | None, limit: int) -> dict:
    return _rebuilt_on_corruption(lambda: _read_ts_page(files, start_ts, end_ts, limit), files)


def _read_ts_page(files: StreamFiles, start_ts: float | None, end_ts: float | None, limit: int) -> dict:
    from ._stream_files import _Unsorted

    try:
        lo, hi = files.index_range(start_ts, end_ts)
    except _Unsorted:
        rows = []
        for index in files.scan_ts(start_ts, end_ts, limit + 1):
            got, total = files.read(index, 1)
            rows.extend(got)
        page = _page(rows[:limit], files.count(), 0)
        page["hasMore"] = len(rows) > limit
        return page
    rows, total = files.read(lo, min(limit, hi - lo))
    page = _page(rows, total, lo)
    page["hasMore"] = lo + len(rows) < hi
    return page


def track_stats(session_dir: str, name: str, files: Any = None) -> dict:
    """A track's stats from its metadata and ``files`` (default: its StreamFiles;
    the read-only reader passes its own stream)."""
    files = files if files is not None else stream_files(session_dir, name)
    first, last = files.first_last_ts()
    meta = read_json(os.path.join(track_dir(session_dir, name), "metadata.json"), default={}) or {}
    try:
        data_stat = os.stat(files.data_path)
        created = meta.get("createdAt") or now_iso(data_stat.st_ctime)
        updated = now_iso(data_stat.st_mtime)
    except FileNotFoundError:
        created = updated = None
    total = files.count()
    return {
        "name": name,
        "trackId": name,
        "totalDataPoints": total,
        "nextIndex": total,
        "firstTs": first,
        "lastTs": last,
        "createdAt": created,
        "updatedAt": updated,
        "description": meta.get("description"),
        "tags": meta.get("tags", []),
        "metadata": meta.get("metadata"),
    }


class LocalSink:
    """Writes one session into ``directory``; ``store`` reads it."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        self._streams: dict[tuple[str, bool], StreamFiles] = {}
        self._meta_due: dict[str, float] = {}
        self._meta_dirty: set[str] = set()
        self._log_sequence_due: int | None = None
        #: failed rewrites of derived files (track metadata.json, logs/.log_sequence)
        self.derived_errors = 0
        self._lost: dict[str, int] = {}
        self.store = LocalStore(self.directory, self._files)
        self.files = self.store.files

    # -- lifecycle -----------------------------------------------------------
    def _session_json(self) -> str:
        return os.path.join(self.directory, "session.json")

    def open(self, info: dict) -> dict:
        """Create or continue the session. Only what the caller passed (non-None in
        ``info``) is changed. The end of an earlier opening (status, error, times) is
        kept in ``history``; a ``failed`` or ``interrupted`` status and its error stay
        until this opening closes, then ``close`` records the new end."""
        os.makedirs(os.path.join(self.directory, "tracks"), exist_ok=True)
        with locked(os.path.join(self.directory, ".session.lock")):
            _settle_log_layout(self.directory)  # under the lock: processes opening at once race to link
            meta = read_json_to_update(self._session_json(), default={}) or {}
            stamp = now_iso()
            meta.update({k: v for k, v in info.items() if v is not None or k not in meta})
            meta.setdefault("createdAt", stamp)
            ended = last_opening_end(meta)
            if ended is not None:  # else a live process has it open: its end is not ours to record
                closed = meta.get("closedAt") is not None
                history = meta.get("history") if isinstance(meta.get("history"), list) else []
                history.append({
                    "status": ended,
                    "error": meta.get("error") if closed else None,
                    **{key: meta.get(key) for key in ("openedAt", "closedAt", "pid", "hostname")},
                })
                meta["history"] = history
                if ended in _KEPT_ON_REOPEN:
                    meta.update(status=ended, error=meta.get("error") if closed else None)
                else:
                    meta.update(status="running", error=None)
            elif "status" not in meta:
                meta.update(status="running", error=None)
            meta.update(
                openedAt=stamp,
                updatedAt=stamp,
                closedAt=None,
                pid=os.getpid(),
                hostname=socket.gethostname(),
                opens=int(meta.get("opens", 0)) + 1,
            )
            write_json_atomic(self._session_json(), meta)
        return meta

    def record_losses(self, lost: dict[str, int]) -> None:
        """Rows this opening did not write, by reason; added to ``session.json``'s
        ``lost`` at close (totals over every opening), shown by ``dreamlake show``."""
        self._lost = {reason: count for reason, count in lost.items() if count}

    def quarantine(self, name: str, is_log: bool, row: Any, reason: str) -> None:
        """Keep a row that cannot be written aside, with the reason, in
        ``quarantine.jsonl`` (as text: the row itself could not be encoded)."""
        entry = {"stream": "logs" if is_log else name, "reason": reason, "at": now_iso(), "row": repr(row)[:65536]}
        with open(os.path.join(self.directory, "quarantine.jsonl"), "a", encoding="utf-8", errors="backslashreplace") as out:
            out.write(json.dumps(entry, ensure_ascii=True) + "\n")

    def close(self, status: str, error: str | None) -> None:
        self.flush()
        with locked(os.path.join(self.directory, ".session.lock")):
            meta = read_json_to_update(self._session_json(), default={}) or {}
            stamp = now_iso()
            meta.update(status=status, closedAt=stamp, updatedAt=stamp, error=error)
            if self._lost:
                totals = dict(meta["lost"]) if isinstance(meta.get("lost"), dict) else {}
                for reason, count in self._lost.items():
                    totals[reason] = int(totals.get(reason, 0)) + count
                meta["lost"] = totals
            write_json_atomic(self._session_json(), meta)
        for files in self._streams.values():
            files.close()
        self._streams.clear()

    def after_fork_in_child(self) -> None:
        for files in self._streams.values():
            files.forget_handles()

    # -- writing -------------------------------------------------------------
    def _files(self, name: str, is_log: bool) -> StreamFiles:
        key = (name, is_log)
        files = self._streams.get(key)
        if files is None:
            files = self._streams[key] = stream_files(self.directory, name, is_log)
        return files

    def write_rows(self, name: str, is_log: bool, rows: list, ts: list) -> int:
        files = self._files(name, is_log)
        if is_log:
            first = files.append(rows, ts, pace=WRITER_PACE)
            self._log_sequence_due = first + len(rows)
            return first
        first = files.append(rows, ts, pace=WRITER_PACE)
        self._meta_dirty.add(name)
        now = time.monotonic()
        if now >= self._meta_due.get(name, 0.0):
            self._meta_due[name] = now + METADATA_INTERVAL
            self._write_track_metadata(name)
        return first

    def _write_track_metadata(self, name: str) -> None:
        """Rewrite a track's derived ``metadata.json``. Best effort: the rows are
        already written, so a failure here (disk full) must not fail the write and
        have the rows retried; the file stays dirty and is rewritten later."""
        path = os.path.join(track_dir(self.directory, name), "metadata.json")
        try:
            write_json_atomic(path, track_stats(self.directory, name))
        except OSError as exc:
            self._derived_failed(path, exc)
        else:
            self._meta_dirty.discard(name)

    def _derived_failed(self, path: str, exc: OSError) -> None:
        self.derived_errors += 1
        if self.derived_errors == 1:
            log.warning("dreamlake: could not rewrite %s (%s); rows are written, it is retried later", path, exc)

    def write_params(self, flat: dict) -> None:
        path = os.path.join(self.directory, "parameters.json")
        with locked(os.path.join(self.directory, ".parameters.lock")):
            # NaN/inf as {"$float": ...}: valid JSON
            write_json_atomic(path, params_doc(read_json_to_update(path, default={}), flat, now_iso()))

    def flush(self) -> None:
        for name in list(self._meta_dirty):
            self._write_track_metadata(name)
        if self._log_sequence_due is not None:
            # upstream 0.3 numbers its next log entry from this file
            path = os.path.join(self.directory, "logs", ".log_sequence")
            try:
                with open(path, "w") as out:
                    out.write(str(self._log_sequence_due))
            except OSError as exc:
                self._derived_failed(path, exc)
            else:
                self._log_sequence_due = None



class LocalStore:
    """Reads and files of one session directory. ``streams`` gives the open
    stream of a (name, is_log): the sink's, so reads and writes share one
    view of each stream; by default the store keeps its own."""

    def __init__(self, directory: str, streams: Callable[[str, bool], StreamFiles] | None = None) -> None:
        self.directory = os.path.abspath(directory)
        self.files = FileStore(self.directory)
        self._own: dict[tuple[str, bool], StreamFiles] = {}
        self._streams = streams or self._own_stream

    def _own_stream(self, name: str, is_log: bool) -> StreamFiles:
        files = self._own.get((name, is_log))
        if files is None:
            files = self._own[(name, is_log)] = stream_files(self.directory, name, is_log)
        return files

    def _reconciled(self, name: str, is_log: bool) -> StreamFiles:
        """Reads first index any complete rows another (crashed) writer left unindexed."""
        files = self._streams(name, is_log)
        files.reconcile()
        return files

    def read(self, name: str, is_log: bool, start_index: int, limit: int) -> dict:
        return read_page(self._reconciled(name, is_log), start_index, limit)

    def read_range(self, name: str, is_log: bool, start_ts: Any, end_ts: Any, limit: int) -> dict:
        return read_ts_page(self._reconciled(name, is_log), start_ts, end_ts, limit)

    def stats(self, name: str) -> dict:
        self._reconciled(name, False)
        return track_stats(self.directory, name)

    def list_tracks(self) -> list[dict]:
        names = list_track_names(self.directory)
        for name in names:
            self._reconciled(name, False)
        return [track_stats(self.directory, name) for name in names]

    def params_get(self) -> dict:
        return read_params(self.directory)

    def files_upload(self, src: str, folder: str, description: Any, tags: list, metadata: dict) -> dict:
        return self.files.upload(src, folder, description, tags, metadata)

    def files_list(self, folder: str | None, tags: list | None) -> list[dict]:
        return self.files.list(folder, tags)

    def files_download(self, file_id: str, dest: str) -> str:
        return self.files.download(file_id, dest)

    def files_delete(self, file_id: str) -> dict:
        return self.files.delete(file_id)

    def files_update(self, file_id: str, changes: dict) -> dict:
        return self.files.update(file_id, changes)

    def close(self) -> None:
        for files in self._own.values():
            files.close()
        self._own.clear()
