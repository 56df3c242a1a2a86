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

import os
import time
from typing import Any, BinaryIO, Callable, Iterator

import httpx

from .config import CONNECT_TIMEOUT, REQUEST_TIMEOUT, RemoteTarget
from .service import Rejected, Retryable, backoff, check, http_client

__all__ = ["ChunkedUpload", "ChunkedUnsupported", "CHUNK_BYTES", "CHUNKED_THRESHOLD",
           "UPLOAD_ATTEMPTS"]

#: Bytes per chunk request (read from disk as it is sent, 1 MiB at a time).
#: Measured by ``benchmarks/uploads.py`` (loopback, MB/s, 2 busy cores): a
#: 32 MB file goes at 263 / 281 / 293 / 307 in chunks of 1 / 4 / 8 / 16 MiB
#: (one request: 177); 8 MiB is on the plateau and bounds what a failure
#: costs again. The server takes chunks up to its ``--max-body-mb`` (32).
CHUNK_BYTES = 8 << 20
#: Files from this size up go in chunks, smaller ones in one request.
#: Measured as above: one request is faster below a chunk (0.25 / 1 / 2 MB:
#: 36 / 93 / 135 against 27 / 74 / 112 chunked: two requests more), chunks
#: from about one chunk up (8 MB: 206 against 220; 32 MB: 177 against 293,
#: since the server stages a multipart body twice). Smaller files are cheap
#: to send again whole.
CHUNKED_THRESHOLD = CHUNK_BYTES
#: Failed attempts in a row (no byte of progress between them) before giving up.
UPLOAD_ATTEMPTS = 8
#: How long completing may take (the server hashes and stores the whole file).
COMPLETE_TIMEOUT = 600.0

_PIECE = 1 << 20


class ChunkedUnsupported(Exception):
    """The server has no chunked-upload API (e.g. upstream's): use one request."""


class _Gap(Exception):
    def __init__(self, offset: int) -> None:
        self.offset = offset


class _Gone(Exception):
    pass


def _error(response: httpx.Response) -> dict:
    try:
        error = response.json().get("error")
        return error if isinstance(error, dict) else {}
    except (ValueError, AttributeError):
        return {}


class ChunkedUpload:
    def __init__(self, target: RemoteTarget, session_url: str, src: str, folder: str, description: Any,
                 tags: list, metadata: dict, size: int, checksum: str, upload_id: str | None = None,
                 on_created: Callable[[str], None] | None = None, chunk_bytes: int | None = None) -> None:
        self.target = target
        self.base = f"{session_url}/uploads"
        self.src = src
        self.spec = {"filename": os.path.basename(src), "prefix": "/" + folder if folder else "/",
                     "sizeBytes": size, "checksum": checksum, "description": description, "tags": list(tags),
                     "metadata": metadata or {}}
        self.size = size
        self.upload_id = upload_id
        self.on_created = on_created
        self.chunk_bytes = chunk_bytes or CHUNK_BYTES
        self.failures = 0
        self.bytes_sent = 0  # chunk bytes put on the wire, repeats included

    # -- HTTP ------------------------------------------------------------------
    def _call(self, method: str, url: str, timeout: float = REQUEST_TIMEOUT, headers: dict | None = None,
              **kwargs: Any) -> dict:
        try:
            response = http_client().request(method, url, headers={**self.target.headers(), **(headers or {})},
                                             timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT), **kwargs)
        except httpx.TransportError as exc:
            raise Retryable(f"{type(exc).__name__}: {exc or 'network error'}", unreachable=True) from exc
        if response.status_code == 409 and isinstance(_error(response).get("offset"), int):
            raise _Gap(_error(response)["offset"])
        if response.status_code in (404, 405):  # no such upload (expired, discarded), or no such API
            raise _Gone(_error(response).get("message") or f"HTTP {response.status_code}")
        return check(response).json()

    def _create(self) -> int:
        try:
            status = self._call("POST", self.base, json=self.spec)
        except _Gone as gone:  # upstream's server; or no such session, which one request will say too
            raise ChunkedUnsupported(f"no chunked-upload API here: {gone}") from None
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

    def _put(self, source: BinaryIO, offset: int, length: int) -> int:
        self.bytes_sent += length
        return self._call("PUT", f"{self.base}/{self.upload_id}/{offset}", content=self._pieces(source, offset, length),
                          headers={"Content-Length": str(length)})["offset"]

    def _pieces(self, source: BinaryIO, offset: int, length: int) -> Iterator[bytes]:
        """The chunk read from disk as it is sent, 1 MiB at a time (a chunk's
        bytes handed to httpx whole stay alive until its reference cycles are
        collected: measured, RSS grew by ~17 chunks)."""
        source.seek(offset)
        while length > 0:
            piece = source.read(min(_PIECE, length))
            if not piece:
                raise Rejected(f"{self.src} changed (shrank) while it was being uploaded")
            length -= len(piece)
            yield piece

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
                        offset = self._put(source, offset, min(self.chunk_bytes, self.size - offset))
                        self.failures = 0
                        self.progress(offset)
                        continue
                    timeout = max(COMPLETE_TIMEOUT, self.size / 20e6)
                    return self._call("POST", f"{self.base}/{self.upload_id}/complete", timeout=timeout)
                except _Gap as gap:  # the server holds less (or more) than we thought
                    if gap.offset == offset:  # no way forward from here (never seen): do not spin
                        self.failures += 1
                        if self.failures >= UPLOAD_ATTEMPTS:
                            raise Rejected(f"upload {self.upload_id}: the server keeps asking for offset {offset}")
                    offset = gap.offset
                except _Gone as gone:  # expired or swept while we were away: start over, once
                    if recreated:
                        raise Rejected(f"upload {self.upload_id} vanished: {gone}") from None
                    recreated, self.upload_id, offset = True, None, None
                except Retryable as exc:
                    self._wait(exc)
                    offset = None  # ask the server where to go on
