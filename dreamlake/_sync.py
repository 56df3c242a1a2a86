"""``dreamlake sync``: upload local sessions to a server, exactly once.

Two things are delivered per session directory:

1. **Leftover spools** (``.remote/<client>/spool.zst``) of remote sessions
   whose process died or could not reach the server: replayed in order under
   their own client id; the server drops what it had already applied. A
   batch the server refuses as too large is sent in pieces, exactly as the
   sender would (``sinks/remote/split.py``); what it refuses for good is kept
   in the slot's ``rejected.zst`` and reported, and the rest goes on. A dead
   owner that never closed its session gets a final ``interrupted``.
2. **Local data** of sessions logged offline (``mode="offline"``) or without
   any URL: tracks, logs, parameters, files. Progress lives in
   ``.sync.json``: per stream the number of rows the server acknowledged, and
   the one batch in flight (its seq and row ranges) — written *before* the
   batch is sent. An interrupted run re-sends that same batch with the same
   seq (the server acknowledges it as a duplicate if it had applied it), so
   rows are never doubled; a finished run leaves nothing to send, and a
   second run is a no-op. Files are matched by path, name and sha256 before
   uploading, so a file is uploaded once too; a large one goes in resumable
   chunks whose upload id is kept in ``.sync.json`` as soon as the server
   gives it, so an interrupted run continues from the bytes the server holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ._file_store import FileStore
from ._fsutil import read_json, write_json_atomic
from ._local_sink import list_track_names, read_params, stream_files
from .sinks.remote.batch import SealedBatch
from .sinks.remote.config import BATCH_MAX_BYTES, BATCH_MAX_ROWS, RemoteTarget
from .sinks.remote.encoder import encode, estimate_row_bytes, rows_in_body
from .sinks.remote.service import AuthFailed, IngestService, Rejected, RemoteStore, Retryable, backoff
from .sinks.remote.split import SlotBook, deliver
from .sinks.remote.spool import free_slots, pending_in_slots, slots_dir

__all__ = ["SyncError", "SyncReport", "sync_session", "find_sessions", "unsynced_summary"]

STATE_FILE = ".sync.json"
_END = ("completed", "failed", "interrupted")
#: Attempts per request before sync gives up on a server error (network, 5xx, 429).
SYNC_ATTEMPTS = 6


class SyncError(Exception):
    """Sync could not finish (auth refused, server errors); progress is kept."""


@dataclass
class SyncReport:
    directory: str
    rows: int = 0
    batches: int = 0
    duplicates: int = 0
    spooled_batches: int = 0
    rows_rejected: int = 0  # spooled rows the server refused for good (kept in rejected.zst)
    files: int = 0
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)


def _retrying(call: Callable[[], Any], what: str, refusal_ends_sync: bool = True) -> Any:
    """``call`` retried on server errors; a refusal (4xx) ends the sync, or
    is raised as it is (``refusal_ends_sync=False``: the caller handles it)."""
    for attempt in range(SYNC_ATTEMPTS):
        try:
            return call()
        except Retryable as exc:
            if attempt == SYNC_ATTEMPTS - 1:
                raise SyncError(f"{what}: the server kept failing ({exc})") from exc
            time.sleep(backoff(attempt, exc.retry_after))
        except AuthFailed as exc:
            raise SyncError(f"{what}: authentication failed ({exc}); pass --api-key or set DREAMLAKE_API_KEY") from exc
        except Rejected as exc:
            if not refusal_ends_sync:
                raise
            raise SyncError(f"{what}: the server refused it ({exc})") from exc


def find_sessions(path: str) -> list[str]:
    """``path`` itself when it is a session directory, else every
    ``workspace/name`` below it that has a session.json or a spool."""
    path = os.path.abspath(path)
    if os.path.exists(os.path.join(path, "session.json")) or os.path.isdir(slots_dir(path)):
        return [path]
    found = set()
    for workspace in sorted(os.listdir(path)) if os.path.isdir(path) else []:
        wdir = os.path.join(path, workspace)
        if not os.path.isdir(wdir) or workspace.startswith("."):
            continue
        for name in sorted(os.listdir(wdir)):
            sdir = os.path.join(wdir, name)
            if os.path.exists(os.path.join(sdir, "session.json")) or os.path.isdir(slots_dir(sdir)):
                found.add(sdir)
    return sorted(found)


def _identity(session_dir: str, meta: dict) -> tuple[str, str]:
    return meta.get("workspace") or os.path.basename(os.path.dirname(session_dir)), meta.get("name") or os.path.basename(session_dir)


def _wants_upload(meta: dict) -> bool:
    """Offline sessions, and sessions that never had a URL; a session that
    streamed to a server as it ran (fan-out) is delivered by its spool only."""
    return bool(meta) and (meta.get("mode") == "offline" or not meta.get("url"))


# -- 1. leftover spools ------------------------------------------------------------
def _deliver_spools(session_dir: str, url: str | None, api_key: str | None, report: SyncReport, meta: dict) -> None:
    for slot in free_slots(session_dir):
        try:
            target_url = url or slot.state.get("url")
            if not target_url:
                report.notes.append(f"spool {slot.client}: no URL known; pass --url")
                continue
            workspace, name = _identity(session_dir, slot.state.get("info") or meta)
            service = IngestService(RemoteTarget(target_url, workspace, name, api_key))

            def refused(seq: int, body: bytes, why: Rejected, unkept: str | None) -> None:
                rows = rows_in_body(body)
                report.rows_rejected += rows
                where = f"could not be kept ({unkept})" if unkept else f"kept in {slot.directory}/rejected.zst"
                report.notes.append(f"spool {slot.client}: the server refused {rows} row(s) of batch {seq} ({why}); {where}")

            book = SlotBook(slot, refused)
            while True:
                head = slot.spool.peek()
                if head is None:
                    break
                seq, body = head
                what = f"spooled batch {seq} of {workspace}/{name}"
                # a batch too large for the server goes in pieces, as the sender sends it (split.py)
                outcome = deliver(seq, body, lambda part: _retrying(lambda: service.send(part), what, False), book)
                report.spooled_batches += 1
                for ack in outcome.acks:
                    report.duplicates += ack.duplicate
                    report.rows += sum(r.count for r in ack.ranges)
                slot.forget_split(seq)
                slot.spool.pop()
                slot.set_acked(seq)
            if slot.state.get("owner") and not slot.state.get("closed"):
                # its process died before the server had its close (the status it sealed, if any)
                status, error = slot.state.get("close") or ("interrupted", "the logging process ended without closing")
                closing = SealedBatch(slot.next_seq(), close=(status, error))
                body, _ = encode(closing, slot.client)
                _retrying(lambda: service.send(body), f"closing {workspace}/{name}")
            slot.state["closed"] = True
        finally:
            slot.release()


# -- 2. local data -------------------------------------------------------------------
def _streams(session_dir: str) -> list[tuple[str, bool]]:
    keys = [(name, False) for name in list_track_names(session_dir)]
    if os.path.exists(os.path.join(session_dir, "logs.jsonl")):
        keys.append(("logs", True))
    return keys


def _key(name: str, is_log: bool) -> str:
    return "log" if is_log else f"track:{name}"


def _params(session_dir: str) -> dict:
    return read_params(session_dir)


def _as_sent(row: dict, ts: float, is_log: bool) -> dict:
    """A stored row as the ingest endpoint takes it: a log entry as stored
    (sequenceNumber, ISO timestamp) goes back to ``_ts``, level, message, metadata."""
    if not is_log:
        return row
    return {"_ts": ts, **{k: row[k] for k in ("level", "message", "metadata") if k in row}}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class _LocalUpload:
    def __init__(self, session_dir: str, meta: dict, url: str, api_key: str | None, report: SyncReport, bar: Any) -> None:
        self.dir = session_dir
        self.meta = meta
        self.report = report
        self.bar = bar
        workspace, name = _identity(session_dir, meta)
        self.target = RemoteTarget(url, workspace, name, api_key)
        self.service = IngestService(self.target)
        self.state_path = os.path.join(session_dir, STATE_FILE)
        state = read_json(self.state_path, default=None)
        if not isinstance(state, dict) or state.get("url") != self.target.url:
            state = {"url": self.target.url, "client": f"sync-{secrets.token_hex(8)}", "next_seq": 1,
                     "streams": {}, "pending": None, "params": None, "closed": None, "files": {}}
        self.state = state
        self.session_id: str | None = None
        self.reopened = False  # this run's upsert set the session running again

    def save(self) -> None:
        write_json_atomic(self.state_path, self.state)

    def _ensure_session(self) -> None:
        if self.session_id is None:
            info = {k: self.meta.get(k) for k in ("description", "tags", "folder")}
            record = _retrying(lambda: self.service.upsert(info), f"creating {self.target.workspace}/{self.target.name}")
            self.session_id = record["id"]
            self.reopened = True

    def _batch(self, seq: int, ranges: dict, params: dict | None, close: list | None) -> SealedBatch:
        batch = SealedBatch(seq, params=params, close=tuple(close) if close else None)
        for key, (start, end) in ranges.items():
            is_log = key == "log"
            files = stream_files(self.dir, "logs" if is_log else key[len("track:"):], is_log)
            rows, _ = files.read(start, end - start)
            batch.streams[("logs" if is_log else key[len("track:"):], is_log)] = [_as_sent(row, ts, is_log) for _, ts, row in rows]
            batch.rows += len(rows)
        return batch

    def _send(self, pending: dict) -> None:
        """Send the batch ``pending`` describes (already saved in the state)."""
        params = _params(self.dir) if pending.get("params") else None
        batch = self._batch(pending["seq"], pending["ranges"], params, pending.get("close"))
        body, dropped = encode(batch, self.state["client"])
        if dropped:
            self.report.notes.append(f"{dropped} rows could not be encoded and were skipped")
        ack = _retrying(lambda: self.service.send(body), f"batch {pending['seq']} of {self.target.workspace}/{self.target.name}")
        self.report.batches += 1
        self.report.duplicates += ack.duplicate
        self.report.rows += batch.rows
        for key, (_start, end) in pending["ranges"].items():
            self.state["streams"][key] = end
        if pending.get("params"):
            self.state["params"] = pending["params"]
        if pending.get("close"):
            self.state["closed"] = pending["close"][0]
            self.reopened = False
        self.state["pending"] = None
        self.save()
        self.bar.update(batch.rows)

    def _plan(self) -> dict | None:
        """The next batch: row ranges per stream within the batch limits,
        changed params, and the final status once every row is sent."""
        ranges, rows, size = {}, 0, 0
        for name, is_log in _streams(self.dir):
            key = _key(name, is_log)
            files = stream_files(self.dir, name, is_log)
            start, total = int(self.state["streams"].get(key, 0)), files.count()
            if start >= total or rows >= BATCH_MAX_ROWS or size >= BATCH_MAX_BYTES:
                continue
            sample, _ = files.read(start, 1)
            per_row = estimate_row_bytes([sample[0][2]]) if sample else 256
            take = min(total - start, BATCH_MAX_ROWS - rows, max(1, (BATCH_MAX_BYTES - size) // per_row))
            ranges[key] = [start, start + take]
            rows += take
            size += take * per_row
        params = _params(self.dir)
        digest = _digest(params) if params else None
        plan: dict = {"seq": self.state["next_seq"], "ranges": ranges}
        if digest and digest != self.state.get("params"):
            plan["params"] = digest
        if not ranges and "params" not in plan:
            return None
        return plan

    def _closing_plan(self) -> dict | None:
        """The final status, last: once, or again when this run's upsert reopened it."""
        status = self.meta.get("status")
        if status in _END and (self.state.get("closed") != status or self.reopened):
            return {"seq": self.state["next_seq"], "ranges": {}, "close": [status, self.meta.get("error")]}
        return None

    def remaining_rows(self) -> int:
        return sum(
            max(0, stream_files(self.dir, n, l).count() - int(self.state["streams"].get(_key(n, l), 0)))
            for n, l in _streams(self.dir)
        )

    def _deliver(self, plan: dict) -> None:
        self._ensure_session()
        self.state["pending"] = plan
        self.state["next_seq"] = plan["seq"] + 1
        self.save()  # before sending: a crash resends exactly this batch, same seq
        self._send(plan)

    def run(self) -> None:
        if self.state.get("pending"):  # an interrupted run: the same batch, the same seq
            self._ensure_session()
            self._send(self.state["pending"])
        while (plan := self._plan()) is not None:
            self._deliver(plan)
        self._upload_files()
        closing = self._closing_plan()
        if closing is not None:
            self._deliver(closing)

    def _upload_files(self) -> None:
        local = FileStore(self.dir)
        entries = [e for e in local.list(None, None) if e["id"] not in self.state["files"]]
        if not entries:
            return
        self._ensure_session()
        store = RemoteStore(self.target, lambda: self.session_id)
        remote = _retrying(lambda: store.files_list(None, None), "listing files")
        for entry in entries:
            folder = entry["path"].strip("/")
            match = next(
                (r for r in remote if r.get("checksum") == entry["checksum"] and r.get("filename") == entry["filename"]
                 and str(r.get("path", "")).strip("/") == folder),
                None,
            )
            uploads = self.state.setdefault("uploads", {})  # local file id -> chunked upload in progress
            if match is None:
                src = os.path.join(local.root, *entry["storagePath"].split("/"))

                def created(upload_id: str, local_id: str = entry["id"]) -> None:
                    uploads[local_id] = upload_id
                    self.save()

                match = _retrying(
                    lambda: store.files_upload(src, folder, entry.get("description"), entry.get("tags") or [],
                                               entry.get("metadata") or {}, upload_id=uploads.get(entry["id"]),
                                               on_created=created),
                    f"uploading {entry['filename']}",
                )
                self.report.files += 1
            uploads.pop(entry["id"], None)
            self.state["files"][entry["id"]] = match["id"]
            self.save()


def sync_session(session_dir: str, url: str | None = None, api_key: str | None = None, progress: Any = None) -> SyncReport:
    """Deliver one session directory (see the module docstring). ``progress``
    is a tqdm-like factory (``progress(total=..., desc=...)``) or None."""
    session_dir = os.path.abspath(session_dir)
    meta = read_json(os.path.join(session_dir, "session.json"), default={}) or {}
    report = SyncReport(session_dir)
    _deliver_spools(session_dir, url, api_key, report, meta)
    if not _wants_upload(meta):
        report.skipped = "streamed to its server while it ran" if meta else None
        return report
    target_url = url or meta.get("url")
    if not target_url:
        report.skipped = "no server URL recorded; pass --url"
        return report
    upload = _LocalUpload(session_dir, meta, target_url, api_key, report, _NoBar())
    left = upload.remaining_rows()
    if progress is not None:
        with progress(total=left, desc=f"{upload.target.workspace}/{upload.target.name}", unit="rows") as bar:
            upload.bar = bar
            upload.run()
    else:
        upload.run()
    return report


class _NoBar:
    def update(self, n: int) -> None:
        pass


def unsynced_summary(session_dir: str) -> dict:
    """What ``dreamlake sync`` would still deliver for this session (for
    ``dreamlake ls``): spooled batches and bytes, rows not yet uploaded,
    whether params, files or the final status are pending."""
    session_dir = os.path.abspath(session_dir)
    meta = read_json(os.path.join(session_dir, "session.json"), default={}) or {}
    spooled, spool_bytes = pending_in_slots(session_dir)
    summary: dict = {"spooled_batches": spooled, "spool_bytes": spool_bytes, "unsynced_rows": 0,
                     "params": False, "files": 0, "status": False, "url": meta.get("url")}
    if _wants_upload(meta):
        state = read_json(os.path.join(session_dir, STATE_FILE), default={}) or {}
        marks = state.get("streams", {})
        summary["unsynced_rows"] = sum(
            max(0, stream_files(session_dir, n, l).count() - int(marks.get(_key(n, l), 0))) for n, l in _streams(session_dir)
        )
        params = _params(session_dir)
        summary["params"] = bool(params) and _digest(params) != state.get("params")
        summary["files"] = sum(1 for e in FileStore(session_dir).list(None, None) if e["id"] not in state.get("files", {}))
        summary["status"] = meta.get("status") in _END and state.get("closed") != meta.get("status")
    summary["synced"] = not (spooled or summary["unsynced_rows"] or summary["params"] or summary["files"] or summary["status"])
    return summary
