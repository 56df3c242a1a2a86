"""Rows of a stream (a track, or a session's log) in chunks: append and read.

Functions on a connection inside the caller's transaction:

* :func:`append` reserves the indices with one upsert on the stream's row —
  ``next_index = next_index + n … RETURNING`` — which row-locks the stream until
  the transaction ends, so writers of one stream serialise on any replica and
  a rolled-back write leaves no gap; then stores the rows as chunks (binary
  COPY), or merges a small write into the stream's small last chunk.
* :func:`read_range` finds the chunk holding ``start`` with one index probe
  (the greatest ``first_index <= start``) and reads forward: O(limit).
* :func:`read_ts` does the same from the first chunk whose ``max_ts`` reaches
  the start, for streams whose ``_ts`` never went back; others are scanned.
"""

from __future__ import annotations

import uuid
from typing import Iterable, NamedTuple

import psycopg

from ._chunks import MERGE_ROWS, decode_chunk, encode_chunk, split

__all__ = ["Stream", "append", "find", "read_range", "read_ts", "STREAM_COLUMNS"]

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
    return all(a <= b for a, b in zip(ts, ts[1:]))


def append(conn: psycopg.Connection, session_id: int, kind: str, name: str, rows: list, ts: list) -> tuple[int, int] | None:
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
    if kind == "log":
        from ..._local_sink import _stamp_log_entries  # the local store's seq/timestamp stamping

        _stamp_log_entries(rows, first)
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


def read_range(conn: psycopg.Connection, stream_id: int, start: int, end: int) -> list[tuple[int, dict]]:
    """(index, row) for rows ``start .. end-1`` (``end`` ≤ the stream's count)."""
    chunks = conn.execute(
        """SELECT first_index, data FROM chunks
           WHERE stream_id = %(id)s AND first_index < %(end)s AND first_index >= coalesce(
               (SELECT max(first_index) FROM chunks WHERE stream_id = %(id)s AND first_index <= %(start)s), 0)
           ORDER BY first_index""",
        {"id": stream_id, "start": start, "end": end},
    ).fetchall()
    out: list[tuple[int, dict]] = []
    for first, data in chunks:
        rows = decode_chunk(data)
        lo, hi = max(start - first, 0), min(end - first, len(rows))
        out.extend(zip(range(first + lo, first + hi), rows[lo:hi]))
    return out


def read_ts(conn: psycopg.Connection, stream: Stream, start_ts: float | None, end_ts: float | None,
            limit: int) -> list[tuple[int, dict]]:
    """Up to ``limit + 1`` (index, row) whose ``_ts`` is in [start_ts, end_ts), in index order."""
    lo_ok = float("-inf") if start_ts is None else start_ts
    hi_ok = float("inf") if end_ts is None else end_ts
    if stream.ts_sorted:
        found = conn.execute(
            "SELECT first_index FROM chunks WHERE stream_id = %s AND max_ts >= %s ORDER BY max_ts, first_index LIMIT 1",
            (stream.id, lo_ok),
        ).fetchone()
        candidates = _chunks_from(conn, stream.id, found[0] if found else stream.count, hi_ok)
    else:
        candidates = _chunks_overlapping(conn, stream.id, lo_ok, hi_ok)
    matched: list[tuple[int, dict]] = []
    for first, data in candidates:
        matched.extend((index, row) for index, row in enumerate(decode_chunk(data), first)
                       if lo_ok <= row["_ts"] < hi_ok)
        if len(matched) > limit:
            break
    return matched[: limit + 1]


def _chunks_from(conn: psycopg.Connection, stream_id: int, first_index: int, hi_ok: float) -> Iterable[tuple]:
    """Chunks from ``first_index`` on, a few per query, until one starts at or past ``hi_ok``."""
    while True:
        batch = conn.execute(
            "SELECT first_index, data, min_ts FROM chunks WHERE stream_id = %s AND first_index >= %s"
            " ORDER BY first_index LIMIT 4",
            (stream_id, first_index),
        ).fetchall()
        for first, data, min_ts in batch:
            if min_ts >= hi_ok:
                return
            yield first, data
        if len(batch) < 4:
            return
        first_index = batch[-1][0] + 1


def _chunks_overlapping(conn: psycopg.Connection, stream_id: int, lo_ok: float, hi_ok: float) -> Iterable[tuple]:
    """For a stream whose ``_ts`` went back: every chunk whose bounds overlap, in index order."""
    with conn.cursor(name=f"scan_{uuid.uuid4().hex}") as cursor:
        cursor.itersize = 8
        cursor.execute(
            "SELECT first_index, data FROM chunks WHERE stream_id = %s AND max_ts >= %s AND min_ts < %s"
            " ORDER BY first_index",
            (stream_id, lo_ok, hi_ok),
        )
        yield from cursor
