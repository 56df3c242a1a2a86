"""The on-disk line and document formats of the local store: one copy of each rule.

What we write is what upstream DreamLake 0.3 writes (DESIGN.md §4), so a store
written by either can be read by the other::

    tracks/<name>/data.jsonl     {"index": 0, "data": {"_ts": 1.7e9, "loss": 0.5}}
    logs/logs.jsonl              {"sequenceNumber": 0, "timestamp": "…Z", "level": "info",
                                  "message": "…", "metadata": {…}}
    parameters.json              {"version": 3, "data": {"model.lr": 0.001}, "createdAt", "updatedAt"}
    files/.files_metadata.json   {"files": [{"id", "filename", "path", …, "deletedAt": null}]}

Readers also accept what this project wrote before (a track row as the bare
object holding ``_ts``, a flat ``parameters.json``, a JSON list of file
entries, log entries with ``seq``/``_ts``) and upstream's own rows, which may
carry ``createdAt`` and no ``_ts``.
"""

from __future__ import annotations

import datetime as _dt
import math
from itertools import accumulate
from typing import Any

import msgspec

from ._native import _hotpath
from ._values import ESCAPE_MARKER, NONFINITE_MARKER, tag_nonfinite, untag_nonfinite

__all__ = [
    "encode_track_lines",
    "encode_track_chunk",
    "encode_log_lines",
    "encode_log_chunk",
    "log_entry",
    "decode_line",
    "line_payload",
    "line_ts",
    "params_from_doc",
    "params_doc",
    "files_from_doc",
    "files_doc",
    "iso_to_epoch",
]


class _TrackLine(msgspec.Struct, gc=False):
    index: int
    data: dict


_encoder = msgspec.json.Encoder()
_frame_track_lines = _hotpath.frame_track_lines if _hotpath is not None else None
_decode = msgspec.json.Decoder().decode


def _encode_lines(objects: list, rows: list) -> bytes:
    """JSON lines; non-finite floats (which msgspec writes as null) are tagged."""
    buf = _encoder.encode_lines(objects)
    if _needs_tags(buf, rows):
        return _encoder.encode_lines(tag_nonfinite(objects))
    return buf


def _needs_tags(buf: bytes, rows: list) -> bool:
    """Must ``rows``, encoded as ``buf``, be encoded again with tags? A non-finite
    float (msgspec writes it as null) or a key that needs the escape."""
    return (b"null" in buf and _has_nonfinite(rows)) or NONFINITE_MARKER in buf or ESCAPE_MARKER in buf


def _has_nonfinite(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return not math.isfinite(value)
    if kind is dict:
        return any(map(_has_nonfinite, value.values()))
    if kind is list:
        return any(map(_has_nonfinite, value))
    return False


def encode_track_chunk(rows: list[dict], first_index: int, data_size: int) -> tuple[bytes, list[int] | bytes, int]:
    """Track lines for ``rows`` (as :func:`encode_track_lines`), the offset of each
    line in a data file that is ``data_size`` bytes long now (u64 values or
    their native-order bytes), and the file's size after them."""
    if _frame_track_lines is not None:
        raw = _encoder.encode_lines(rows)
        framed = _frame_track_lines(raw, first_index, data_size)  # None: it holds null or "$
        if framed is not None:
            return framed
        if not _needs_tags(raw, rows):
            return _frame_track_lines(raw, first_index, data_size, True)
    return _with_line_starts(encode_track_lines(rows, first_index), data_size)


def encode_log_chunk(entries: list[dict], first_seq: int, data_size: int) -> tuple[bytes, list[int], int]:
    """Log lines for ``entries`` with their offsets, as :func:`encode_track_chunk`."""
    return _with_line_starts(encode_log_lines(entries, first_seq), data_size)


def _with_line_starts(buf: bytes, data_size: int) -> tuple[bytes, list[int], int]:
    lines = buf.split(b"\n")
    lines.pop()
    starts = list(accumulate(map((1).__add__, map(len, lines)), initial=data_size))
    return buf, starts, starts.pop()


def encode_track_lines(rows: list[dict], first_index: int) -> bytes:
    """Track rows (dicts holding ``_ts``) as ``{"index": i, "data": row}`` lines."""
    lines = list(map(_TrackLine, range(first_index, first_index + len(rows)), rows))
    buf = _encoder.encode_lines(lines)
    if _needs_tags(buf, rows):
        return _encoder.encode_lines([{"index": line.index, "data": tag_nonfinite(line.data)} for line in lines])
    return buf


def iso_to_epoch(text: Any) -> float | None:
    """``2025-01-02T03:04:05.123456Z`` → seconds since the epoch (None if not a time)."""
    if not isinstance(text, str):
        return None
    try:
        moment = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return moment.timestamp()


def _iso(ts: float) -> str:
    moment = _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def log_entry(entry: dict, seq: int) -> dict:
    """A log entry (a dict with ``_ts``, level, message, metadata?) as upstream stores it."""
    line = {"sequenceNumber": seq, "timestamp": _iso(entry["_ts"]), "level": entry["level"], "message": entry["message"]}
    if entry.get("metadata") is not None:
        line["metadata"] = entry["metadata"]
    return line


def encode_log_lines(entries: list[dict], first_seq: int) -> bytes:
    """Log entries as upstream's lines (see :func:`log_entry`)."""
    lines = [log_entry(entry, seq) for seq, entry in enumerate(entries, first_seq)]
    return _encode_lines(lines, lines)


def decode_line(line: bytes) -> Any:
    """One stored line as a Python object, non-finite tags turned back into floats."""
    obj = _decode(line)
    if NONFINITE_MARKER in line or ESCAPE_MARKER in line:
        obj = untag_nonfinite(obj)
    return obj


def _is_wrapped(obj: Any) -> bool:
    return type(obj) is dict and "_ts" not in obj and type(obj.get("data")) is dict and "index" in obj


def line_payload(obj: Any) -> Any:
    """What a reader hands out for a stored line: a track row's fields (``_ts``
    included), or a log entry as stored."""
    if _is_wrapped(obj):
        return obj["data"]
    if type(obj) is dict and "seq" in obj and "message" in obj and "sequenceNumber" not in obj:
        entry = {k: v for k, v in obj.items() if k not in ("seq", "_ts")}  # an earlier log entry
        return {"sequenceNumber": obj["seq"], **entry}
    return obj


def line_ts(obj: Any) -> float | None:
    """The ``_ts`` a stored line is indexed by, or None for a line that is not a row."""
    if type(obj) is not dict:
        return None
    payload = obj["data"] if _is_wrapped(obj) else obj
    ts = payload.get("_ts")
    if ts is None:
        ts = iso_to_epoch(obj.get("timestamp") or obj.get("createdAt"))
    if type(ts) not in (int, float) or not math.isfinite(ts):
        return None
    return float(ts)


def params_from_doc(doc: Any) -> tuple[dict, int]:
    """The flat params and their version from ``parameters.json`` (either format)."""
    if type(doc) is not dict:
        return {}, 0
    data = doc.get("data")
    if type(data) is dict and type(doc.get("version")) is int:
        return untag_nonfinite(data), doc["version"]
    return untag_nonfinite(doc), (1 if doc else 0)  # this project's earlier flat file


def params_doc(previous: Any, changes: dict, now: str) -> dict:
    """The next ``parameters.json`` document: ``changes`` merged, version +1."""
    flat, version = params_from_doc(previous)
    flat.update(changes)
    created = previous.get("createdAt") if type(previous) is dict and "data" in previous else None
    return {"version": version + 1, "data": tag_nonfinite(flat), "createdAt": created or now, "updatedAt": now}


def files_from_doc(doc: Any) -> list[dict]:
    """The live file entries of ``.files_metadata.json`` (either format)."""
    entries = doc.get("files") if type(doc) is dict else doc
    if type(entries) is not list:
        return []
    return [e for e in entries if type(e) is dict and e.get("deletedAt") is None]


def files_doc(entries: list[dict]) -> dict:
    return {"files": entries}
