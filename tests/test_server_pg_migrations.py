"""Schema migrations: from an empty database, re-run, and many replicas starting at once."""

from __future__ import annotations

import threading

import psycopg
import pytest

from dreamlake.server.postgres import MIGRATIONS, migrate, schema_version
from pg import fresh_schema

TABLES = {"schema_migrations", "workspaces", "sessions", "streams", "chunks", "ingest_batches", "files", "uploads",
          "upload_parts"}


@pytest.fixture()
def database():
    with fresh_schema() as url:
        yield url


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
    return {name for (name,) in rows}


def test_an_empty_database_gets_every_migration_once(database):
    assert tables(database) == set()
    assert migrate(database) == [version for version, _, _ in MIGRATIONS]
    assert tables(database) == TABLES
    with psycopg.connect(database) as conn:
        assert schema_version(conn) == MIGRATIONS[-1][0]
        recorded = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    assert recorded == [(version, name) for version, name, _ in MIGRATIONS]


def test_rerunning_migrations_changes_nothing_and_keeps_data(database):
    migrate(database)
    with psycopg.connect(database) as conn:
        conn.execute("INSERT INTO workspaces (name) VALUES ('lab')")
    assert migrate(database) == []
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT name FROM workspaces").fetchall() == [("lab",)]
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(MIGRATIONS)


def test_replicas_starting_together_apply_each_migration_exactly_once(database):
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            barrier.wait(10)
            results.append(migrate(database))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert sorted(results, key=len) == [[], [], [], [version for version, _, _ in MIGRATIONS]]
    assert tables(database) == TABLES


def test_a_half_applied_schema_is_finished_not_redone(database, monkeypatch):
    """A later migration added to a database already at version 1 is applied alone."""
    migrate(database)
    extra = (MIGRATIONS[-1][0] + 1, "test: an extra column", "ALTER TABLE workspaces ADD COLUMN note text")
    monkeypatch.setattr("dreamlake.server.postgres._schema.MIGRATIONS", [*MIGRATIONS, extra])
    from dreamlake.server.postgres import _schema

    assert _schema.migrate(database) == [extra[0]]
    assert _schema.migrate(database) == []
    with psycopg.connect(database) as conn:
        assert schema_version(conn) == extra[0]
        conn.execute("INSERT INTO workspaces (name, note) VALUES ('lab', 'n')")
