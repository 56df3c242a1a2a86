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
from typing import Any

__all__ = ["FanOutSink"]

log = logging.getLogger("dreamlake")


class FanOutSink:
    def __init__(self, primary: Any, *secondaries: Any) -> None:
        self.primary = primary
        self.secondaries = list(secondaries)
        self.secondary_errors = 0
        self.last_secondary_error: str | None = None

    def _each(self, op: str, *args: Any) -> None:
        for sink in self.secondaries:
            self._call_one(sink, op, *args)

    def _call_one(self, sink: Any, op: str, *args: Any) -> None:
        try:
            getattr(sink, op)(*args)
        except Exception as exc:
            self.secondary_errors += 1
            if self.last_secondary_error is None:
                log.warning("dreamlake: %s on %s failed: %s", op, type(sink).__name__, exc)
            self.last_secondary_error = f"{op}: {type(exc).__name__}: {exc}"

    def open(self, info: dict) -> dict:
        meta = self.primary.open(info)
        self._each("open", info)
        return meta

    def write_rows(self, name: str, is_log: bool, rows: list, ts: list) -> int:
        first = self.primary.write_rows(name, is_log, rows, ts)
        self._each("write_rows", name, is_log, rows, ts)
        return first

    def write_params(self, flat: dict) -> None:
        self.primary.write_params(flat)
        self._each("write_params", flat)

    def flush(self) -> None:
        """Durable means durable in the primary. A secondary that can send
        without waiting (``delivery_mark``: the remote sink seals its open
        batch) is not waited for, so a slow server never holds the writer."""
        self.primary.flush()
        for sink in self.secondaries:
            self._call_one(sink, "delivery_mark" if hasattr(sink, "delivery_mark") else "flush")

    def close(self, status: str, error: str | None) -> None:
        self.primary.close(status, error)
        self._each("close", status, error)

    def after_fork_in_child(self) -> None:
        for sink in [self.primary, *self.secondaries]:
            hook = getattr(sink, "after_fork_in_child", None)
            if hook is not None:
                hook()

    def files_upload(self, src: str, folder: str, description: Any, tags: list, metadata: dict) -> dict:
        """The primary stores the file now; secondaries get it from the
        primary's copy on their own thread, so a large upload never holds up
        the rows (the caller's ``src`` may be gone by then)."""
        entry = self.primary.files_upload(src, folder, description, tags, metadata)
        files = getattr(self.primary, "files", None)
        copy = os.path.join(files.root, *entry["storagePath"].split("/")) if files and entry.get("storagePath") else src
        for sink in self.secondaries:
            thread = threading.Thread(
                target=self._upload_one,
                args=(sink, copy, folder, description, tags, metadata),
                name="dreamlake-fanout-upload",
                daemon=True,
            )
            thread.start()
        return entry

    def _upload_one(self, sink: Any, *args: Any) -> None:
        store = getattr(sink, "store", sink)
        try:
            store.files_upload(*args)
        except Exception as exc:
            self.secondary_errors += 1
            self.last_secondary_error = f"files_upload: {type(exc).__name__}: {exc}"
            log.warning("dreamlake: uploading %s to %s failed: %s", args[0], type(sink).__name__, exc)

    def health(self) -> dict:
        out: dict = {"secondary_errors": self.secondary_errors, "last_secondary_error": self.last_secondary_error}
        for sink in self.secondaries:
            health = getattr(sink, "health", None)
            if health is not None:
                out.update(health())
        return out

    def __getattr__(self, op: str) -> Any:
        """Reads and the other file calls go to the primary."""
        if op.startswith("_"):
            raise AttributeError(op)
        return getattr(self.primary, op)
