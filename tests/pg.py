"""Throw-away PostgreSQL databases for the scale-out tests.

Every test gets its own schema (``dl_<random>`` in the ``test`` database,
reached through a URL whose ``search_path`` names it; dropped afterwards), so
parallel runs never see each other's rows and a test starts from an empty
namespace (a schema is ~100× faster to make than a database). Tests skip, saying why, only when PostgreSQL is
unreachable at 127.0.0.1:5432 (CI starts it); ``DREAMLAKE_TEST_PG`` names
another server (``postgresql://user@host:port``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

try:
    import psycopg
except ImportError:  # the local-store tests that import this module must still run
    psycopg = None

__all__ = ["admin_url", "fresh_schema", "postgres_backend", "require_postgres"]

_SERVERS = [os.environ["DREAMLAKE_TEST_PG"]] if os.environ.get("DREAMLAKE_TEST_PG") else [
    "postgresql://postgres@127.0.0.1:5432",
    "postgresql://root@127.0.0.1:5432",
]


@functools.lru_cache(maxsize=1)
def _reachable() -> tuple[str | None, str]:
    if psycopg is None:
        return None, "psycopg is not installed"
    errors = []
    for server in _SERVERS:
        try:
            with psycopg.connect(f"{server}/test", connect_timeout=3):
                return server, ""
        except psycopg.Error as exc:
            errors.append(f"{server}: {str(exc).strip().splitlines()[0]}")
    return None, "; ".join(errors)


def admin_url() -> str | None:
    return _reachable()[0]


def require_postgres() -> str:
    """The server to test against. Skipped where PostgreSQL is unreachable, except
    in CI (``CI=true``), whose machines start it: there a missing server fails."""
    server, why = _reachable()
    if server is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL is unreachable in CI ({why}); .ci/run starts it")
        pytest.skip(f"PostgreSQL is unreachable ({why})")
    return server


def create_schema() -> str:
    """A new schema; → a URL whose connections see only it."""
    server = require_postgres()
    name = f"dl_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server}/test", autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    return f"{server}/test?options=-csearch_path%3D{name}"


def drop_schema(url: str) -> None:
    server, name = url.split("/test?options=-csearch_path%3D")
    with psycopg.connect(f"{server}/test", autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@contextlib.contextmanager
def fresh_schema() -> Iterator[str]:
    """→ the URL of a new, empty database; dropped on exit."""
    url = create_schema()
    try:
        yield url
    finally:
        drop_schema(url)


_by_directory: dict[Path, str] = {}


def _drop_all() -> None:
    for url in _by_directory.values():
        with contextlib.suppress(Exception):
            drop_schema(url)


atexit.register(_drop_all)


def postgres_backend(tmp: Path) -> Callable:
    """For the storage contract suite: one database per test directory (the
    same one again on a "restart"), dropped when the test process ends."""
    from dreamlake.server._objects import open_objects
    from dreamlake.server._settings import Settings
    from dreamlake.server.postgres import PostgresStorage

    url = _by_directory.get(tmp)
    if url is None:
        url = _by_directory[tmp] = create_schema()
    settings = Settings(root=tmp / "pg-root")
    return lambda: PostgresStorage(url, open_objects(str(tmp / "objects")), settings, pool_size=8)
