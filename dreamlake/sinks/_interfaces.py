"""The two small interfaces every sink and store satisfies.

A :class:`Sink` receives a session's data, in order, from one thread (the
writer thread or the agent). A :class:`Store` answers reads and file calls of
one session; it may be called from any thread. Local mode: ``LocalSink`` is
both. Remote mode: ``RemoteSink`` is the sink, ``RemoteStore`` the store.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Sink", "Store", "STORE_OPS"]

#: The operations of a Store, as the writer's barriers name them today.
STORE_OPS = (
    "read", "read_range", "stats", "list_tracks", "params_get",
    "files_upload", "files_list", "files_download", "files_delete", "files_update",
)


@runtime_checkable
class Sink(Protocol):
    def open(self, info: dict) -> dict:
        """Start (or continue) the session; return its metadata."""

    def write_rows(self, name: str, is_log: bool, rows: list, ts: list) -> int:
        """Append rows (each a dict holding ``_ts``) to one stream; return the
        first row's index (provisional where a server assigns indices).
        Raising means nothing was taken: the caller keeps the rows and retries."""

    def write_params(self, flat: dict) -> None:
        """Merge flat parameters."""

    def flush(self) -> None:
        """Return once everything written so far is durable."""

    def close(self, status: str, error: str | None) -> None:
        """Make everything durable and record the final status."""


@runtime_checkable
class Store(Protocol):
    def read(self, name: str, is_log: bool, start_index: int, limit: int) -> dict: ...

    def read_range(self, name: str, is_log: bool, start_ts: Any, end_ts: Any, limit: int) -> dict: ...

    def stats(self, name: str) -> dict: ...

    def list_tracks(self) -> list[dict]: ...

    def params_get(self) -> dict: ...

    def files_upload(self, src: str, folder: str, description: Any, tags: list, metadata: dict) -> dict: ...

    def files_list(self, folder: str | None, tags: list | None) -> list[dict]: ...

    def files_download(self, file_id: str, dest: str) -> str: ...

    def files_delete(self, file_id: str) -> dict: ...

    def files_update(self, file_id: str, changes: dict) -> dict: ...
