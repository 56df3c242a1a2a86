"""HTTP to ``dreamlake-server``: one pooled httpx client per process, the
batched ingest call, the REST reads and file calls. httpx errors and status
codes are mapped here, at the boundary, to three outcomes::

    DeliveryError
     ├── Retryable   network error, 5xx, 429 (``retry_after`` from Retry-After),
     │               408 (the request arrived too slowly: the next try may not)
     ├── AuthFailed  401 / 403: not retried, surfaced in health() and one warning
     └── Rejected    any other 4xx: this batch can never be applied
          └── TooLarge  413: this body is over the server's limit (split it)
"""

from __future__ import annotations

import json
import os
import random
import threading
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from ..._fsutil import sha256_file
from ...server.wire import BATCH_CONTENT_TYPE, IngestAck, decode_ack
from .config import CONNECT_TIMEOUT, REQUEST_TIMEOUT, RETRY_MAX, RETRY_MIN, RemoteTarget

#: How long a file upload may wait for the server's reply after the last byte.
UPLOAD_REPLY_TIMEOUT = 600.0

__all__ = ["DeliveryError", "Retryable", "AuthFailed", "Rejected", "TooLarge", "http_client", "backoff", "IngestService", "RemoteStore"]


class DeliveryError(Exception):
    pass


class Retryable(DeliveryError):
    def __init__(self, message: str, retry_after: float | None = None, unreachable: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.unreachable = unreachable  # a network error, not an answer


class AuthFailed(DeliveryError):
    pass


class Rejected(DeliveryError):
    pass


class TooLarge(Rejected):
    """413: the body (or the batch it decompresses to) is over the server's limit."""


_client: httpx.Client | None = None
_client_lock = threading.Lock()


def http_client() -> httpx.Client:
    """The process's pooled client (HTTP/1.1 keep-alive; a new one after fork)."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = httpx.Client(
                    timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT),
                    limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
                    headers={"User-Agent": "dreamlake-python"},
                )
    return _client


def _after_fork_in_child() -> None:
    global _client, _client_lock
    _client, _client_lock = None, threading.Lock()  # the parent's sockets are not ours


os.register_at_fork(after_in_child=_after_fork_in_child)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        import time

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def backoff(attempt: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter; a server's Retry-After is a floor."""
    ceiling = min(RETRY_MAX, RETRY_MIN * (2 ** min(attempt, 20)))
    delay = random.uniform(RETRY_MIN / 2, ceiling)
    return max(delay, min(retry_after, RETRY_MAX * 4)) if retry_after is not None else delay


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):  # {"error": {"kind", "message"}}
            return str(error.get("message") or error.get("kind"))
        if error:
            return str(error)
    except ValueError:
        pass
    return response.text[:200] or response.reason_phrase


def check(response: httpx.Response) -> httpx.Response:
    code = response.status_code
    if code < 400:
        return response
    text = f"HTTP {code}: {_error_text(response)}"
    if code in (401, 403):
        raise AuthFailed(text)
    if code in (408, 429) or code >= 500:
        raise Retryable(text, _retry_after(response.headers.get("retry-after")))
    if code == 413:
        raise TooLarge(text)
    raise Rejected(text)


def _request(method: str, url: str, target: RemoteTarget, headers: dict | None = None, **kwargs: Any) -> httpx.Response:
    try:
        return check(http_client().request(method, url, headers={**target.headers(), **(headers or {})}, **kwargs))
    except httpx.TransportError as exc:
        raise Retryable(f"{type(exc).__name__}: {exc or 'network error'}", unreachable=True) from exc


class IngestService:
    """Sends one request body; returns the server's acknowledgement."""

    def __init__(self, target: RemoteTarget) -> None:
        self.target = target

    def send(self, body: bytes) -> IngestAck:
        response = _request(
            "POST",
            self.target.ingest_url,
            self.target,
            content=body,
            headers={"Content-Type": BATCH_CONTENT_TYPE, "Content-Encoding": "zstd"},
        )
        return decode_ack(response.content)

    def upsert(self, info: dict) -> dict:
        """Create or continue the session with its description, tags, folder."""
        body = {k: info.get(k) for k in ("description", "tags", "folder", "metadata", "status", "error")}
        body["name"] = self.target.name
        url = f"{self.target.url}/workspaces/{self.target.workspace}/sessions"
        return _request("POST", url, self.target, json={k: v for k, v in body.items() if v is not None}).json()["session"]


class RemoteStore:
    """Reads and files of one remote session over the REST API; every reply is
    the dict local mode returns for the same call."""

    def __init__(self, target: RemoteTarget, session_id: Any) -> None:
        self.target = target
        self._session_id = session_id  # a callable resolving the server's id

    def _url(self, path: str) -> str:
        return f"{self.target.url}/sessions/{self._session_id()}{path}"

    def _get(self, path: str, **params: Any) -> Any:
        return _request("GET", self._url(path), self.target, params={k: v for k, v in params.items() if v is not None}).json()

    def read(self, name: str, is_log: bool, start_index: int, limit: int) -> dict:
        if is_log:
            return self._get("/logs", startIndex=start_index, limit=limit)
        return self._get(f"/tracks/{name}/data", startIndex=start_index, limit=limit)

    def read_range(self, name: str, is_log: bool, start_ts: Any, end_ts: Any, limit: int) -> dict:
        return self._get(f"/tracks/{name}/by-time", startTs=start_ts, endTs=end_ts, limit=limit)

    def stats(self, name: str) -> dict:
        return self._get(f"/tracks/{name}/stats")

    def list_tracks(self) -> list[dict]:
        return self._get("/tracks")["tracks"]

    def params_get(self) -> dict:
        return self._get("/parameters").get("data") or {}

    def files_upload(self, src: str, folder: str, description: Any, tags: list, metadata: dict, *,
                     upload_id: str | None = None, on_created: Any = None) -> dict:
        """Streams the file from disk (never whole in memory) after hashing it,
        so the server can check the sha256: in resumable chunks from
        ``CHUNKED_THRESHOLD`` up (``upload_id``/``on_created`` resume one a
        previous process started; see uploads.py), else in one request."""
        from .uploads import CHUNKED_THRESHOLD, ChunkedUnsupported, ChunkedUpload

        size, checksum = sha256_file(src)
        if size >= CHUNKED_THRESHOLD:
            upload = ChunkedUpload(self.target, self._url(""), src, folder, description, tags, metadata, size,
                                   checksum, upload_id, on_created)
            try:
                return upload.run()
            except ChunkedUnsupported:
                pass  # a server without the chunk API: one request, as upstream's client does
        data = {"prefix": folder or "/", "checksum": checksum, "sizeBytes": str(size)}
        if description is not None:
            data["description"] = description
        if tags:
            data["tags"] = ",".join(tags)
        if metadata:
            data["metadata"] = json.dumps(metadata)
        with open(src, "rb") as source:
            files = {"file": (os.path.basename(src), source, "application/octet-stream")}
            # the server hashes and stores a large file before it answers
            timeout = httpx.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT, read=UPLOAD_REPLY_TIMEOUT)
            return _request("POST", self._url("/files"), self.target, data=data, files=files, timeout=timeout).json()

    def files_list(self, folder: str | None, tags: list | None) -> list[dict]:
        return self._get("/files", prefix=folder, tags=",".join(tags) if tags else None)["files"]

    def files_download(self, file_id: str, dest: str) -> str:
        tmp = f"{dest}.{os.getpid()}.part"
        try:
            with http_client().stream("GET", self._url(f"/files/{file_id}/download"), headers=self.target.headers()) as response:
                check(response)
                with open(tmp, "wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
            os.replace(tmp, dest)
        except httpx.TransportError as exc:
            raise Retryable(str(exc)) from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return dest

    def files_delete(self, file_id: str) -> dict:
        return _request("DELETE", self._url(f"/files/{file_id}"), self.target).json()

    def files_update(self, file_id: str, changes: dict) -> dict:
        return _request("PATCH", self._url(f"/files/{file_id}"), self.target, json=changes).json()
