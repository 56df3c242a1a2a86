"""The events that flow from the API objects to the writer.

A session's queue holds items in threes, each three pushed with one
``deque.extend`` (atomic in CPython, so threes from several threads never
interleave):

    stream_id, ts, payload              one track row or log entry (stream_id >= 0;
                                        ``payload``: the JSON bytes of its fields,
                                        ``"_ts"`` included, encoded at the call)
    -BATCH,   stream_id, payload        append_batch, or one large row: the JSON
                                        bytes of ``[weight, ts_list, rows]``; ``weight``
                                        is the budget slots it holds while queued
    -ROWS,    (stream_id, ts_list, rows, weight), None
                                        rows as dicts (the agent's side)
    -PARAMS,  flat_dict, None           a params.set() call, already flattened
    -BARRIER, (op, args, waiter), None  run ``sink.<op>(*args)`` after everything
                                        queued before it is written; the result
                                        goes to ``waiter``

Why flat items of bytes rather than tuples or dicts: a row's items are an
int, a float and bytes, none of which CPython's cyclic GC tracks (a dict
holding a list is tracked, and so is every tuple). Tuples
would be tracked, promoted while they wait, and trigger full collections
(measured: 6 full collections, 38-46 ms each on the caller's thread, per 300k
queued rows, against 1 of 4-6 ms with flat items).

A barrier is a marker in the stream, so a flush, read or close stays ordered
with the data the same thread appended before it.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["ROWS", "PARAMS", "BARRIER", "BATCH", "Waiter"]

# pushed negated as the first item of a three (stream ids are >= 0)
ROWS = 1
PARAMS = 2
BARRIER = 3
BATCH = 4


class Waiter:
    """A one-shot result slot the caller of a barrier waits on."""

    __slots__ = ("_done", "result", "error")

    def __init__(self) -> None:
        self._done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def succeed(self, result: Any) -> None:
        self.result = result
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._done.set()

    def wait(self, timeout: float | None) -> bool:
        return self._done.wait(timeout)
