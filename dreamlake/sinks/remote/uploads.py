"""Large files in resumable chunks (the server's ``/sessions/{id}/uploads`` API,
docs/protocol.md), streamed from disk one chunk at a time.

The server is the one source of truth for progress: after any failure the
upload asks it how many bytes it holds and continues from there, so a server
restart, a lost reply or a repeated chunk costs at most one chunk again. A
failed request is retried with the sink's backoff (exponential with jitter,
``Retry-After`` as a floor) until ``UPLOAD_ATTEMPTS`` attempts in a row made no
progress; 401/403 are never retried. Whoever keeps state across processes
(``dreamlake sync``) passes ``upload_id`` and ``on_created`` to resume an
upload a previous process started.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any, Callable

import httpx

from .config import CONNECT_TIMEOUT, REQUEST_TIMEOUT, RemoteTarget
from .service import Rejected, Retryable, backoff, check, http_client

__all__ = ["ChunkedUpload", "ChunkedUnsupported", "file_digest", "CHUNK_BYTES", "CHUNKED_THRESHOLD",
           "UPLOAD_ATTEMPTS"]

#: Bytes per chunk request: one chunk is all an upload holds in memory. Measured
#: (benchmarks/uploads.py, loopback): 1 MiB chunks run at ~60 % of one request's
#: rate, 8 MiB ones at ~95 %; more buys nothing and costs more to resend.
CHUNK_BYTES = 8 << 20
#: Files at least this large go in chunks; smaller ones in one request (a
#: chunked upload costs two requests more, and a small file is cheap to resend).
CHUNKED_THRESHOLD = 32 << 20
#: Failed attempts in a row (no byte of progress between them) before giving up.
UPLOAD_ATTEMPTS = 8
#: How long completing may take (the server hashes and stores the whole file).
COMPLETE_TIMEOUT = 600.0

_HASH_STEP = 1 << 20


class ChunkedUnsupported(Exception):
    """The server has no chunked-upload API (e.g. upstream's): use one request."""


class _Gap(Exception):
    def __init__(self, offset: int) -> None:
        self.offset = offset


class _Gone(Exception):
    pass


def file_digest(path: str) -> tuple[int, str]:
    """(size, sha256 hex), reading the file in 1 MiB steps."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as source:
        while block := source.read(_HASH_STEP):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _error(response: httpx.Response) -> dict:
    try:
        error = response.json().get("error")
        return error if isinstance(error, dict) else {}
    except (ValueError, AttributeError):
        return {}


class ChunkedUpload:
    def __init__(self, target: RemoteTarget, session_url: str, src: str, folder: str, description: Any,
                 tags: list, metadata: dict, size: int, checksum: str, upload_id: str | None = None,
                 on_created: Callable[[str], None] | None = None, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.target = target
        self.base = f"{session_url}/uploads"
        self.src = src
        self.spec = {"filename": os.path.basename(src), "prefix": "/" + folder if folder else "/",
                     "sizeBytes": size, "checksum": checksum, "description": description, "tags": list(tags),
                     "metadata": metadata or {}}
        self.size = size
        self.upload_id = upload_id
        self.on_created = on_created
        self.chunk_bytes = chunk_bytes
        self.failures = 0
        self.bytes_sent = 0  # chunk bytes put on the wire, repeats included

    # -- HTTP ------------------------------------------------------------------
    def _call(self, method: str, url: str, timeout: float = REQUEST_TIMEOUT, **kwargs: Any) -> dict:
        try:
            response = http_client().request(method, url, headers=self.target.headers(),
                                             timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT), **kwargs)
        except httpx.TransportError as exc:
            raise Retryable(f"{type(exc).__name__}: {exc or 'network error'}", unreachable=True) from exc
        if response.status_code == 409 and isinstance(_error(response).get("offset"), int):
            raise _Gap(_error(response)["offset"])
        if response.status_code == 404 and _error(response).get("kind") == "not_found":
            raise _Gone(_error(response).get("message"))
        return check(response).json()

    def _create(self) -> int:
        try:
            status = self._call("POST", self.base, json=self.spec)
        except _Gone:
            raise ChunkedUnsupported("the server has no chunked-upload API") from None
        except Rejected as exc:
            if "405" in str(exc) or "404" in str(exc):
                raise ChunkedUnsupported(str(exc)) from None
            raise
        self.upload_id = status["uploadId"]
        if self.on_created is not None:
            self.on_created(self.upload_id)
        return status["offset"]

    def _resume(self) -> int | None:
        """The server's offset of an upload a previous attempt started, if it
        still exists and is for this very file."""
        if not self.upload_id:
            return None
        try:
            status = self._call("GET", f"{self.base}/{self.upload_id}")
        except (_Gone, Rejected):
            return None
        if status.get("sizeBytes") != self.size or status.get("checksum") != self.spec["checksum"]:
            return None
        return status["offset"]

    def _put(self, offset: int, data: bytes) -> int:
        self.bytes_sent += len(data)
        return self._call("PUT", f"{self.base}/{self.upload_id}/{offset}", content=data)["offset"]

    # -- the loop --------------------------------------------------------------
    def progress(self, offset: int) -> None:
        """Called after every acknowledged chunk with the server's offset (a hook)."""

    def _wait(self, exc: Retryable) -> None:
        self.failures += 1
        if self.failures >= UPLOAD_ATTEMPTS:
            raise exc
        time.sleep(backoff(self.failures - 1, exc.retry_after))

    def run(self) -> dict:
        """Upload (or resume) the file; → the server's file record."""
        offset: int | None = None
        recreated = False
        with open(self.src, "rb") as source:
            while True:
                try:
                    if offset is None:
                        offset = self._resume()
                        if offset is None:
                            offset = self._create()
                    if offset < self.size:
                        source.seek(offset)
                        want = min(self.chunk_bytes, self.size - offset)
                        data = source.read(want)
                        if len(data) != want:
                            raise Rejected(f"{self.src} changed while it was being uploaded")
                        offset = self._put(offset, data)
                        self.failures = 0
                        self.progress(offset)
                        continue
                    timeout = max(COMPLETE_TIMEOUT, self.size / 20e6)
                    return self._call("POST", f"{self.base}/{self.upload_id}/complete", timeout=timeout)
                except _Gap as gap:  # the server holds less (or more) than we thought
                    offset = gap.offset
                except _Gone as gone:  # expired or swept while we were away: start over, once
                    if recreated:
                        raise Rejected(f"upload {self.upload_id} vanished: {gone}") from None
                    recreated, self.upload_id, offset = True, None, None
                except Retryable as exc:
                    self._wait(exc)
                    offset = None  # ask the server where to go on
