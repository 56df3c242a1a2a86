"""Versioned schema migrations, applied when a replica starts.

Each migration is (version, name, SQL) and runs in its own transaction with
its row in ``schema_migrations``, so a crash mid-migration leaves the database
at the previous version. All replicas call :func:`migrate` on start; a
session-level advisory lock makes the second one wait for the first and then
find nothing left to do. Append new migrations; never edit an applied one.

Tables (all per database; one database per deployment):

``workspaces``      names seen (the catalog's top level)
``sessions``        one row per ``workspace/name``: metadata, status, params (flat jsonb)
``streams``         one row per track of a session, plus one ``kind='log'`` stream for
                    the session's logs; ``next_index`` is the allocator (row-locked by
                    the ``UPDATE … RETURNING`` that reserves a batch's indices)
``chunks``          rows of a stream, ``first_index .. first_index+row_count-1``, as one
                    zstd-compressed msgpack array (:mod:`._chunks`); ``min_ts/max_ts``
                    bound the ``_ts`` inside
``ingest_batches``  exactly-once: one row per applied (session, client, seq), with the
                    ranges the batch was given, written in the batch's transaction
``files``           file records; the bytes live in object storage under ``object_key``
``uploads``         resumable chunked uploads: the spec, ``received`` (bytes staged), the
                    completing replica's lease, the file id once completed
``upload_parts``    staged byte ranges of an upload, one object each (``uploads/<id>/<first byte>``)
"""

from __future__ import annotations

import logging

import psycopg

__all__ = ["MIGRATIONS", "migrate", "schema_version"]

log = logging.getLogger("dreamlake.server")

#: pg_advisory_lock key for migrations ("dlmigrat" as an int8)
_LOCK_KEY = 0x646C6D6967726174

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "catalog, streams, chunks, ingest records, files",
        """
        CREATE TABLE workspaces (
            name        text PRIMARY KEY,
            created_at  timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE sessions (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            workspace       text NOT NULL REFERENCES workspaces (name),
            name            text NOT NULL,
            description     text,
            tags            jsonb,
            folder          text,
            metadata        jsonb,
            write_protected boolean NOT NULL DEFAULT false,
            status          text NOT NULL DEFAULT 'running',
            error           text,
            params          jsonb NOT NULL DEFAULT '{}',
            params_version  integer NOT NULL DEFAULT 0,
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now(),
            closed_at       timestamptz,
            UNIQUE (workspace, name)
        );
        CREATE TABLE streams (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            session_id  bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            kind        text NOT NULL CHECK (kind IN ('track', 'log')),
            name        text NOT NULL,
            next_index  bigint NOT NULL DEFAULT 0,
            first_ts    double precision,
            last_ts     double precision,
            ts_sorted   boolean NOT NULL DEFAULT true,
            description text,
            tags        jsonb,
            created_at  timestamptz NOT NULL DEFAULT now(),
            updated_at  timestamptz NOT NULL DEFAULT now(),
            UNIQUE (session_id, kind, name)
        );
        CREATE TABLE chunks (
            stream_id   bigint NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
            first_index bigint NOT NULL,
            row_count   integer NOT NULL CHECK (row_count > 0),
            min_ts      double precision NOT NULL,
            max_ts      double precision NOT NULL,
            data        bytea NOT NULL,
            PRIMARY KEY (stream_id, first_index)
        );
        ALTER TABLE chunks ALTER COLUMN data SET STORAGE EXTERNAL;  -- already compressed
        CREATE INDEX chunks_by_max_ts ON chunks (stream_id, max_ts);
        CREATE TABLE ingest_batches (
            session_id  bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            client      text NOT NULL,
            seq         bigint NOT NULL,
            ranges      jsonb,
            applied_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (session_id, client, seq)
        );
        CREATE TABLE files (
            id          text PRIMARY KEY,
            session_id  bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            path        text NOT NULL,
            filename    text NOT NULL,
            size_bytes  bigint NOT NULL,
            checksum    text NOT NULL,
            description text,
            tags        jsonb NOT NULL DEFAULT '[]',
            metadata    jsonb NOT NULL DEFAULT '{}',
            object_key  text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            updated_at  timestamptz NOT NULL DEFAULT now(),
            UNIQUE (session_id, path, filename)
        );
        """,
    ),
    (
        2,
        "resumable chunked uploads",
        """
        CREATE TABLE uploads (
            id               text PRIMARY KEY,
            session_id       bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            path             text NOT NULL,
            filename         text NOT NULL,
            size_bytes       bigint NOT NULL,
            checksum         text NOT NULL,
            description      text,
            tags             jsonb NOT NULL DEFAULT '[]',
            metadata         jsonb NOT NULL DEFAULT '{}',
            received         bigint NOT NULL DEFAULT 0,
            completing_until timestamptz,
            file_id          text,
            created_at       timestamptz NOT NULL DEFAULT now(),
            updated_at       timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX uploads_by_activity ON uploads (updated_at);
        CREATE TABLE upload_parts (
            upload_id   text NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
            first_byte  bigint NOT NULL,
            size_bytes  bigint NOT NULL CHECK (size_bytes > 0),
            PRIMARY KEY (upload_id, first_byte)
        );
        """,
    ),
]


def schema_version(conn: psycopg.Connection) -> int:
    """The highest applied migration (0 on an empty database)."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]


def migrate(dsn: str) -> list[int]:
    """Apply every migration the database lacks; → the versions applied now."""
    applied: list[int] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = schema_version(conn)
            for version, name, sql in MIGRATIONS:
                if version <= current:
                    continue
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                log.info("dreamlake-server: applied schema migration %d (%s)", version, name)
                applied.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied
