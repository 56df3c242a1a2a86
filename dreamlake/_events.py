"""The events that flow from the API objects to the writer.

A session's queue holds items in threes, each three pushed with one
``deque.extend`` (atomic in CPython, so threes from several threads never
interleave):

    stream_id, ts, fields               one track row or log entry (stream_id >= 0;
                                        ``fields`` already holds ``"_ts"``)
    -ROWS,    (stream_id, ts_list, rows, weight), None
                                        append_batch, or one large row; ``weight``
                                        is the budget slots it holds while queued
    -PARAMS,  flat_dict, None           a params.set() call, already flattened
    -BARRIER, (op, args, waiter), None  run ``sink.<op>(*args)`` after everything
                                        queued before it is written; the result
                                        goes to ``waiter``

Why flat items rather than one tuple per event: a row's items are an int, a
float and a dict of scalars, none of which CPython's cyclic GC tracks. Tuples
would be tracked, promoted while they wait, and trigger full collections
(measured: 6 full collections, 38-46 ms each on the caller's thread, per 300k
queued rows, against 1 of 4-6 ms with flat items).

A barrier is a marker in the stream, so a flush, read or close stays ordered
with the data the same thread appended before it.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["ROWS", "PARAMS", "BARRIER", "Waiter"]

# pushed negated as the first item of a three (stream ids are >= 0)
ROWS = 1
PARAMS = 2
BARRIER = 3


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
