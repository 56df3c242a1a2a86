"""The files area of a local session: ``files/<folder>/<id>/<filename>`` plus
``files/.files_metadata.json`` (``{"files": [...]}``, updated under a lock; see
:mod:`._format`)."""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import os
import shutil
import stat
import uuid
from typing import Any

from ._errors import SinkError
from ._format import files_doc, files_from_doc
from ._fsutil import locked, now_iso, read_json_to_update, write_json_atomic

__all__ = ["FileStore"]

_COPY_CHUNK = 1 << 20


#: What ``update()`` may change in an entry; the rest (ids, paths, checksums) is the store's.
UPDATABLE = frozenset(("description", "tags", "metadata"))


def open_regular_file(path: str) -> int:
    """Open ``path`` for reading without blocking, refusing anything that is not a
    regular file (a FIFO would stall the writer, a device would never end); the
    check is on the opened descriptor, so the path cannot be swapped after it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(f"not a regular file: {path!r}")
    os.set_blocking(fd, True)
    return fd


def _copy_and_hash(src: str, dst: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(open_regular_file(src), "rb") as source, open(dst, "wb") as target:
        while True:
            chunk = source.read(_COPY_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            target.write(chunk)
            size += len(chunk)
        target.flush()
        os.fsync(target.fileno())
    return size, digest.hexdigest()


def _link_verified(src: str, dst: str, verified: tuple[int, str]) -> tuple[int, str]:
    """Put ``src``, whose size and sha256 the caller has checked, at ``dst`` by a
    hard link: no copy, no second hash. Another filesystem (or one without
    links): copied and hashed as usual."""
    try:
        os.link(src, dst)
    except OSError:
        return _copy_and_hash(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)  # as durable as a copy would be
    finally:
        os.close(fd)
    return verified


def _public(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "deletedAt"}


def _storage_path(entry: dict) -> str:
    """Where an entry's bytes are, relative to ``files/`` (upstream's entries do
    not record it: ``<path>/<id>/<filename>``)."""
    stored = entry.get("storagePath")
    if stored:
        return stored
    return "/".join(p for p in (entry.get("path", "").strip("/"), entry["id"], entry["filename"]) if p)


class FileStore:
    def __init__(self, session_dir: str) -> None:
        self.root = os.path.join(session_dir, "files")
        self.index_path = os.path.join(self.root, ".files_metadata.json")
        self.lock_path = os.path.join(self.root, ".lock")

    def _entries(self) -> list[dict]:
        return files_from_doc(read_json_to_update(self.index_path, default=None))

    def _write_entries(self, entries: list[dict]) -> None:
        write_json_atomic(self.index_path, files_doc(entries))

    def _stored_path(self, entry: dict) -> str:
        """Where an entry's bytes are; never outside ``files/``, whatever the entry says."""
        path = os.path.realpath(os.path.join(self.root, *_storage_path(entry).split("/")))
        if not path.startswith(os.path.realpath(self.root) + os.sep):
            raise SinkError(f"file entry {entry.get('id')!r} points outside the session's files")
        return path

    def upload(self, src: str, folder: str, description: str | None, tags: list, metadata: dict,
               verified: tuple[int, str] | None = None) -> dict:
        """Store a copy of ``src``. ``verified``: its (size, sha256), already
        checked by the caller (the server's chunked uploads), so it is linked in
        place instead; the caller may remove ``src`` afterwards."""
        os.makedirs(self.root, exist_ok=True)
        file_id = uuid.uuid4().hex[:16]
        filename = os.path.basename(src)
        relative = "/".join(p for p in (folder, file_id, filename) if p)
        target = os.path.join(self.root, *relative.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        size, checksum = _copy_and_hash(src, target) if verified is None else _link_verified(src, target, verified)
        logical = "/" + folder if folder else "/"
        stamp = now_iso()
        entry = {
            "id": file_id,
            "filename": filename,
            "path": logical,
            "prefix": logical.rstrip("/") + "/",
            "sizeBytes": size,
            "checksum": checksum,
            "checksumAlgorithm": "sha256",
            "description": description,
            "tags": list(tags),
            "metadata": metadata,
            "contentType": mimetypes.guess_type(filename)[0] or "application/octet-stream",
            "storagePath": relative,
            "createdAt": stamp,
            "uploadedAt": stamp,
            "updatedAt": stamp,
            "deletedAt": None,
        }
        with locked(self.lock_path):
            entries = self._entries()
            replaced = [e for e in entries if e["path"] == logical and e["filename"] == filename]
            entries = [e for e in entries if e not in replaced] + [entry]
            self._write_entries(entries)
        for old in replaced:
            self._remove_stored(old)
        return _public(entry)

    def _remove_stored(self, entry: dict) -> None:
        """Remove an entry's own ``<id>/`` folder (never ``files/`` itself)."""
        folder = os.path.dirname(self._stored_path(entry))
        if os.path.basename(folder) == entry["id"] and folder != os.path.realpath(self.root):
            shutil.rmtree(folder, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._stored_path(entry))

    def list(self, folder: str | None, tags: list | None) -> list[dict]:
        entries = self._entries()
        if folder is not None:
            logical = "/" + folder if folder else "/"
            entries = [e for e in entries if e["path"] == logical]
        if tags:
            wanted = set(tags)
            entries = [e for e in entries if wanted.issubset(e.get("tags") or [])]
        return [_public(e) for e in entries]

    def _find(self, entries: list[dict], file_id: str) -> dict:
        for entry in entries:
            if entry["id"] == file_id:
                return entry
        raise KeyError(f"no file with id {file_id!r} in this session")

    def download(self, file_id: str, dest: str) -> str:
        entry = self._find(self._entries(), file_id)
        if os.path.isdir(dest):
            dest = os.path.join(dest, entry["filename"])
        size, checksum = _copy_and_hash(self._stored_path(entry), dest)
        if checksum != entry["checksum"]:
            raise SinkError(f"stored copy of {entry['filename']} does not match its checksum")
        return dest

    def delete(self, file_id: str) -> dict:
        with locked(self.lock_path):
            entries = self._entries()
            entry = self._find(entries, file_id)
            entries.remove(entry)
            self._write_entries(entries)
        self._remove_stored(entry)
        return _public(entry)

    def update(self, file_id: str, changes: dict[str, Any]) -> dict:
        with locked(self.lock_path):
            entries = self._entries()
            entry = self._find(entries, file_id)
            unknown = set(changes) - UPDATABLE
            if unknown:
                raise ValueError(f"a file's {', '.join(sorted(unknown))} cannot be changed (only {', '.join(sorted(UPDATABLE))})")
            entry.update(changes)
            entry["updatedAt"] = now_iso()
            self._write_entries(entries)
        return _public(entry)
