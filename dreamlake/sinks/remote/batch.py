"""The open batch of one session, sealed on rows, bytes or age.

Rows arrive from the writer thread; the sender thread seals the batch when it
gets old. A sealed batch has its sequence number (taken from the client slot
*before* it can reach the spool or the network) and is never changed again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .config import BATCH_MAX_AGE, BATCH_MAX_BYTES, BATCH_MAX_ROWS

__all__ = ["SealedBatch", "BatchBuilder"]

StreamKey = tuple[str, bool]  # (name, is_log)


@dataclass
class SealedBatch:
    seq: int
    streams: dict[StreamKey, list] = field(default_factory=dict)
    params: dict[str, Any] | None = None
    close: tuple[str, str | None] | None = None
    rows: int = 0
    raw_bytes: int = 0


class BatchBuilder:
    """Collects rows per stream; :meth:`add` says whether the batch is full."""

    def __init__(self, next_seq: Callable[[], int], max_rows: int = BATCH_MAX_ROWS,
                 max_bytes: int = BATCH_MAX_BYTES, max_age: float = BATCH_MAX_AGE) -> None:
        self._next_seq = next_seq
        self.max_rows, self.max_bytes, self.max_age = max_rows, max_bytes, max_age
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._streams: dict[StreamKey, list] = {}
        self._params: dict[str, Any] = {}
        self._rows = 0
        self._bytes = 0
        self._since: float | None = None

    def add_rows(self, key: StreamKey, rows: list, row_bytes: int) -> bool:
        with self._lock:
            held = self._streams.get(key)
            if held is None:
                self._streams[key] = list(rows)
            else:
                held.extend(rows)
            self._rows += len(rows)
            self._bytes += len(rows) * row_bytes
            if self._since is None:
                self._since = time.monotonic()
            return self._rows >= self.max_rows or self._bytes >= self.max_bytes

    def add_params(self, flat: dict) -> None:
        with self._lock:
            self._params.update(flat)
            if self._since is None:
                self._since = time.monotonic()

    def due_in(self) -> float | None:
        """Seconds until the open batch must be sealed (None: nothing open)."""
        with self._lock:
            if self._since is None:
                return None
            return max(0.0, self._since + self.max_age - time.monotonic())

    def seal(self, close: tuple[str, str | None] | None = None) -> SealedBatch | None:
        with self._lock:
            if self._since is None and close is None:
                return None
            batch = SealedBatch(self._next_seq(), self._streams, self._params or None, close, self._rows, self._bytes)
            self._reset()
            return batch

    def discard(self) -> None:
        """A forked child drops what its parent had open (the parent sends it)."""
        self._lock = threading.Lock()
        self._reset()
