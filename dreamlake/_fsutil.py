"""Small filesystem helpers: atomic JSON files and cross-process locks."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Iterator

__all__ = ["write_json_atomic", "read_json", "read_json_to_update", "locked", "now_iso"]

log = logging.getLogger("dreamlake")


def write_json_atomic(path: str, obj: Any) -> None:
    """Write via a temp file and rename, so readers never see a half file."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(obj, out, indent=2, sort_keys=False, allow_nan=False, default=str)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: str, default: Any = None) -> Any:
    """A JSON file for reading only: ``default`` when missing or not JSON."""
    try:
        with open(path, encoding="utf-8") as src:
            return json.load(src)
    except FileNotFoundError:
        return default
    except ValueError:
        return default


def read_json_to_update(path: str, default: Any = None) -> Any:
    """A JSON file about to be rewritten. A file that is not valid JSON is never
    silently replaced: it is kept as ``<path>.corrupt-<time>`` with a warning,
    and ``default`` is returned, so the caller writes a fresh one beside the copy."""
    try:
        with open(path, encoding="utf-8") as src:
            return json.load(src)
    except FileNotFoundError:
        return default
    except ValueError as exc:
        keep = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        shutil.copy2(path, keep)
        log.warning("dreamlake: %s is not valid JSON (%s); kept it as %s and started a new one", path, exc, keep)
        return default


@contextlib.contextmanager
def locked(lock_path: str) -> Iterator[None]:
    """An exclusive flock held for the block (serialises read-modify-write across processes)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in 1 MiB steps (never whole in memory)."""
    import hashlib

    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def now_iso(ts: float | None = None) -> str:
    import datetime as _dt

    moment = _dt.datetime.now(_dt.timezone.utc) if ts is None else _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
