"""``dreamlake.open_session``: look at a session without opening it for writing.

A :class:`Session` re-opened "just to look" starts a writer, records an opening
and takes locks. The reader does none of that: it reads the files of a session
(finished, still running, written by upstream DreamLake 0.3, or on a read-only
disk) and writes nothing — no index, no lock file, no metadata::

    run = dreamlake.open_session("robotics/run-1", root="./data")
    run.status, run.params, run.tracks.list()
    run.track("train").read(limit=100)
    run.track("train").to_pandas(ts="datetime")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import _export
from ._config import resolve
from ._file_store import FileStore
from ._fsutil import read_json
from ._local_sink import list_track_names, log_paths, read_page, read_params, read_ts_page, track_dir, track_stats
from ._names import check_file_folder
from ._readonly_stream import ReadOnlyStream
from ._status import session_status
from ._tracks import check_ts

__all__ = ["open_session", "SessionReader", "TrackReader"]


def _check_window(start_index: Any, limit: Any) -> None:
    for label, value in (("start_index", start_index), ("limit", limit)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{label} must be a non-negative int, got {value!r}")


class TrackReader:
    """One track of a :class:`SessionReader`: the read API of a live track."""

    def __init__(self, session_dir: str, name: str) -> None:
        self.name = name
        self._directory = session_dir
        self._stream = ReadOnlyStream(track_dir(session_dir, name))

    def read(
        self, start_index: int = 0, limit: int = 1000, *, start_ts: float | None = None, end_ts: float | None = None
    ) -> dict:
        """Rows by index, or by ``_ts`` in ``[start_ts, end_ts)``; same page shape as
        ``Track.read``."""
        _check_window(start_index, limit)
        if start_ts is None and end_ts is None:
            return read_page(self._stream, start_index, limit)  # type: ignore[arg-type]
        bounds = [None if v is None else check_ts(v) for v in (start_ts, end_ts)]
        return read_ts_page(self._stream, bounds[0], bounds[1], limit)  # type: ignore[arg-type]

    def count(self) -> int:
        """How many rows the track has now."""
        return self._stream.count()

    def stats(self) -> dict:
        """``totalDataPoints``, first/last ``_ts``, created/updated times, as ``Track.stats``."""
        return track_stats(self._directory, self.name, self._stream)

    def to_pandas(self, ts: str = "float") -> Any:
        """All rows as a ``pandas.DataFrame`` (see :func:`dreamlake._export.frame`)."""
        return _export.frame(self.read, ts)

    def __repr__(self) -> str:
        return f"TrackReader({self.name!r})"


class _TracksReader:
    def __init__(self, reader: "SessionReader") -> None:
        self._reader = reader

    def names(self) -> list[str]:
        return list_track_names(self._reader._dir)

    def list(self) -> list[dict]:
        return [self._reader.track(name).stats() for name in self.names()]

    list_all = list

    def __call__(self) -> "_TracksReader":
        return self


class _FilesReader:
    def __init__(self, session_dir: str) -> None:
        self._store = FileStore(session_dir)

    def list(self, path: str | None = None, tags: list[str] | None = None) -> list[dict]:
        folder = None if path is None else check_file_folder(path)
        return self._store.list(folder, list(tags) if tags else None)

    def download(self, file_id: str, dest: str | os.PathLike = ".") -> str:
        """Copy a stored file to ``dest`` (a file path or a directory), checksum-verified."""
        return self._store.download(str(file_id), os.path.abspath(os.fspath(dest)))

    def __call__(self) -> "_FilesReader":
        return self


class SessionReader:
    """A session's files, read-only. Every call reads what is on disk at that moment."""

    def __init__(self, directory: str | os.PathLike, prefix: str) -> None:
        self.directory = Path(directory)
        self.prefix = prefix
        self.workspace, _, self.name = prefix.partition("/")
        self._dir = str(self.directory)
        if not os.path.isfile(os.path.join(self._dir, "session.json")):
            raise FileNotFoundError(f"no session {prefix!r} at {self._dir}")
        self.tracks = _TracksReader(self)
        self.files = _FilesReader(self._dir)

    # -- what session.json says ------------------------------------------------------
    @property
    def meta(self) -> dict:
        """``session.json`` as stored."""
        return read_json(os.path.join(self._dir, "session.json"), default={}) or {}

    status = property(lambda self: session_status(self.meta))
    description = property(lambda self: self.meta.get("description"))
    tags = property(lambda self: list(self.meta.get("tags") or []))
    folder = property(lambda self: self.meta.get("folder"))
    error = property(lambda self: self.meta.get("error"))
    history = property(lambda self: list(self.meta.get("history") or []))

    @property
    def params(self) -> dict:
        """The flat params (dotted keys)."""
        return read_params(self._dir)

    def parameters(self) -> dict:
        return self.params

    # -- tracks and logs ----------------------------------------------------------------
    def track(self, name: str) -> TrackReader:
        if name not in list_track_names(self._dir):
            raise KeyError(f"no track {name!r} in session {self.prefix}")
        return TrackReader(self._dir, name)

    def logs(self, start_index: int = 0, limit: int = 1000) -> dict:
        _check_window(start_index, limit)
        index_dir, data_path = log_paths(self._dir)
        return read_page(ReadOnlyStream(index_dir, data_path), start_index, limit)  # type: ignore[arg-type]

    def to_pandas(self, track: str | None = None, ts: str = "float") -> Any:
        """One track as a DataFrame, or (``track=None``) ``{name: DataFrame}`` of all."""
        if track is not None:
            return self.track(track).to_pandas(ts=ts)
        return {name: self.track(name).to_pandas(ts=ts) for name in self.tracks.names()}

    def __repr__(self) -> str:
        return f"SessionReader({self.prefix!r}, status={self.status!r}, directory={self._dir!r})"


def open_session(
    prefix: str,
    root: str | os.PathLike | None = None,
    *,
    local_path: str | os.PathLike | None = None,
) -> SessionReader:
    """Read the session ``"workspace/name"`` under the storage root (``root``/
    ``local_path`` as for :class:`Session`, else ``$DREAMLAKE_ROOT`` or ``./.dreamlake``)
    without changing anything on disk. ``FileNotFoundError`` if there is none."""
    config = resolve(
        prefix=prefix, name=None, workspace=None, root=root, local_path=local_path, url=None, remote=None,
        user_name=None, api_key=None, session_dir=None, agent="",
    )
    return SessionReader(config.directory, config.prefix)
