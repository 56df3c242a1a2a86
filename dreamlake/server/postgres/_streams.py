"""Rows of a stream (a track, or a session's log) in chunks: append and read.

Functions on a connection inside the caller's transaction:

* :func:`append` reserves the indices with one upsert on the stream's row —
  ``next_index = next_index + n … RETURNING`` — which row-locks the stream until
  the transaction ends, so writers of one stream serialise on any replica and
  a rolled-back write leaves no gap; then stores the rows as chunks (binary
  COPY), or merges a small write into the stream's small last chunk.
* :func:`read_range` finds the chunk holding ``start`` with one index probe
  (the greatest ``first_index <= start``) and reads forward: O(limit).
* :func:`read_at` reads the rows at scattered indices (the page's downsampling
  sample): one statement finds, per index, the chunk holding it (one probe of
  the primary key each) and returns each such chunk once, streamed, so memory
  holds one chunk at a time; only the wanted rows of a chunk are decoded.
* :func:`read_ts` does the same from the first chunk whose ``max_ts`` reaches
  the start, for streams whose ``_ts`` never went back; others are scanned.
"""

from __future__ import annotations

from itertools import islice
from operator import le
from typing import Iterable, NamedTuple, Sequence

import psycopg

from ..._format import log_entry
from ._chunks import CHUNK_ROWS, MERGE_ROWS, decode_chunk, decode_rows_at, encode_chunk, split

__all__ = ["Stream", "append", "find", "read_at", "read_range", "read_ts", "STREAM_COLUMNS"]

STREAM_COLUMNS = "id, next_index, ts_sorted, first_ts, last_ts, created_at, updated_at, description, tags"


class Stream(NamedTuple):
    id: int
    count: int
    ts_sorted: bool
    first_ts: float | None
    last_ts: float | None
    created_at: object
    updated_at: object
    description: str | None
    tags: list | None


def _sorted(ts: list[float]) -> bool:
    return all(map(le, ts, islice(ts, 1, None)))  # C-level: ~10× a generator on a 10k-row batch


def append(conn: psycopg.Connection, session_id: int, kind: str, name: str, rows: list,
           ts: list) -> tuple[int, int] | None:
    """Store ``rows`` (non-empty); → (stream id, first index), or None when the
    session is missing or write-protected (nothing was written)."""
    n = len(rows)
    reserved = conn.execute(
        """WITH target AS (SELECT id FROM sessions WHERE id = %(sid)s AND NOT write_protected)
           INSERT INTO streams AS s (session_id, kind, name, next_index, first_ts, last_ts, ts_sorted)
           SELECT id, %(kind)s, %(name)s, %(n)s, %(first)s, %(last)s, %(sorted)s FROM target
           ON CONFLICT (session_id, kind, name) DO UPDATE SET
               next_index = s.next_index + %(n)s,
               first_ts = coalesce(s.first_ts, %(first)s),
               last_ts = %(last)s,
               ts_sorted = s.ts_sorted AND %(sorted)s AND (s.last_ts IS NULL OR s.last_ts <= %(first)s),
               updated_at = now()
           RETURNING id, next_index - %(n)s""",
        {"sid": session_id, "kind": kind, "name": name, "n": n, "first": ts[0], "last": ts[-1],
         "sorted": _sorted(ts)},
    ).fetchone()
    if reserved is None:
        return None
    stream_id, first = reserved
    if kind == "log":  # upstream's entry, as the local store writes it; _ts kept for _ts reads
        rows = [{**log_entry(row, seq), "_ts": row["_ts"]} for seq, row in enumerate(rows, first)]
    if not (n < MERGE_ROWS and first > 0 and _merge_into_last(conn, stream_id, first, rows, ts)):
        _insert_chunks(conn, stream_id, first, rows, ts)
    return stream_id, first


def _merge_into_last(conn: psycopg.Connection, stream_id: int, first: int, rows: list, ts: list) -> bool:
    last = conn.execute(
        "SELECT first_index, row_count, data FROM chunks WHERE stream_id = %s ORDER BY first_index DESC LIMIT 1",
        (stream_id,),
    ).fetchone()
    if last is None or last[1] >= MERGE_ROWS or last[0] + last[1] != first:
        return False
    merged = decode_chunk(last[2]) + rows
    conn.execute(
        """UPDATE chunks SET row_count = %s, data = %s, min_ts = least(min_ts, %s), max_ts = greatest(max_ts, %s)
           WHERE stream_id = %s AND first_index = %s""",
        (len(merged), encode_chunk(merged), min(ts), max(ts), stream_id, last[0]),
    )
    return True


def _insert_chunks(conn: psycopg.Connection, stream_id: int, first: int, rows: list, ts: list) -> None:
    with conn.cursor().copy(
        "COPY chunks (stream_id, first_index, row_count, min_ts, max_ts, data) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["int8", "int8", "int4", "float8", "float8", "bytea"])
        for offset, piece in split(rows):
            stamps = ts[offset : offset + len(piece)]
            copy.write_row((stream_id, first + offset, len(piece), min(stamps), max(stamps), encode_chunk(piece)))


def find(conn: psycopg.Connection, session_id: int, kind: str, name: str) -> Stream | None:
    row = conn.execute(
        f"SELECT {STREAM_COLUMNS} FROM streams WHERE session_id = %s AND kind = %s AND name = %s",
        (session_id, kind, name),
    ).fetchone()
    return None if row is None else Stream(*row)


def read_range(conn: psycopg.Connection, session_id: int, kind: str, name: str, start: int,
               limit: int) -> tuple[int, list[tuple[int, dict]]] | None:
    """(the stream's row count, (index, row) for rows ``start .. start+limit-1``),
    or None when there is no such stream. One statement, so one snapshot: the
    count and the chunks agree without a transaction."""
    found = conn.execute(
        """SELECT s.next_index, c.first_index, c.data FROM streams s
           LEFT JOIN LATERAL (
               SELECT first_index, data FROM chunks
               WHERE stream_id = s.id AND %(start)s < s.next_index
                 AND first_index < least(%(start)s + %(limit)s, s.next_index)
                 AND first_index >= coalesce((SELECT max(first_index) FROM chunks
                                              WHERE stream_id = s.id AND first_index <= %(start)s), 0)
               ORDER BY first_index) c ON true
           WHERE s.session_id = %(sid)s AND s.kind = %(kind)s AND s.name = %(name)s""",
        {"sid": session_id, "kind": kind, "name": name, "start": start, "limit": limit},
    ).fetchall()
    if not found:
        return None
    total = found[0][0]
    end = min(total, start + limit)
    out: list[tuple[int, dict]] = []
    for _, first, data in found:
        if data is None:
            continue
        rows = decode_chunk(data)
        lo, hi = max(start - first, 0), min(end - first, len(rows))
        out.extend(zip(range(first + lo, first + hi), rows[lo:hi]))
    return total, out


def read_at(conn: psycopg.Connection, stream: Stream, indices: Sequence[int]) -> list[tuple[int, dict]]:
    """(index, row) for each of ``indices`` (ascending) below the stream's count.
    Costs one index probe per wanted index and reads each chunk holding one
    once: at most ``len(indices)`` chunks, whatever the stream's length."""
    wanted = sorted({i for i in indices if 0 <= i < stream.count})
    if not wanted:
        return []
    chunks = conn.cursor().stream(
        """SELECT first_index, row_count, data FROM chunks
           WHERE stream_id = %(id)s AND first_index IN (
               SELECT (SELECT first_index FROM chunks WHERE stream_id = %(id)s AND first_index <= w.i
                       ORDER BY first_index DESC LIMIT 1)
               FROM unnest(%(indices)s::int8[]) AS w(i))
           ORDER BY first_index""",
        {"id": stream.id, "indices": wanted},
    )
    out: list[tuple[int, dict]] = []
    position = 0
    for first, count, data in chunks:
        while position < len(wanted) and wanted[position] < first:
            position += 1  # in no chunk (cannot happen: a stream's chunks are dense)
        mine = []
        while position < len(wanted) and wanted[position] < first + count:
            mine.append(wanted[position] - first)
            position += 1
        out.extend((first + p, row) for p, row in decode_rows_at(data, mine))
    return out


def read_ts(conn: psycopg.Connection, stream: Stream, start_ts: float | None, end_ts: float | None,
            limit: int) -> list[tuple[int, dict]]:
    """Up to ``limit + 1`` (index, row) whose ``_ts`` is in [start_ts, end_ts), in index order."""
    lo_ok = float("-inf") if start_ts is None else start_ts
    hi_ok = float("inf") if end_ts is None else end_ts
    candidates = _chunks_from(conn, stream.id, None if stream.ts_sorted else 0, lo_ok, hi_ok, stream.ts_sorted,
                              limit // CHUNK_ROWS + 2)
    matched: list[tuple[int, dict]] = []
    for first, data in candidates:
        matched.extend((index, row) for index, row in enumerate(decode_chunk(data), first)
                       if lo_ok <= row["_ts"] < hi_ok)
        if len(matched) > limit:
            break
    return matched[: limit + 1]


def _chunks_from(conn: psycopg.Connection, stream_id: int, first_index: int | None, lo_ok: float, hi_ok: float,
                 ts_sorted: bool, per_query: int) -> Iterable[tuple[int, bytes]]:
    """Chunks in index order, ``per_query`` per statement. Sorted: from the first
    chunk whose ``max_ts`` reaches ``lo_ok`` (``first_index=None``: an index probe
    inside the first statement) until one starts at or past ``hi_ok``. Unsorted:
    chunks whose bounds miss the range are skipped (a scan, as on the local store)."""
    overlap = "" if ts_sorted else " AND max_ts >= %(lo)s AND min_ts < %(hi)s"
    start = "%(first)s" if first_index is not None else (
        "(SELECT first_index FROM chunks WHERE stream_id = %(id)s AND max_ts >= %(lo)s"
        " ORDER BY max_ts, first_index LIMIT 1)")
    while True:
        page = conn.execute(
            f"SELECT first_index, data, min_ts FROM chunks WHERE stream_id = %(id)s AND first_index >= {start}"
            f"{overlap} ORDER BY first_index LIMIT %(n)s",
            {"id": stream_id, "first": first_index, "lo": lo_ok, "hi": hi_ok, "n": per_query},
        ).fetchall()
        for first, data, min_ts in page:
            if min_ts >= hi_ok:
                return
            yield first, data
        if len(page) < per_query:
            return
        first_index, start = page[-1][0] + 1, "%(first)s"
