"""Chunked uploads staged on the local store's disk (rules in :mod:`._uploads`).

One directory per upload under ``<root>/.dreamlake-server/uploads/<id>/``::

    upload.json          session id, the spec, created time; "file" once completed
    bytes/<filename>     the bytes received so far: ``received`` is its size
    lock                 flock'd by every change (chunks of one upload are serialised)

``received`` is the staged file's size, so it survives a kill of the server
with no separate bookkeeping: bytes are written in order, only past the end.
(A power loss may cost the tail, which the client then sends again, or leave
bytes the sha256 check at completion refuses.) Completion hands the staged
file to the store exactly as a one-request upload does, then records the file
record in ``upload.json`` and deletes the bytes; a crash between the two makes
a retried completion store the file again, which replaces the first copy (same
folder + filename), so it still appears once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

from .._fsutil import locked, now_iso, read_json, sha256_file, write_json_atomic
from ._errors import BadRequest, Conflict, NotFound
from ._journal import fsync_path
from ._uploads import UploadSpec, check_upload_id, chunk_skip, status_reply

__all__ = ["LocalUploads"]


class LocalUploads:
    def __init__(self, directory: Path, ttl: float, fsync: bool) -> None:
        self.dir = Path(directory)
        self.ttl = ttl
        self.fsync = fsync

    # -- helpers ---------------------------------------------------------------
    def _path(self, upload_id: str) -> Path:
        return self.dir / check_upload_id(upload_id)

    def _load(self, session_id: str, upload_id: str) -> tuple[Path, dict]:
        path = self._path(upload_id)
        meta = read_json(str(path / "upload.json"), default=None)
        if not isinstance(meta, dict) or meta.get("session") != session_id:
            raise NotFound(f"no upload {upload_id!r} in this session (finished long ago, expired or never made)")
        return path, meta

    @staticmethod
    def _staged(path: Path, meta: dict) -> Path:
        return path / "bytes" / meta["spec"]["filename"]

    def _status(self, upload_id: str, path: Path, meta: dict) -> dict:
        staged = self._staged(path, meta)
        try:
            received, touched = staged.stat().st_size, staged.stat().st_mtime
        except FileNotFoundError:  # completed: the bytes are in the store
            received, touched = meta["spec"]["size"], (path / "upload.json").stat().st_mtime
        return status_reply(upload_id, UploadSpec.from_json(meta["spec"]), received, meta["createdAt"],
                            now_iso(touched), now_iso(touched + self.ttl), meta.get("file"))

    # -- the operations --------------------------------------------------------
    def create(self, session_id: str, spec: UploadSpec) -> dict:
        upload_id = uuid.uuid4().hex
        path = self.dir / upload_id
        (path / "bytes").mkdir(parents=True, mode=0o700)
        self._staged(path, {"spec": spec.to_json()}).touch()
        meta = {"session": session_id, "spec": spec.to_json(), "createdAt": now_iso()}
        write_json_atomic(str(path / "upload.json"), meta)
        return self._status(upload_id, path, meta)

    def status(self, session_id: str, upload_id: str) -> dict:
        path, meta = self._load(session_id, upload_id)
        return self._status(upload_id, path, meta)

    def chunk(self, session_id: str, upload_id: str, offset: int, data: bytes) -> tuple[dict, int]:
        """Stage a chunk; → (status, bytes newly stored)."""
        path, meta = self._load(session_id, upload_id)
        stored = 0
        with _hold(path):
            path, meta = self._load(session_id, upload_id)  # may have completed meanwhile
            staged = self._staged(path, meta)
            if meta.get("file") is None:
                received = staged.stat().st_size
                skip = chunk_skip(received, meta["spec"]["size"], offset, len(data))
                if skip is not None:
                    with open(staged, "r+b") as out:
                        out.seek(received)
                        out.write(memoryview(data)[skip:])
                        if self.fsync:
                            out.flush()
                            os.fsync(out.fileno())
                    stored = len(data) - skip
        return self._status(upload_id, path, meta), stored

    def complete(self, session_id: str, upload_id: str, store: Callable[[Path, UploadSpec], dict]) -> dict:
        """Check size and sha256, then ``store(staged file, spec)`` → the file record."""
        path, meta = self._load(session_id, upload_id)
        with _hold(path):
            path, meta = self._load(session_id, upload_id)
            if meta.get("file") is not None:
                return meta["file"]  # completed before: the same record, stored once
            spec = UploadSpec.from_json(meta["spec"])
            staged = self._staged(path, meta)
            received = staged.stat().st_size
            if received != spec.size:
                raise Conflict(f"upload has {received} of {spec.size} bytes: send from offset {received}",
                               offset=received)
            if sha256_file(staged)[1] != spec.checksum:
                shutil.rmtree(path, ignore_errors=True)
                raise BadRequest("checksum does not match the uploaded bytes (sha256); the upload is discarded")
            record = store(staged, spec)
            meta["file"] = record
            write_json_atomic(str(path / "upload.json"), meta)
            if self.fsync:
                fsync_path(str(path / "upload.json"))
            staged.unlink()
            return record

    def abort(self, session_id: str, upload_id: str) -> dict:
        path, meta = self._load(session_id, upload_id)
        with _hold(path):
            reply = self._status(upload_id, path, meta)
            shutil.rmtree(path, ignore_errors=True)
        return reply

    def sweep(self, now: float | None = None) -> int:
        """Remove uploads untouched for ``ttl`` seconds; → how many."""
        now = time.time() if now is None else now
        removed = 0
        for path in self.dir.glob("*") if self.dir.is_dir() else []:
            touched = 0.0
            for part in (path, path / "upload.json", *path.glob("bytes/*")):
                with contextlib.suppress(FileNotFoundError):
                    touched = max(touched, part.stat().st_mtime)
            if touched and now - touched > self.ttl:
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed


@contextlib.contextmanager
def _hold(path: Path) -> Iterator[None]:
    """The upload's lock; an upload removed meanwhile is not found."""
    try:
        hold = locked(str(path / "lock"))
        hold.__enter__()
    except FileNotFoundError:
        raise NotFound(f"no upload {path.name!r} (removed)") from None
    try:
        yield
    finally:
        hold.__exit__(None, None, None)
