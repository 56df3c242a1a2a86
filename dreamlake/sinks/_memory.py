"""An in-memory sink for tests: keeps what it was given, in order."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from typing import Any

__all__ = ["MemorySink", "MemoryStore"]


class MemorySink:
    """Satisfies :class:`Sink`; ``store`` (a :class:`MemoryStore`) reads it back.

    ``streams`` maps ``(name, is_log)`` to the rows written. To exercise the
    writer: ``fail_next`` makes the next ``write_rows``/``write_params`` calls
    raise ``OSError`` (disk full); clearing ``gate`` holds every write until it
    is set again."""

    def __init__(self) -> None:
        self.info: dict | None = None
        self.streams: dict[tuple[str, bool], list] = {}
        self.params: dict[str, Any] = {}
        self.status: tuple[str, str | None] | None = None
        self.flushes = 0
        self.fail_next = 0
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.store = MemoryStore(self)

    def _maybe_fail(self) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise OSError(28, "No space left on device (MemorySink: injected)")

    def open(self, info: dict) -> dict:
        self.info = dict(info, status="running")
        return self.info

    def write_rows(self, name: str, is_log: bool, rows: list, ts: list) -> int:
        self.gate.wait(10)
        with self.lock:
            self._maybe_fail()
            held = self.streams.setdefault((name, is_log), [])
            first = len(held)
            held.extend(rows)
            return first

    def write_params(self, flat: dict) -> None:
        with self.lock:
            self._maybe_fail()
            self.params.update(flat)

    def flush(self) -> None:
        self.flushes += 1

    def close(self, status: str, error: str | None) -> None:
        self.status = (status, error)

    def count(self, name: str, is_log: bool = False) -> int:
        return len(self.streams.get((name, is_log), []))

    def rows(self, name: str, is_log: bool = False) -> list:
        return list(self.streams.get((name, is_log), []))


class MemoryStore:
    """Reads a :class:`MemorySink`; files are kept as bytes."""

    def __init__(self, sink: MemorySink) -> None:
        self._sink = sink
        self._files: dict[str, dict] = {}

    def _page(self, rows: list, indices: list[int], total: int, start: int, limit: int) -> dict:
        picked = indices[:limit]
        data = [{"index": i, "timestamp": rows[i].get("_ts"), "data": rows[i]} for i in picked]
        return {
            "data": data,
            "startIndex": picked[0] if picked else start,
            "endIndex": picked[-1] if picked else None,
            "total": total,
            "hasMore": len(indices) > limit,
        }

    def read(self, name: str, is_log: bool, start_index: int, limit: int) -> dict:
        rows = self._sink.rows(name, is_log)
        return self._page(rows, list(range(start_index, len(rows))), len(rows), start_index, limit)

    def read_range(self, name: str, is_log: bool, start_ts: Any, end_ts: Any, limit: int) -> dict:
        rows = self._sink.rows(name, is_log)
        inside = [
            i for i, row in enumerate(rows)
            if (start_ts is None or row.get("_ts", 0) >= start_ts) and (end_ts is None or row.get("_ts", 0) < end_ts)
        ]
        return self._page(rows, inside, len(rows), 0, limit)

    def stats(self, name: str) -> dict:
        if (name, False) not in self._sink.streams:
            raise KeyError(f"no track {name!r}")
        rows = self._sink.rows(name)
        return {"name": name, "trackId": name, "totalDataPoints": len(rows), "nextIndex": len(rows),
                "firstTs": rows[0].get("_ts") if rows else None, "lastTs": rows[-1].get("_ts") if rows else None}

    def list_tracks(self) -> list[dict]:
        return [self.stats(name) for name, is_log in sorted(self._sink.streams) if not is_log]

    def params_get(self) -> dict:
        return dict(self._sink.params)

    def files_upload(self, src: str, folder: str, description: Any, tags: list, metadata: dict) -> dict:
        with open(src, "rb") as source:
            data = source.read()
        file_id = f"m{len(self._files) + 1}"
        entry = {"id": file_id, "filename": os.path.basename(src), "path": folder, "description": description,
                 "tags": list(tags), "metadata": dict(metadata), "sizeBytes": len(data),
                 "checksum": hashlib.sha256(data).hexdigest()}
        self._files[file_id] = {"entry": entry, "data": data}
        return dict(entry)

    def _held(self, file_id: str) -> dict:
        held = self._files.get(file_id)
        if held is None:
            raise FileNotFoundError(f"no file {file_id!r}")
        return held

    def files_list(self, folder: str | None, tags: list | None) -> list[dict]:
        return [
            dict(f["entry"]) for f in self._files.values()
            if (folder is None or f["entry"]["path"] == folder) and set(tags or ()) <= set(f["entry"]["tags"])
        ]

    def files_download(self, file_id: str, dest: str) -> str:
        held = self._held(file_id)
        path = os.path.join(dest, held["entry"]["filename"]) if os.path.isdir(dest) else dest
        with open(path + ".part", "wb") as out:
            out.write(held["data"])
        shutil.move(path + ".part", path)
        return path

    def files_delete(self, file_id: str) -> dict:
        self._held(file_id)
        del self._files[file_id]
        return {"id": file_id, "deleted": True}

    def files_update(self, file_id: str, changes: dict) -> dict:
        entry = self._held(file_id)["entry"]
        entry.update({k: v for k, v in changes.items() if k in ("description", "tags", "metadata", "path")})
        return dict(entry)
