"""``session.files`` (also ``session.files()``): artifacts stored with the session."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ._names import check_file_folder
from ._values import capture

if TYPE_CHECKING:  # pragma: no cover
    from ._session import Session

__all__ = ["Files", "MAX_FILE_BYTES"]

#: The documented per-file limit.
MAX_FILE_BYTES = 5 << 30


def _check_tags(tags: Any) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
        raise TypeError("tags must be a list of str")
    return list(tags)


def _check_metadata(metadata: Any) -> dict:
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
            "files_upload", os.path.abspath(src), folder, description, _check_tags(tags), _check_metadata(metadata)
        )

    def list(self, path: str | None = None, tags: list[str] | None = None) -> list[dict]:
        folder = None if path is None else check_file_folder(path)
        return self._session._call("files_list", folder, _check_tags(tags) or None)

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
            changes["tags"] = _check_tags(tags)
        if metadata is not None:
            changes["metadata"] = _check_metadata(metadata)
        return self._session._call("files_update", str(file_id), changes)
