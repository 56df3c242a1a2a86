"""The scale-out backend: PostgreSQL for everything but file bytes, object storage for those.

Stateless: every replica keeps only a connection pool, so any number of
``dreamlake-server --store postgresql://…`` processes can serve one database
behind a load balancer. What makes that safe:

* **Consecutive indices across replicas.** A write reserves its indices with
  ``INSERT … ON CONFLICT DO UPDATE SET next_index = next_index + n RETURNING``
  on the stream's row: the row lock serialises writers of one stream (on any
  replica) until their transaction commits, and the chunks go in the same
  transaction, so a rolled-back write leaves no gap.
* **Exactly-once ingest.** The batch's ``(session, client, seq)`` row is
  inserted first in the batch's transaction (a concurrent retry of the same
  batch on another replica waits on that key, then sees it committed or gone)
  and its ranges are written before the commit. A replica killed mid-batch
  never commits; PostgreSQL rolls it back and the client's retry, to any
  replica, is applied fresh.
* **Durability follows ``Settings.fsync``** as on the local store: batched
  ingest commits synchronously (WAL flushed before the ack: exactly-once holds
  across a power loss of the database host) unless fsync is "never"; the
  REST writes commit with ``synchronous_commit = off`` unless fsync is
  "always" — still durable across any crash of a replica or of PostgreSQL's
  processes, only a power loss of the database host may lose their last
  fraction of a second.
* **Deadlock-free.** A transaction locks stream rows in (kind, name) order and
  the session row (params, close) last.

Reads run in one REPEATABLE READ snapshot: the stream's counters and its
chunks agree. By index: the chunk holding ``start`` (the greatest
``first_index <= start``, an index probe) and the ones after it up to
``start + limit``. By ``_ts`` on a stream whose ``_ts`` never went back: the
first chunk with ``max_ts >= start`` (another index probe), then forward.
A stream whose ``_ts`` went back is scanned (as the local store does).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from ..._errors import SinkError
from ..._fsutil import now_iso
from ..._local_sink import _stamp_log_entries
from ..._values import tag_nonfinite, untag_nonfinite
from .._errors import Forbidden, NotFound
from .._objects import ObjectStore
from .._prepare import check_session_name, check_workspace
from .._settings import Settings
from .._storage import PreparedBatch, SessionRef, StreamRows
from ..wire import IngestAck, StreamRange
from ._chunks import CHUNK_ROWS, MERGE_ROWS, decode_chunk, encode_chunk, split
from ._schema import migrate

__all__ = ["PostgresStorage"]

log = logging.getLogger("dreamlake.server")

_END_STATUSES = ("completed", "failed", "interrupted")
_SESSION_COLUMNS = (
    "id, workspace, name, description, tags, folder, metadata, write_protected, status, error,"
    " created_at, updated_at, closed_at"
)
_FILE_COLUMNS = (
    "id, path, filename, size_bytes, checksum, description, tags, metadata, object_key, created_at, updated_at"
)
_HASH_CHUNK = 1 << 20


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else now_iso(moment.timestamp())


def _json(value: Any) -> Jsonb | None:
    """jsonb cannot hold NaN/inf: they are tagged as the local store tags them."""
    return None if value is None else Jsonb(tag_nonfinite(value))


def _session_id(text: str) -> int:
    if not (isinstance(text, str) and text.isdigit() and len(text) < 19):
        raise NotFound(f"no session with id {text!r}")
    return int(text)


def _sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as source:
        while block := source.read(_HASH_CHUNK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _page(rows: list[tuple[int, dict]], total: int, start: int) -> dict:
    """The ``read()`` reply, as the local store builds it."""
    data = [{"index": index, "timestamp": row.get("_ts"), "data": row} for index, row in rows]
    end = data[-1]["index"] if data else None
    return {
        "data": data,
        "startIndex": data[0]["index"] if data else start,
        "endIndex": end,
        "total": total,
        "hasMore": (end + 1 < total) if end is not None else start < total,
    }


def _sync_policy(fsync: object) -> tuple[bool, bool]:
    """(commit ingest batches synchronously, commit REST writes synchronously)
    from ``Settings.fsync`` ("batches" | "always" | "never", or a bool)."""
    if isinstance(fsync, bool):
        return fsync, fsync
    return fsync in ("batches", "always"), fsync == "always"


def _sorted(ts: list[float]) -> bool:
    return all(a <= b for a, b in zip(ts, ts[1:]))


class PostgresStorage:
    """:class:`~dreamlake.server._storage.Storage` on PostgreSQL + object storage."""

    def __init__(self, dsn: str, objects: ObjectStore, settings: Settings, pool_size: int = 16) -> None:
        self.settings = settings
        self.objects = objects
        migrate(dsn)
        self._pool = ConnectionPool(dsn, min_size=1, max_size=pool_size, open=True, name="dreamlake")
        self._scratch = Path(settings.state_dir) / "tmp" / f"pg-{os.getpid()}"
        self._sync_batches, self._sync_rest = _sync_policy(settings.fsync)

    # -- plumbing --------------------------------------------------------------
    @contextlib.contextmanager
    def _writer(self, sync: bool) -> Iterator[psycopg.Connection]:
        """A pooled connection in one write transaction (commits on exit)."""
        with self._pool.connection() as conn:
            if not sync:
                conn.execute("SET LOCAL synchronous_commit = off")
            yield conn

    def _reader(self):
        """A pooled connection in one read-only snapshot (commits on exit)."""
        return _Snapshot(self._pool)

    # -- sessions --------------------------------------------------------------
    def _record(self, row: tuple) -> dict:
        (sid, workspace, name, description, tags, folder, metadata, protected, status, error,
         created, updated, closed) = row
        return {
            "id": str(sid),
            "name": name,
            "workspace": workspace,
            "prefix": f"{workspace}/{name}",
            "description": description,
            "tags": tags,
            "folder": folder,
            "metadata": untag_nonfinite(metadata),
            "status": status,
            "error": error,
            "createdAt": _iso(created),
            "updatedAt": _iso(updated),
            "closedAt": _iso(closed),
            "writeProtected": protected,
        }

    def upsert_session(self, workspace: str, name: str, fields: dict[str, Any]) -> dict:
        workspace, name = check_workspace(workspace), check_session_name(name)
        status = fields.get("status")
        ended = status in _END_STATUSES
        with self._writer(self._sync_rest) as conn:
            conn.execute("INSERT INTO workspaces (name) VALUES (%s) ON CONFLICT DO NOTHING", (workspace,))
            conn.execute(
                "INSERT INTO sessions (workspace, name) VALUES (%s, %s) ON CONFLICT DO NOTHING", (workspace, name)
            )
            row = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE workspace = %s AND name = %s FOR UPDATE",
                (workspace, name),
            ).fetchone()
            if row[7]:  # write-protected: continues nothing, changes nothing
                return self._record(row)
            row = conn.execute(
                f"""UPDATE sessions SET
                    description = coalesce(%(description)s, description),
                    tags = coalesce(%(tags)s, tags),
                    folder = coalesce(%(folder)s, folder),
                    metadata = coalesce(%(metadata)s, metadata),
                    write_protected = write_protected OR %(protected)s,
                    status = %(status)s, error = %(error)s,
                    updated_at = now(), closed_at = CASE WHEN %(ended)s THEN now() END
                WHERE id = %(id)s RETURNING {_SESSION_COLUMNS}""",
                {
                    "id": row[0],
                    "description": fields.get("description"),
                    "tags": _json(fields.get("tags")),
                    "folder": fields.get("folder"),
                    "metadata": _json(fields.get("metadata")),
                    "protected": bool(fields.get("writeProtected")),
                    "status": status if ended else "running",
                    "error": fields.get("error") if ended else None,
                    "ended": ended,
                },
            ).fetchone()
            return self._record(row)

    def _ref(self, row: tuple | None, what: str) -> SessionRef:
        if row is None:
            raise NotFound(f"no session {what}")
        return SessionRef(str(row[0]), row[1], row[2], row[3])

    def get_session(self, session_id: str) -> SessionRef:
        sid = _session_id(session_id)
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT id, workspace, name, write_protected FROM sessions WHERE id = %s", (sid,)
            ).fetchone()
        return self._ref(row, f"with id {session_id!r}")

    def find_session(self, workspace: str, name: str) -> SessionRef | None:
        workspace, name = check_workspace(workspace), check_session_name(name)
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT id, workspace, name, write_protected FROM sessions WHERE workspace = %s AND name = %s",
                (workspace, name),
            ).fetchone()
        return None if row is None else self._ref(row, "")

    def session_record(self, ref: SessionRef) -> dict:
        with self._pool.connection() as conn:
            row = conn.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = %s", (int(ref.id),)).fetchone()
        if row is None:
            raise NotFound(f"no session {ref.workspace}/{ref.name}")
        return self._record(row)

    # -- writes ----------------------------------------------------------------
    def _check_writable(self, conn: psycopg.Connection, ref: SessionRef) -> int:
        sid = int(ref.id)
        row = conn.execute("SELECT write_protected FROM sessions WHERE id = %s", (sid,)).fetchone()
        if row is None:
            raise NotFound(f"no session {ref.workspace}/{ref.name}")
        if row[0]:
            raise Forbidden(f"session {ref.workspace}/{ref.name} is write-protected")
        return sid

    def _append(self, conn: psycopg.Connection, sid: int, kind: str, name: str, rows: list, ts: list) -> int:
        """Reserve ``len(rows)`` indices on the stream (row lock until commit),
        store the rows as chunks; → the first index."""
        n = len(rows)
        first_index = conn.execute(
            """INSERT INTO streams AS s (session_id, kind, name, next_index, first_ts, last_ts, ts_sorted)
               VALUES (%(sid)s, %(kind)s, %(name)s, %(n)s, %(first)s, %(last)s, %(sorted)s)
               ON CONFLICT (session_id, kind, name) DO UPDATE SET
                   next_index = s.next_index + %(n)s,
                   first_ts = coalesce(s.first_ts, %(first)s),
                   last_ts = %(last)s,
                   ts_sorted = s.ts_sorted AND %(sorted)s AND (s.last_ts IS NULL OR s.last_ts <= %(first)s),
                   updated_at = now()
               RETURNING id, next_index - %(n)s""",
            {"sid": sid, "kind": kind, "name": name, "n": n, "first": ts[0], "last": ts[-1], "sorted": _sorted(ts)},
        ).fetchone()
        stream_id, first = first_index
        if kind == "log":
            _stamp_log_entries(rows, first)
        if n < MERGE_ROWS and first > 0 and self._merge_into_last(conn, stream_id, first, rows, ts):
            return first
        self._insert_chunks(conn, stream_id, first, rows, ts)
        return first

    def _merge_into_last(self, conn, stream_id: int, first: int, rows: list, ts: list) -> bool:
        last = conn.execute(
            "SELECT first_index, row_count, data FROM chunks WHERE stream_id = %s ORDER BY first_index DESC LIMIT 1",
            (stream_id,),
        ).fetchone()
        if last is None or last[1] >= MERGE_ROWS or last[0] + last[1] != first:
            return False
        merged = decode_chunk(last[2]) + rows
        conn.execute(
            """UPDATE chunks SET row_count = %s, data = %s,
                   min_ts = least(min_ts, %s), max_ts = greatest(max_ts, %s)
               WHERE stream_id = %s AND first_index = %s""",
            (len(merged), encode_chunk(merged), min(ts), max(ts), stream_id, last[0]),
        )
        return True

    @staticmethod
    def _insert_chunks(conn, stream_id: int, first: int, rows: list, ts: list) -> None:
        with conn.cursor().copy(
            "COPY chunks (stream_id, first_index, row_count, min_ts, max_ts, data) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "int8", "int4", "float8", "float8", "bytea"])
            for offset, piece in split(rows):
                stamps = ts[offset : offset + len(piece)]
                copy.write_row((stream_id, first + offset, len(piece), min(stamps), max(stamps), encode_chunk(piece)))

    def append_rows(self, ref: SessionRef, rows: StreamRows) -> dict:
        n = len(rows.rows)
        first = None
        with self._writer(self._sync_rest) as conn:
            sid = self._check_writable(conn, ref)
            if n:
                first = self._append(conn, sid, "track", rows.name, rows.rows, rows.ts)
        return {"trackId": rows.name, "startIndex": first, "endIndex": None if first is None else first + n - 1,
                "count": n}

    def append_logs(self, ref: SessionRef, rows: StreamRows) -> tuple[int, int]:
        with self._writer(self._sync_rest) as conn:
            sid = self._check_writable(conn, ref)
            if rows.rows:
                first = self._append(conn, sid, "log", "", rows.rows, rows.ts)
            else:
                found = conn.execute(
                    "SELECT next_index FROM streams WHERE session_id = %s AND kind = 'log'", (sid,)
                ).fetchone()
                first = found[0] if found else 0
        return first, first + len(rows.rows) - 1

    def _merge_params(self, conn, sid: int, flat: dict) -> dict:
        data, version = conn.execute(
            """UPDATE sessions SET params = params || %s, params_version = params_version + 1, updated_at = now()
               WHERE id = %s RETURNING params, params_version""",
            (_json(flat), sid),
        ).fetchone()
        return {"data": untag_nonfinite(data), "version": version}

    def set_params(self, ref: SessionRef, flat: dict[str, Any]) -> dict:
        with self._writer(self._sync_rest) as conn:
            return self._merge_params(conn, self._check_writable(conn, ref), flat)

    def ingest(self, ref: SessionRef, batch: PreparedBatch) -> IngestAck:
        with self._writer(self._sync_batches) as conn:
            sid = self._check_writable(conn, ref)
            fresh = conn.execute(
                """INSERT INTO ingest_batches (session_id, client, seq) VALUES (%s, %s, %s)
                   ON CONFLICT DO NOTHING RETURNING seq""",
                (sid, batch.client, batch.seq),
            ).fetchone()
            newer = fresh and conn.execute(
                "SELECT 1 FROM ingest_batches WHERE session_id = %s AND client = %s AND seq > %s LIMIT 1",
                (sid, batch.client, batch.seq),
            ).fetchone()
            if not fresh or newer:
                conn.rollback()
                return self._duplicate(conn, ref, sid, batch)
            ranges: dict[tuple[str, str], dict] = {}
            for stream in sorted(batch.streams, key=lambda s: (s.kind, s.name)):  # lock order
                n = len(stream.rows)
                first = self._append(conn, sid, stream.kind, stream.name, stream.rows, stream.ts) if n else None
                ranges[(stream.kind, stream.name)] = {
                    "name": stream.name, "kind": stream.kind, "startIndex": first,
                    "endIndex": None if first is None else first + n - 1, "count": n,
                }
            acked = [ranges[(s.kind, s.name)] for s in batch.streams]
            conn.execute(
                "UPDATE ingest_batches SET ranges = %s WHERE session_id = %s AND client = %s AND seq = %s",
                (Jsonb(acked), sid, batch.client, batch.seq),
            )
            if batch.params is not None:
                self._merge_params(conn, sid, batch.params)
            if batch.close is not None:
                status, error = batch.close
                conn.execute(
                    "UPDATE sessions SET status = %s, error = %s, closed_at = now(), updated_at = now() WHERE id = %s",
                    (status, error, sid),
                )
        # leaving the block commits: from here on the batch counts as applied
        return IngestAck(batch.client, batch.seq, False, [StreamRange(**r) for r in acked], ref.id)

    def _duplicate(self, conn, ref: SessionRef, sid: int, batch: PreparedBatch) -> IngestAck:
        found = conn.execute(
            "SELECT ranges FROM ingest_batches WHERE session_id = %s AND client = %s AND seq = %s",
            (sid, batch.client, batch.seq),
        ).fetchone()
        ranges = (found[0] if found else None) or []  # applied long ago or skipped: no ranges to repeat
        return IngestAck(batch.client, batch.seq, True, [StreamRange(**r) for r in ranges], ref.id)

    # -- reads -----------------------------------------------------------------
    def get_params(self, ref: SessionRef) -> dict:
        with self._pool.connection() as conn:
            row = conn.execute("SELECT params, params_version FROM sessions WHERE id = %s", (int(ref.id),)).fetchone()
        if row is None:
            raise NotFound(f"no session {ref.workspace}/{ref.name}")
        return {"data": untag_nonfinite(row[0]), "version": row[1]}

    def _stream(self, conn, ref: SessionRef, kind: str, name: str) -> tuple | None:
        return conn.execute(
            """SELECT id, next_index, ts_sorted, first_ts, last_ts, created_at, updated_at, description, tags
               FROM streams WHERE session_id = %s AND kind = %s AND name = %s""",
            (int(ref.id), kind, name),
        ).fetchone()

    def _track(self, conn, ref: SessionRef, track: str) -> tuple:
        stream = self._stream(conn, ref, "track", track)
        if stream is None:
            raise NotFound(f"session {ref.workspace}/{ref.name} has no track {track!r}")
        return stream

    @staticmethod
    def _rows(conn, stream_id: int, start: int, end: int) -> list[tuple[int, dict]]:
        """Rows ``start .. end-1`` (end ≤ the stream's count): O(end - start)."""
        chunks = conn.execute(
            """SELECT first_index, data FROM chunks
               WHERE stream_id = %(id)s AND first_index < %(end)s AND first_index >= coalesce(
                   (SELECT max(first_index) FROM chunks WHERE stream_id = %(id)s AND first_index <= %(start)s), 0)
               ORDER BY first_index""",
            {"id": stream_id, "start": start, "end": end},
        ).fetchall()
        out: list[tuple[int, dict]] = []
        for first, data in chunks:
            rows = decode_chunk(data)
            lo, hi = max(start - first, 0), min(end - first, len(rows))
            out.extend(zip(range(first + lo, first + hi), rows[lo:hi]))
        return out

    def _read(self, ref: SessionRef, kind: str, name: str, start: int, limit: int) -> dict:
        with self._reader() as conn:
            stream = self._track(conn, ref, name) if kind == "track" else self._stream(conn, ref, kind, name)
            total = stream[1] if stream else 0
            start = max(0, start)
            end = min(total, start + max(0, limit))
            rows = self._rows(conn, stream[0], start, end) if start < end else []
        return _page(rows, total, start)

    def read_rows(self, ref: SessionRef, track: str, start: int, limit: int) -> dict:
        return self._read(ref, "track", track, start, limit)

    def read_logs(self, ref: SessionRef, start: int, limit: int) -> dict:
        return self._read(ref, "log", "", start, limit)

    def read_rows_by_ts(self, ref, track, start_ts, end_ts, limit) -> dict:
        lo_ok = float("-inf") if start_ts is None else start_ts
        hi_ok = float("inf") if end_ts is None else end_ts
        with self._reader() as conn:
            stream_id, total, ts_sorted = self._track(conn, ref, track)[:3]
            if ts_sorted:  # the first chunk that can hold start_ts, then forward
                found = conn.execute(
                    "SELECT first_index FROM chunks WHERE stream_id = %s AND max_ts >= %s"
                    " ORDER BY max_ts, first_index LIMIT 1",
                    (stream_id, lo_ok),
                ).fetchone()
                candidates = self._chunks_from(conn, stream_id, found[0] if found else total, hi_ok)
            else:
                candidates = self._chunks_overlapping(conn, stream_id, lo_ok, hi_ok)
            matched: list[tuple[int, dict]] = []
            for first, data in candidates:
                for index, row in enumerate(decode_chunk(data), first):
                    if lo_ok <= row["_ts"] < hi_ok:
                        matched.append((index, row))
                if len(matched) > limit:
                    break
        page = _page(matched[:limit], total, matched[0][0] if matched else 0)
        page["hasMore"] = len(matched) > limit
        return page

    @staticmethod
    def _chunks_from(conn, stream_id: int, first_index: int, hi_ok: float) -> Iterable[tuple[int, bytes]]:
        """Chunks from ``first_index`` on, a few at a time, until one starts past ``hi_ok``."""
        while True:
            batch = conn.execute(
                "SELECT first_index, data, min_ts FROM chunks WHERE stream_id = %s AND first_index >= %s"
                " ORDER BY first_index LIMIT 4",
                (stream_id, first_index),
            ).fetchall()
            for first, data, min_ts in batch:
                if min_ts >= hi_ok:
                    return
                yield first, data
            if len(batch) < 4:
                return
            first_index = batch[-1][0] + 1

    @staticmethod
    def _chunks_overlapping(conn, stream_id: int, lo_ok: float, hi_ok: float) -> Iterable[tuple[int, bytes]]:
        """A stream whose ``_ts`` went back: every chunk whose bounds overlap, in index order."""
        with conn.cursor(name=f"scan_{uuid.uuid4().hex}") as cursor:
            cursor.itersize = 8
            cursor.execute(
                "SELECT first_index, data FROM chunks WHERE stream_id = %s AND max_ts >= %s AND min_ts < %s"
                " ORDER BY first_index",
                (stream_id, lo_ok, hi_ok),
            )
            yield from cursor

    def _stats(self, name: str, stream: tuple) -> dict:
        _, total, _, first_ts, last_ts, created, updated, description, tags = stream
        return {
            "name": name,
            "trackId": name,
            "totalDataPoints": total,
            "firstTs": first_ts,
            "lastTs": last_ts,
            "createdAt": _iso(created),
            "updatedAt": _iso(updated),
            "description": description,
            "tags": tags or [],
        }

    def track_stats(self, ref: SessionRef, track: str) -> dict:
        with self._pool.connection() as conn:
            return self._stats(track, self._track(conn, ref, track))

    def list_tracks(self, ref: SessionRef) -> list[dict]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                """SELECT name, id, next_index, ts_sorted, first_ts, last_ts, created_at, updated_at, description, tags
                   FROM streams WHERE session_id = %s AND kind = 'track' ORDER BY name""",
                (int(ref.id),),
            ).fetchall()
        return [self._stats(row[0], row[1:]) for row in rows]

    # -- files -----------------------------------------------------------------
    def _file_record(self, row: tuple) -> dict:
        fid, path, filename, size, checksum, description, tags, metadata, key, created, updated = row
        return {
            "id": fid,
            "filename": filename,
            "path": path,
            "prefix": path.rstrip("/") + "/",
            "sizeBytes": size,
            "checksum": checksum,
            "checksumAlgorithm": "sha256",
            "description": description,
            "tags": tags,
            "metadata": untag_nonfinite(metadata),
            "storagePath": key,
            "createdAt": _iso(created),
            "updatedAt": _iso(updated),
        }

    def upload_file(self, ref, staged: Path, folder, description, tags, metadata) -> dict:
        staged = Path(staged)
        with self._pool.connection() as conn:
            sid = self._check_writable(conn, ref)
        file_id = uuid.uuid4().hex[:16]
        key = f"sessions/{sid}/files/{file_id}/{staged.name}"
        size, checksum = _sha256(staged)
        self.objects.put_file(key, staged)  # first the bytes: a record never points at nothing
        logical = "/" + folder if folder else "/"
        try:
            with self._writer(self._sync_rest) as conn:
                replaced = conn.execute(
                    "DELETE FROM files WHERE session_id = %s AND path = %s AND filename = %s RETURNING object_key",
                    (sid, logical, staged.name),
                ).fetchall()
                row = conn.execute(
                    f"""INSERT INTO files (id, session_id, path, filename, size_bytes, checksum, description, tags,
                                           metadata, object_key)
                        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_FILE_COLUMNS}""",
                    (file_id, sid, logical, staged.name, size, checksum, description, _json(list(tags)),
                     _json(metadata or {}), key),
                ).fetchone()
        except BaseException:
            self.objects.delete(key)
            raise
        for (old_key,) in replaced:
            self.objects.delete(old_key)
        return self._file_record(row)

    def list_files(self, ref, folder, tags) -> list[dict]:
        query = f"SELECT {_FILE_COLUMNS} FROM files WHERE session_id = %s"
        args: list[Any] = [int(ref.id)]
        if folder is not None:
            query += " AND path = %s"
            args.append("/" + folder if folder else "/")
        if tags:
            query += " AND tags @> %s"
            args.append(Jsonb(list(tags)))
        with self._pool.connection() as conn:
            rows = conn.execute(query + " ORDER BY created_at, id", args).fetchall()
        return [self._file_record(row) for row in rows]

    def get_file(self, ref: SessionRef, file_id: str) -> dict:
        with self._pool.connection() as conn:
            row = conn.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE session_id = %s AND id = %s", (int(ref.id), file_id)
            ).fetchone()
        if row is None:
            raise NotFound(f"no file with id {file_id!r} in session {ref.workspace}/{ref.name}")
        return self._file_record(row)

    def export_file(self, ref: SessionRef, file_id: str, dest_dir: Path) -> Path:
        entry = self.get_file(ref, file_id)
        dest = Path(dest_dir) / entry["filename"]
        try:
            size, checksum = self.objects.get_file(entry["storagePath"], dest)
        except FileNotFoundError:
            raise SinkError(f"stored copy of {entry['filename']} is missing from object storage") from None
        if checksum != entry["checksum"] or size != entry["sizeBytes"]:
            raise SinkError(f"stored copy of {entry['filename']} does not match its checksum")
        return dest

    def update_file(self, ref: SessionRef, file_id: str, changes: dict[str, Any]) -> dict:
        with self._writer(self._sync_rest) as conn:
            self._check_writable(conn, ref)
            row = conn.execute(
                f"""UPDATE files SET description = coalesce(%s, description), tags = coalesce(%s, tags),
                        metadata = coalesce(%s, metadata), updated_at = now()
                    WHERE session_id = %s AND id = %s RETURNING {_FILE_COLUMNS}""",
                (changes.get("description"), _json(changes.get("tags")), _json(changes.get("metadata")),
                 int(ref.id), file_id),
            ).fetchone()
        if row is None:
            raise NotFound(f"no file with id {file_id!r} in session {ref.workspace}/{ref.name}")
        return self._file_record(row)

    def delete_file(self, ref: SessionRef, file_id: str) -> dict:
        with self._writer(self._sync_rest) as conn:
            self._check_writable(conn, ref)
            row = conn.execute(
                f"DELETE FROM files WHERE session_id = %s AND id = %s RETURNING {_FILE_COLUMNS}",
                (int(ref.id), file_id),
            ).fetchone()
        if row is None:
            raise NotFound(f"no file with id {file_id!r} in session {ref.workspace}/{ref.name}")
        self.objects.delete(row[8])  # after the commit: a crash here leaves an orphan object, never a dangling record
        return self._file_record(row)

    # -- lifecycle -------------------------------------------------------------
    def scratch_dir(self) -> Path:
        """A private directory for staged uploads and downloads (per process, so
        replicas sharing a ``--root`` never clean up each other's)."""
        self._scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Path(tempfile.mkdtemp(dir=self._scratch))

    def close(self) -> None:
        self._pool.close()
        shutil.rmtree(self._scratch, ignore_errors=True)


class _Snapshot:
    """``with _Snapshot(pool) as conn``: a pooled connection whose statements
    share one REPEATABLE READ, READ ONLY snapshot."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._manager = pool.connection()

    def __enter__(self) -> psycopg.Connection:
        conn = self._manager.__enter__()
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return conn

    def __exit__(self, *exc: Any) -> Any:
        return self._manager.__exit__(*exc)

