"""Chunked uploads on PostgreSQL + object storage (rules in :mod:`.._uploads`).

Replicas share nothing but the database and the object store, so a chunk may
land on any replica: the upload's row (``uploads``) holds ``received``, and
every staged byte range is an object ``uploads/<id>/<first byte>`` listed in
``upload_parts``.

* **A chunk** locks the upload's row, puts its new bytes as one object keyed
  by where they start, records the part and advances ``received``, then
  commits. A replica that dies before the commit leaves at most an object that
  the retry (same start, to any replica) overwrites; a repeated chunk finds
  ``received`` already past it and stores nothing.
* **Completing** takes a lease on the upload (``completing_until``; no
  transaction stays open while bytes move), joins the parts in order into a
  file in the replica's scratch directory while hashing them, and only if size
  and sha256 match puts it as the file's object and commits the file record
  and the upload's ``file_id`` in one transaction — so a file appears once, or not at all. A second request
  meanwhile gets 503 (busy: retry); after the lease runs out (a replica died
  mid-way) another may redo it. A repeat after completion returns the record.
* **Abandoned uploads** (untouched for ``ttl``) are deleted with their parts'
  objects by a sweep on start and then at most every ``SWEEP_INTERVAL``; each
  row is claimed by exactly one replica's ``DELETE … RETURNING``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, ContextManager

import psycopg

from ..._values import untag_nonfinite
from .._errors import BadRequest, Busy, Conflict, NotFound
from .._objects import ObjectStore
from .._uploads import UploadSpec, chunk_skip, complete_lease, status_reply
from ._files import FileCatalog, file_record, new_file_id
from ._values import iso, jsonb

__all__ = ["PgUploads"]

log = logging.getLogger("dreamlake.server")

Connect = Callable[[], ContextManager[psycopg.Connection]]

_COLUMNS = ("id, path, filename, size_bytes, checksum, description, tags, metadata, received, file_id,"
            " created_at, updated_at")


def _part_key(upload_id: str, first_byte: int) -> str:
    return f"uploads/{upload_id}/{first_byte:020d}"


class _Superseded(Exception):
    def __init__(self, file_id: str | None) -> None:
        self.file_id = file_id


class PgUploads:
    def __init__(self, objects: ObjectStore, read: Connect, write: Connect, files: FileCatalog, ttl: float,
                 scratch: Callable[[], Path]) -> None:
        self.objects = objects
        self.scratch = scratch
        self._read = read
        self._write = write
        self.files = files
        self.ttl = ttl

    # -- helpers ---------------------------------------------------------------
    @staticmethod
    def _spec(row: tuple) -> UploadSpec:
        _, path, filename, size, checksum, description, tags, metadata = row[:8]
        return UploadSpec(filename, path.strip("/"), size, checksum, description, tags or [],
                          untag_nonfinite(metadata) or {})

    def _status(self, row: tuple) -> dict:
        upload_id, received, file_id, created, updated = row[0], row[8], row[9], row[10], row[11]
        expires = updated + timedelta(seconds=self.ttl)
        return status_reply(upload_id, self._spec(row), received, iso(created), iso(updated), iso(expires),
                            {"id": file_id} if file_id else None)

    @staticmethod
    def _row(conn: psycopg.Connection, session_id: int, upload_id: str, lock: bool = False) -> tuple:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM uploads WHERE id = %s AND session_id = %s" + (" FOR UPDATE" if lock else ""),
            (upload_id, session_id),
        ).fetchone()
        if row is None:
            raise NotFound(f"no upload {upload_id!r} in this session (expired, discarded or never made)")
        return row

    # -- the operations --------------------------------------------------------
    def create(self, conn: psycopg.Connection, session_id: int, spec: UploadSpec) -> dict:
        row = conn.execute(
            f"""INSERT INTO uploads (id, session_id, path, filename, size_bytes, checksum, description, tags,
                                     metadata)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}""",
            (uuid.uuid4().hex, session_id, "/" + spec.folder, spec.filename, spec.size, spec.checksum,
             spec.description, jsonb(spec.tags), jsonb(spec.metadata)),
        ).fetchone()
        return self._status(row)

    def status(self, session_id: int, upload_id: str) -> dict:
        with self._read() as conn:
            return self._status(self._row(conn, session_id, upload_id))

    def chunk(self, session_id: int, upload_id: str, offset: int, data: bytes) -> tuple[dict, int]:
        with self._write() as conn:
            row = self._row(conn, session_id, upload_id, lock=True)  # chunks of one upload: one at a time
            received, file_id = row[8], row[9]
            if file_id is not None:
                return self._status(row), 0
            skip = chunk_skip(received, row[3], offset, len(data))
            if skip is None:
                return self._status(row), 0
            part = memoryview(data)[skip:]
            self.objects.put_bytes(_part_key(upload_id, received), bytes(part))
            conn.execute(
                "INSERT INTO upload_parts (upload_id, first_byte, size_bytes) VALUES (%s, %s, %s)"
                " ON CONFLICT (upload_id, first_byte) DO UPDATE SET size_bytes = excluded.size_bytes",
                (upload_id, received, len(part)),
            )
            row = conn.execute(
                f"UPDATE uploads SET received = %s, updated_at = now() WHERE id = %s RETURNING {_COLUMNS}",
                (received + len(part), upload_id),
            ).fetchone()
            return self._status(row), len(part)

    def _claim(self, session_id: int, upload_id: str) -> tuple | dict:
        """→ the upload's row, leased to this request; or the file record of a completed one."""
        with self._write() as conn:
            row = self._row(conn, session_id, upload_id, lock=True)
            if row[9] is not None:
                return self.files.get(session_id, row[9])
            claimed = conn.execute(
                "UPDATE uploads SET completing_until = now() + make_interval(secs => %s)"
                " WHERE id = %s AND (completing_until IS NULL OR completing_until < now()) RETURNING id",
                (complete_lease(row[3]), upload_id),
            ).fetchone()
            if claimed is None:
                raise Busy("this upload is being completed by another request; retry shortly")
            if row[8] != row[3]:
                conn.execute("UPDATE uploads SET completing_until = NULL WHERE id = %s", (upload_id,))
                raise Conflict(f"upload has {row[8]} of {row[3]} bytes: send from offset {row[8]}", offset=row[8])
            return row

    def _parts(self, upload_id: str, size: int) -> list[tuple[int, int]]:
        with self._read() as conn:
            parts = conn.execute(
                "SELECT first_byte, size_bytes FROM upload_parts WHERE upload_id = %s ORDER BY first_byte",
                (upload_id,),
            ).fetchall()
        at = 0
        for first, length in parts:
            if first != at:
                raise Conflict(f"staged bytes of upload {upload_id} have a gap at {at}", offset=at)
            at += length
        if at != size:
            raise Conflict(f"upload has {at} of {size} bytes staged", offset=at)
        return parts

    def complete(self, session_id: int, upload_id: str) -> dict:
        claimed = self._claim(session_id, upload_id)
        if isinstance(claimed, dict):
            return claimed
        row = claimed
        spec = self._spec(row)
        file_id = new_file_id()
        key = self.files.object_key(session_id, file_id, spec.filename)
        scratch = self.scratch()
        try:
            parts = self._parts(upload_id, spec.size)
            joined = scratch / spec.filename
            if self._join(upload_id, parts, joined) != spec.checksum:
                self._discard(upload_id)
                raise BadRequest("checksum does not match the uploaded bytes (sha256); the upload is discarded")
            self.objects.put_file(key, joined)
            with self._write() as conn:
                done = conn.execute("SELECT file_id FROM uploads WHERE id = %s FOR UPDATE", (upload_id,)).fetchone()
                if done is None or done[0] is not None:  # our lease ran out and another request finished it
                    raise _Superseded(done[0] if done else None)
                record, replaced = self.files.insert(conn, session_id, file_id, key, spec.folder, spec.filename,
                                                     spec.size, spec.checksum, spec.description, spec.tags,
                                                     spec.metadata)
                conn.execute(
                    "UPDATE uploads SET file_id = %s, completing_until = NULL, updated_at = now() WHERE id = %s",
                    (file_id, upload_id),
                )
        except _Superseded as done:
            self.objects.delete(key)
            if done.file_id is None:
                raise NotFound(f"upload {upload_id!r} was discarded meanwhile") from None
            return self.files.get(session_id, done.file_id)
        except BaseException:
            self.objects.delete(key)  # never committed: no record points at it
            self._release(upload_id)
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self.files.remove_objects(replaced)
        self._drop_parts(upload_id, parts)
        return file_record(record)

    def _join(self, upload_id: str, parts: list[tuple[int, int]], dest: Path) -> str:
        """Copy the parts, in order, into ``dest``; → their sha256."""
        digest = hashlib.sha256()
        with open(dest, "wb") as out:
            for first, _ in parts:
                for piece in self.objects.iter_chunks(_part_key(upload_id, first)):
                    digest.update(piece)
                    out.write(piece)
        return digest.hexdigest()

    def _release(self, upload_id: str) -> None:
        try:
            with self._write() as conn:
                conn.execute("UPDATE uploads SET completing_until = NULL WHERE id = %s AND file_id IS NULL",
                             (upload_id,))
        except Exception:  # the lease runs out by itself
            log.warning("upload %s: could not release its completion lease", upload_id, exc_info=True)

    def _drop_parts(self, upload_id: str, parts: list[tuple[int, Any]]) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM upload_parts WHERE upload_id = %s", (upload_id,))
        for first, _ in parts:
            self.objects.delete(_part_key(upload_id, first))

    def _discard(self, upload_id: str) -> None:
        with self._write() as conn:
            parts = conn.execute("DELETE FROM upload_parts WHERE upload_id = %s RETURNING first_byte",
                                 (upload_id,)).fetchall()
            conn.execute("DELETE FROM uploads WHERE id = %s", (upload_id,))
        for (first,) in parts:
            self.objects.delete(_part_key(upload_id, first))

    def abort(self, session_id: int, upload_id: str) -> dict:
        with self._write() as conn:
            reply = self._status(self._row(conn, session_id, upload_id, lock=True))
        self._discard(upload_id)
        return reply

    def sweep(self) -> int:
        """Delete uploads untouched for ``ttl`` and their parts' objects; → how many."""
        with self._write() as conn:
            gone = [upload_id for (upload_id,) in conn.execute(
                "SELECT id FROM uploads WHERE updated_at < now() - make_interval(secs => %s)"
                " AND (completing_until IS NULL OR completing_until < now()) FOR UPDATE SKIP LOCKED",
                (self.ttl,),
            ).fetchall()]
            parts = conn.execute("DELETE FROM upload_parts WHERE upload_id = ANY(%s) RETURNING upload_id, first_byte",
                                 (gone,)).fetchall()
            conn.execute("DELETE FROM uploads WHERE id = ANY(%s)", (gone,))
        for upload_id, first in parts:
            self.objects.delete(_part_key(upload_id, first))
        return len(gone)
