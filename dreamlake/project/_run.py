"""One run of a project: a ledger entry, a place for files, and a DreamLake session.

Two worlds in one object:

* the pycaddy-style run — ``uid``, ``status`` (persisted in the ledger),
  ``folder``, ``path()``, ``files``/``attach_files()``, ``start()``/``done()``/``error()``;
* a DreamLake session — ``log()``, ``track()``, ``tracks``, ``params``/``parameters()``,
  ``session.files.upload()`` ... — whose data directory sits beside the run's files:

  ==========  ==================================  ===================================
  mode        run files (``run.path("x")``)        DreamLake data (``run.session_dir``)
  ==========  ==================================  ===================================
  SUBFOLDER   ``<project>/<identifier>/<uid>/x``   ``<project>/<identifier>/<uid>/``
  PREFIX      ``<project>/<identifier>/<uid>_x``   ``<project>/<identifier>/<uid>_dreamlake/``
  ==========  ==================================  ===================================

The DreamLake session is opened by ``start()`` (which also records the run's
params as its parameters) and closed by ``done()`` (completed) or ``error()``
(failed). Nothing opens it otherwise: a run used only for paths and status
never starts a writer or creates session files.
"""

from __future__ import annotations

import atexit
import os
import re
import socket
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._ledger import from_ledger_path, now_iso, runs_of, to_ledger_path
from ._params import from_json_value, params_hash
from ._types import Status, StorageMode

if TYPE_CHECKING:  # pragma: no cover
    from dreamlake import Session

    from ._project import Project

__all__ = ["Run", "SESSION_DIR_SUFFIX"]

#: PREFIX mode: the DreamLake data of run ``0001`` lives in ``0001_dreamlake/``.
SESSION_DIR_SUFFIX = "dreamlake"
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.@+=,:\- ]")

# Runs started in this process and not yet ended (see _end_runs_at_exit).
_started: "set[Run]" = set()
_started_lock = threading.Lock()


def _end_runs_at_exit() -> None:
    """A run still RUNNING when its process exits did not finish: mark it ERROR (so
    RESUME runs it again) with the reason, and close its session as failed."""
    failed = getattr(sys, "last_value", None)
    reason = (
        f"process exited on {type(failed).__name__}: {failed}" if failed is not None else "process exited before done()"
    )
    with _started_lock:
        runs = list(_started)
    for run in runs:
        if run._started_pid == os.getpid():  # not a forked child's copy
            try:
                run._end(Status.ERROR, reason)
            except Exception:  # exit must go on
                pass


atexit.register(_end_runs_at_exit)


# -- the adapter to dreamlake.Session (the only place that knows its constructor) --
def _make_session(run: "Run") -> "Session":
    from dreamlake import Session

    workspace = _UNSAFE_NAME_CHARS.sub("_", run.identifier).strip() or "run"
    if workspace in (".", ".."):
        workspace = "run"
    return Session(
        name=run.session_dir.name,
        workspace=workspace,
        root=run.project.folder,
        session_dir=run.session_dir,
        folder="/" + (run.project.relpath / run.identifier).as_posix(),
    )


def _session_is_open(session: "Session | None") -> bool:
    return session is not None and bool(getattr(session, "_is_open", False))


def _close_session_failed(session: "Session", reason: str) -> None:
    session.close(status="failed", error=reason)


class Run:
    """One experiment run, identified by ``(identifier, uid)`` within its project path.

    Created by :meth:`Project.session`; not meant to be constructed directly.
    """

    def __init__(self, project: "Project", identifier: str, uid: str, record: dict) -> None:
        self.project = project
        self.identifier = identifier
        self.uid = uid
        self.storage_mode = StorageMode(record["storageMode"])
        self._record = record
        self._session: "Session | None" = None
        self._started_pid: int | None = None

    def __getstate__(self) -> dict:
        # Picklable for worker pools; the receiving process makes its own session.
        return {**self.__dict__, "_session": None, "_started_pid": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    # -- identity and places -----------------------------------------------------
    @property
    def relpath(self) -> Path:
        return self.project.relpath

    @property
    def config(self) -> dict:
        """A copy of the params this run was created with (what RESUME matches on)."""
        return from_json_value(self._record["params"])

    @property
    def param_hash(self) -> str:
        return self._record.get("paramsHash") or params_hash(self.config)

    @property
    def folder(self) -> Path:
        """The directory this run's files go in (created if missing). SUBFOLDER: the
        run's own ``<identifier>/<uid>/``; PREFIX: the shared ``<identifier>/``."""
        folder = self._folder_path()
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _folder_path(self) -> Path:
        folder = self.project.folder / self.identifier
        return folder / self.uid if self.storage_mode is StorageMode.SUBFOLDER else folder

    @property
    def session_dir(self) -> Path:
        """Where this run's DreamLake data (logs, tracks, params, uploads) lives."""
        base = self.project.folder / self.identifier
        if self.storage_mode is StorageMode.SUBFOLDER:
            return base / self.uid
        return base / f"{self.uid}_{SESSION_DIR_SUFFIX}"

    directory = session_dir

    def path(self, filename: str | os.PathLike, include_identifier: bool = True) -> Path:
        """A path for ``filename`` in this run's folder.

        SUBFOLDER: ``<folder>/<filename>``. PREFIX: ``<folder>/<uid>_<filename>``;
        with ``include_identifier=False`` the uid is left out (``<folder>/<filename>``,
        a name shared by all runs of the identifier in PREFIX mode).
        """
        name = os.fspath(filename)
        if not isinstance(name, str) or not name:
            raise ValueError(f"filename must be a non-empty str, got {filename!r}")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"filename must stay inside the run folder: {name!r}")
        if include_identifier and self.storage_mode is StorageMode.PREFIX:
            head, _, tail = name.rpartition("/")
            name = f"{head}/{self.uid}_{tail}" if head else f"{self.uid}_{tail}"
        target = self.folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    # -- status ---------------------------------------------------------------------
    def _current_record(self) -> dict:
        """The ledger's record (seen by every process), else the last one we knew."""
        found = runs_of(self.project.ledger.read(), self.project._relkey, self.identifier).get(self.uid)
        if found is not None:
            self._record = found
        return self._record

    @property
    def status(self) -> Status:
        return Status(self._current_record()["status"])

    def is_done(self) -> bool:
        return self.status is Status.DONE

    def refresh(self) -> "Run":
        self._current_record()
        return self

    def _update(self, files: Mapping[str, str] | None = None, **changes: Any) -> None:
        with self.project.ledger.transaction() as doc:
            runs = runs_of(doc, self.project._relkey, self.identifier, create=True)
            record = runs.setdefault(self.uid, dict(self._record))  # ledger deleted meanwhile
            for key, value in changes.items():
                if value is None:
                    record.pop(key, None)
                else:
                    record[key] = value
            if files:
                record["files"] = {**record.get("files", {}), **files}
            record["updatedAt"] = now_iso()
        self._record = record

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> "Run":
        """Mark RUNNING and open the DreamLake session (params recorded as its parameters)."""
        session = self.session
        opened_here = False
        if not _session_is_open(session):
            session.open()
            session.on_close(self._session_closed)
            opened_here = True
            config = self.config
            if config:
                session.params.set(**config)
        try:
            self._update(
                status=Status.RUNNING.value,
                startedAt=now_iso(),
                endedAt=None,
                error=None,
                host=socket.gethostname(),
                pid=os.getpid(),
            )
        except BaseException:
            if opened_here:
                _close_session_failed(session, "could not record the run as running in the ledger")
            raise
        self._started_pid = os.getpid()
        with _started_lock:
            _started.add(self)
        return self

    def _session_closed(self, status: str, error: str | None) -> None:
        """The session was closed by something other than this run (SIGTERM,
        interpreter exit): record the outcome so the ledger never stays RUNNING."""
        with _started_lock:
            still_running = self in _started
        if still_running:
            self._end(Status.DONE if status == "completed" else Status.ERROR, error or status)

    def done(self) -> "Run":
        """Close the DreamLake session (completed) and mark DONE."""
        return self._end(Status.DONE, None)

    def error(self, reason: str | None = None) -> "Run":
        """Close the DreamLake session (failed) and mark ERROR; ``reason`` is kept in the ledger."""
        return self._end(Status.ERROR, reason)

    def _end(self, status: Status, reason: str | None, exc_info: tuple | None = None) -> "Run":
        with _started_lock:
            _started.discard(self)
        self._started_pid = None
        session = self._session
        problem: BaseException | None = None
        if _session_is_open(session):
            assert session is not None
            try:
                if exc_info is not None:
                    session.__exit__(*exc_info)  # logs the traceback, marks it failed/interrupted
                elif status is Status.DONE:
                    session.close()
                else:
                    message = "run marked ERROR" + (f": {reason}" if reason else "")
                    try:
                        session.log(message, level="error")
                    finally:
                        _close_session_failed(session, reason or "run marked ERROR")
            except BaseException as exc:
                problem = exc
                if status is Status.DONE:
                    status = Status.ERROR
                    reason = f"closing the DreamLake session failed: {type(exc).__name__}: {exc}"
        self._update(status=status.value, endedAt=now_iso(), error=reason)
        if problem is not None:
            raise problem
        return self

    def __enter__(self) -> "Run":
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None or (exc_type is SystemExit and not getattr(exc, "code", None)):
            self.done()
        else:
            self._end(Status.ERROR, f"{exc_type.__name__}: {exc}", (exc_type, exc, tb))
        return False

    # -- files ----------------------------------------------------------------------
    @property
    def files(self) -> dict[str, Path]:
        """The attached files ``{name: Path}`` as the ledger records them: a new plain
        dict on each access (seed 003). Uploads into the run's DreamLake session are
        ``run.session.files.upload(...)`` / ``run.file(file_path=...).save()``."""
        root = self.project.root
        stored = self._current_record().get("files", {})
        return {name: from_ledger_path(root, value) for name, value in stored.items()}

    def attach_files(self, file_dict: Mapping[str, str | os.PathLike]) -> "Run":
        """Record ``{name: path}`` in the ledger (merged; a name given again is replaced)."""
        if not isinstance(file_dict, Mapping):
            raise TypeError(f"attach_files takes a dict of name -> path, got {type(file_dict).__name__}")
        stored = {}
        for name, path in file_dict.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"attached file names must be non-empty str, got {name!r}")
            if not isinstance(path, (str, os.PathLike)):
                raise TypeError(f"attached file {name!r} must be a path, got {type(path).__name__}")
            stored[name] = to_ledger_path(self.project.root, path)
        if stored:
            self._update(files=stored)
        return self

    # -- the DreamLake session ------------------------------------------------------------
    @property
    def session(self) -> "Session":
        """The run's ``dreamlake.Session`` (created on first use, opened by ``start()``)."""
        if self._session is None:
            self._session = _make_session(self)
        return self._session

    open = start
    close = done

    def log(self, message: str, level: str = "info", metadata: dict | None = None, **extra: Any) -> None:
        self.session.log(message, level, metadata, **extra)

    def logs(self, start_index: int = 0, limit: int = 1000) -> dict:
        return self.session.logs(start_index, limit)

    def track(self, name: str) -> Any:
        return self.session.track(name)

    @property
    def tracks(self) -> Any:
        return self.session.tracks

    @property
    def params(self) -> Any:
        """The session's params API (``set``/``get``); the run's own params are ``config``."""
        return self.session.params

    def parameters(self) -> Any:
        return self.session.params

    def flush(self) -> Any:
        return self.session.flush()

    def health(self) -> dict:
        return self.session.health()

    def __getattr__(self, name: str) -> Any:
        # Anything else a dreamlake.Session offers (name, workspace, prefix, ...).
        if name.startswith("_") or hasattr(type(self), name):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self.session, name)

    def __repr__(self) -> str:
        return (
            f"Run(identifier={self.identifier!r}, uid={self.uid!r}, status={self._record['status']!r}, "
            f"storage_mode={self.storage_mode.value!r}, folder={str(self._folder_path())!r})"
        )
