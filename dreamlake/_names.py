"""Validation of user-supplied names and paths.

Every name that becomes part of a path on disk (workspace, session name, track
name, file path) is checked here, at the call, so nothing can be written
outside the session directory.
"""

from __future__ import annotations

import re

__all__ = [
    "check_segment",
    "check_track_name",
    "check_file_folder",
    "check_file_id",
    "check_log_level",
    "MAX_NAME_LENGTH",
    "MAX_TRACK_NAME_LENGTH",
    "MAX_TRACK_DEPTH",
    "LOG_LEVELS",
]

MAX_NAME_LENGTH = 255
#: A whole track name (all segments and slashes): keeps every track path far below
#: PATH_MAX (4096) under any reasonable root.
MAX_TRACK_NAME_LENGTH = 1024
#: Segments of a track name (``a/b/c`` has 3): directories nested per track.
MAX_TRACK_DEPTH = 16
#: Log levels, and the spellings ``Session.log`` accepts for them.
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
_LEVEL_ALIASES = {"warning": "warn", "critical": "fatal"}
_SEGMENT = re.compile(r"^[A-Za-z0-9_.@+=,:\- ]+$")


def check_segment(value: object, what: str) -> str:
    """A single path component: no separators, not '.', '..' or hidden-dot-only."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value or value.strip() != value:
        raise ValueError(f"{what} must be non-empty without surrounding spaces: {value!r}")
    if value in (".", "..") or "/" in value or "\\" in value or "\x00" in value:
        raise ValueError(f"{what} may not be '.', '..' or contain a path separator: {value!r}")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_NAME_LENGTH} characters")
    if not _SEGMENT.match(value):
        raise ValueError(
            f"{what} {value!r} has characters outside letters, digits, space and _.@+=,:-"
        )
    return value


def _check_relative(value: object, what: str, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    stripped = value.strip("/")
    if not stripped:
        if allow_empty:
            return ""
        raise ValueError(f"{what} must not be empty")
    if value.startswith("/") and not allow_empty:
        raise ValueError(f"{what} must be relative, got {value!r}")
    parts = stripped.split("/")
    for part in parts:
        check_segment(part, f"{what} component")
    return "/".join(parts)


#: Names of the files inside a track's directory: a track name segment may not be one.
RESERVED_TRACK_SEGMENTS = frozenset(
    ("data.jsonl", "metadata.json", "index.offsets", "index.ts", "index.unsorted", ".lock")
)


def check_track_name(value: object) -> str:
    """A hierarchical track name such as ``robot/pose/left``: at most
    ``MAX_TRACK_DEPTH`` segments and ``MAX_TRACK_NAME_LENGTH`` characters."""
    if isinstance(value, str) and len(value) > MAX_TRACK_NAME_LENGTH:
        raise ValueError(f"track name is {len(value)} characters; the limit is {MAX_TRACK_NAME_LENGTH}")
    name = _check_relative(value, "track name", allow_empty=False)
    parts = name.split("/")
    if len(parts) > MAX_TRACK_DEPTH:
        raise ValueError(f"track name has {len(parts)} segments; the limit is {MAX_TRACK_DEPTH}")
    for part in parts:
        if part in RESERVED_TRACK_SEGMENTS or part.startswith(".tmp"):
            raise ValueError(f"track name {value!r} uses {part!r}, which names a file of the store")
    return name


def check_file_folder(value: object) -> str:
    """A logical file folder such as ``/models/checkpoints``; returns it without slashes
    at either end ('' for the root). A leading slash is allowed: it means the root of the
    session's file area, never the filesystem root."""
    if value is None:
        return ""
    return _check_relative(value, "file path", allow_empty=True)


def check_file_id(value: object) -> str:
    """A stored file's id (one path segment: it can never name a path)."""
    return check_segment(value, "file id")


def check_log_level(value: object) -> str:
    """A log level, normalised (``"WARNING"`` -> ``"warn"``)."""
    if isinstance(value, str):
        level = value.lower()
        level = _LEVEL_ALIASES.get(level, level)
        if level in LOG_LEVELS:
            return level
    raise ValueError(f"unknown log level {value!r}; use one of {', '.join(LOG_LEVELS)}")
