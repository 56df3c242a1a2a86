"""Where the page's data comes from: the :class:`DataSource` interface and the
local-store implementation.

The web app only ever talks to a ``DataSource``; ``dreamlake ui`` gives it a
:class:`LocalStoreSource`, the server gives it an adapter over its own storage.
Every method is synchronous and may block on I/O (the app calls them from a
worker thread). Unknown sessions, tracks and files raise :class:`NotFound`.

Rows are ``(index, ts, data)`` tuples: ``index`` is the row's position in its
stream (0-based, dense), ``ts`` its ``_ts`` and ``data`` the row as logged
(a dict, ``_ts`` included or not: the app ignores it there).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

from .._file_store import FileStore
from .._fsutil import read_json
from .._local_sink import list_track_names, read_page, read_params, stream_files, track_stats
from .._status import session_status
from ._sample_read import read_rows_at as read_scattered

__all__ = ["DataSource", "LocalStoreSource", "NotFound", "Row"]

Row = tuple[int, float, dict]


class NotFound(LookupError):
    """No such session, track or file (the app answers 404)."""


@runtime_checkable
class DataSource(Protocol):
    """What the page needs from a store. Sessions are named by their prefix
    (``workspace/name`` locally; any ``/``-separated string elsewhere)."""

    def list_sessions(self) -> list[dict]:
        """Every session's summary: ``prefix``, ``workspace``, ``name``,
        ``status``, ``tags``, ``description``, ``createdAt``, ``updatedAt``
        (ISO strings), optionally more keys (``error``, ``closedAt``...)."""

    def session(self, prefix: str) -> dict:
        """One session's summary (same keys as in :meth:`list_sessions`)."""

    def params(self, prefix: str) -> dict:
        """The session's params, flat (``{"model.lr": 0.1}``)."""

    def track_names(self, prefix: str) -> list[str]:
        """The session's track names, sorted (``/`` separates levels)."""

    def track_info(self, prefix: str, track: str) -> dict:
        """``totalDataPoints``, ``firstTs``, ``lastTs`` (None when empty)."""

    def read_rows(self, prefix: str, track: str, start: int, limit: int) -> list[Row]:
        """Rows ``start .. start+limit-1`` (fewer at the end)."""

    def read_rows_at(self, prefix: str, track: str, indices: Sequence[int]) -> list[Row]:
        """The rows at these ascending indices (the downsampler's sample);
        must cost O(len(indices)), not O(rows in the track)."""

    def log_count(self, prefix: str) -> int:
        """How many log entries the session has."""

    def read_logs(self, prefix: str, start: int, limit: int) -> list[Row]:
        """Log entries ``start .. start+limit-1``; ``data`` holds ``level``,
        ``message``, optional ``metadata``, ``sequenceNumber`` and ``timestamp``."""

    def list_files(self, prefix: str) -> list[dict]:
        """File entries: ``id``, ``filename``, ``path``, ``sizeBytes``, ``tags``,
        ``description``, ``createdAt``..."""

    def download_file(self, prefix: str, file_id: str, dest_dir: str) -> str:
        """Copy the file into ``dest_dir``; returns the path of the copy."""


def _rows(page: dict) -> list[Row]:
    return [(entry["index"], entry["timestamp"], entry["data"]) for entry in page["data"]]


class LocalStoreSource:
    """A local store root (``<root>/<workspace>/<name>/session.json``),
    read only through the store's own reading functions."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"LocalStoreSource({str(self.root)!r})"

    # -- sessions --------------------------------------------------------------
    def _dir(self, prefix: str) -> str:
        parts = prefix.strip("/").split("/")
        if len(parts) != 2 or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise NotFound(f"no session {prefix!r}")
        directory = self.root.joinpath(*parts)
        if not (directory / "session.json").is_file():
            raise NotFound(f"no session {prefix!r}")
        return str(directory)

    def _summary(self, directory: Path) -> dict:
        meta = read_json(str(directory / "session.json"), default={}) or {}
        workspace, name = directory.parent.name, directory.name
        return {
            **{k: v for k, v in meta.items() if k not in ("pid", "hostname", "opens")},
            "prefix": f"{workspace}/{name}",
            "workspace": workspace,
            "name": name,
            "status": session_status(meta),
            "tags": list(meta.get("tags") or []),
            "description": meta.get("description"),
            "createdAt": meta.get("createdAt"),
            "updatedAt": meta.get("updatedAt"),
        }

    def list_sessions(self) -> list[dict]:
        if not self.root.is_dir():
            return []
        found = sorted(p.parent for p in self.root.glob("*/*/session.json"))
        return [self._summary(d) for d in found if not d.parent.name.startswith(".") and not d.name.startswith(".")]

    def session(self, prefix: str) -> dict:
        return self._summary(Path(self._dir(prefix)))

    def params(self, prefix: str) -> dict:
        return read_params(self._dir(prefix))

    # -- tracks ----------------------------------------------------------------
    def track_names(self, prefix: str) -> list[str]:
        return list_track_names(self._dir(prefix))

    def _track(self, prefix: str, track: str):
        directory = self._dir(prefix)
        if track not in list_track_names(directory):
            raise NotFound(f"no track {track!r} in {prefix!r}")
        return stream_files(directory, track)

    def track_info(self, prefix: str, track: str) -> dict:
        directory = self._dir(prefix)
        if track not in list_track_names(directory):
            raise NotFound(f"no track {track!r} in {prefix!r}")
        return track_stats(directory, track)

    def read_rows(self, prefix: str, track: str, start: int, limit: int) -> list[Row]:
        return _rows(read_page(self._track(prefix, track), start, limit))

    def read_rows_at(self, prefix: str, track: str, indices: Sequence[int]) -> list[Row]:
        return read_scattered(self._track(prefix, track), indices)  # O(1) per row via the offsets index

    # -- logs ------------------------------------------------------------------
    def log_count(self, prefix: str) -> int:
        return stream_files(self._dir(prefix), "", is_log=True).count()

    def read_logs(self, prefix: str, start: int, limit: int) -> list[Row]:
        return _rows(read_page(stream_files(self._dir(prefix), "", is_log=True), start, limit))

    # -- files -----------------------------------------------------------------
    def list_files(self, prefix: str) -> list[dict]:
        entries = FileStore(self._dir(prefix)).list(None, None)
        return [{k: v for k, v in e.items() if k != "storagePath"} for e in entries]

    def download_file(self, prefix: str, file_id: str, dest_dir: str) -> str:
        try:
            return FileStore(self._dir(prefix)).download(file_id, dest_dir)
        except KeyError as exc:
            raise NotFound(str(exc.args[0]) if exc.args else f"no file {file_id!r}") from None
