"""An in-memory sink for tests: keeps what it was given, in order."""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["MemorySink"]


class MemorySink:
    """Satisfies :class:`Sink` and the reading half of :class:`Store`.

    ``fail_next`` makes the next ``write_rows`` calls raise (to exercise the
    writer's retry); ``streams`` maps ``(name, is_log)`` to the rows written."""

    def __init__(self) -> None:
        self.info: dict | None = None
        self.streams: dict[tuple[str, bool], list] = {}
        self.params: dict[str, Any] = {}
        self.status: tuple[str, str | None] | None = None
        self.flushes = 0
        self.fail_next = 0
        self.lock = threading.Lock()

    def open(self, info: dict) -> dict:
        self.info = dict(info, status="running")
        return self.info

    def write_rows(self, name: str, is_log: bool, rows: list, ts: list) -> int:
        with self.lock:
            if self.fail_next:
                self.fail_next -= 1
                raise OSError("MemorySink: injected failure")
            held = self.streams.setdefault((name, is_log), [])
            first = len(held)
            held.extend(rows)
            return first

    def write_params(self, flat: dict) -> None:
        self.params.update(flat)

    def flush(self) -> None:
        self.flushes += 1

    def close(self, status: str, error: str | None) -> None:
        self.status = (status, error)

    def read(self, name: str, is_log: bool, start_index: int, limit: int) -> dict:
        rows = self.streams.get((name, is_log), [])
        page = rows[start_index : start_index + limit]
        data = [{"index": start_index + i, "timestamp": row.get("_ts"), "data": row} for i, row in enumerate(page)]
        end = data[-1]["index"] if data else None
        return {
            "data": data,
            "startIndex": start_index,
            "endIndex": end,
            "total": len(rows),
            "hasMore": end is not None and end + 1 < len(rows),
        }

    def params_get(self) -> dict:
        return dict(self.params)
