"""File records in PostgreSQL, their bytes in object storage.

Order of effects, so a crash never leaves a record pointing at nothing: an
upload puts the object first, then commits the record (replacing any entry
with the same folder and filename); a replaced or deleted entry's object is
removed after the commit (a crash in between leaves an orphan object, never a
dangling record). Keys: ``sessions/<session id>/files/<file id>/<filename>``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable, ContextManager

import psycopg
from psycopg.types.json import Jsonb

from ..._errors import SinkError
from ..._fsutil import sha256_file
from ..._values import untag_nonfinite
from .._errors import NotFound
from .._objects import ObjectStore
from ._values import iso, jsonb

__all__ = ["FileCatalog", "file_record", "new_file_id"]

_COLUMNS = "id, path, filename, size_bytes, checksum, description, tags, metadata, object_key, created_at, updated_at"

Connect = Callable[[], ContextManager[psycopg.Connection]]


def new_file_id() -> str:
    return uuid.uuid4().hex[:16]


def _record(row: tuple) -> dict:
    """The record local mode's ``files.upload()`` returns."""
    fid, path, filename, size, checksum, description, tags, metadata, key, created, updated = row
    return {
        "id": fid,
        "filename": filename,
        "path": path,
        "prefix": path.rstrip("/") + "/",
        "sizeBytes": size,
        "checksum": checksum,
        "checksumAlgorithm": "sha256",
        "description": description,
        "tags": tags,
        "metadata": untag_nonfinite(metadata),
        "storagePath": key,
        "createdAt": iso(created),
        "updatedAt": iso(updated),
    }


file_record = _record


def _found(row: tuple | None, file_id: str) -> tuple:
    if row is None:
        raise NotFound(f"no file with id {file_id!r} in this session")
    return row


def _folder(folder: str) -> str:
    return "/" + folder if folder else "/"


class FileCatalog:
    def __init__(self, objects: ObjectStore, read: Connect, write: Connect) -> None:
        self.objects = objects
        self._read = read
        self._write = write

    def upload(self, session_id: int, staged: Path, folder: str, description: str | None, tags: list,
               metadata: dict) -> dict:
        file_id = new_file_id()
        key = self.object_key(session_id, file_id, staged.name)
        size, checksum = sha256_file(staged)
        self.objects.put_file(key, staged)
        try:
            with self._write() as conn:
                row, replaced = self.insert(conn, session_id, file_id, key, folder, staged.name, size, checksum,
                                            description, tags, metadata)
        except BaseException:
            self.objects.delete(key)
            raise
        self.remove_objects(replaced)
        return _record(row)

    @staticmethod
    def object_key(session_id: int, file_id: str, filename: str) -> str:
        return f"sessions/{session_id}/files/{file_id}/{filename}"

    def insert(self, conn: psycopg.Connection, session_id: int, file_id: str, key: str, folder: str, filename: str,
               size: int, checksum: str, description: str | None, tags: list, metadata: dict) -> tuple[tuple, list]:
        """The record of an object already stored under ``key``, in the caller's
        transaction, replacing any entry with the same folder and filename;
        → (its row, the replaced entries' object keys: remove them after the commit)."""
        replaced = conn.execute(
            "DELETE FROM files WHERE session_id = %s AND path = %s AND filename = %s RETURNING object_key",
            (session_id, _folder(folder), filename),
        ).fetchall()
        row = conn.execute(
            f"""INSERT INTO files (id, session_id, path, filename, size_bytes, checksum, description, tags,
                                   metadata, object_key)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}""",
            (file_id, session_id, _folder(folder), filename, size, checksum, description,
             jsonb(list(tags)), jsonb(metadata or {}), key),
        ).fetchone()
        return row, [old for (old,) in replaced]

    def remove_objects(self, keys: list[str]) -> None:
        for key in keys:
            self.objects.delete(key)

    def list(self, session_id: int, folder: str | None, tags: list | None) -> list[dict]:
        query = f"SELECT {_COLUMNS} FROM files WHERE session_id = %s"
        args: list[Any] = [session_id]
        if folder is not None:
            query += " AND path = %s"
            args.append(_folder(folder))
        if tags:
            query += " AND tags @> %s"
            args.append(Jsonb(list(tags)))
        with self._read() as conn:
            rows = conn.execute(query + " ORDER BY created_at, id", args).fetchall()
        return [_record(row) for row in rows]

    def get(self, session_id: int, file_id: str) -> dict:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM files WHERE session_id = %s AND id = %s", (session_id, file_id)
            ).fetchone()
        return _record(_found(row, file_id))

    def export(self, session_id: int, file_id: str, dest_dir: Path) -> Path:
        entry = self.get(session_id, file_id)
        dest = Path(dest_dir) / entry["filename"]
        try:
            size, checksum = self.objects.get_file(entry["storagePath"], dest)
        except FileNotFoundError:
            raise SinkError(f"stored copy of {entry['filename']} is missing from object storage") from None
        if checksum != entry["checksum"] or size != entry["sizeBytes"]:
            raise SinkError(f"stored copy of {entry['filename']} does not match its checksum")
        return dest

    def update(self, session_id: int, file_id: str, changes: dict[str, Any]) -> dict:
        with self._write() as conn:
            row = conn.execute(
                f"""UPDATE files SET description = coalesce(%s, description), tags = coalesce(%s, tags),
                        metadata = coalesce(%s, metadata), updated_at = now()
                    WHERE session_id = %s AND id = %s RETURNING {_COLUMNS}""",
                (changes.get("description"), jsonb(changes.get("tags")), jsonb(changes.get("metadata")),
                 session_id, file_id),
            ).fetchone()
        return _record(_found(row, file_id))

    def delete(self, session_id: int, file_id: str) -> dict:
        with self._write() as conn:
            row = conn.execute(
                f"DELETE FROM files WHERE session_id = %s AND id = %s RETURNING {_COLUMNS}", (session_id, file_id)
            ).fetchone()
        self.objects.delete(_found(row, file_id)[8])  # after the commit
        return _record(row)
