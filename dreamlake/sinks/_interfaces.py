"""The small interfaces every sink and store satisfies.

A :class:`Sink` receives a session's data, in order, from one thread (the
writer thread or the agent) and offers the session's :class:`Store` as
``sink.store``. A Store answers reads and file calls of one session. Local
mode: ``LocalSink`` writes, ``LocalStore`` reads (the writer thread calls it,
after everything queued before the call is written). Remote mode:
``RemoteSink`` writes, ``RemoteStore`` reads over HTTP on the caller's thread,
once the server acknowledged what was queued before (:class:`DeliversLater`).

What a sink may do besides is said by the optional protocols below; the
writer, the session and the agent test for them with ``isinstance``.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

__all__ = [
    "Sink", "Store", "STORE_OPS", "FILE_OPS", "call_store",
    "DeliversLater", "ClosesLater", "ReportsFlush", "RecordsLosses", "Quarantines", "Joins", "ForkAware", "HasHealth",
]


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


@runtime_checkable
class Sink(Protocol):
    #: reads and file calls of this session
    store: Store

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


# -- what a sink may do besides ------------------------------------------------------
@runtime_checkable
class DeliversLater(Protocol):
    """Writes reach the store later, on another thread (the remote sink). The
    writer thread only takes a mark (cheap); a read or a flush waits for it on
    the caller's thread, so a slow server never holds the writer."""

    def delivery_mark(self) -> int:
        """Seal what was written so far; the mark a reader waits for."""

    def wait_delivered(self, mark: int, timeout: float | None = None, delivered_only: bool = True) -> None:
        """Return once everything up to ``mark`` is in the store (``SinkError`` if not in time)."""

    def wait_and_report(self, mark: int, names: list[str] | None, timeout: float | None = None) -> list[dict]:
        """Wait for ``mark`` to be durable (delivered or spooled); then each track's
        index window since the previous report."""


@runtime_checkable
class ClosesLater(Protocol):
    """Closing has a quick part and a slow one (the remote sink). The writer
    thread, which serves every session, runs only :meth:`seal`; whoever closes
    (``Session.close`` on its own thread, an agent worker) then runs
    :meth:`finish_close`. A sink with these methods is never sent ``close``
    by the writer."""

    def seal(self, status: str, error: str | None) -> Any:
        """Writer thread, no network: cut the last batch, record the status;
        returns what :meth:`finish_close` takes."""

    def finish_close(self, sealed: Any, timeout: float | None = None) -> bool:
        """Any thread: wait for delivery (at most ``timeout`` and the sink's own
        limit), leave the rest for the next run or ``dreamlake sync`` and say
        so, release the session. True when everything was delivered."""


@runtime_checkable
class ReportsFlush(Protocol):
    """The sink assigns indices itself (the agent): a flush asks it for the windows."""

    def flush_report(self, names: list[str]) -> list[dict]: ...


@runtime_checkable
class RecordsLosses(Protocol):
    def record_losses(self, lost: dict[str, int]) -> None:
        """Rows this opening did not write, by reason; stored at close."""


@runtime_checkable
class Quarantines(Protocol):
    def quarantine(self, name: str, is_log: bool, row: Any, reason: str) -> None:
        """Keep a row that can never be written aside, with the reason."""


@runtime_checkable
class Joins(Protocol):
    def join(self, info: dict) -> None:
        """Start taking writes without opening (owning) the session: a forked
        child that writes by itself. Sinks that need no opening lack it."""


@runtime_checkable
class ForkAware(Protocol):
    def after_fork_in_child(self) -> None:
        """In a forked child: drop the parent's handles and connections."""


@runtime_checkable
class HasHealth(Protocol):
    def health(self) -> dict:
        """Counters merged into ``Session.health()``."""


# -- Store calls named by the API and the agent protocol ------------------------------
_CALLS: dict[str, Callable[[Store, tuple], Any]] = {
    "read": lambda s, a: s.read(*a),
    "read_range": lambda s, a: s.read_range(*a),
    "stats": lambda s, a: s.stats(*a),
    "list_tracks": lambda s, a: s.list_tracks(*a),
    "params_get": lambda s, a: s.params_get(*a),
    "files_upload": lambda s, a: s.files_upload(*a),
    "files_list": lambda s, a: s.files_list(*a),
    "files_download": lambda s, a: s.files_download(*a),
    "files_delete": lambda s, a: s.files_delete(*a),
    "files_update": lambda s, a: s.files_update(*a),
}

#: The operations of a Store, by the names the API and the agent protocol use.
STORE_OPS = tuple(_CALLS)
#: Store operations that need not wait for earlier rows (they touch files only).
FILE_OPS = tuple(op for op in STORE_OPS if op.startswith("files_"))


def call_store(store: Store, op: str, args: tuple | list) -> Any:
    """Call the Store operation ``op`` (one of :data:`STORE_OPS`)."""
    call = _CALLS.get(op)
    if call is None:
        raise ValueError(f"unknown store operation {op!r}")
    return call(store, tuple(args))
