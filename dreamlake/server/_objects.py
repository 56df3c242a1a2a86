"""Object storage for the scale-out backend: uploaded files, by key.

One tiny interface (:class:`ObjectStore`: put a local file or bytes; copy an
object to a local file or stream it; delete) over `obstore <https://developmentseed.org/obstore>`_,
so the same code writes a local directory (``file:///srv/dreamlake/objects``,
the default) or a bucket (``s3://bucket/prefix``, ``gs://…``, ``az://…``) with
the usual credentials from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_REGION``, ``AWS_ENDPOINT_URL`` …, as obstore reads them). Nothing here
knows about S3: the URL is configuration.

Keys are ``/``-separated and built by the caller from validated segments.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator, Protocol

import obstore
from obstore.store import from_url

__all__ = ["ObjectStore", "ObstoreObjects", "open_objects"]

_CHUNK = 1 << 20


class ObjectStore(Protocol):
    url: str

    def put_file(self, key: str, source: Path) -> None:
        """Store ``source`` under ``key`` (replaces an object already there)."""

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        """The object's bytes in pieces of about 1 MiB. FileNotFoundError when missing."""

    def get_file(self, key: str, dest: Path) -> tuple[int, str]:
        """Copy the object into ``dest``; → (size, sha256 hex). FileNotFoundError when missing."""

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is not an error."""


class ObstoreObjects:
    def __init__(self, url: str) -> None:
        self.url = url
        # a local directory is created on first use; remote stores take the URL as is
        options = {"mkdir": True} if url.startswith("file:") else {}
        self._store = from_url(url, **options)

    def put_file(self, key: str, source: Path) -> None:
        obstore.put(self._store, key, Path(source))

    def put_bytes(self, key: str, data: bytes) -> None:
        obstore.put(self._store, key, data)

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        for chunk in obstore.get(self._store, key).stream(min_chunk_size=_CHUNK):
            yield bytes(chunk)

    def get_file(self, key: str, dest: Path) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        with open(dest, "wb") as out:
            for data in self.iter_chunks(key):
                digest.update(data)
                out.write(data)
                size += len(data)
        return size, digest.hexdigest()

    def delete(self, key: str) -> None:
        try:
            obstore.delete(self._store, key)
        except FileNotFoundError:
            pass


def open_objects(url: str) -> ObjectStore:
    """``file:///abs/dir`` or any URL obstore understands; a bare path means a local directory."""
    if "://" not in url:
        url = Path(os.path.abspath(url)).as_uri()
    return ObstoreObjects(url)
