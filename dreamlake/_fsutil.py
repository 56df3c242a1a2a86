"""Small filesystem helpers: atomic JSON files and cross-process locks."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from typing import Any, Iterator

__all__ = ["write_json_atomic", "read_json", "locked", "now_iso"]


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
    try:
        with open(path, encoding="utf-8") as src:
            return json.load(src)
    except FileNotFoundError:
        return default
    except ValueError:
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


def now_iso(ts: float | None = None) -> str:
    import datetime as _dt

    moment = _dt.datetime.now(_dt.timezone.utc) if ts is None else _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
