"""The page's reads, built on any :class:`~._source.DataSource`: chart series
(downsampled), a track's fields, last/min/max of fields, filtered logs."""

from __future__ import annotations

import math
from typing import Any

from ._downsample import SAMPLE_FACTOR, flatten_numeric, minmax_keep, sample_indices
from ._source import DataSource, Row

__all__ = ["read_series", "track_fields", "field_stats", "filter_logs", "X_INDEX", "X_TS"]

X_TS = "_ts"
X_INDEX = "index"
#: Below this many rows last/min/max are exact; above, computed over an evenly
#: spaced sample of this many rows (last row included) and marked approximate.
STATS_EXACT_ROWS = 20_000
#: Rows sampled to find a track's field names (first, last and spread between).
FIELD_PROBE_ROWS = 16
LOG_PAGE = 2000


def _json_number(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _x_value(x: str, index: int, ts: float, flat: dict[str, float]) -> float | None:
    if x == X_TS:
        return ts
    if x == X_INDEX:
        return float(index)
    return flat.get(x)


def read_series(
    source: DataSource,
    prefix: str,
    track: str,
    fields: list[str],
    x: str = X_TS,
    lo: int | None = None,
    hi: int | None = None,
    points: int = 1000,
) -> dict:
    """Chart data for ``fields`` against ``x`` over rows ``[lo, hi)``: at most
    ``points * len(fields) + 2`` points, see :mod:`._downsample` for the bound."""
    total = int(source.track_info(prefix, track)["totalDataPoints"])
    lo = 0 if lo is None else max(0, min(lo, total))
    hi = total if hi is None else max(lo, min(hi, total))
    limit = SAMPLE_FACTOR * points
    indices = sample_indices(lo, hi, limit)
    exact = len(indices) == hi - lo
    rows: list[Row] = source.read_rows(prefix, track, lo, hi - lo) if exact else source.read_rows_at(prefix, track, indices)
    xs: list[float] = []
    idx: list[int] = []
    cols: dict[str, list[float | None]] = {f: [] for f in fields}
    for index, ts, data in rows:
        flat = flatten_numeric(data)
        x_value = _x_value(x, index, ts, flat)
        if x_value is None or not math.isfinite(x_value):
            continue  # a row without the x field cannot be placed on the chart
        xs.append(x_value)
        idx.append(index)
        for f in fields:
            cols[f].append(flat.get(f))
    keep = minmax_keep(cols.values(), len(xs), max(1, points // 2))
    stride = (hi - lo - 1) / (limit - 1) if not exact and limit > 1 else 1.0
    return {
        "track": track,
        "x": x,
        "fields": fields,
        "total": total,
        "lo": lo,
        "hi": hi,
        "sampled": len(rows),
        "exact": exact,
        "stride": stride,
        "index": [idx[p] for p in keep],
        "xs": [xs[p] for p in keep],
        "columns": {f: [_json_number(col[p]) for p in keep] for f, col in cols.items()},
    }


def track_fields(source: DataSource, prefix: str, track: str) -> list[str]:
    """Numeric field names seen in a few rows spread over the track, in first-seen order."""
    total = int(source.track_info(prefix, track)["totalDataPoints"])
    seen: dict[str, None] = {}
    for _index, _ts, data in source.read_rows_at(prefix, track, sample_indices(0, total, FIELD_PROBE_ROWS)):
        for name in flatten_numeric(data):
            seen.setdefault(name, None)
    return list(seen)


def field_stats(source: DataSource, prefix: str, track: str, fields: list[str]) -> dict:
    """``{"fields": {f: {"last", "min", "max", "count"}}, "exact", "total"}``."""
    total = int(source.track_info(prefix, track)["totalDataPoints"])
    exact = total <= STATS_EXACT_ROWS
    if exact:
        rows = source.read_rows(prefix, track, 0, total)
    else:
        rows = source.read_rows_at(prefix, track, sample_indices(0, total, STATS_EXACT_ROWS))
    out: dict[str, dict[str, Any]] = {f: {"last": None, "min": None, "max": None, "count": 0} for f in fields}
    for _index, _ts, data in rows:
        flat = flatten_numeric(data)
        for f in fields:
            value = flat.get(f)
            if value is None or not math.isfinite(value):
                continue
            s = out[f]
            s["last"] = value
            s["min"] = value if s["min"] is None else min(s["min"], value)
            s["max"] = value if s["max"] is None else max(s["max"], value)
            s["count"] += 1
    return {"track": track, "total": total, "exact": exact, "fields": out}


def filter_logs(
    source: DataSource,
    prefix: str,
    levels: set[str] | None,
    search: str | None,
    limit: int,
    before: int | None = None,
    after: int | None = None,
    scan_limit: int = 200_000,
) -> dict:
    """Log entries matching ``levels`` and ``search`` (case-insensitive, in the
    message and metadata). ``after=N``: the oldest matches with index > N (for
    live tailing); otherwise the newest matches before ``before``. Scans at
    most ``scan_limit`` entries per call (``scanned`` says how many)."""
    total = source.log_count(prefix)
    needle = search.lower() if search else None

    def match(data: dict) -> bool:
        if levels and str(data.get("level", "")).lower() not in levels:
            return False
        if needle:
            text = f"{data.get('message', '')} {data.get('metadata', '')}".lower()
            return needle in text
        return True

    found: list[dict] = []
    scanned = 0
    if after is not None:
        position = max(0, after + 1)
        while position < total and len(found) < limit and scanned < scan_limit:
            page = source.read_logs(prefix, position, LOG_PAGE)
            if not page:
                break
            for index, ts, data in page:
                if match(data) and len(found) < limit:
                    found.append({"index": index, "ts": ts, **data})
            scanned += len(page)
            position = page[-1][0] + 1
    else:
        end = total if before is None else max(0, min(before, total))
        while end > 0 and len(found) < limit and scanned < scan_limit:
            start = max(0, end - LOG_PAGE)
            page = source.read_logs(prefix, start, end - start)
            for index, ts, data in reversed(page):
                if match(data) and len(found) < limit:
                    found.append({"index": index, "ts": ts, **data})
            scanned += end - start
            end = start
        found.reverse()
    return {"total": total, "scanned": scanned, "entries": found}
