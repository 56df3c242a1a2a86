"""A session's lock-free queue, its memory budget and its counters.

Two ways in, one writer:

* with the C hot path (:mod:`._hotpath`, the default where it is built),
  ``Track.append`` copies each row as a binary record into the session's ring
  (:mod:`._journal`: a crash journal for a local store, private memory for a
  remote or fan-out sink); rows the C path does not take
  (and log entries) go into the same ring as msgpack, from Python
  (:meth:`SessionPipe.put_row`). The deque then carries only params, barriers
  and rows too large for the ring, each with the ring position it follows, so
  the writer keeps them in order with the rows;
* otherwise (``DREAMLAKE_PURE_PYTHON=1``, no compiler at install, the agent's
  own pipes, a forked child) producers call ``pipe.push((stream_id, ts,
  fields))`` — a bound ``deque.extend`` of one three (see :mod:`._events`),
  atomic in CPython and lock-free.

Only when the queue (or ring) is at its budget does a producer take the slow
path (:meth:`SessionPipe.on_full`, :meth:`SessionPipe.wait_ring`), which applies
the policy:

* ``block`` (default, lossless): wait until the writer has made room;
* ``drop``: discard the event and count it.

The budget is expressed in bytes and enforced as a number of queued items
(three per event, ``memory_budget // EVENT_COST`` events), which the hot path
checks with one ``len()``; events carrying large values count their size.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any

import msgspec

from ._errors import SessionStateError, SinkError
from ._events import BARRIER, PARAMS, ROWS
from ._gil import waiting_on_writer
from ._native import _hotpath
from ._values import approx_bytes

log = logging.getLogger("dreamlake")

__all__ = ["SessionPipe", "StreamRef", "PyClock", "HOTPATH", "EVENT_COST", "DEFAULT_MEMORY_BUDGET", "LOG_STREAM", "SINK_STALL_LIMIT"]

#: Is the C hot path in use (built, and not switched off by ``DREAMLAKE_PURE_PYTHON=1``)?
HOTPATH = _hotpath is not None
_encode_pack = msgspec.msgpack.Encoder().encode

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


class PyClock:
    """One session's ``_ts`` clock, in Python (the C ``_hotpath.Clock`` has the same
    interface): ``auto()`` is now, strictly after every auto stamp before it;
    ``last`` is the calling thread's last stamp (``_ts=-1``), 0.0 before any."""

    def __init__(self) -> None:
        self.last_auto = 0.0  # last generated _ts (strictly increasing)
        self.local = threading.local()
        self.after_fork()

    def after_fork(self) -> None:
        # taken around the read-compare-store of the last auto _ts, so _ts stays
        # strictly increasing across threads (bound methods: cheaper than ``with``)
        lock = threading.Lock()
        self.acquire, self.release = lock.acquire, lock.release

    def auto(self) -> float:
        self.acquire()
        t = time.time()
        if t <= self.last_auto:
            t = self.last_auto + 1e-6
        self.last_auto = self.local.last = t
        self.release()
        return t

    def reserve(self, n: int) -> float:
        """The first of ``n`` consecutive auto stamps, 1 µs apart."""
        self.acquire()
        t = time.time()
        if t <= self.last_auto:
            t = self.last_auto + 1e-6
        self.last_auto = self.local.last = t + (n - 1) * 1e-6
        self.release()
        return t

    @property
    def last(self) -> float:
        return getattr(self.local, "last", 0.0)

    @last.setter
    def last(self, value: float) -> None:
        self.local.last = value


class SessionPipe:
    """Everything the writer needs to know about one open session."""

    def __init__(self, sink: Any, memory_budget: int = DEFAULT_MEMORY_BUDGET, on_full: str = "block",
                 journal: bool = False) -> None:
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
        #: the one ``_ts`` clock of the session; ``clock.last`` is per thread, so a
        #: robot thread and a training thread never borrow each other's ``_ts=-1``
        self.clock = _hotpath.Clock() if HOTPATH else PyClock()
        #: the crash journal (None: rows wait in memory only; see :mod:`._journal`)
        self.journal: Any = None
        self.ring: Any = None
        self._journal_lock = threading.Lock()  # mark_closed and the writer may both release it
        self._journal_released = False
        self.recovered_rows = 0
        self.dropped_ring_full = 0  # of ``dropped``: the journal ring had no room
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
        #: journal keys (see :mod:`._journal`): per stream, the first key not yet in the store
        self.first_unwritten: dict[int, int] = {}
        #: per stream, the journal key of the last row kept for retry
        self.retry_upto: dict[int, int] = {}
        #: when the writer last had nothing unwritten (monotonic): the backlog's age
        self.caught_up_at = time.monotonic()
        if HOTPATH and sink is not None:
            self._start_journal(sink, memory_budget, journal)

    def _start_journal(self, sink: Any, memory_budget: int, journal: bool) -> None:
        """A local store: recover what killed processes left in journals of this
        session. With ``journal`` (a session's own pipe; the agent's pipes keep the
        rows clients send in memory until written) this process's rows go into a
        ring: a file journal where a later open can replay it, else one in memory."""
        from . import _journal
        from ._agent_link import AgentSink
        from ._local_sink import LocalSink

        wanted = journal and _journal_wanted()
        if isinstance(sink, LocalSink):
            _journal.start(self, sink.directory, memory_budget, wanted)
        elif not wanted:
            return
        elif isinstance(sink, AgentSink) and not sink._remote:
            # through the agent: rows not yet sent survive a kill of this process;
            # the agent's own pipe for the session recovers them on its next open
            _journal.attach(self, sink.directory, memory_budget)
        else:
            # remote or fan-out: no later open could replay a file journal into the
            # server, so the ring lives in memory: the same hot path, the spool's promise
            _journal.attach_in_memory(self, memory_budget)

    # -- the journal ring ----------------------------------------------------------
    def attach_journal(self, journal: Any) -> None:
        """From now on rows go into ``journal``'s ring (see the module docstring)."""
        self.journal = journal
        self.ring = journal.ring
        for ref in self.stream_refs:
            journal.declare(ref.sid, ref.name, ref.is_log)
        self.push = self._push_with_ring

    def _push_with_ring(self, item: tuple) -> None:
        """``push`` while journaled: a row (a log entry) goes into the ring, anything
        else into the deque with the ring position it follows."""
        if item[0] >= 0:
            self.put_row(item[0], item[1], item[2])
        else:
            self.queue.extend((item[0], item[1], self.ring.head))

    def put_row(self, sid: int, ts: float, fields: dict, wake_writer: Any = None) -> bool:
        """Journal one row (a dict of plain values holding ``"_ts"``) from Python.
        Returns False if the policy dropped it."""
        try:
            payload = _encode_pack(fields)
            if self.ring.put(sid, ts, _hotpath.PACK, payload, 1):
                return True
        except (OverflowError, UnicodeEncodeError, msgspec.EncodeError):
            # larger than half the ring, or a field name the checks at the call let
            # through (the writer quarantines it, as without a journal): in memory only
            weight = max(1, approx_bytes(fields) // EVENT_COST)
            return self.push_rows((-ROWS, (sid, [ts], [fields], weight), self.ring.head), weight, wake_writer or _no_wake)
        return self.wait_ring(lambda: self.ring.put(sid, ts, _hotpath.PACK, payload, 1), 1, wake_writer)

    def put_batch(self, sid: int, ts: list, rows: list, wake_writer: Any) -> bool:
        """Journal rows of one stream (``append_batch``): one binary record per row
        where C takes them (a C loop), the rest as one msgpack record."""
        done = self.ring.put_rows(sid, ts, rows)
        if done == len(rows):
            return True
        ts, rows = ts[done:], rows[done:]
        payload = _encode_pack([ts, rows])
        try:
            if self.ring.put(sid, ts[-1], _hotpath.BATCH, payload, len(rows)):
                return True
        except OverflowError:
            if len(rows) > 1:  # halves, each journaled (or, once a single row, kept in memory)
                half = len(rows) // 2
                return self.put_batch(sid, ts[:half], rows[:half], wake_writer) & self.put_batch(sid, ts[half:], rows[half:], wake_writer)
            weight = max(1, approx_bytes(rows[0]) // EVENT_COST)
            return self.push_rows((-ROWS, (sid, ts, rows, weight), self.ring.head), weight, wake_writer)
        return self.wait_ring(lambda: self.ring.put(sid, ts[-1], _hotpath.BATCH, payload, len(rows)), len(rows), wake_writer)

    def wait_ring(self, put: Any, rows: int, wake_writer: Any) -> bool:
        """The ring is full (the writer has not yet written what it holds): apply
        the policy. ``put()`` retries the put; returns whether the rows went in."""
        if self.closed:
            raise SessionStateError("the session is closed")
        wake = wake_writer or _no_wake
        with self.space:
            if self.on_full_policy == "drop":
                self.dropped += rows
                self.dropped_ring_full += rows
                return False
            self.blocked_waits += 1
            with waiting_on_writer():
                while not put():
                    if self.closed:
                        raise SessionStateError("the session is closed")
                    if self.sink_stalled():
                        self._drop_for_failing_sink(rows)
                        return False
                    wake()
                    self.space.wait(0.05)
        return True

    def backlog(self) -> dict:
        """Rows appended but not yet in the store, and for how long the writer has
        not been caught up (seconds)."""
        ring = self.ring
        unread = (ring.rows_in - ring.rows_out) if ring is not None else len(self.queue) // 3
        rows = unread + sum(len(held[0]) for held in list(self.pending.values())) + self.writer_backlog
        age = time.monotonic() - self.caught_up_at if rows else 0.0
        return {"rows": rows, "age_s": round(age, 3)}

    def mark_closed(self) -> None:
        """Make every later push raise, at no cost to the open hot path; a journal
        whose rows are all written is deleted. While the writer still owns rows
        (a close that failed: it goes on retrying them) the journal stays mapped
        and locked, so no other process recovers rows this one writes later; the
        writer lets it go once it gives the pipe up (:meth:`release_journal`)."""
        self.closed = True
        self.max_items = -1
        self.push = _refuse
        if self.journal is not None:
            self.journal.ring.close()  # C appends now take the Python path, which raises
            if self.close_request is None:  # the writer is done with this pipe
                self.release_journal()

    def release_journal(self) -> None:
        """Once closed and given up by the writer: delete the journal if all its
        rows are written, else unlock it for the next open to recover."""
        with self._journal_lock:
            journal = self.journal
            if journal is None or not self.closed or self._journal_released:
                return
            self._journal_released = True
            ring = journal.ring
            done = ring.rows_in == ring.rows_out and not self.pending and not self.retry
            try:
                journal.remove() if done else journal.close()
            except OSError as exc:
                log.warning("dreamlake: could not release the journal %s: %s", journal.path, exc)

    def after_fork_in_child(self) -> None:
        """Events queued before fork belong to the parent, which writes them, and so
        does its journal: the child's rows wait in memory until written."""
        self.queue.clear()
        self.space = threading.Condition(threading.Lock())
        if isinstance(self.clock, PyClock):
            self.clock.after_fork()
        journal, self.journal, self.ring = self.journal, None, None
        if journal is not None:
            journal.forget_in_child()
            self.push = self.queue.extend
        self.first_unwritten = {}
        self.retry_upto = {}
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
                    if self.journal is not None:
                        self.journal.declare(ref.sid, name, is_log)
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
        """Queue rows of one stream as one item worth ``weight`` budget slots
        (journaled instead, while there is a journal)."""
        if self.ring is not None and not self.closed:
            return self.put_batch(stream.sid, ts, rows, wake_writer)
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
            with waiting_on_writer():
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
                with waiting_on_writer():
                    while self.queue and len(self.queue) + 3 * weight > self.max_items and not self.closed:
                        if self.sink_stalled():
                            self._drop_for_failing_sink(len(item[1][2]))
                            return False
                        wake_writer()
                        self.space.wait(0.05)
            self.max_items -= extra
            self.queue.extend(item) if self.ring is not None else self.push(item)
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
        """Rows not written to the store, by reason (all zero in a healthy session);
        ``dropped_for_budget`` includes what a full journal ring dropped (``health()
        ["journal"]["dropped_ring_full"]``)."""
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
            "backlog": self.backlog(),
            "hot_path": "c" if HOTPATH else "python",
            "journal": None if self.journal is None else {**self.journal.state(), "recovered_rows": self.recovered_rows,
                                                          "dropped_ring_full": self.dropped_ring_full},
        }


def _refuse(event: tuple) -> None:
    raise SessionStateError("the session is closed")


def _no_wake() -> None:
    pass


def _journal_wanted() -> bool:
    """``DREAMLAKE_JOURNAL=0`` opts out (benchmarks compare with it off)."""
    return os.environ.get("DREAMLAKE_JOURNAL", "1").lower() not in ("0", "off", "false", "no")
