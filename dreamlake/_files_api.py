"""``session.files`` (also ``session.files()``): artifacts stored with the session."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ._names import check_file_folder
from ._values import capture

if TYPE_CHECKING:  # pragma: no cover
    from ._session import Session

__all__ = ["Files", "FileBuilder", "MAX_FILE_BYTES", "check_tags", "check_metadata"]

#: The documented per-file limit.
MAX_FILE_BYTES = 5 << 30


def check_tags(tags: Any) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
        raise TypeError("tags must be a list of str")
    return list(tags)


def check_metadata(metadata: Any) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    return capture(metadata)


class Files:
    def __init__(self, session: "Session") -> None:
        self._session = session

    def __call__(self) -> "Files":
        return self

    def upload(
        self,
        local_path: str | os.PathLike,
        path: str = "/",
        description: str | None = None,
        tags: list[str] | None = None,
        metadata: dict | None = None,
    ) -> dict:
        """Copy a file into the session (sha256-checked); same path+filename replaces
        the earlier entry. Returns its entry (``id, filename, path, prefix, sizeBytes,
        checksum, ...``)."""
        src = os.fspath(local_path)
        if not os.path.exists(src):
            raise FileNotFoundError(f"no such file to upload: {src!r}")
        if not os.path.isfile(src):
            raise IsADirectoryError(f"not a regular file: {src!r}")
        size = os.path.getsize(src)
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{src!r} is {size} bytes; the limit is {MAX_FILE_BYTES}")
        if description is not None and not isinstance(description, str):
            raise TypeError("description must be a str")
        folder = check_file_folder(path)
        return self._session._call(
            "files_upload", os.path.abspath(src), folder, description, check_tags(tags), check_metadata(metadata)
        )

    def list(self, path: str | None = None, tags: list[str] | None = None) -> list[dict]:
        folder = None if path is None else check_file_folder(path)
        return self._session._call("files_list", folder, check_tags(tags) or None)

    def download(self, file_id: str, dest: str | os.PathLike = ".") -> str:
        """Copy a stored file to ``dest`` (a file path or a directory); returns the path."""
        return self._session._call("files_download", str(file_id), os.path.abspath(os.fspath(dest)))

    def delete(self, file_id: str) -> dict:
        return self._session._call("files_delete", str(file_id))

    def update(
        self,
        file_id: str,
        *,
        description: str | None = None,
        tags: list[str] | None = None,
        metadata: dict | None = None,
    ) -> dict:
        changes: dict = {}
        if description is not None:
            if not isinstance(description, str):
                raise TypeError("description must be a str")
            changes["description"] = description
        if tags is not None:
            changes["tags"] = check_tags(tags)
        if metadata is not None:
            changes["metadata"] = check_metadata(metadata)
        return self._session._call("files_update", str(file_id), changes)


_UNSET: Any = object()


class FileBuilder:
    """``session.file(...)``: one file operation spelled as upstream 0.3 spells it.

    The builder's arguments are the defaults of its operations; arguments given to
    an operation win (``.download(dest=...)``, ``.update(tags=[...])``)."""

    def __init__(
        self,
        files: Files,
        *,
        file_path: str | os.PathLike | None,
        prefix: str,
        description: str | None,
        tags: list[str] | None,
        metadata: dict | None,
        file_id: str | None,
        dest_path: str | os.PathLike | None,
    ) -> None:
        self._files = files
        self._file_path = file_path
        self._prefix = prefix
        self._description = description
        self._tags = tags
        self._metadata = metadata
        self._file_id = file_id
        self._dest_path = dest_path

    def _id(self, operation: str) -> str:
        if self._file_id is None:
            raise ValueError(f"file_id is required for {operation}(): session.file(file_id=...).{operation}()")
        return str(self._file_id)

    def save(self) -> dict:
        """Upload ``file_path`` into the folder ``prefix``; returns the file's entry."""
        if self._file_path is None:
            raise ValueError("file_path is required for save(): session.file(file_path='model.pt').save()")
        return self._files.upload(
            self._file_path, path=self._prefix, description=self._description, tags=self._tags, metadata=self._metadata
        )

    upload = save

    def list(self) -> list[dict]:
        """Files in ``prefix`` (all files when it is ``/``) carrying all of ``tags``."""
        return self._files.list(path=None if self._prefix in ("/", "") else self._prefix, tags=self._tags)

    def download(self, dest: str | os.PathLike | None = None) -> str:
        """Copy the file to ``dest`` (default: the builder's ``dest_path``, else the
        current directory under its own name); returns the path written."""
        target = dest if dest is not None else self._dest_path
        return self._files.download(self._id("download"), "." if target is None else target)

    def delete(self) -> dict:
        return self._files.delete(self._id("delete"))

    def update(self, *, description: Any = _UNSET, tags: Any = _UNSET, metadata: Any = _UNSET) -> dict:
        """Change the description, tags and/or metadata (only what is given)."""
        return self._files.update(
            self._id("update"),
            description=self._description if description is _UNSET else description,
            tags=self._tags if tags is _UNSET else tags,
            metadata=self._metadata if metadata is _UNSET else metadata,
        )
