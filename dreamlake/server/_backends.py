"""Which storage backend a server runs on, from its settings.

No ``--store`` (or a path): the embedded default, the local store under
``--root``. ``--store postgresql://…``: the scale-out backend, with file bytes
in ``--objects`` (default: ``<root>/.dreamlake-server/objects``). The
PostgreSQL driver is imported only then, so the embedded server never needs it.
"""

from __future__ import annotations

from ._local_storage import LocalStorage
from ._settings import Settings
from ._storage import Storage

__all__ = ["open_storage", "POSTGRES_SCHEMES"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_storage(settings: Settings) -> Storage:
    store = settings.store
    if not store:
        return LocalStorage(settings)
    if not store.startswith(POSTGRES_SCHEMES):
        raise ValueError(f"--store must be a postgresql:// URL (or absent for the local store), got {store!r}")
    from ._objects import open_objects
    from .postgres import PostgresStorage

    objects = settings.objects or (settings.state_dir / "objects").as_uri()
    return PostgresStorage(store, open_objects(objects), settings)
