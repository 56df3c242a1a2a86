"""The Session: identity, lifecycle, and the factories for tracks, logs,
params and files. It only makes events; the writer and sinks do the rest."""

from __future__ import annotations

import functools
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from . import _lifecycle
from ._config import resolve
from ._errors import SessionStateError
from ._files_api import FileBuilder, Files
from ._names import LOG_LEVELS, check_log_level, check_track_name
from ._params import Params
from ._pipe import DEFAULT_MEMORY_BUDGET, LOG_STREAM, SessionPipe
from ._tracks import Track, Tracks
from ._values import capture
from ._writer import Writer, get_writer
from .sinks import FILE_OPS, STORE_OPS, ClosesLater, DeliversLater, HasHealth, call_store, make_sink

__all__ = ["Session", "dreamlake_session", "LOG_LEVELS"]

log = logging.getLogger("dreamlake")

_END_STATUSES = ("completed", "failed", "interrupted")
_time = time.time


class Session:
    """One experiment run. Both constructor generations work, in any mix::

        Session(prefix="ws/name", root="./data", local_path=".dreamlake", url=..., user_name=...)
        Session(name="name", workspace="ws", local_path="./experiments", remote=..., api_key=...,
                description=..., tags=[...], folder="/experiments/2025")

    Storage: ``<root>/<local_path>/<workspace>/<name>`` (either alone, else
    ``./.dreamlake``). Re-opening an existing session continues it and changes only
    what is passed (tags, description, folder); earlier ends stay in ``history``.
    ``readme=`` (upstream 0.3) is ``description=``; ``session.file(...)`` is upstream's
    builder spelling of ``session.files``. To look without writing:
    :func:`dreamlake.open_session`.

    ``memory_budget`` (bytes) bounds what may wait in memory; when it is used up,
    ``on_full="block"`` (lossless, default) makes the caller wait for the writer and
    ``on_full="drop"`` drops the event and counts it in :meth:`health`.
    """

    def __init__(
        self,
        prefix: str | None = None,
        *,
        root: str | os.PathLike | None = None,
        local_path: str | os.PathLike | None = None,
        url: str | None = None,
        remote: str | None = None,
        user_name: str | None = None,
        api_key: str | None = None,
        name: str | None = None,
        workspace: str | None = None,
        description: str | None = None,
        readme: str | None = None,
        tags: list[str] | None = None,
        folder: str | None = None,
        session_dir: str | os.PathLike | None = None,
        agent: str | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        on_full: str = "block",
        timeout: float = 60.0,
        mode: str | None = None,
    ) -> None:
        self._config = resolve(
            prefix=prefix,
            name=name,
            workspace=workspace,
            root=root,
            local_path=local_path,
            url=url,
            remote=remote,
            user_name=user_name,
            api_key=api_key,
            session_dir=session_dir,
            agent=agent,
            mode=mode,
        )
        if readme is not None:  # upstream 0.3's name for the description
            if description is not None and description != readme:
                raise ValueError(f"conflicting description/readme: {description!r} vs {readme!r}")
            description = readme
        if description is not None and not isinstance(description, str):
            raise TypeError("description must be a str")
        if tags is not None and (isinstance(tags, str) or not all(isinstance(t, str) for t in tags)):
            raise TypeError("tags must be a list of str")
        if folder is not None and not isinstance(folder, str):
            raise TypeError("folder must be a str")
        SessionPipe(None, memory_budget, on_full)  # validates the budget and policy now
        self._description = description
        self._tags = list(tags) if tags is not None else []
        self._tags_given = tags is not None
        self._folder = folder
        self._memory_budget = memory_budget
        self._on_full = on_full
        self._timeout = timeout
        self._pipe: SessionPipe | None = None
        self._writer: Writer = get_writer()
        self._tracks: dict[str, Track] = {}
        self._state = "created"
        self._status = "created"
        self._owner_pid = os.getpid()
        self._close_callbacks: list[Callable[[str, str | None], Any]] = []
        self.params = Params(self)
        self.files = Files(self)
        self.tracks = Tracks(self)

    # -- identity --------------------------------------------------------------
    name = property(lambda self: self._config.name)
    workspace = property(lambda self: self._config.workspace)
    prefix = property(lambda self: self._config.prefix)
    description = property(lambda self: self._description)
    readme = description
    tags = property(lambda self: list(self._tags))
    folder = property(lambda self: self._folder)
    directory: Path = property(lambda self: self._config.directory)  # type: ignore[assignment]
    root: Path = property(lambda self: self._config.root)  # type: ignore[assignment]
    url = property(lambda self: self._config.url)

    @property
    def _is_open(self) -> bool:
        return self._state == "open"

    @property
    def status(self) -> str:
        """created | running | completed | failed | interrupted"""
        return self._status

    def parameters(self) -> Params:
        return self.params

    def __repr__(self) -> str:
        return f"Session({self.prefix!r}, status={self._status!r}, directory={str(self.directory)!r})"

    # -- lifecycle ---------------------------------------------------------------
    def open(self) -> "Session":
        if self._state == "open":
            return self
        sink = make_sink(self._config)
        pipe = SessionPipe(sink, self._memory_budget, self._on_full, journal=True)
        self._pipe = pipe
        self._tracks = {}
        self._owner_pid = os.getpid()
        self._writer.register(pipe)
        info = {
            "name": self.name,
            "workspace": self.workspace,
            "prefix": self.prefix,
            "description": self._description,
            "tags": self._tags if self._tags_given else None,  # None: keep what is stored
            "folder": self._folder,
            "url": self._config.url,
            "userName": self._config.user_name,
        }
        try:
            meta = self._writer.call(pipe, "open", (info,), self._timeout)
        except BaseException:
            pipe.mark_closed()
            self._writer.unregister(pipe)
            raise
        self._adopt_stored(meta)
        self._state = "open"
        self._status = "running"
        _lifecycle.track_open(self)
        return self

    def _adopt_stored(self, meta: Any) -> None:
        """A re-opened session reports what is stored for what the caller did not pass."""
        if not isinstance(meta, dict):
            return
        if self._description is None and isinstance(meta.get("description"), str):
            self._description = meta["description"]
        if not self._tags_given and isinstance(meta.get("tags"), list):
            self._tags = [t for t in meta["tags"] if isinstance(t, str)]
        if self._folder is None and isinstance(meta.get("folder"), str):
            self._folder = meta["folder"]

    def close(self, status: str = "completed", error: str | None = None) -> None:
        """Write everything, record ``status`` (completed, failed or interrupted)
        and release the session. A remote session waits here, on this thread
        (never on the writer other sessions share), for the server at most
        10 s or the session's ``timeout``; what it has not acknowledged by then
        stays in the spool for the next run or ``dreamlake sync`` (a warning says so)."""
        if status not in _END_STATUSES:
            raise ValueError(f"status must be one of {', '.join(_END_STATUSES)}, got {status!r}")
        if error is not None and not isinstance(error, str):
            raise TypeError("error must be a str")
        self._finish(status, error, self._timeout)

    def on_close(self, callback: Callable[[str, str | None], Any]) -> Callable:
        """Call ``callback(status, error)`` once the session is closed, whatever
        closes it: close(), a ``with`` block, interpreter exit or SIGTERM."""
        self._close_callbacks.append(callback)
        return callback

    def _finish(self, status: str, error: str | None, timeout: float | None) -> None:
        if self._state != "open":
            return
        pipe = self._pipe
        assert pipe is not None
        self._state = "closing"
        try:
            sealed = self._writer.call(pipe, "close", (status, error), timeout)
            if isinstance(pipe.sink, ClosesLater):  # the wait for the server: here, never on the writer
                pipe.sink.finish_close(sealed, timeout)
        finally:
            pipe.mark_closed()
            self._state = "closed"
            self._status = status
            _lifecycle.track_closed(self)
            for callback in self._close_callbacks:
                try:
                    callback(status, error)
                except Exception as exc:  # a hook must not break closing
                    log.error("dreamlake: on_close callback %r failed: %s", callback, exc)

    def _flush_quietly(self, timeout: float | None) -> None:
        if self._state == "open" and self._pipe is not None:
            self._writer.call(self._pipe, "flush", (None,), timeout)

    def __enter__(self) -> "Session":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None or (exc_type is SystemExit and not getattr(exc, "code", None)):
            self.close()
            return False
        interrupted = issubclass(exc_type, (KeyboardInterrupt, SystemExit))
        summary = f"{exc_type.__name__}: {exc}"
        if self._state == "open":
            try:
                self.log(
                    f"session ended by {summary}",
                    level="warn" if interrupted else "error",
                    traceback="".join(traceback.format_exception(exc_type, exc, tb))[-8000:],
                )
            except Exception:
                pass
        self._finish("interrupted" if interrupted else "failed", summary, self._timeout)
        return False

    # -- plumbing for the API objects ------------------------------------------
    def _require_pipe(self) -> SessionPipe:
        if self._state != "open" or self._pipe is None:
            raise SessionStateError(f"session {self.prefix} is not open (state: {self._state})")
        return self._pipe

    def _call(self, op: str, *args: Any) -> Any:
        """A barrier (flush, a read, a file call): after everything queued before
        it. A sink that delivers later (remote) only marks on the writer thread;
        the wait and the network call run here, not on the writer."""
        pipe = self._require_pipe()
        sink = pipe.sink
        if isinstance(sink, DeliversLater):
            if op in STORE_OPS:
                if op not in FILE_OPS:  # a read sees everything logged before it
                    sink.wait_delivered(self._writer.call(pipe, "mark", (), self._timeout), self._timeout)
                return call_store(sink.store, op, args)
            if op == "flush":
                mark = self._writer.call(pipe, "mark", (), self._timeout)
                names = args[0] if args[0] is not None else [s.name for s in list(pipe.streams.values()) if not s.is_log]
                return sink.wait_and_report(mark, names, self._timeout)
        return self._writer.call(pipe, op, args, self._timeout)

    # -- the API -----------------------------------------------------------------
    def track(self, name: str | None = None) -> Track | Tracks:
        """The track ``name`` (created on first append). Without a name, the tracks
        builder of upstream 0.3: ``session.track().list_all()``."""
        if name is None:
            return self.tracks
        track = self._tracks.get(name)
        if track is None:
            track = Track(self, check_track_name(name))
            self._tracks[name] = track
        return track

    def file(
        self,
        file_path: str | os.PathLike | None = None,
        *,
        prefix: str = "/",
        description: str | None = None,
        tags: list[str] | None = None,
        metadata: dict | None = None,
        file_id: str | None = None,
        dest_path: str | os.PathLike | None = None,
    ) -> FileBuilder:
        """Upstream 0.3's builder spelling of :attr:`files`:
        ``session.file(file_path="model.pt", prefix="/models").save()``,
        ``session.file(file_id=...).download(dest=...)`` / ``.delete()`` / ``.update(tags=[...])``."""
        return FileBuilder(
            self.files,
            file_path=file_path,
            prefix=prefix,
            description=description,
            tags=tags,
            metadata=metadata,
            file_id=file_id,
            dest_path=dest_path,
        )

    def log(self, message: str, level: str = "info", metadata: dict | None = None, **extra: Any) -> None:
        """Append a log entry (levels: debug, info, warn, error, fatal). Keyword
        ``extra`` fields are merged into ``metadata``."""
        if not isinstance(message, str):
            raise TypeError(f"log message must be a str, got {type(message).__name__}")
        level = check_log_level(level)
        now = _time()
        entry: dict = {"_ts": now, "level": level, "message": capture(message)}
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
        if metadata or extra:  # keyword extras are stored in the entry's metadata
            entry["metadata"] = capture({**(metadata or {}), **extra})
        pipe = self._require_pipe()
        item = (pipe.stream(LOG_STREAM, is_log=True).sid, now, entry)
        if len(pipe.queue) < pipe.max_items:
            pipe.push(item)
        else:
            pipe.on_full(item, self._writer.wake)

    def logs(self, start_index: int = 0, limit: int = 1000) -> dict:
        """Read log entries back (same page shape as ``Track.read``)."""
        return self._call("read", LOG_STREAM, True, start_index, limit)

    def flush(self) -> list[dict]:
        """Write everything queued so far (all tracks, logs, params)."""
        return self._call("flush", None)

    def health(self) -> dict:
        """Counters of the background pipeline: queued, dropped, write errors, ...
        ``mode`` says where the rows go: ``thread`` (this process writes the
        store), ``agent``, or ``local-fallback`` (the agent was lost and this
        process writes instead); remote sessions add their delivery state."""
        if self._pipe is None:
            return {"state": self._state}
        sink = self._pipe.sink
        extra = sink.health() if isinstance(sink, HasHealth) else {}
        return {"state": self._state, "status": self._status, "mode": "thread", **self._pipe.health(), **extra}


def dreamlake_session(*session_args: Any, **session_kwargs: Any) -> Callable:
    """Decorator: run the function inside a session passed as ``session=``."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with Session(*session_args, **session_kwargs) as session:
                kwargs["session"] = session
                return fn(*args, **kwargs)

        return wrapper

    return decorate
