"""How the writer thread shares the GIL with the threads that log.

A thread holding the GIL delays every other Python thread, so the writer works
in short steps and hands the GIL over between them. Two rules:

* A real handoff. Releasing and at once retaking the GIL (``os.sched_yield``)
  rarely lets the waiting thread in: it wakes too late, waits a fresh switch
  interval (5 ms), and a producer stalled for up to 20 ms behind a busy writer.
  With the C extension, :func:`yield_gil` sleeps briefly without the GIL when a
  producer has appended since the last handoff (``handoff`` in ``_hotpath.c``).
* Short steps while a producer runs: a producer waits at most one writer step,
  so steps are ``BUSY_STEP_ROWS`` rows while one runs, and the full size
  (fewer, larger writes) when none does, e.g. while it waits in ``flush()``.
* While a producer waits for room (a full journal or queue, ``on_full=
  "block"``) the writer's speed is what it waits for: full steps, no pauses.

Without the extension (``DREAMLAKE_PURE_PYTHON=1``) the writer yields with
``os.sched_yield`` and always takes full steps.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

from ._native import _hotpath

__all__ = ["yield_gil", "step_rows", "waiting_for_room", "WRITER_PACE", "Pace", "HANDOFF_NS", "BUSY_STEP_ROWS"]

#: How long the writer sleeps without the GIL to hand it to a running producer
#: (ns): longer than a woken thread takes to be scheduled on a loaded VM.
HANDOFF_NS = 50_000
#: Rows a writer step takes while a producer runs (~50-150 µs of work).
BUSY_STEP_ROWS = 32


_room_waiters = 0
_room_lock = threading.Lock()


@contextmanager
def waiting_for_room() -> Iterator[None]:
    """Around a producer's wait for room: the writer goes at full speed meanwhile."""
    global _room_waiters
    with _room_lock:
        _room_waiters += 1
    try:
        yield
    finally:
        with _room_lock:
            _room_waiters -= 1


def yield_gil() -> None:
    """Let a producer thread that waits for the GIL run now."""
    if _hotpath is None:
        os.sched_yield()
    elif not _room_waiters:
        _hotpath.handoff(HANDOFF_NS)


def step_rows(full: int) -> int:
    """Rows the writer's next step may take: ``full`` unless a producer runs."""
    if _hotpath is not None and not _room_waiters and _hotpath.producers_running():
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
