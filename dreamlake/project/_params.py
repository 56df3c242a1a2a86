"""Run params: a canonical, JSON-ready copy and a stable hash of it.

Two params dicts name the same run when their canonical JSON is identical:
keys are sorted at every level (so key order never matters), tuples become
lists, ``Path`` becomes its string, enums their value, numpy/torch scalars and
arrays numbers and lists. Values keep their JSON type, so ``1`` and ``1.0`` or
``True`` and ``1`` are *different* params. Non-finite floats are written as
DreamLake's ``{"$float": "nan" | "inf" | "-inf"}`` marker so the ledger stays
strict JSON.

The hash is the first 16 hex digits of the SHA-256 of that canonical JSON; it
is the same in every process, Python version and run of the program.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any

__all__ = [
    "canonical_params",
    "canonical_json",
    "params_hash",
    "to_json_value",
    "from_json_value",
    "HASH_LENGTH",
]

HASH_LENGTH = 16
_MAX_DEPTH = 32
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _canonical(value: Any, where: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise ValueError(f"params nested deeper than {_MAX_DEPTH} levels at {where}")
    if value is None:
        return None
    if isinstance(value, enum.Enum):
        return _canonical(value.value, where, depth + 1)
    if isinstance(value, str):
        return value if type(value) is str else str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"param names must be str, got {type(key).__name__} {key!r} in {where}")
            if not key:
                raise ValueError(f"param names must not be empty (in {where})")
            out[str(key)] = _canonical(item, f"{where}.{key}", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    module = type(value).__module__
    if module == "numpy" or module.startswith("torch"):
        if hasattr(value, "detach"):
            value = value.detach().cpu()
        plain = value.item() if getattr(value, "ndim", 0) == 0 else value.tolist()
        return _canonical(plain, where, depth + 1)
    raise TypeError(
        f"param {where} has type {type(value).__name__}; use JSON types (str, int, float, bool, None, "
        "lists, dicts), tuples, paths, enums or numpy/torch values"
    )


def canonical_params(params: Mapping | None) -> dict:
    """A private, plain copy of ``params`` (floats stay floats, NaN included)."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict, got {type(params).__name__}")
    return _canonical(params, "params", 0)


def to_json_value(value: Any) -> Any:
    """Replace non-finite floats by the ``{"$float": ...}`` marker."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": "nan" if value != value else ("inf" if value > 0 else "-inf")}
    if isinstance(value, dict):
        return {key: to_json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_json_value(item) for item in value]
    return value


def from_json_value(value: Any) -> Any:
    """Inverse of :func:`to_json_value`."""
    if isinstance(value, dict):
        if len(value) == 1 and value.get("$float") in _NONFINITE:
            return _NONFINITE[value["$float"]]
        return {key: from_json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json_value(item) for item in value]
    return value


def canonical_json(params: dict) -> str:
    return json.dumps(to_json_value(params), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def params_hash(params: dict) -> str:
    """Stable hash of canonical params (see the module docstring)."""
    return hashlib.sha256(canonical_json(params).encode("ascii")).hexdigest()[:HASH_LENGTH]
