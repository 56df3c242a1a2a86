"""What a client may send: every field of every frame, checked by the same
validators the Python API uses at the call (``dreamlake._names``,
``dreamlake._values``, ``dreamlake._tracks.check_ts``, ``dreamlake._params``,
``dreamlake._files_api``), so a raw-protocol client gets exactly the rules a
``Session`` gets and nothing reaches the writer that the writer cannot store.

A refused ``rows``/``params`` frame raises :class:`Refused` (a protocol error
that names a loss reason); the whole frame is refused, none of it is queued.
Calls are checked against a per-operation allow-list of arguments.
"""

from __future__ import annotations

import math
import os
from array import array
from itertools import chain
from operator import itemgetter
from typing import Any, Callable

from dreamlake._files_api import check_metadata, check_tags
from dreamlake._names import check_file_folder, check_file_id, check_log_level, check_segment, check_track_name
from dreamlake._params import flatten
from dreamlake._protocol import MAX_LOSS_REASONS, MAX_REASON, REMOTE_KEYS, ProtocolError
from dreamlake._tracks import check_ts
from dreamlake._values import MAX_DEPTH, MAX_ELEMENTS, MAX_STRING_LENGTH, PLAIN_SCALARS, capture, capture_fields

__all__ = [
    "Refused",
    "check_rows",
    "check_stream_name",
    "check_params",
    "check_call",
    "check_session_dir",
    "check_open_info",
    "check_remote",
    "check_lost",
    "FILE_OPS",
]

_NUMBER = frozenset((float, int))
_FLOAT = {float}
_get_ts = itemgetter("_ts")
#: Keys of ``open`` info a client may set in ``session.json`` (what ``Session.open`` sends).
OPEN_INFO_KEYS = frozenset(("name", "workspace", "prefix", "description", "tags", "folder", "url", "userName"))
#: What ``files.update`` may change; everything else of an entry (storage path, id,
#: checksum, ...) is the store's.
FILE_CHANGE_CHECKS: dict[str, Callable[[Any], Any]] = {
    "description": lambda v: _optional_str(v, "description"),
    "tags": check_tags,
    "metadata": check_metadata,
}
#: Operations that touch only the session's files area: run in a worker thread,
#: off the writer that serves every session.
FILE_OPS = frozenset(("files_upload", "files_list", "files_download", "files_delete", "files_update"))


class Refused(ProtocolError):
    """A frame the agent will not queue; ``reason`` is the loss counter it goes to."""

    def __init__(self, reason: str, message: str, rows: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        self.rows = rows


def _optional_str(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return value


# -- rows -------------------------------------------------------------------------
def check_stream_name(name: str, is_log: bool, count: int) -> str:
    """A ``rows`` frame's track name (the log stream's name is not used)."""
    if is_log:
        return name
    try:
        return check_track_name(name)
    except (TypeError, ValueError) as exc:
        raise Refused("rows_refused_bad_track_name", str(exc), count) from None


def check_rows(is_log: bool, rows: list[dict]) -> list[float]:
    """Validate a ``rows`` frame in place; returns its ``_ts`` as floats. A track
    row's values follow ``capture``'s rules (:func:`check_decoded`: depth and size
    bounded, JSON types only), a log row must look like ``Session.log`` made it."""
    count = len(rows)
    try:
        stamps = list(map(_get_ts, rows))
    except KeyError:
        raise Refused("rows_refused_bad_ts", "every row needs a _ts", count) from None
    stamp_types = set(map(type, stamps))
    ts = array("d", stamps) if stamp_types <= _NUMBER else None
    if ts is None or not all(map(math.isfinite, ts)):
        try:
            ts = array("d", map(check_ts, stamps))  # raises with the API's message
        except (TypeError, ValueError) as exc:
            raise Refused("rows_refused_bad_ts", str(exc), count) from None
    # the API's own fast path: a frame of plain scalars is stored as it is (one C-level pass)
    plain = not is_log and set(map(type, chain.from_iterable(map(dict.values, rows)))) <= PLAIN_SCALARS
    if not plain:
        try:
            for i, row in enumerate(rows):
                if is_log:
                    rows[i] = _check_log_entry(row)
                elif not set(map(type, row.values())) <= PLAIN_SCALARS:
                    for value in row.values():  # keys: str, typed by the Rows frame
                        check_decoded(value)
        except (TypeError, ValueError, RecursionError) as exc:
            reason = "rows_refused_bad_log_entry" if is_log else "rows_refused_bad_value"
            raise Refused(reason, f"row {i}: {exc}", count) from None
    if stamp_types != _FLOAT:
        for row, stamp in zip(rows, ts):
            row["_ts"] = stamp
    return ts.tolist()


def check_decoded(value: Any, depth: int = 0) -> None:
    """``capture``'s rules for a value fresh from MessagePack, checked in place.

    Decoding already gives what ``capture`` copies and converts to: the agent's
    own lists and dicts (no caller can change them later), valid UTF-8 text,
    integers within 64 bits, no tuples. What is left are the limits and the
    types MessagePack has and JSON has not (bytes, extensions, non-str keys).
    Copying every row instead was the agent's largest cost."""
    kind = type(value)
    if kind in PLAIN_SCALARS:
        return
    if kind is str:
        if len(value) > MAX_STRING_LENGTH:
            raise ValueError(f"string of {len(value)} characters is longer than {MAX_STRING_LENGTH}")
        return
    if depth >= MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH} levels")
    if kind is list:
        if len(value) > MAX_ELEMENTS:
            raise ValueError(f"sequence of {len(value)} elements is longer than {MAX_ELEMENTS}")
        if not set(map(type, value)) <= PLAIN_SCALARS:
            for item in value:
                check_decoded(item, depth + 1)
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"dict keys must be str, got {type(key).__name__}")
            check_decoded(item, depth + 1)
        return
    raise TypeError(f"values of type {kind.__name__} are not supported (use JSON types, numpy or torch)")


def _check_log_entry(row: dict) -> dict:
    """A log entry as ``Session.log`` builds it: ``message`` str, a known level,
    optional ``metadata`` dict, other fields as values; ``seq``/``timestamp`` are
    stamped by the writer."""
    message = row.get("message")
    if not isinstance(message, str):
        raise TypeError(f"log message must be a str, got {type(message).__name__}")
    entry = capture_fields(row)
    entry["level"] = check_log_level(row.get("level", "info"))
    metadata = row.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    return entry


def check_params(values: dict) -> dict:
    """A ``params`` frame: the same flattening and capture as ``session.params.set``."""
    try:
        return flatten(values)
    except (TypeError, ValueError, RecursionError) as exc:
        raise Refused("params_refused", str(exc)) from None


# -- sessions ---------------------------------------------------------------------
def check_session_dir(requested: Any, root: str) -> str:
    """An absolute, normalised directory (a ``Session`` sends its resolved
    ``session_dir`` or ``<root>/<workspace>/<name>``: any place the user may
    write, as in thread mode), or a relative ``workspace/name`` under ``root``
    whose parts follow the API's rule (``check_segment``). Nothing can climb
    out with ``..``."""
    if not isinstance(requested, str) or not requested or "\x00" in requested:
        raise ValueError(f"bad session directory {requested!r}")
    if requested.startswith("/"):
        parts = requested.strip("/").split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"session directory must be absolute and normalised, got {requested!r}")
        return "/" + "/".join(parts)
    parts = requested.split("/")
    if len(parts) != 2:
        raise ValueError(f"a relative session directory must be <workspace>/<name>, got {requested!r}")
    check_segment(parts[0], "workspace")
    check_segment(parts[1], "session name")
    return os.path.join(root, *parts)


def check_open_info(info: dict) -> dict:
    """The ``open`` info: only the keys ``Session.open`` sends, values captured
    (a client cannot set ``status``, ``createdAt``, ``pid`` ...)."""
    unknown = set(info) - OPEN_INFO_KEYS
    if unknown:
        raise ValueError(f"open info may not set {sorted(unknown)}")
    return {key: capture(value) for key, value in info.items()}


def check_remote(remote: dict) -> dict:
    """The ``remote`` map of ``open``/``join``: known keys, a http(s) URL, a
    mode the factory knows; ``{}`` for a local session. The values are never
    echoed in an error (the key is a secret)."""
    unknown = set(remote) - REMOTE_KEYS
    if unknown:
        raise ValueError(f"remote may not set {sorted(unknown)}")
    if not remote:
        return {}
    url = remote.get("url")
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
        raise ValueError("remote url must be an http:// or https:// URL")
    for key in ("apiKey", "userName"):
        if remote.get(key) is not None and not isinstance(remote[key], str):
            raise TypeError(f"remote {key} must be a str")
    mode = remote.get("mode")
    if mode not in (None, "remote", "offline"):
        raise ValueError("remote mode must be 'remote' or 'offline'")
    if (mode or "remote") == "remote" and not url:
        raise ValueError("a remote session needs a url")
    if not isinstance(remote.get("localRoot", False), bool):
        raise TypeError("remote localRoot must be a bool")
    checked = {key: remote.get(key) for key in ("url", "apiKey", "userName", "mode")}
    checked["workspace"] = check_segment(remote.get("workspace"), "workspace")
    checked["name"] = check_segment(remote.get("name"), "session name")
    checked["localRoot"] = bool(remote.get("localRoot", False))
    return checked


def check_lost(lost: dict) -> dict[str, int]:
    """The ``lost`` map of ``close``: a few named reasons, non-negative counts."""
    if len(lost) > MAX_LOSS_REASONS:
        raise ValueError(f"close may name at most {MAX_LOSS_REASONS} loss reasons")
    for reason, count in lost.items():
        if not reason or len(reason) > MAX_REASON or not reason.isidentifier():
            raise ValueError(f"bad loss reason {reason[:MAX_REASON]!r}")
        if count < 0 or count > 1 << 62:
            raise ValueError(f"bad count for loss reason {reason!r}")
    return {reason: count for reason, count in lost.items() if count}


# -- calls ------------------------------------------------------------------------
def _arity(op: str, args: list, low: int, high: int) -> None:
    if not low <= len(args) <= high:
        expected = str(low) if low == high else f"{low} to {high}"
        raise TypeError(f"{op} takes {expected} arguments, got {len(args)}")


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative int, got {value!r}")
    return value


def _stream_name(op: str, name: Any, is_log: Any) -> None:
    if not isinstance(is_log, bool):
        raise TypeError(f"{op}: is_log must be a bool")
    if is_log:
        if not isinstance(name, str):
            raise TypeError(f"{op}: the log stream name must be a str")
    else:
        check_track_name(name)


def _absolute_path(value: Any, what: str) -> str:
    if not isinstance(value, str) or not os.path.isabs(value) or "\x00" in value:
        raise ValueError(f"{what} must be an absolute path, got {value!r}")
    return os.path.normpath(value)


def check_call(op: str, args: list) -> tuple:
    """The arguments of a ``call``, checked field by field for ``op`` (an
    allow-list: an operation or argument not named here is refused)."""
    if op == "flush":
        _arity(op, args, 0, 1)
        names = args[0] if args else None
        if names is not None:
            if not isinstance(names, list):
                raise TypeError("flush takes a list of track names or nil")
            names = [check_track_name(name) for name in names]
        return (names,)
    if op == "read":
        _arity(op, args, 4, 4)
        _stream_name(op, args[0], args[1])
        return (args[0], args[1], _count(args[2], "start_index"), _count(args[3], "limit"))
    if op == "read_range":
        _arity(op, args, 5, 5)
        _stream_name(op, args[0], args[1])
        bounds = [None if v is None else check_ts(v) for v in args[2:4]]
        return (args[0], args[1], bounds[0], bounds[1], _count(args[4], "limit"))
    if op == "stats":
        _arity(op, args, 1, 1)
        return (check_track_name(args[0]),)
    if op in ("list_tracks", "params_get"):
        _arity(op, args, 0, 0)
        return ()
    if op == "files_upload":
        _arity(op, args, 5, 5)
        src = _absolute_path(args[0], "files_upload source")
        return (
            src,
            check_file_folder(args[1]),
            _optional_str(args[2], "description"),
            check_tags(args[3]),
            check_metadata(args[4]),
        )
    if op == "files_list":
        _arity(op, args, 2, 2)
        folder = None if args[0] is None else check_file_folder(args[0])
        return (folder, None if args[1] is None else check_tags(args[1]))
    if op == "files_download":
        _arity(op, args, 2, 2)
        return (check_file_id(args[0]), _absolute_path(args[1], "files_download destination"))
    if op == "files_delete":
        _arity(op, args, 1, 1)
        return (check_file_id(args[0]),)
    if op == "files_update":
        _arity(op, args, 2, 2)
        changes = args[1]
        if not isinstance(changes, dict):
            raise TypeError("files_update changes must be a map")
        unknown = set(changes) - set(FILE_CHANGE_CHECKS)
        if unknown:
            raise ValueError(f"files_update may change only {sorted(FILE_CHANGE_CHECKS)}, not {sorted(unknown)}")
        return (check_file_id(args[0]), {key: FILE_CHANGE_CHECKS[key](value) for key, value in changes.items()})
    raise ValueError(f"unknown operation {op!r}")
