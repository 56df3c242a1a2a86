"""The web page's :class:`~dreamlake.ui.DataSource` over any server
:class:`~._storage.Storage`, so every backend (the local store, PostgreSQL)
serves the same page.

Sessions are named by prefix (``workspace/name``) on the page and by reference
in the storage: each call resolves the prefix with ``find_session`` (cached by
the backends). The server's :class:`~._errors.NotFound` (and a prefix the
server would refuse as a name) become the page's ``NotFound`` (404).

How the page's reads map onto the storage (see :mod:`dreamlake.ui._reads`):
a chart reads ``track_stats`` once, then either one ``read_rows`` of at most
``SAMPLE_FACTOR * points`` rows (a range that small is shown exactly) or one
``read_rows_at`` of that many evenly spaced indices; both cost O(points
shown), never O(rows in the track).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

from ..ui import NotFound as PageNotFound
from ..ui import Row
from ._errors import BadRequest, NotFound
from ._storage import SessionRef, Storage

__all__ = ["StorageSource"]

#: keys of a file record the page has no use for (where the bytes are kept)
_INTERNAL_FILE_KEYS = ("storagePath",)


@contextlib.contextmanager
def _page_errors() -> Iterator[None]:
    try:
        yield
    except NotFound as exc:
        raise PageNotFound(str(exc)) from None


def _rows(page: dict) -> list[Row]:
    return [(entry["index"], entry["timestamp"], entry["data"]) for entry in page["data"]]


def _summary(record: dict) -> dict:
    workspace, name = record["workspace"], record["name"]
    return {
        **record,
        "prefix": f"{workspace}/{name}",
        "tags": list(record.get("tags") or []),
    }


class StorageSource:
    """:class:`~dreamlake.ui.DataSource` reading through a server's storage."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def __repr__(self) -> str:
        return f"StorageSource({type(self.storage).__name__})"

    def _ref(self, prefix: str) -> SessionRef:
        workspace, _, name = prefix.strip("/").partition("/")
        try:
            ref = self.storage.find_session(workspace, name)
        except (BadRequest, NotFound, TypeError, ValueError):
            ref = None  # a name the server would refuse names no session
        if ref is None:
            raise PageNotFound(f"no session {prefix!r}")
        return ref

    # -- sessions --------------------------------------------------------------
    def list_sessions(self) -> list[dict]:
        return [_summary(record) for record in self.storage.list_sessions()]

    def session(self, prefix: str) -> dict:
        with _page_errors():
            return _summary(self.storage.session_record(self._ref(prefix)))

    def params(self, prefix: str) -> dict:
        with _page_errors():
            return dict(self.storage.get_params(self._ref(prefix))["data"])

    # -- tracks ----------------------------------------------------------------
    def track_names(self, prefix: str) -> list[str]:
        with _page_errors():
            return sorted(t["name"] for t in self.storage.list_tracks(self._ref(prefix)))

    def track_info(self, prefix: str, track: str) -> dict:
        with _page_errors():
            return self.storage.track_stats(self._ref(prefix), track)

    def read_rows(self, prefix: str, track: str, start: int, limit: int) -> list[Row]:
        with _page_errors():
            return _rows(self.storage.read_rows(self._ref(prefix), track, start, limit))

    def read_rows_at(self, prefix: str, track: str, indices: Sequence[int]) -> list[Row]:
        with _page_errors():
            return self.storage.read_rows_at(self._ref(prefix), track, indices)

    # -- logs ------------------------------------------------------------------
    def log_count(self, prefix: str) -> int:
        with _page_errors():
            return int(self.storage.read_logs(self._ref(prefix), 0, 0)["total"])

    def read_logs(self, prefix: str, start: int, limit: int) -> list[Row]:
        with _page_errors():
            return _rows(self.storage.read_logs(self._ref(prefix), start, limit))

    # -- files -----------------------------------------------------------------
    def list_files(self, prefix: str) -> list[dict]:
        with _page_errors():
            entries = self.storage.list_files(self._ref(prefix), None, None)
        return [{k: v for k, v in e.items() if k not in _INTERNAL_FILE_KEYS} for e in entries]

    def download_file(self, prefix: str, file_id: str, dest_dir: str) -> str:
        with _page_errors():
            return str(self.storage.export_file(self._ref(prefix), file_id, Path(dest_dir)))
