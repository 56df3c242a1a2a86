"""A session's lock-free queue, its memory budget and its counters.

Producers call ``pipe.push((stream_id, ts, fields))`` — a bound
``deque.extend`` of one three (see :mod:`._events`), atomic in CPython and
lock-free. Only when the queue is at its budget does a producer take the slow
path (:meth:`SessionPipe.on_full`), which applies the policy:

* ``block`` (default, lossless): wait until the writer has made room;
* ``drop``: discard the event and count it.

The budget is expressed in bytes and enforced as a number of queued items
(three per event, ``memory_budget // EVENT_COST`` events), which the hot path
checks with one ``len()``; events carrying large values count their size.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from ._errors import SessionStateError, SinkError
from ._events import BARRIER, PARAMS, ROWS

log = logging.getLogger("dreamlake")

__all__ = ["SessionPipe", "StreamRef", "EVENT_COST", "DEFAULT_MEMORY_BUDGET", "LOG_STREAM", "SINK_STALL_LIMIT"]

#: Measured cost of one queued small-row event (tuple + dict of 3 floats), bytes.
EVENT_COST = 512
DEFAULT_MEMORY_BUDGET = 64 << 20
MIN_MEMORY_BUDGET = 64 << 10
#: The log stream's key: not a valid track name, so a track named "logs" is its own stream.
LOG_STREAM = "\x00logs"
#: Most rows the writer holds for one session before it writes them.
MAX_WRITER_ROWS = 4096
#: How long the store may fail (disk full, read-only, gone) before callers stop
#: waiting for it (seconds): past it, ``block`` gives way to dropping what does not
#: fit (counted as ``sink_failing``) and barriers (flush, close, reads) raise
#: ``SinkError`` at once. Rows already accepted are kept and retried.
SINK_STALL_LIMIT = 5.0


class StreamRef:
    """One track (or the log stream) of one session, as the writer sees it."""

    __slots__ = ("pipe", "sid", "name", "is_log", "merge", "flush_start", "flush_end", "flush_count", "__weakref__")

    def __init__(self, pipe: "SessionPipe", sid: int, name: str, is_log: bool = False) -> None:
        self.pipe = pipe
        self.sid = sid  # what queue items carry: an int is not tracked by the GC
        self.name = name
        self.is_log = is_log
        self.merge = not is_log
        self.reset_flush_window()

    def reset_flush_window(self) -> None:
        self.flush_start: int | None = None
        self.flush_end: int | None = None
        self.flush_count = 0

    def note_written(self, start: int, count: int) -> None:
        if count <= 0:
            return
        if self.flush_start is None:
            self.flush_start = start
        self.flush_end = start + count - 1
        self.flush_count += count

    def __repr__(self) -> str:
        return f"StreamRef({self.name!r})"


class SessionPipe:
    """Everything the writer needs to know about one open session."""

    def __init__(self, sink: Any, memory_budget: int = DEFAULT_MEMORY_BUDGET, on_full: str = "block") -> None:
        if on_full not in ("block", "drop"):
            raise ValueError(f"on_full must be 'block' or 'drop', got {on_full!r}")
        if not isinstance(memory_budget, int) or isinstance(memory_budget, bool):
            raise TypeError("memory_budget must be an int number of bytes")
        if memory_budget < MIN_MEMORY_BUDGET:
            raise ValueError(f"memory_budget must be at least {MIN_MEMORY_BUDGET} bytes")
        self.sink = sink
        self.queue: deque = deque()
        self.push = self.queue.extend
        self.memory_budget = memory_budget
        # the budget covers the queue (50 %), the rows the writer holds before
        # writing them (20 %), and allocator slack plus the writer's encode
        # buffers (30 %, measured by benchmark W6 with 4 KB rows), so neither a
        # stalled sink nor large rows grow memory past it
        budget_events = memory_budget // EVENT_COST
        self.max_events = max(16, budget_events // 2)
        self.max_items = 3 * self.max_events  # what the hot path compares len(queue) with
        self.batch_rows = max(8, min(MAX_WRITER_ROWS, budget_events // 5))
        self.on_full_policy = on_full
        self.space = threading.Condition(threading.Lock())
        self.streams: dict[str, StreamRef] = {}
        self.stream_refs: list[StreamRef] = []  # by stream id
        #: ``.last``: the last ``_ts`` the current thread used on any track (``_ts=-1``);
        #: per thread, so a robot thread and a training thread never borrow each other's
        self.thread_ts = threading.local()
        self.last_auto_ts = 0.0  # last generated _ts (strictly increasing)
        self._make_ts_lock()
        # counters, read by health(); written by one side each
        self.dropped = 0
        self.blocked_waits = 0
        self.rows_written = 0
        self.write_errors = 0
        self.last_error: str | None = None
        #: when the store started failing (monotonic), None while it writes
        self.failing_since: float | None = None
        self.dropped_sink_failing = 0
        #: rows the sink could not take (a value that cannot be encoded), kept aside by reason
        self.quarantined = 0
        self.quarantine_reasons: dict[str, int] = {}
        self.pending_params: dict = {}
        self.retry: dict[StreamRef, tuple[list, list]] = {}
        self.retry_at = 0.0
        self.writer_backlog = 0
        self.closed = False
        self.close_request: tuple | None = None
        #: how long a stream's newest row stays open for merging (None: the writer's default);
        #: the agent widens it so rows from several processes can meet
        self.row_max_age: float | None = None
        # writer-side state (touched only by the writer thread)
        self.pending: dict[int, list] = {}  # stream id -> [ts list, rows list]
        self.held_rows = 0
        self.open_ts: dict[int, float] = {}
        self.open_since: dict[int, float] = {}

    def _make_ts_lock(self) -> None:
        # taken around the read-compare-store of the last auto _ts, so _ts stays
        # strictly increasing across threads (bound methods: cheaper than ``with``)
        self.ts_lock = threading.Lock()
        self.ts_acquire = self.ts_lock.acquire
        self.ts_release = self.ts_lock.release

    def next_auto_ts(self) -> float:
        """Now, strictly after every auto ``_ts`` this session gave before."""
        self.ts_acquire()
        t = time.time()
        if t <= self.last_auto_ts:
            t = self.last_auto_ts + 1e-6
        self.last_auto_ts = self.thread_ts.last = t
        self.ts_release()
        return t

    def mark_closed(self) -> None:
        """Make every later push raise, at no cost to the open hot path."""
        self.closed = True
        self.max_items = -1
        self.push = _refuse

    def after_fork_in_child(self) -> None:
        """Events queued before fork belong to the parent, which writes them."""
        self.queue.clear()
        self.space = threading.Condition(threading.Lock())
        self._make_ts_lock()
        self.pending_params = {}
        self.retry = {}
        self.writer_backlog = 0
        self.pending = {}
        self.held_rows = 0
        self.open_ts = {}
        self.open_since = {}

    def stream(self, name: str, is_log: bool = False) -> StreamRef:
        ref = self.streams.get(name)
        if ref is None:
            with self.space:  # two threads may ask for a new stream at once
                ref = self.streams.get(name)
                if ref is None:
                    ref = StreamRef(self, len(self.stream_refs), name, is_log)
                    self.stream_refs.append(ref)
                    self.streams[name] = ref
        return ref

    def is_full(self) -> bool:
        return len(self.queue) + 3 * self.writer_backlog >= self.max_items

    # -- constructors of the non-row items (the agent uses them too) ---------------
    def push_params(self, flat: dict) -> None:
        self.push((-PARAMS, flat, None))

    def push_barrier(self, op: str, args: tuple, waiter: Any) -> None:
        self.push((-BARRIER, (op, args, waiter), None))

    def push_batch(self, stream: StreamRef, ts: list, rows: list, weight: int, wake_writer) -> bool:
        """Queue rows of one stream as one item worth ``weight`` budget slots."""
        return self.push_rows((-ROWS, (stream.sid, ts, rows, weight), None), weight, wake_writer)

    def on_full(self, event: tuple, wake_writer) -> bool:
        """Slow path when the queue is at budget. Returns True if the event was queued."""
        if self.closed:
            raise SessionStateError("the session is closed")
        if self.on_full_policy == "drop":
            with self.space:
                self.dropped += 1
            return False
        with self.space:
            self.blocked_waits += 1
            while self.is_full():
                if self.sink_stalled():
                    self._drop_for_failing_sink(1)
                    return False
                wake_writer()
                self.space.wait(0.05)
        self.push(event)
        return True

    def sink_stalled(self) -> bool:
        """Has the store been failing for longer than ``SINK_STALL_LIMIT``?"""
        since = self.failing_since
        return since is not None and time.monotonic() - since > SINK_STALL_LIMIT

    def stall_error(self) -> SinkError:
        held = sum(len(rows) for rows, _ in self.retry.values())
        failing = time.monotonic() - (self.failing_since or time.monotonic())
        return SinkError(
            f"the store has been failing for {failing:.0f} s ({self.last_error}); {held} rows are kept in "
            f"memory and retried, {len(self.queue) // 3} events wait behind them"
        )

    def _drop_for_failing_sink(self, rows: int) -> None:
        """Called holding ``space``."""
        if self.dropped_sink_failing == 0:
            log.warning("dreamlake: the store has been failing for over %.0f s (%s); rows that do not fit the "
                        "memory budget are dropped and counted in health()['lost']['sink_failing']",
                        SINK_STALL_LIMIT, self.last_error)
        self.dropped_sink_failing += rows

    def push_rows(self, item: tuple, weight: int, wake_writer) -> bool:
        """Queue a ROWS item (see :meth:`push_batch`) worth ``weight`` budget slots.
        While it waits it shrinks ``max_items`` by ``3 * (weight - 1)`` until the
        writer takes it (:meth:`rows_taken`)."""
        extra = 3 * (weight - 1)
        with self.space:
            if self.closed:
                raise SessionStateError("the session is closed")
            # a weight larger than the whole budget is admitted once the queue is empty
            if self.queue and len(self.queue) + 3 * weight > self.max_items:
                if self.on_full_policy == "drop":
                    self.dropped += len(item[1][2])
                    return False
                self.blocked_waits += 1
                while self.queue and len(self.queue) + 3 * weight > self.max_items and not self.closed:
                    if self.sink_stalled():
                        self._drop_for_failing_sink(len(item[1][2]))
                        return False
                    wake_writer()
                    self.space.wait(0.05)
            self.max_items -= extra
            self.push(item)
            return True

    def rows_taken(self, weight: int) -> None:
        """Writer side of :meth:`push_rows`."""
        with self.space:
            if not self.closed:
                self.max_items += 3 * (weight - 1)
            self.space.notify_all()

    def made_room(self) -> None:
        """Writer side: wake producers blocked on a full queue."""
        with self.space:
            self.space.notify_all()

    def lost(self) -> dict[str, int]:
        """Rows not written to the store, by reason (all zero in a healthy session)."""
        return {"dropped_for_budget": self.dropped, "quarantined": self.quarantined, "sink_failing": self.dropped_sink_failing}

    def health(self) -> dict:
        return {
            "lost": self.lost(),
            "quarantined": self.quarantined,
            "quarantine_reasons": dict(self.quarantine_reasons),
            "queued": len(self.queue) // 3,
            "max_queued": self.max_events,
            "memory_budget": self.memory_budget,
            "on_full": self.on_full_policy,
            "dropped": self.dropped,
            "blocked_waits": self.blocked_waits,
            "rows_written": self.rows_written,
            "write_errors": self.write_errors,
            "last_error": self.last_error,
            "pending_retry_rows": sum(len(rows) for rows, _ in self.retry.values()),
        }


def _refuse(event: tuple) -> None:
    raise SessionStateError("the session is closed")
