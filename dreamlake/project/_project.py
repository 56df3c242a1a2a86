"""Project: a root folder + a relpath inside it + the root's ledger; makes runs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from ._ledger import Ledger, now_iso, runs_of
from ._params import canonical_json, canonical_params, params_hash, to_json_value
from ._run import Run
from ._types import ExistingRun, Status, StorageMode

__all__ = ["Project", "UID_WIDTH"]

#: uids are zero-padded to this many digits ("0001"); they simply grow past 9999.
UID_WIDTH = 4


def _check_relpath(value: object, what: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{what} must be a str or path, got {type(value).__name__}")
    text = os.fspath(value)
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str path")
    path = PurePosixPath(text.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or "\x00" in text:
        raise ValueError(f"{what} must be a relative path inside the project root: {text!r}")
    return Path(*path.parts) if path.parts else Path()


def _check_identifier(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"identifier must be a str, got {type(value).__name__}")
    if not value or value.strip() != value or value in (".", ".."):
        raise ValueError(f"identifier must be a non-empty name without surrounding spaces: {value!r}")
    if "/" in value or "\\" in value or "\x00" in value:
        raise ValueError(f"identifier must be a single folder name, without path separators: {value!r}")
    return value


def _uids_on_disk(folder: Path) -> set[int]:
    """Run numbers already present in ``<project>/<identifier>/`` (``0007/`` or ``0007_*``),
    so a lost or foreign ledger never makes a new run overwrite old files."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return set()
    taken = set()
    for name in names:
        head = name.split("_", 1)[0]
        if head.isdigit() and head.isascii():
            taken.add(int(head))
    return taken


class Project:
    """A namespace of runs: ``<root>/<relpath>/``, with the run ledger at ``<root>/ledger.json``.
    A relative ``root`` is resolved against the working directory at construction.

    ``Project(root)`` creates nothing on disk until :meth:`ensure_folder` or the first
    :meth:`session`. All sub-projects of one root share its ledger.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        relpath: str | os.PathLike = "",
        storage_mode: StorageMode | str = StorageMode.SUBFOLDER,
        *,
        _ledger: Ledger | None = None,
    ) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a str or path, got {type(root).__name__}")
        # Absolute now: the exit hook that marks unfinished runs ERROR may run after
        # the process changed its working directory.
        self.root = Path(root).absolute()
        self.relpath = _check_relpath(relpath, "relpath")
        self.storage_mode = StorageMode(storage_mode)
        self._ledger = _ledger if _ledger is not None else Ledger(self.root)

    @property
    def path(self) -> Path:
        """The project's root (pycaddy's ``Project.path``), absolute."""
        return self.root

    @property
    def folder(self) -> Path:
        """``root / relpath``."""
        return self.root / self.relpath

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    @property
    def _relkey(self) -> str:
        return self.relpath.as_posix()  # "." for the root itself

    def __repr__(self) -> str:
        return f"Project({str(self.root)!r}, relpath={self._relkey!r}, storage_mode={self.storage_mode.value!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Project):
            return NotImplemented
        return (os.path.abspath(self.root), self.relpath, self.storage_mode) == (
            os.path.abspath(other.root),
            other.relpath,
            other.storage_mode,
        )

    def __hash__(self) -> int:
        return hash((os.path.abspath(self.root), self.relpath, self.storage_mode))

    def ensure_folder(self) -> "Project":
        """Create ``root/relpath`` if missing; returns ``self`` for chaining."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def sub(self, name: str | os.PathLike) -> "Project":
        """A sub-project one (or more, ``"a/b"``) levels deeper, sharing the ledger."""
        deeper = _check_relpath(name, "sub-project name")
        if not deeper.parts:
            raise ValueError("sub-project name must not be empty")
        return Project(self.root, self.relpath / deeper, self.storage_mode, _ledger=self._ledger)

    def session(
        self,
        identifier: str,
        params: Mapping[str, Any] | None = None,
        existing_run_strategy: ExistingRun | str | None = None,
        storage_mode: StorageMode | str | None = None,
    ) -> Run:
        """A run of ``identifier`` with ``params``.

        ``ExistingRun.RESUME`` returns the newest DONE run of this identifier (in this
        project path) whose params are identical — in its original storage mode — and
        allocates a new run only when there is none. ``NEW`` and ``None`` always
        allocate: the next uid, registered as PENDING, with its folder created.
        """
        identifier = _check_identifier(identifier)
        config = canonical_params(params)
        strategy = None if existing_run_strategy is None else ExistingRun(existing_run_strategy)
        mode = self.storage_mode if storage_mode is None else StorageMode(storage_mode)
        digest = params_hash(config)
        wanted = canonical_json(config)
        base = self.folder / identifier

        with self._ledger.transaction() as doc:
            runs = runs_of(doc, self._relkey, identifier, create=True)
            found = None
            if strategy is ExistingRun.RESUME:
                for uid in sorted(runs, key=_uid_order, reverse=True):
                    record = runs[uid]
                    if (
                        record.get("status") == Status.DONE.value
                        and record.get("paramsHash") == digest
                        and canonical_json(record.get("params", {})) == wanted
                    ):
                        found = uid
                        break
            if found is None:
                found = self._next_uid(runs, base)
                stamp = now_iso()
                runs[found] = {
                    "status": Status.PENDING.value,
                    "params": to_json_value(config),
                    "paramsHash": digest,
                    "storageMode": mode.value,
                    "files": {},
                    "createdAt": stamp,
                    "updatedAt": stamp,
                }
                # Claim the uid on disk too, inside the lock (see _uids_on_disk).
                (base / found if mode is StorageMode.SUBFOLDER else base).mkdir(parents=True, exist_ok=True)
            record = dict(runs[found])
        run = Run(self, identifier, found, record)
        run.folder  # noqa: B018 -- "auto-created" (also for a resumed run whose folder was removed)
        return run

    @staticmethod
    def _next_uid(runs: dict, base: Path) -> str:
        number = max((_uid_order(uid) for uid in runs), default=0) + 1
        taken = _uids_on_disk(base)
        while number in taken:
            number += 1
        return f"{number:0{UID_WIDTH}d}"

    def runs(self, identifier: str | None = None, status: Status | str | None = None) -> list[Run]:
        """The runs registered in this project path (not sub-projects), oldest first."""
        wanted = None if status is None else Status(status)
        section = self._ledger.read()["projects"].get(self._relkey, {})
        names = [identifier] if identifier is not None else sorted(section)
        found = []
        for name in names:
            for uid, record in sorted(section.get(name, {}).items(), key=lambda item: _uid_order(item[0])):
                if wanted is None or record.get("status") == wanted.value:
                    found.append(Run(self, name, uid, record))
        return found


def _uid_order(uid: str) -> int:
    return int(uid) if uid.isdigit() else 0
