"""Fan-out: one primary sink that answers reads and files (the local store),
and secondary sinks that receive the same writes (the remote sink).

A secondary never makes the primary fail: its errors are counted in
``health()``. ``write_rows`` calls the primary first, because the local sink
stamps log entries in place and the remote sink encodes them later on its
own thread."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable

from .._local_sink import LocalStore
from ._interfaces import DeliversLater, ForkAware, HasHealth, Joins, Quarantines, RecordsLosses, Sink, Store

__all__ = ["FanOutSink", "FanOutStore"]

log = logging.getLogger("dreamlake")


class FanOutSink:
    def __init__(self, primary: Sink, *secondaries: Sink) -> None:
        self.primary = primary
        self.secondaries = list(secondaries)
        self.secondary_errors = 0
        self.last_secondary_error: str | None = None
        self.store = FanOutStore(self)

    def _each(self, op: str, call: Callable[[Sink], Any]) -> None:
        for sink in self.secondaries:
            self._call_one(sink, op, call)

    def _call_one(self, sink: Sink, op: str, call: Callable[[Sink], Any]) -> None:
        try:
            call(sink)
        except Exception as exc:
            self._secondary_failed(sink, op, exc)

    def _secondary_failed(self, sink: Any, op: str, exc: BaseException) -> None:
        self.secondary_errors += 1
        if self.last_secondary_error is None:
            log.warning("dreamlake: %s on %s failed: %s", op, type(sink).__name__, exc)
        self.last_secondary_error = f"{op}: {type(exc).__name__}: {exc}"

    def open(self, info: dict) -> dict:
        meta = self.primary.open(info)
        self._each("open", lambda sink: sink.open(info))
        return meta

    def write_rows(self, name: str, is_log: bool, rows: list, ts: list) -> int:
        first = self.primary.write_rows(name, is_log, rows, ts)
        self._each("write_rows", lambda sink: sink.write_rows(name, is_log, rows, ts))
        return first

    def write_params(self, flat: dict) -> None:
        self.primary.write_params(flat)
        self._each("write_params", lambda sink: sink.write_params(flat))

    def flush(self) -> None:
        """Durable means durable in the primary. A secondary that delivers
        later (the remote sink) only seals its open batch, so a slow server
        never holds the writer."""
        self.primary.flush()
        for sink in self.secondaries:
            if isinstance(sink, DeliversLater):
                self._call_one(sink, "flush", lambda s: s.delivery_mark())
            else:
                self._call_one(sink, "flush", lambda s: s.flush())

    def close(self, status: str, error: str | None) -> None:
        self.primary.close(status, error)
        self._each("close", lambda sink: sink.close(status, error))

    def join(self, info: dict) -> None:
        for sink in [self.primary, *self.secondaries]:
            if isinstance(sink, Joins):
                sink.join(info)

    def record_losses(self, lost: dict[str, int]) -> None:
        if isinstance(self.primary, RecordsLosses):
            self.primary.record_losses(lost)

    def quarantine(self, name: str, is_log: bool, row: Any, reason: str) -> None:
        if isinstance(self.primary, Quarantines):
            self.primary.quarantine(name, is_log, row, reason)

    def after_fork_in_child(self) -> None:
        for sink in [self.primary, *self.secondaries]:
            if isinstance(sink, ForkAware):
                sink.after_fork_in_child()

    def health(self) -> dict:
        out: dict = {"secondary_errors": self.secondary_errors, "last_secondary_error": self.last_secondary_error}
        for sink in self.secondaries:
            if isinstance(sink, HasHealth):
                out.update(sink.health())
        return out


class FanOutStore:
    """The primary's store answers; an upload also goes to every secondary,
    from the primary's copy, on its own thread, so a large upload never holds
    up the rows (the caller's ``src`` may be gone by then)."""

    def __init__(self, fanout: FanOutSink) -> None:
        self._fanout = fanout

    @property
    def _primary(self) -> Store:
        return self._fanout.primary.store

    def read(self, name: str, is_log: bool, start_index: int, limit: int) -> dict:
        return self._primary.read(name, is_log, start_index, limit)

    def read_range(self, name: str, is_log: bool, start_ts: Any, end_ts: Any, limit: int) -> dict:
        return self._primary.read_range(name, is_log, start_ts, end_ts, limit)

    def stats(self, name: str) -> dict:
        return self._primary.stats(name)

    def list_tracks(self) -> list[dict]:
        return self._primary.list_tracks()

    def params_get(self) -> dict:
        return self._primary.params_get()

    def files_upload(self, src: str, folder: str, description: Any, tags: list, metadata: dict) -> dict:
        entry = self._primary.files_upload(src, folder, description, tags, metadata)
        primary = self._primary
        copy = src
        if isinstance(primary, LocalStore) and entry.get("storagePath"):  # upload the stored copy
            copy = os.path.join(primary.files.root, *entry["storagePath"].split("/"))
        for sink in self._fanout.secondaries:
            thread = threading.Thread(
                target=self._upload_one,
                args=(sink, copy, folder, description, tags, metadata),
                name="dreamlake-fanout-upload",
                daemon=True,
            )
            thread.start()
        return entry

    def _upload_one(self, sink: Sink, src: str, folder: str, description: Any, tags: list, metadata: dict) -> None:
        try:
            sink.store.files_upload(src, folder, description, tags, metadata)
        except Exception as exc:
            self._fanout._secondary_failed(sink, "files_upload", exc)

    def files_list(self, folder: str | None, tags: list | None) -> list[dict]:
        return self._primary.files_list(folder, tags)

    def files_download(self, file_id: str, dest: str) -> str:
        return self._primary.files_download(file_id, dest)

    def files_delete(self, file_id: str) -> dict:
        return self._primary.files_delete(file_id)

    def files_update(self, file_id: str, changes: dict) -> dict:
        return self._primary.files_update(file_id, changes)
