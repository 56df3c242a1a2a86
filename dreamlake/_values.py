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

__all__ = [
    "PLAIN_SCALARS",
    "capture",
    "capture_fields",
    "approx_bytes",
    "tag_nonfinite",
    "untag_nonfinite",
    "NONFINITE_MARKER",
    "ESCAPE_MARKER",
    "MAX_STRING_LENGTH",
    "MAX_ELEMENTS",
    "MIN_INT",
    "MAX_INT",
    "check_int",
    "check_ints",
    "check_text",
]

PLAIN_SCALARS = frozenset((int, float, bool, type(None)))
#: The integers every sink can store (msgpack, hence the agent and the server, stops
#: at 64 bits); one rule for every mode, checked at the call.
MIN_INT, MAX_INT = -(1 << 63), (1 << 64) - 1
_FLAT_OK = PLAIN_SCALARS  # flat lists of these need no per-item work
MAX_STRING_LENGTH = 16 << 20
MAX_ELEMENTS = 16 << 20
MAX_DEPTH = 32
NONFINITE_MARKER = b'"$float"'
#: A user's own one-key dict ``{"$float": ...}`` (or ``{"$esc": ...}``) is stored as
#: ``{"$esc": {...}}``, so it reads back as the dict it was, never as a float.
ESCAPE_MARKER = b'"$esc"'
_TAG_KEYS = ("$float", "$esc")
_NONFINITE_NAMES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def check_int(value: int) -> int:
    if MIN_INT <= value <= MAX_INT:
        return value
    raise ValueError(f"integer {value} does not fit in 64 bits (the range is {MIN_INT} .. {MAX_INT}); log it as a float or a str")


def check_ints(values: Any) -> None:
    """Every int among ``values`` fits in 64 bits (one C-level pass for the common case)."""
    ints = [v for v in values if type(v) is int]
    if ints and (max(ints) > MAX_INT or min(ints) < MIN_INT):
        check_int(max(ints) if max(ints) > MAX_INT else min(ints))


def check_text(value: str, what: str = "string") -> str:
    """A str that can be written as UTF-8: no lone surrogates (``"\\udcff"``)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{what} {value[:40]!r} holds a lone surrogate at {exc.start}: it cannot be stored as UTF-8") from None
    return value


def _from_array_like(value: Any) -> Any:
    """numpy / torch objects (duck-typed so neither is imported here)."""
    module = type(value).__module__
    if module.startswith("torch"):
        value = value.detach().cpu()
        if getattr(value, "ndim", 1) == 0:
            return _real(value.item(), value)
        if value.numel() > MAX_ELEMENTS:
            raise ValueError(f"array of {value.numel()} elements is larger than {MAX_ELEMENTS}")
        return value.tolist()
    if module == "numpy":
        if getattr(value, "ndim", 0) == 0:
            return _real(value.item(), value)
        if value.size > MAX_ELEMENTS:
            raise ValueError(f"array of {value.size} elements is larger than {MAX_ELEMENTS}")
        if value.dtype.kind not in "biuf":
            raise TypeError(f"numpy arrays of dtype {value.dtype} are not supported")
        return value.tolist()
    raise TypeError(f"values of type {type(value).__name__} are not supported")


def _real(item: Any, value: Any) -> Any:
    if isinstance(item, complex):
        raise TypeError(f"complex values ({type(value).__name__}) are not supported; log .real and .imag")
    if type(item) is int:
        check_int(item)
    return item


def capture(value: Any, depth: int = 0) -> Any:
    """Return a private, JSON-compatible copy of ``value`` or raise TypeError/ValueError."""
    kind = type(value)
    if kind in PLAIN_SCALARS:
        return check_int(value) if kind is int else value
    if kind is str:
        if len(value) > MAX_STRING_LENGTH:
            raise ValueError(f"string of {len(value)} characters is longer than {MAX_STRING_LENGTH}")
        return check_text(value)
    if depth >= MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH} levels")
    if kind is list or kind is tuple:
        if len(value) > MAX_ELEMENTS:
            raise ValueError(f"sequence of {len(value)} elements is longer than {MAX_ELEMENTS}")
        if set(map(type, value)) <= _FLAT_OK:  # the common flat list: copied in C
            check_ints(value)
            return list(value)
        return [capture(item, depth + 1) for item in value]
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"dict keys must be str, got {type(key).__name__}")
            out[check_text(key, "key")] = capture(item, depth + 1)
        return out
    module = kind.__module__
    if module == "numpy" or module.startswith("torch"):
        return _from_array_like(value)
    if isinstance(value, (bool, int, float)):
        # subclasses (IntEnum, ...) are stored as their plain value
        return float(value) if isinstance(value, float) else check_int(int(value))
    if isinstance(value, str):
        return capture(str(value), depth)
    raise TypeError(f"values of type {kind.__name__} are not supported (use JSON types, numpy or torch)")


def capture_fields(fields: dict) -> dict:
    """Slow path of append(): copy a row whose values are not all plain scalars."""
    return {check_text(key, "field name"): capture(value) for key, value in fields.items()}


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
        tagged = {key: tag_nonfinite(item) for key, item in value.items()}
        return {"$esc": tagged} if len(value) == 1 and next(iter(value)) in _TAG_KEYS else tagged
    if kind is list:
        return [tag_nonfinite(item) for item in value]
    return value


def untag_nonfinite(value: Any) -> Any:
    """Inverse of :func:`tag_nonfinite` (reader side)."""
    kind = type(value)
    if kind is dict:
        if len(value) == 1 and "$float" in value and value["$float"] in _NONFINITE_NAMES:
            return _NONFINITE_NAMES[value["$float"]]
        if len(value) == 1 and type(value.get("$esc")) is dict:
            return {key: untag_nonfinite(item) for key, item in value["$esc"].items()}
        return {key: untag_nonfinite(item) for key, item in value.items()}
    if kind is list:
        return [untag_nonfinite(item) for item in value]
    return value
