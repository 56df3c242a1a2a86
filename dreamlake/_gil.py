"""How the writer thread shares the GIL with the threads that log.

A thread holding the GIL delays every other Python thread, so the writer works
in short steps and hands the GIL over between them. Three rules:

* A real handoff. Releasing and at once retaking the GIL (``os.sched_yield``)
  rarely lets the waiting thread in: it wakes too late, and every release
  restarts its 5 ms switch-interval wait, so a busy writer kept a producer out
  for up to 30 ms. With the C extension, :func:`yield_gil` sleeps briefly
  without the GIL while a producer runs (it committed a record in the last
  20 ms; ``handoff`` in ``_hotpath.c``).
* Short steps while a producer runs: a producer waits at most one writer step,
  so steps are ``BUSY_STEP_ROWS`` rows while one runs, and the full size
  (fewer, larger writes) when none does.
* While a thread waits on the writer (for room in a full journal or queue
  under ``on_full="block"``, or for a flush, read or close) the writer's speed
  is what it waits for: full steps, no pauses.

Without the extension (``DREAMLAKE_PURE_PYTHON=1``) the writer yields with
``os.sched_yield`` and always takes full steps.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

from ._native import _hotpath

__all__ = ["yield_gil", "step_rows", "waiting_on_writer", "WRITER_PACE", "Pace", "HANDOFF_NS", "BUSY_STEP_ROWS"]

#: How long the writer sleeps without the GIL to hand it to a running producer
#: (ns): longer than a woken thread takes to be scheduled on a loaded VM.
HANDOFF_NS = 50_000
#: Rows a writer step takes while a producer runs (~50-150 µs of work).
BUSY_STEP_ROWS = 32


_writer_waiters = 0
_waiters_lock = threading.Lock()


@contextmanager
def waiting_on_writer() -> Iterator[None]:
    """Around a thread's wait on the writer (room, a barrier): the writer goes at
    full speed meanwhile."""
    global _writer_waiters
    with _waiters_lock:
        _writer_waiters += 1
    try:
        yield
    finally:
        with _waiters_lock:
            _writer_waiters -= 1


def yield_gil() -> None:
    """Let a producer thread that waits for the GIL run now."""
    if _hotpath is None:
        os.sched_yield()
    elif not _writer_waiters:
        _hotpath.handoff(HANDOFF_NS)


def step_rows(full: int) -> int:
    """Rows the writer's next step may take: ``full`` unless a producer runs."""
    if _hotpath is not None and not _writer_waiters and _hotpath.producers_running():
        return min(full, BUSY_STEP_ROWS)
    return full


class Pace:
    """What a sink's long write asks between its steps (see the module doc)."""

    def step_rows(self, full: int) -> int:
        return step_rows(full)

    def pause(self) -> None:
        yield_gil()


#: The writer thread's pace, handed to sinks.
WRITER_PACE = Pace()
