"""The scale-out backend (DESIGN §9): N stateless replicas on one PostgreSQL
database plus object storage for file bytes. ``dreamlake-server --store
postgresql://… [--objects URL]`` selects it; see :mod:`._storage` for how
indices stay consecutive and ingest exactly-once across replicas."""

from ._schema import MIGRATIONS, migrate, schema_version
from ._storage import PostgresStorage, StorageUnavailable

__all__ = ["PostgresStorage", "StorageUnavailable", "MIGRATIONS", "migrate", "schema_version"]
