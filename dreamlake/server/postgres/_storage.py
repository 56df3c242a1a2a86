"""The scale-out backend: PostgreSQL for everything but file bytes, object storage for those.

Stateless: a replica keeps a connection pool and a cache of session ids
(immutable once made), so any number of ``dreamlake-server --store
postgresql://…`` processes can serve one database behind a load balancer.

* **Consecutive indices across replicas**: :mod:`._streams` reserves a write's
  indices with a row-locking upsert on the stream and stores its chunks in the
  same transaction.
* **Exactly-once ingest**: the batch's ``(session, client, seq)`` row is the
  first thing its transaction inserts (a concurrent retry of the same batch on
  another replica waits on that key, then finds it committed or gone), its
  ranges are written before the commit. A replica killed mid-batch never
  commits — PostgreSQL rolls the transaction back when the connection drops —
  so the client's retry, to any replica, is applied fresh.
* **Bounded idempotency records**: per (session, client) the last
  ``KEEP_ACKS`` batches keep their ranges (a retry gets them again); older
  ones are pruned, and a retry of one of those is still a duplicate because a
  later seq exists (acknowledged without ranges, as on the local store).
* **No deadlocks**: a transaction locks stream rows in (kind, name) order and
  the session row (params, close) last.
* **Durability follows ``Settings.fsync``** as on the local store: batched
  ingest commits with the WAL flushed (exactly-once across a power loss of the
  database host) unless fsync is "never"; REST writes commit with
  ``synchronous_commit = off`` unless fsync is "always" — durable across any
  crash of a replica or of PostgreSQL's processes; only a power loss of the
  database host may take their last fraction of a second.
* **Few round trips**: connections are in autocommit mode; a read is one
  statement (one snapshot: a stream's count and its chunks agree), a write is
  one explicit transaction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, NoReturn, Sequence

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from ..._local_sink import _page as local_page
from ..._values import untag_nonfinite
from .._errors import BadRequest, Forbidden, NotFound, ServerError
from .._journal import KEEP_ACKS
from .._objects import ObjectStore
from .._prepare import check_session_name, check_workspace
from .._settings import Settings
from .._storage import PreparedBatch, SessionRef, StreamRows
from .._uploads import Sweeper, UploadSpec
from ..wire import IngestAck, StreamRange
from . import _streams
from ._files import FileCatalog
from ._schema import migrate
from ._uploads import PgUploads
from ._values import iso, jsonb

__all__ = ["PostgresStorage", "StorageUnavailable", "POOL_TIMEOUT"]

log = logging.getLogger("dreamlake.server")

_END_STATUSES = ("completed", "failed", "interrupted")
_SESSION_COLUMNS = (
    "id, workspace, name, description, tags, folder, metadata, write_protected, status, error,"
    " created_at, updated_at, closed_at"
)
#: seconds a request waits for a database connection before its 503
POOL_TIMEOUT = 10.0
#: PostgreSQL ends a transaction whose client went silent this long (its locks with it);
#: a replica whose *process* dies is noticed at once (its socket closes)
IDLE_IN_TRANSACTION_TIMEOUT = 30
#: TCP keepalives, so a replica host lost to the network is noticed in about a minute
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
#: session refs remembered per replica (ids never change meaning; write protection is re-checked on write)
_CACHE_LIMIT = 100_000


def _session_id(text: str) -> int:
    if not (isinstance(text, str) and text.isdigit() and len(text) < 19):
        raise NotFound(f"no session with id {text!r}")
    return int(text)


def _application_name(dsn: str) -> dict:
    """Name the connections in pg_stat_activity, unless the URL already does."""
    return {} if "application_name" in conninfo_to_dict(dsn) else {"application_name": "dreamlake-server"}


def _sync_policy(fsync: object) -> tuple[bool, bool]:
    """(commit ingest batches with the WAL flushed, commit REST writes so) from
    ``Settings.fsync``: "batches" | "always" | "never" (or a bool)."""
    if isinstance(fsync, bool):
        return fsync, fsync
    return fsync in ("batches", "always"), fsync == "always"


def _page(rows: list[tuple[int, dict]], total: int, start: int, kind: str = "track") -> dict:
    """The ``read()`` reply, built as the local store builds it (a log entry's
    ``_ts`` is the page's ``timestamp``, not part of the entry)."""
    if kind == "log":
        return local_page([(index, row.pop("_ts", None), row) for index, row in rows], total, start)
    return local_page([(index, row.get("_ts"), row) for index, row in rows], total, start)


def _stats(name: str, stream: _streams.Stream) -> dict:
    return {
        "name": name,
        "trackId": name,
        "totalDataPoints": stream.count,
        "firstTs": stream.first_ts,
        "lastTs": stream.last_ts,
        "createdAt": iso(stream.created_at),
        "updatedAt": iso(stream.updated_at),
        "description": stream.description,
        "tags": stream.tags or [],
    }


class StorageUnavailable(ServerError):
    """PostgreSQL cannot be reached (→ 503: the client retries, its spool keeps the data)."""

    status = 503
    kind = "unavailable"


class _NotFresh(Exception):
    """The batch's idempotency record could not be inserted."""


class PostgresStorage:
    """:class:`~dreamlake.server._storage.Storage` on PostgreSQL + object storage."""

    def __init__(self, dsn: str, objects: ObjectStore, settings: Settings, pool_size: int = 16,
                 pool_timeout: float = POOL_TIMEOUT) -> None:
        self.settings = settings
        self._sync_batches, self._sync_rest = _sync_policy(settings.fsync)
        migrate(dsn)
        self._pool = ConnectionPool(
            dsn, min_size=1, max_size=pool_size, open=True, name="dreamlake", timeout=pool_timeout,
            kwargs={"autocommit": True, **_application_name(dsn), **_KEEPALIVES},
            configure=self._configure,
            check=ConnectionPool.check_connection,  # a connection PostgreSQL dropped is replaced, not used
        )
        self.files = FileCatalog(objects, self._connection, self._writer)
        self.uploads = PgUploads(objects, self._connection, self._writer, self.files, settings.upload_ttl,
                                 self.scratch_dir)
        self._sweep_uploads = Sweeper(self.uploads.sweep, settings.upload_ttl)
        self._scratch = Path(settings.state_dir) / "tmp" / f"pg-{os.getpid()}"
        self._refs: dict[str, SessionRef] = {}
        self._ids: dict[tuple[str, str], str] = {}

    # -- plumbing --------------------------------------------------------------
    def _configure(self, conn: psycopg.Connection) -> None:
        # a replica host that vanishes mid-transaction must not hold its stream locks for long
        settings = f"SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT}s'"
        if not self._sync_rest:  # the common case: one round trip less per REST write
            settings += "; SET synchronous_commit = off"
        conn.execute(settings)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection; database errors become the server's: a value
        PostgreSQL cannot store (NUL in text) → 400, no database → 503."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.DataError as exc:
            raise BadRequest(f"a value cannot be stored: {exc}") from exc
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("PostgreSQL unavailable: %s", exc)
            raise StorageUnavailable("the database is unavailable; retry later") from exc

    @contextlib.contextmanager
    def _writer(self, sync: bool = False) -> Iterator[psycopg.Connection]:
        """A pooled connection in one write transaction (commits on exit, rolls
        back on an exception)."""
        with self._connection() as conn, conn.transaction():
            if sync and not self._sync_rest:
                conn.execute("SET LOCAL synchronous_commit = on")
            yield conn

    def _remember(self, ref: SessionRef) -> SessionRef:
        if len(self._refs) > _CACHE_LIMIT:
            self._refs.clear()
            self._ids.clear()
        self._refs[ref.id] = ref
        self._ids[(ref.workspace, ref.name)] = ref.id
        return ref

    def _writable(self, conn: psycopg.Connection, ref: SessionRef) -> int:
        """The session's key; NotFound or Forbidden (write-protected) otherwise."""
        row = conn.execute("SELECT write_protected FROM sessions WHERE id = %s", (int(ref.id),)).fetchone()
        if row is None:
            raise NotFound(f"no session {ref.workspace}/{ref.name}")
        if row[0]:
            raise Forbidden(f"session {ref.workspace}/{ref.name} is write-protected")
        return int(ref.id)

    def _refuse(self, conn: psycopg.Connection, ref: SessionRef) -> NoReturn:
        """A write found no writable session: say why. (Sessions are never
        deleted, and write protection is never lifted, so it is one of the two.)"""
        self._writable(conn, ref)
        raise Forbidden(f"session {ref.workspace}/{ref.name} is not writable")

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
            "createdAt": iso(created),
            "updatedAt": iso(updated),
            "closedAt": iso(closed),
            "writeProtected": protected,
        }

    def upsert_session(self, workspace: str, name: str, fields: dict[str, Any]) -> dict:
        workspace, name = check_workspace(workspace), check_session_name(name)
        status = fields.get("status")
        ended = status in _END_STATUSES
        with self._writer() as conn:
            conn.execute("INSERT INTO workspaces (name) VALUES (%s) ON CONFLICT DO NOTHING", (workspace,))
            conn.execute("INSERT INTO sessions (workspace, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                         (workspace, name))
            row = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE workspace = %s AND name = %s FOR UPDATE",
                (workspace, name),
            ).fetchone()
            if not row[7]:  # a write-protected session continues nothing, changes nothing
                row = conn.execute(
                    f"""UPDATE sessions SET
                        description = coalesce(%(description)s, description),
                        tags = coalesce(%(tags)s, tags),
                        folder = coalesce(%(folder)s, folder),
                        metadata = coalesce(%(metadata)s, metadata),
                        write_protected = %(protected)s,
                        status = %(status)s, error = %(error)s,
                        updated_at = now(), closed_at = CASE WHEN %(ended)s THEN now() END
                    WHERE id = %(id)s RETURNING {_SESSION_COLUMNS}""",
                    {
                        "id": row[0],
                        "description": fields.get("description"),
                        "tags": jsonb(fields.get("tags")),
                        "folder": fields.get("folder"),
                        "metadata": jsonb(fields.get("metadata")),
                        "protected": bool(fields.get("writeProtected")),
                        "status": status if ended else "running",
                        "error": fields.get("error") if ended else None,
                        "ended": ended,
                    },
                ).fetchone()
        self._remember(SessionRef(str(row[0]), workspace, name, row[7]))
        return self._record(row)

    def _load_ref(self, where: str, args: tuple) -> SessionRef | None:
        with self._connection() as conn:
            row = conn.execute(f"SELECT id, workspace, name, write_protected FROM sessions WHERE {where}",
                               args).fetchone()
        return None if row is None else self._remember(SessionRef(str(row[0]), row[1], row[2], row[3]))

    def get_session(self, session_id: str) -> SessionRef:
        ref = self._refs.get(session_id) or self._load_ref("id = %s", (_session_id(session_id),))
        if ref is None:
            raise NotFound(f"no session with id {session_id!r}")
        return ref

    def cached_session(self, session_id: str) -> SessionRef | None:
        return self._refs.get(session_id)

    def find_session(self, workspace: str, name: str) -> SessionRef | None:
        workspace, name = check_workspace(workspace), check_session_name(name)
        known = self._ids.get((workspace, name))
        if known is not None:
            return self._refs.get(known) or self.get_session(known)
        return self._load_ref("workspace = %s AND name = %s", (workspace, name))

    def list_sessions(self) -> list[dict]:
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions ORDER BY workspace COLLATE \"C\", name COLLATE \"C\""
            ).fetchall()
        return [self._record(row) for row in rows]

    def session_record(self, ref: SessionRef) -> dict:
        with self._connection() as conn:
            row = conn.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = %s", (int(ref.id),)).fetchone()
        if row is None:
            raise NotFound(f"no session {ref.workspace}/{ref.name}")
        return self._record(row)

    # -- writes ----------------------------------------------------------------
    def _append(self, conn: psycopg.Connection, ref: SessionRef, rows: StreamRows) -> int:
        reserved = _streams.append(conn, int(ref.id), rows.kind, rows.name, rows.rows, rows.ts)
        if reserved is None:
            self._refuse(conn, ref)
        return reserved[1]

    def append_rows(self, ref: SessionRef, rows: StreamRows) -> dict:
        n = len(rows.rows)
        first = None
        with self._writer() as conn:
            if n:
                first = self._append(conn, ref, rows)
            else:
                self._writable(conn, ref)
        return {"trackId": rows.name, "startIndex": first, "endIndex": None if first is None else first + n - 1,
                "count": n}

    def append_logs(self, ref: SessionRef, rows: StreamRows) -> tuple[int, int]:
        with self._writer() as conn:
            if rows.rows:
                first = self._append(conn, ref, rows)
            else:
                stream = _streams.find(conn, self._writable(conn, ref), "log", "")
                first = stream.count if stream else 0
        return first, first + len(rows.rows) - 1

    def _merge_params(self, conn: psycopg.Connection, ref: SessionRef, flat: dict) -> dict:
        row = conn.execute(
            """UPDATE sessions SET params = params || %s, params_version = params_version + 1, updated_at = now()
               WHERE id = %s AND NOT write_protected RETURNING params, params_version""",
            (jsonb(flat), int(ref.id)),
        ).fetchone()
        if row is None:
            self._refuse(conn, ref)
        return {"data": untag_nonfinite(row[0]), "version": row[1]}

    def set_params(self, ref: SessionRef, flat: dict[str, Any]) -> dict:
        with self._writer() as conn:
            return self._merge_params(conn, ref, flat)

    def ingest(self, ref: SessionRef, batch: PreparedBatch) -> IngestAck:
        key = {"sid": int(ref.id), "client": batch.client, "seq": batch.seq}
        try:
            acked = self._apply(ref, batch, key)
        except _NotFresh:  # applied before, a later seq applied, or not writable
            with self._connection() as conn:
                self._writable(conn, ref)
                return self._duplicate(conn, ref, key)
        # the transaction committed: from here on the batch counts as applied
        return IngestAck(batch.client, batch.seq, False, [StreamRange(**r) for r in acked], ref.id)

    def _apply(self, ref: SessionRef, batch: PreparedBatch, key: dict) -> list[dict]:
        with self._writer(self._sync_batches) as conn:
            fresh = conn.execute(
                """INSERT INTO ingest_batches (session_id, client, seq)
                   SELECT id, %(client)s, %(seq)s FROM sessions WHERE id = %(sid)s AND NOT write_protected
                     AND NOT EXISTS (SELECT 1 FROM ingest_batches
                                     WHERE session_id = %(sid)s AND client = %(client)s AND seq > %(seq)s)
                   ON CONFLICT DO NOTHING RETURNING seq""",
                key,
            ).fetchone()
            if fresh is None:
                raise _NotFresh  # rolls the (empty) transaction back
            ranges: dict[tuple[str, str], dict] = {}
            for stream in sorted(batch.streams, key=lambda s: (s.kind, s.name)):  # the lock order
                n = len(stream.rows)
                first = self._append(conn, ref, stream) if n else None
                ranges[(stream.kind, stream.name)] = {
                    "name": stream.name, "kind": stream.kind, "startIndex": first,
                    "endIndex": None if first is None else first + n - 1, "count": n,
                }
            acked = [ranges[(s.kind, s.name)] for s in batch.streams]
            conn.execute(
                "UPDATE ingest_batches SET ranges = %(ranges)s"
                " WHERE session_id = %(sid)s AND client = %(client)s AND seq = %(seq)s",
                {**key, "ranges": Jsonb(acked)},
            )
            if batch.seq % KEEP_ACKS == 0:  # older records only repeat ranges; the newest always stays
                conn.execute(
                    "DELETE FROM ingest_batches WHERE session_id = %(sid)s AND client = %(client)s"
                    " AND seq <= %(seq)s - %(keep)s",
                    {**key, "keep": KEEP_ACKS},
                )
            if batch.params is not None:
                self._merge_params(conn, ref, batch.params)
            if batch.close is not None:
                conn.execute(
                    "UPDATE sessions SET status = %s, error = %s, closed_at = now(), updated_at = now() WHERE id = %s",
                    (*batch.close, int(ref.id)),
                )
        return acked

    def _duplicate(self, conn: psycopg.Connection, ref: SessionRef, key: dict) -> IngestAck:
        found = conn.execute(
            "SELECT ranges FROM ingest_batches WHERE session_id = %(sid)s AND client = %(client)s AND seq = %(seq)s",
            key,
        ).fetchone()
        ranges = (found[0] if found else None) or []  # a seq below one applied later: no ranges to repeat
        return IngestAck(key["client"], key["seq"], True, [StreamRange(**r) for r in ranges], ref.id)

    # -- reads -----------------------------------------------------------------
    def get_params(self, ref: SessionRef) -> dict:
        with self._connection() as conn:
            row = conn.execute("SELECT params, params_version FROM sessions WHERE id = %s", (int(ref.id),)).fetchone()
        if row is None:
            raise NotFound(f"no session {ref.workspace}/{ref.name}")
        return {"data": untag_nonfinite(row[0]), "version": row[1]}

    def _track(self, conn: psycopg.Connection, ref: SessionRef, track: str) -> _streams.Stream:
        stream = _streams.find(conn, int(ref.id), "track", track)
        if stream is None:
            raise NotFound(f"session {ref.workspace}/{ref.name} has no track {track!r}")
        return stream

    def _read(self, ref: SessionRef, kind: str, name: str, start: int, limit: int) -> dict:
        start, limit = max(0, start), max(0, limit)
        with self._connection() as conn:
            found = _streams.read_range(conn, int(ref.id), kind, name, start, limit)
        if found is None:
            if kind == "track":
                raise NotFound(f"session {ref.workspace}/{ref.name} has no track {name!r}")
            found = (0, [])
        total, rows = found
        return _page(rows, total, start, kind)

    def read_rows(self, ref: SessionRef, track: str, start: int, limit: int) -> dict:
        return self._read(ref, "track", track, start, limit)

    def read_logs(self, ref: SessionRef, start: int, limit: int) -> dict:
        return self._read(ref, "log", "", start, limit)

    def read_rows_at(self, ref: SessionRef, track: str, indices: Sequence[int]) -> list[tuple[int, float, dict]]:
        with self._connection() as conn:
            stream = self._track(conn, ref, track)
            found = _streams.read_at(conn, stream, indices)
        return [(index, row.get("_ts"), row) for index, row in found]

    def read_rows_by_ts(self, ref, track, start_ts, end_ts, limit) -> dict:
        with self._connection() as conn:
            stream = self._track(conn, ref, track)
            matched = _streams.read_ts(conn, stream, start_ts, end_ts, limit)
        page = _page(matched[:limit], stream.count, matched[0][0] if matched else 0)
        page["hasMore"] = len(matched) > limit
        return page

    def track_stats(self, ref: SessionRef, track: str) -> dict:
        with self._connection() as conn:
            return _stats(track, self._track(conn, ref, track))

    def list_tracks(self, ref: SessionRef) -> list[dict]:
        # COLLATE "C": code-point order, as the local store sorts, whatever the database's locale
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT name, {_streams.STREAM_COLUMNS} FROM streams"
                " WHERE session_id = %s AND kind = 'track' ORDER BY name COLLATE \"C\"",
                (int(ref.id),),
            ).fetchall()
        return [_stats(row[0], _streams.Stream(*row[1:])) for row in rows]

    # -- files -----------------------------------------------------------------
    def upload_file(self, ref, staged: Path, folder, description, tags, metadata) -> dict:
        with self._connection() as conn:
            sid = self._writable(conn, ref)
        return self.files.upload(sid, Path(staged), folder, description, tags, metadata)

    def list_files(self, ref, folder, tags) -> list[dict]:
        return self.files.list(int(ref.id), folder, tags)

    def get_file(self, ref: SessionRef, file_id: str) -> dict:
        return self.files.get(int(ref.id), file_id)

    def export_file(self, ref: SessionRef, file_id: str, dest_dir: Path) -> Path:
        return self.files.export(int(ref.id), file_id, dest_dir)

    def update_file(self, ref: SessionRef, file_id: str, changes: dict[str, Any]) -> dict:
        with self._connection() as conn:
            sid = self._writable(conn, ref)
        return self.files.update(sid, file_id, changes)

    def delete_file(self, ref: SessionRef, file_id: str) -> dict:
        with self._connection() as conn:
            sid = self._writable(conn, ref)
        return self.files.delete(sid, file_id)

    # -- chunked uploads (rules in .._uploads, staging in ._uploads) -------------------
    def upload_create(self, ref: SessionRef, spec: UploadSpec) -> dict:
        self._sweep_uploads()
        with self._writer() as conn:
            return self.uploads.create(conn, self._writable(conn, ref), spec)

    def upload_status(self, ref: SessionRef, upload_id: str) -> dict:
        return self.uploads.status(int(ref.id), upload_id)

    def upload_chunk(self, ref: SessionRef, upload_id: str, offset: int, data: bytes) -> tuple[dict, int]:
        return self.uploads.chunk(int(ref.id), upload_id, offset, data)

    def upload_complete(self, ref: SessionRef, upload_id: str) -> dict:
        with self._connection() as conn:
            sid = self._writable(conn, ref)
        return self.uploads.complete(sid, upload_id)

    def upload_abort(self, ref: SessionRef, upload_id: str) -> dict:
        return self.uploads.abort(int(ref.id), upload_id)

    # -- lifecycle -------------------------------------------------------------
    def held(self) -> dict[str, int]:
        """Per-session state in memory: only the cache of session refs (bounded by ``_CACHE_LIMIT``)."""
        return {"sessions": len(self._refs), "open": 0, "evicted": 0}

    def scratch_dir(self) -> Path:
        """A private directory for staged uploads and downloads (per process, so
        replicas sharing a ``--root`` never remove each other's)."""
        self._scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Path(tempfile.mkdtemp(dir=self._scratch))

    def close(self) -> None:
        self._pool.close()
        shutil.rmtree(self._scratch, ignore_errors=True)
