"""A long row list as MessagePack, encoded a step at a time.

Encoding holds the GIL, so a background thread (the writer talking to the
agent, the remote sink's sender) encodes the rows a step at a time (see
:mod:`._gil`: short steps while a producer runs) and hands the GIL over
between steps. The steps are joined under one array header and given to the
message as ``msgspec.Raw``, so the bytes are those of one big encode: a
message stays one message, however its rows were encoded.
"""

from __future__ import annotations

import msgspec

from ._gil import step_rows, yield_gil

__all__ = ["rows_in_steps", "FULL_STEP_ROWS"]

_msgpack = msgspec.msgpack.Encoder()

#: Rows per msgpack call when no producer runs.
FULL_STEP_ROWS = 1000


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def rows_in_steps(rows: list) -> list | msgspec.Raw:
    """``rows`` itself when one step encodes them, else their encoding as ``Raw``.
    A value MessagePack cannot carry raises here, before anything is sent."""
    step = step_rows(FULL_STEP_ROWS)
    if len(rows) <= step:
        return rows
    parts = []
    for start in range(0, len(rows), step):
        if parts:
            yield_gil()
        chunk = rows[start : start + step]
        parts.append(_msgpack.encode(chunk)[len(_array_header(len(chunk))) :])
    return msgspec.Raw(_array_header(len(rows)) + b"".join(parts))
