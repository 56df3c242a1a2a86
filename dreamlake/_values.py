"""Capturing values at the call, and keeping non-finite floats in valid JSON.

The hot path stores plain scalars as they are (they are immutable). Anything
else goes through :func:`capture`, which copies containers, turns numpy/torch
scalars and arrays into numbers and lists, and rejects what we cannot store
with a ``TypeError`` at the call rather than in the writer thread.

JSON has no NaN or infinity, so on disk a non-finite float is written as the
object ``{"$float": "nan" | "inf" | "-inf"}`` and turned back into a float by
every reader of ours. Files stay valid JSON for ``jq`` and pandas.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

__all__ = [
    "PLAIN_SCALARS",
    "capture",
    "capture_fields",
    "encode_fields",
    "encode_value",
    "encode_row",
    "prepare_fields",
    "decode_rows",
    "decode_row",
    "has_nonfinite",
    "check_ints",
    "INT_RANGE",
    "approx_bytes",
    "tag_nonfinite",
    "untag_nonfinite",
    "NONFINITE_MARKER",
    "MAX_STRING_LENGTH",
    "MAX_ELEMENTS",
]

PLAIN_SCALARS = frozenset((int, float, bool, type(None)))
_FLAT_OK = PLAIN_SCALARS  # flat lists of these need no per-item work
MAX_STRING_LENGTH = 16 << 20
MAX_ELEMENTS = 16 << 20
MAX_DEPTH = 32
NONFINITE_MARKER = b'"$float"'
#: the ints a row may hold, in thread and agent mode alike (what msgpack carries)
INT_RANGE = (-(1 << 63), (1 << 64) - 1)
_NONFINITE_NAMES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _from_array_like(value: Any) -> Any:
    """numpy / torch objects (duck-typed so neither is imported here)."""
    module = type(value).__module__
    if module.startswith("torch"):
        value = value.detach().cpu()
        if getattr(value, "ndim", 1) == 0:
            return value.item()
        if value.numel() > MAX_ELEMENTS:
            raise ValueError(f"array of {value.numel()} elements is larger than {MAX_ELEMENTS}")
        return value.tolist()
    if module == "numpy":
        if getattr(value, "ndim", 0) == 0:
            if value.dtype.kind == "c":
                raise TypeError(f"numpy values of dtype {value.dtype} are not supported (complex)")
            return value.item()
        if value.size > MAX_ELEMENTS:
            raise ValueError(f"array of {value.size} elements is larger than {MAX_ELEMENTS}")
        if value.dtype.kind not in "biuf":
            raise TypeError(f"numpy arrays of dtype {value.dtype} are not supported")
        return value.tolist()
    raise TypeError(f"values of type {type(value).__name__} are not supported")


def capture(value: Any, depth: int = 0, copy: bool = True) -> Any:
    """Return a private, JSON-compatible copy of ``value`` or raise TypeError/ValueError.
    With ``copy=False`` (the caller encodes it at once) flat lists are not copied."""
    kind = type(value)
    if kind in PLAIN_SCALARS:
        if kind is int and not _INT_MIN <= value <= _INT_MAX:
            raise _int_error(value)
        return value
    if kind is str:
        if len(value) > MAX_STRING_LENGTH:
            raise ValueError(f"string of {len(value)} characters is longer than {MAX_STRING_LENGTH}")
        return value
    if depth >= MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH} levels")
    if kind is list or kind is tuple:
        if len(value) > MAX_ELEMENTS:
            raise ValueError(f"sequence of {len(value)} elements is longer than {MAX_ELEMENTS}")
        kinds = set(map(type, value))
        if kinds <= _FLAT_OK:  # the common flat list: copied in C
            if int in kinds and value and not (_INT_MIN <= min(x for x in value if type(x) is int) and max(x for x in value if type(x) is int) <= _INT_MAX):
                raise _int_error(max((x for x in value if type(x) is int), key=abs))
            return list(value) if copy else value
        return [capture(item, depth + 1, copy) for item in value]
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"dict keys must be str, got {type(key).__name__}")
            out[key] = capture(item, depth + 1, copy)
        return out
    module = kind.__module__
    if module == "numpy" or module.startswith("torch"):
        return _from_array_like(value)
    if isinstance(value, (bool, int, float)):
        # subclasses (IntEnum, ...) are stored as their plain value
        return float(value) if isinstance(value, float) else capture(int(value))
    if isinstance(value, str):
        return capture(str(value), depth)
    raise TypeError(f"values of type {kind.__name__} are not supported (use JSON types, numpy or torch)")


def capture_fields(fields: dict, copy: bool = True) -> dict:
    """Slow path of append(): copy a row whose values are not all plain scalars."""
    return {key: capture(value, 0, copy) for key, value in fields.items()}


def _encode_other(value: Any) -> Any:
    """The encoder's hook for what JSON has no type for: numpy/torch scalars and
    arrays become numbers and lists (one call per value, no dict copy)."""
    module = type(value).__module__
    if module == "numpy" or module.startswith("torch"):
        return _from_array_like(value)
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"values of type {type(value).__name__} are not supported (use JSON types, numpy or torch)")


_INT_MIN, _INT_MAX = INT_RANGE


def _int_error(value: int) -> ValueError:
    return ValueError(f"ints must lie in [{_INT_MIN}, {_INT_MAX}] (store bigger ones as str), got {value}")


#: the row encoder of the hot path: JSON, so the writer only frames the bytes
#: (non-finite floats come out as null; :func:`encode_value` tags them)
encode_row = msgspec.json.Encoder(enc_hook=_encode_other).encode
_decode = msgspec.json.Decoder().decode


def encode_value(value: Any) -> bytes:
    """JSON bytes of a value (prepared by :func:`prepare_fields`), non-finite
    floats tagged; what a row cannot hold (lone surrogates in strings or keys,
    unsupported types) is refused here with a clear error."""
    try:
        payload = encode_row(value)
    except UnicodeEncodeError as exc:
        raise ValueError(f"strings must be valid Unicode text ({exc.reason}: {exc.object[exc.start:exc.end]!r})") from None
    except TypeError as exc:
        raise TypeError(str(exc) if "not supported" in str(exc) else f"values of this type are not supported ({exc})") from None
    if b"null" in payload:  # None, or a NaN/inf the encoder wrote as null
        value = capture(value, 0, False)  # numpy as lists, so non-finite floats show
        if has_nonfinite(value):
            payload = encode_row(tag_nonfinite(value))
    return payload


def has_nonfinite(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return not math.isfinite(value)
    if kind is dict:
        return any(map(has_nonfinite, value.values()))
    if kind is list or kind is tuple:
        return any(map(has_nonfinite, value))
    return False


def check_ints(fields: dict) -> None:
    """Refuse ints JSON could carry but msgpack (the agent's frames) cannot: one
    rule for thread and agent mode. Called on rows of plain scalars."""
    for value in fields.values():
        if type(value) is int and not _INT_MIN <= value <= _INT_MAX:
            raise _int_error(value)


def prepare_fields(fields: dict) -> dict:
    """A row ready for :data:`encode_row`: numpy scalars and arrays are left to
    the encoder's hook (one call each, no copy); a row holding anything else
    that is not a plain scalar (containers, strings, torch, ...) goes through
    :func:`capture_fields`, which checks it and refuses what it cannot store."""
    for value in fields.values():
        kind = type(value)
        if kind not in PLAIN_SCALARS and kind.__module__ != "numpy":
            return capture_fields(fields, copy=False)
    check_ints(fields)
    return fields


def encode_fields(fields: dict) -> bytes:
    """Validate a row (``_ts`` included) and encode it, as ``append()`` does."""
    for value in fields.values():
        if type(value) not in PLAIN_SCALARS:
            return encode_value(prepare_fields(fields))
    check_ints(fields)
    return encode_value(fields)


def decode_rows(rows: list) -> list:
    """The writer's side of :func:`encode_fields`: rows as dicts (bytes decoded
    in one C call when the whole list is bytes)."""
    if not rows or type(rows[0]) is not bytes:
        if not any(type(row) is bytes for row in rows):
            return rows
    elif all(type(row) is bytes for row in rows):
        joined = b"[" + b",".join(rows) + b"]"
        decoded = _decode(joined)
        return untag_nonfinite(decoded) if NONFINITE_MARKER in joined else decoded
    return [decode_row(row) if type(row) is bytes else row for row in rows]


def decode_row(payload: bytes) -> Any:
    value = _decode(payload)
    return untag_nonfinite(value) if NONFINITE_MARKER in payload else value


def approx_bytes(value: Any) -> int:
    """A cheap estimate of a captured value's memory, for the queue budget."""
    kind = type(value)
    if kind is str:
        return 50 + len(value)
    if kind is list:
        if set(map(type, value)) <= _FLAT_OK:
            return 56 + 32 * len(value)
        return 56 + sum(map(approx_bytes, value))
    if kind is dict:
        return 64 + sum(48 + approx_bytes(item) for item in value.values())
    return 32


def tag_nonfinite(value: Any) -> Any:
    """Replace non-finite floats by their ``{"$float": ...}`` marker (writer side)."""
    kind = type(value)
    if kind is float:
        if math.isfinite(value):
            return value
        return {"$float": "nan" if value != value else ("inf" if value > 0 else "-inf")}
    if kind is dict:
        return {key: tag_nonfinite(item) for key, item in value.items()}
    if kind is list:
        return [tag_nonfinite(item) for item in value]
    return value


def untag_nonfinite(value: Any) -> Any:
    """Inverse of :func:`tag_nonfinite` (reader side)."""
    kind = type(value)
    if kind is dict:
        if len(value) == 1 and "$float" in value and value["$float"] in _NONFINITE_NAMES:
            return _NONFINITE_NAMES[value["$float"]]
        return {key: untag_nonfinite(item) for key, item in value.items()}
    if kind is list:
        return [untag_nonfinite(item) for item in value]
    return value
