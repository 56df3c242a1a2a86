"""Validation and ``_ts`` merge of what clients send, before any backend sees it.

Pure functions (plus a per-session clock), shared by the REST routes, the
batched ingest and every storage backend. Everything invalid raises
``ValueError``/``TypeError``/:class:`BadRequest` (→ HTTP 400) and nothing of
the request is stored.

``_ts`` rules (DESIGN §4, as in the Python API): absent or ``None`` → the
server's clock (strictly increasing per session); ``-1`` → the last ``_ts``
this session used; any other finite real number → as is. Within one stream
of one request, consecutive rows with equal ``_ts`` merge into one row (later
fields win) — :func:`dreamlake._batcher.merge_events`.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import datetime
from itertools import chain
from operator import methodcaller
from typing import Any

from .._batcher import merge_events
from .._names import check_segment, check_track_name
from .._params import flatten
from .._session import LOG_LEVELS
from .._tracks import check_ts
from .._values import PLAIN_SCALARS, capture, capture_fields
from ._errors import BadRequest
from ._storage import PreparedBatch, StreamRows
from .wire import IngestBatch

__all__ = [
    "SessionClock",
    "check_workspace",
    "check_session_name",
    "prepare_track_rows",
    "prepare_log_rows",
    "prepare_params",
    "prepare_batch",
    "MAX_CLIENT_ID",
]

MAX_CLIENT_ID = 128
_LEVEL_ALIASES = {"warning": "warn", "critical": "fatal"}
_END_STATUSES = ("completed", "failed", "interrupted")


class SessionClock:
    """The server's ``_ts`` for rows sent without one: strictly increasing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last = 0.0

    def now(self) -> float:
        with self._lock:
            t = time.time()
            if t <= self.last:
                t = self.last + 1e-6
            self.last = t
            return t

    def stamp(self, value: Any) -> float:
        if value is None:
            return self.now()
        if value == -1 and type(value) in (int, float):
            return self.last if self.last else self.now()
        t = check_ts(value)
        with self._lock:
            self.last = t
        return t


def check_workspace(value: Any) -> str:
    name = check_segment(value, "workspace")
    if name.startswith("."):
        raise BadRequest(f"workspace {name!r} may not start with '.' (reserved for the server)")
    return name


def check_session_name(value: Any) -> str:
    name = check_segment(value, "session name")
    if name.startswith("."):
        raise BadRequest(f"session name {name!r} may not start with '.'")
    return name


_DICT_ONLY = frozenset((dict,))


def _plain(rows: list) -> bool:
    return PLAIN_SCALARS.issuperset(map(type, chain.from_iterable(map(dict.values, rows))))


_NUMBER_TYPES = frozenset((int, float))
_get_ts = methodcaller("get", "_ts")


def prepare_track_rows(name: Any, rows: Any, clock: SessionClock) -> StreamRows:
    """Rows for a track: dicts, each with at least one field besides ``_ts``.
    The rows are the caller's freshly decoded dicts: they are kept, not copied."""
    name = check_track_name(name)
    if not isinstance(rows, list):
        raise BadRequest("rows must be a list of objects")
    if not _DICT_ONLY.issuperset(map(type, rows)):
        raise BadRequest("every row must be an object")
    stamps = _explicit_stamps(rows)
    if stamps is not None and _plain(rows):  # the common batch: C-level passes only
        if min(map(len, rows), default=2) < 2:
            raise BadRequest("a row needs at least one field besides _ts")
        if stamps:
            clock.stamp(stamps[-1])
        out = rows
    else:
        out, stamps = [], []
        for row in rows:
            fields = capture_fields(row)
            t = clock.stamp(fields.pop("_ts", None))
            if not fields:
                raise BadRequest("a row needs at least one field besides _ts")
            fields["_ts"] = t
            out.append(fields)
            stamps.append(t)
    merged, merged_ts = merge_events(stamps, out)
    return StreamRows("track", name, merged, merged_ts)


def _explicit_stamps(rows: list[dict]) -> list[float] | None:
    """Every row's ``_ts`` when all are finite numbers other than -1, else None."""
    given = list(map(_get_ts, rows))
    if not _NUMBER_TYPES.issuperset(map(type, given)) or -1 in given:
        return None
    stamps = list(map(float, given))
    if not all(map(math.isfinite, stamps)):
        return None  # the row-by-row path raises the precise error
    return stamps


def _parse_iso(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("log timestamp must be an ISO 8601 string")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise BadRequest(f"log timestamp {value!r} is not ISO 8601") from None


def prepare_log_rows(entries: Any, clock: SessionClock) -> StreamRows:
    """Log entries: ``level``, ``message``, optional ``metadata``, and either
    ``_ts`` (seconds) or upstream's ISO ``timestamp``."""
    if not isinstance(entries, list):
        raise BadRequest("logs must be a list of objects")
    rows: list[dict] = []
    stamps: list[float] = []
    for entry in entries:
        if type(entry) is not dict:
            raise BadRequest("every log entry must be an object")
        entry = dict(entry)
        level = entry.pop("level", "info")
        if not isinstance(level, str) or _LEVEL_ALIASES.get(level.lower(), level.lower()) not in LOG_LEVELS:
            raise BadRequest(f"unknown log level {level!r}; use one of {', '.join(LOG_LEVELS)}")
        message = entry.pop("message", None)
        if not isinstance(message, str):
            raise BadRequest("log message must be a string")
        iso = _parse_iso(entry.pop("timestamp", None))
        given = entry.pop("_ts", None)
        t = clock.stamp(given if given is not None else iso)
        row: dict = {"_ts": t, "level": _LEVEL_ALIASES.get(level.lower(), level.lower()), "message": capture(message)}
        metadata = entry.pop("metadata", None)
        if metadata is not None:
            if type(metadata) is not dict:
                raise BadRequest("log metadata must be an object")
            row["metadata"] = capture(metadata)
        entry.pop("seq", None)
        entry.pop("sequenceNumber", None)
        if entry:
            row.update(capture_fields(entry))
        rows.append(row)
        stamps.append(t)
    return StreamRows("log", "", rows, stamps)


def prepare_params(data: Any) -> dict:
    if type(data) is not dict:
        raise BadRequest("parameters must be an object")
    return flatten(data)


def prepare_batch(batch: IngestBatch, clock: SessionClock) -> PreparedBatch:
    if not isinstance(batch.client, str) or not 0 < len(batch.client) <= MAX_CLIENT_ID:
        raise BadRequest(f"client id must be 1..{MAX_CLIENT_ID} characters")
    if batch.seq < 1:
        raise BadRequest("seq must be a positive integer")
    if batch.version != 1:
        raise BadRequest(f"unsupported batch version {batch.version}; this server speaks 1")
    streams: list[StreamRows] = []
    seen: set[tuple[str, str]] = set()
    for stream in batch.streams:
        if stream.kind == "log":
            prepared = prepare_log_rows(stream.rows, clock)
        else:
            prepared = prepare_track_rows(stream.name, stream.rows, clock)
        key = (prepared.kind, prepared.name)
        if key in seen:
            raise BadRequest(f"stream {prepared.name or 'logs'!r} appears twice in one batch")
        seen.add(key)
        streams.append(prepared)
    params = prepare_params(batch.params) if batch.params is not None else None
    close = None
    if batch.close is not None:
        if batch.close.error is not None and len(batch.close.error) > 64 << 10:
            raise BadRequest("close error text is longer than 64 KiB")
        close = (batch.close.status, batch.close.error)
    return PreparedBatch(batch.client, batch.seq, streams, params, close)


def check_end_status(status: Any) -> str:
    if status not in _END_STATUSES and status != "running":
        raise BadRequest(f"status must be running, {', '.join(_END_STATUSES)}; got {status!r}")
    return status
