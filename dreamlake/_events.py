"""The events that flow from the API objects to the writer.

Events are plain tuples (the cheapest object CPython can build); the first item
is the kind:

    (ROW, stream, ts, line)            one track row or log entry; ``line`` is the
                                        row encoded as JSON bytes, ``_ts`` included
    (ROWS, stream, [ROW, ...], weight)  append_batch, or one large row; ``weight``
                                        is the budget slots it holds while queued
    (PARAMS, flat_dict)                 a params.set() call, already flattened
    (BARRIER, op, args, waiter)         run ``sink.<op>(*args)`` after everything
                                        queued before it is written; the result
                                        goes to ``waiter``

A barrier is a marker in the stream, so a flush, read or close stays ordered
with the data the same thread appended before it.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["ROW", "ROWS", "PARAMS", "BARRIER", "Waiter"]

ROW = 0
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
