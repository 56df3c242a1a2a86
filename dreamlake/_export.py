"""Tracks as tables: ``to_pandas()`` and the files ``dreamlake export`` writes.

pandas and pyarrow are optional (``pip install 'dreamlake[export]'``); a clear
``ImportError`` says so at the call that needs them.

A frame has one row per track row, indexed by the row's ``index``; ``_ts`` is the
first column (float seconds, or ``ts="datetime"``: UTC ``datetime64``), then the
fields in order of first appearance. A field missing from a row is NaN/None; NaN
and ±inf are real floats; list and dict values stay Python objects.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any, Callable

__all__ = ["frame", "write_table", "FORMATS", "TS_KINDS"]

FORMATS = ("csv", "parquet")
TS_KINDS = ("float", "datetime")

#: Rows per read while building a frame.
PAGE_ROWS = 50_000


def require(module: str, why: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{why} needs {module}, which is not installed: pip install 'dreamlake[export]'") from None


def frame(read: Callable[..., dict], ts: str = "float") -> Any:
    """A DataFrame of every row ``read(start_index, limit)`` pages through."""
    if ts not in TS_KINDS:
        raise ValueError(f"ts must be one of {', '.join(TS_KINDS)}, got {ts!r}")
    pd = require("pandas", "to_pandas()")
    indices: list[int] = []
    rows: list[dict] = []
    start = 0
    while True:
        page = read(start, PAGE_ROWS)
        for entry in page["data"]:
            indices.append(entry["index"])
            rows.append(entry["data"])
        if not page["data"] or not page["hasMore"]:
            break
        start = page["data"][-1]["index"] + 1
    table = pd.DataFrame.from_records(rows, index=pd.Index(indices, name="index", dtype="int64"))
    if "_ts" in table.columns:
        stamps = table.pop("_ts").astype("float64")
        table.insert(0, "_ts", pd.to_datetime(stamps, unit="s", utc=True) if ts == "datetime" else stamps)
    return table


def _json_if_nested(value: Any) -> Any:
    return json.dumps(value, default=str) if isinstance(value, (list, dict)) else value


def _json_unless_missing(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and value != value) else json.dumps(value, default=str)


def _recode_object_columns(table: Any, keep: Callable[[Any], bool], cell: Callable[[Any], Any]) -> Any:
    """Object columns that ``keep`` refuses get every cell passed through ``cell``."""
    table = table.copy()
    for column in table.columns:
        if table[column].dtype == object and not keep(table[column]):
            table[column] = table[column].map(cell)
    return table


def write_table(table: Any, path: str | os.PathLike, fmt: str) -> None:
    """Write a frame as CSV (lists/dicts as JSON text) or Parquet (columns kept as
    Arrow types them, lists included; a column Arrow cannot type, such as one mixing
    numbers and strings, as JSON text)."""
    if fmt == "csv":
        _recode_object_columns(table, lambda column: False, _json_if_nested).to_csv(path, index_label="index")
        return
    if fmt != "parquet":
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    pa = require("pyarrow", "Parquet export")
    pq = require("pyarrow.parquet", "Parquet export")

    def arrow_types_it(column: Any) -> bool:
        try:
            pa.array(column, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return False
        return True

    converted = _recode_object_columns(table, arrow_types_it, _json_unless_missing)  # e.g. mixed int/str
    pq.write_table(pa.Table.from_pandas(converted, preserve_index=True), os.fspath(path))
