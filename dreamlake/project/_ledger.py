"""The ledger: one human-readable JSON registry of runs per project root.

File: ``<root>/ledger.json`` (``cat``/``grep``/``jq`` friendly: indented down to the
runs, then one run per line)::

    {
      "format": "dreamlake.project.ledger",
      "version": 1,
      "projects": {
        "imagenet/randaug": {
          "train": {
            "0001": {"status": "done", "params": {"aug_level": 5}, "paramsHash": "3f0c...", "storageMode": "subfolder", "files": {"log": "imagenet/randaug/train/0001/train.log"}, "createdAt": "...", "updatedAt": "...", "startedAt": "...", "host": "...", "pid": 1234, "endedAt": "..."}
          }
        }
      }
    }

``projects`` is keyed by relpath (``"."`` for the root itself), then identifier, then uid.

Concurrency and crash safety:

* Every change is a read-modify-write done by :meth:`Ledger.transaction` while
  holding an exclusive ``fcntl.flock`` on the sidecar ``<root>/.ledger.json.lock``,
  so concurrent writers (threads or processes) never lose each other's updates.
  The kernel drops the lock when a holder dies, even on ``kill -9``.
* The new content goes to a temp file in the same directory, is fsynced, and
  replaces the ledger with ``os.replace`` (atomic), then the directory is fsynced.
  Readers need no lock: they always see a whole old or a whole new file. A crashed
  writer leaves at worst a stale ``.ledger.json.*.tmp``, removed by the next writer.
* A ledger that does not parse is never overwritten: :class:`LedgerError` says
  where it is, so nothing (uids, statuses) is silently forgotten.

Paths attached to runs are stored relative to the root when they lie inside it
(so a results folder can be moved or copied as a whole), else absolute.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import msgspec

from .._errors import DreamLakeError

__all__ = [
    "Ledger",
    "LedgerError",
    "LEDGER_NAME",
    "LOCK_NAME",
    "FORMAT",
    "VERSION",
    "now_iso",
    "runs_of",
    "to_ledger_path",
    "from_ledger_path",
]

LEDGER_NAME = "ledger.json"
LOCK_NAME = ".ledger.json.lock"
_TMP_PREFIX = ".ledger.json."
_TMP_SUFFIX = ".tmp"
FORMAT = "dreamlake.project.ledger"
VERSION = 1


class LedgerError(DreamLakeError, ValueError):
    """The ledger file exists but is not a ledger we can read (it is left untouched)."""


def now_iso() -> str:
    moment = _dt.datetime.now(_dt.timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _empty() -> dict:
    return {"format": FORMAT, "version": VERSION, "projects": {}}


def runs_of(doc: dict, relkey: str, identifier: str, create: bool = False) -> dict:
    """The ``{uid: record}`` section of one identifier in one project path."""
    projects = doc["projects"]
    if not create:
        return projects.get(relkey, {}).get(identifier, {})
    return projects.setdefault(relkey, {}).setdefault(identifier, {})


def to_ledger_path(root: Path, path: str | os.PathLike) -> str:
    """How an attached path is stored: root-relative (posix) when inside the root."""
    absolute = Path(os.path.abspath(os.fspath(path)))
    try:
        return absolute.relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return str(absolute)


def from_ledger_path(root: Path, stored: str) -> Path:
    path = Path(stored)
    return path if path.is_absolute() else root / path


class Ledger:
    """Access to ``<root>/ledger.json``. Cheap to create; holds no open files."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.path = self.root / LEDGER_NAME
        self.lock_path = self.root / LOCK_NAME
        self._cache: tuple[bytes, dict] | None = None  # replaced whole: no lock needed

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    # -- reading (no lock: the file is only ever replaced whole) ----------------
    def read(self) -> dict:
        """The current content. Shared and cached while the bytes stay the same: do not
        mutate it. (Comparing bytes, not stat fields: a replaced file may get the old
        inode, size and a coarse-clock mtime back.)"""
        try:
            with open(self.path, "rb") as src:
                data = src.read()
        except FileNotFoundError:
            return _empty()
        cached = self._cache
        if cached is not None and cached[0] == data:
            return cached[1]
        doc = self._parse(data)
        self._cache = (data, doc)
        return doc

    def record(self, relkey: str, identifier: str, uid: str) -> dict | None:
        return runs_of(self.read(), relkey, identifier).get(uid)

    def get_uid_record_dict(self, identifier: str, *, relpath: str | os.PathLike = "") -> dict[str, dict]:
        """pycaddy's lookup: ``{uid: record}`` of ``identifier``'s runs in the project
        path ``relpath`` (the root by default); ``{}`` when there are none. Copies."""
        relkey = Path(os.fspath(relpath)).as_posix()
        runs = runs_of(self.read(), relkey, identifier)
        return {uid: copy.deepcopy(record) for uid, record in runs.items()}

    def _parse(self, data: bytes) -> dict:
        try:
            doc = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise LedgerError(f"the run ledger {str(self.path)!r} is not valid JSON ({exc}); "
                              "fix or move it away — it is never overwritten while unreadable") from None
        if (
            not isinstance(doc, dict)
            or doc.get("format") != FORMAT
            or not isinstance(doc.get("projects"), dict)
        ):
            raise LedgerError(f"{str(self.path)!r} is not a DreamLake run ledger (format {FORMAT!r} expected)")
        if not isinstance(doc.get("version"), int) or doc["version"] > VERSION:
            raise LedgerError(
                f"the run ledger {str(self.path)!r} has version {doc.get('version')!r}; "
                f"this DreamLake reads up to version {VERSION}"
            )
        return doc

    # -- writing -------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict]:
        """Yield a private copy of the ledger under the exclusive lock; on a normal exit
        of the block, write it back (only if it changed). An exception writes nothing."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._remove_stale_temps()
            try:
                with open(self.path, "rb") as src:
                    before = src.read()
                doc = self._parse(before)
            except FileNotFoundError:
                before, doc = b"", _empty()
            yield doc
            data = _dump(doc)
            if data != before:
                self._replace(data)
        finally:
            os.close(fd)  # releases the lock

    def _remove_stale_temps(self) -> None:
        """Under the lock no writer is mid-write, so any temp file left is a crash's."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(_TMP_PREFIX) and name.endswith(_TMP_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(self.root / name)

    def _replace(self, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=self.root)
        try:
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), 0o644)
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.root)


_encoder = msgspec.json.Encoder()


def _one_line(value: Any) -> bytes:
    """Compact JSON with a space after ``:`` and ``,`` (what ``json.dumps`` writes)."""
    return msgspec.json.format(_encoder.encode(value), indent=0)


def _block(items: list[bytes], indent: bytes) -> bytes:
    return b"{\n" + b",\n".join(items) + b"\n" + indent + b"}" if items else b"{}"


def _dump(doc: dict) -> bytes:
    """Indented down to the runs, then one run per line: readable and ``grep``-able."""
    projects = []
    for relkey, identifiers in doc["projects"].items():
        idents = [
            b"      " + _one_line(identifier) + b": "
            + _block([b"        " + _one_line(uid) + b": " + _one_line(rec) for uid, rec in runs.items()], b"      ")
            for identifier, runs in identifiers.items()
        ]
        projects.append(b"    " + _one_line(relkey) + b": " + _block(idents, b"    "))
    top = [b"  " + _one_line(key) + b": " + _one_line(value) for key, value in doc.items() if key != "projects"]
    top.append(b'  "projects": ' + _block(projects, b"  "))
    return _block(top, b"") + b"\n"


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
