"""Resumable chunked uploads: the rules both backends share.

An upload is created for a session with the file's name, folder, size and
sha256; the client then sends the bytes in chunks at explicit offsets, may ask
how much arrived (to resume after any failure), and completes it. The server
keeps one number per upload, ``received``: the bytes ``[0, received)`` are
staged. A chunk:

* starting at or before ``received`` is accepted; only its bytes past
  ``received`` are stored, so a repeated chunk is never stored twice;
* starting past ``received`` would leave a gap → 409 :class:`Conflict` whose
  JSON error carries ``"offset": received`` (where to resume);
* reaching past the declared size → 400.

Completing checks the total size and the sha256, then stores the file as a
normal upload would (same folder + filename replaces the older entry), once: a
repeated complete returns the same record. A sha256 mismatch discards the
upload and stores nothing. An upload untouched for ``Settings.upload_ttl``
(24 h by default) is removed with its staged bytes, by a sweep when a server
starts and then at most every ``SWEEP_INTERVAL`` when uploads are created.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from typing import Any, Callable

from .._files_api import MAX_FILE_BYTES
from .._names import check_file_folder, check_segment
from ._errors import BadRequest, Conflict, NotFound

__all__ = [
    "UploadSpec",
    "parse_spec",
    "check_upload_id",
    "chunk_skip",
    "status_reply",
    "MAX_CHUNKED_BYTES",
    "SWEEP_INTERVAL",
    "complete_lease",
    "Sweeper",
]

log = logging.getLogger("dreamlake.server")

#: Largest file a chunked upload may declare: the API's own per-file limit.
MAX_CHUNKED_BYTES = MAX_FILE_BYTES
#: Seconds between sweeps for abandoned uploads (one runs at start).
SWEEP_INTERVAL = 600.0

_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class UploadSpec:
    filename: str
    folder: str  # validated, without leading/trailing "/" ("" = the root)
    size: int
    checksum: str  # sha256, lower-case hex
    description: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    metadata: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> "UploadSpec":
        return cls(**raw)


def parse_spec(body: dict, limit: int = MAX_CHUNKED_BYTES) -> UploadSpec:
    """The create request: ``{"filename", "prefix" | "path", "sizeBytes",
    "checksum", "description"?, "tags"? (list or "a,b"), "metadata"?}``."""
    filename = body.get("filename")
    if not isinstance(filename, str):
        raise BadRequest("filename must be a string")
    filename = check_segment(filename, "file name")
    folder = check_file_folder(body.get("prefix") or body.get("path") or "/")
    size = body.get("sizeBytes")
    if type(size) is not int or size < 0:
        raise BadRequest("sizeBytes must be a non-negative integer")
    if size > limit:
        raise BadRequest(f"sizeBytes {size} is over the limit of {limit}")
    checksum = body.get("checksum")
    if not isinstance(checksum, str) or not _SHA256.match(checksum.lower()):
        raise BadRequest("checksum must be the file's sha256 as 64 hex digits")
    description = body.get("description")
    if description is not None and not isinstance(description, str):
        raise BadRequest("description must be a string")
    tags: Any = body.get("tags") or []
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(",") if t.strip()]
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise BadRequest("tags must be a list of strings")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise BadRequest("metadata must be a JSON object")
    return UploadSpec(filename, folder, size, checksum.lower(), description, tags, metadata)


def check_upload_id(text: str) -> str:
    """Upload ids are the server's 32 hex digits; anything else is no upload."""
    if not isinstance(text, str) or not _UPLOAD_ID.match(text):
        raise NotFound(f"no upload with id {text!r}")
    return text


def chunk_skip(received: int, size: int, offset: int, length: int) -> int | None:
    """How many leading bytes of a chunk at ``offset`` are already staged, or
    None when all of them are (a repeat). Raises for a gap or an overrun."""
    if length <= 0:
        raise BadRequest("a chunk needs a body")
    if offset + length > size:
        raise BadRequest(f"chunk {offset}..{offset + length} reaches past the declared size {size}")
    if offset > received:
        raise Conflict(f"chunk at {offset} would leave a gap: send from offset {received}", offset=received)
    if offset + length <= received:
        return None
    return received - offset


def status_reply(upload_id: str, spec: UploadSpec, received: int, created: str, updated: str,
                 expires: str, file: dict | None) -> dict:
    folder = "/" + spec.folder if spec.folder else "/"
    return {
        "uploadId": upload_id,
        "filename": spec.filename,
        "path": folder,
        "prefix": folder.rstrip("/") + "/",
        "sizeBytes": spec.size,
        "checksum": spec.checksum,
        "offset": received,
        "complete": file is not None,
        "fileId": file["id"] if file else None,
        "createdAt": created,
        "updatedAt": updated,
        "expiresAt": expires,
    }


def complete_lease(size: int) -> float:
    """Seconds one request may hold an upload while completing it (hashing and
    storing ``size`` bytes at a pessimistic 20 MB/s, plus a minute) before
    another replica may take it over."""
    return 60.0 + size / 20e6


class Sweeper:
    """Runs a backend's sweep for abandoned uploads now, then at most every
    ``SWEEP_INTERVAL`` when called again (on every upload created)."""

    def __init__(self, sweep: Callable[[], int], ttl: float) -> None:
        self._sweep = sweep
        self._ttl = ttl
        self._at: float | None = None
        self()

    def __call__(self) -> None:
        now = time.monotonic()
        if self._at is not None and now - self._at < SWEEP_INTERVAL:
            return
        self._at = now
        removed = self._sweep()
        if removed:
            log.info("removed %d abandoned upload(s) untouched for %g s", removed, self._ttl)
