"""A session's lock-free queue, its memory budget and its counters.

Producers call :meth:`SessionPipe.put_row`: under the session's producer
lock (also the lock of the auto ``_ts``) it stamps the row, encodes it to
bytes, copies them into the session's crash journal (:mod:`._journal`) and
pushes one three (see :mod:`._events`) with a bound ``deque.extend``; so
journal order is queue order, which the writer relies on to mark rows
written. Only when the queue is at its budget does a producer take the slow
path (:meth:`SessionPipe.wait_room`), which applies the policy:

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

import msgspec


from ._errors import SessionStateError
from ._events import BARRIER, BATCH, PARAMS, ROWS
from ._journal import KEY_SHIFT, RECORD, Journal, JournalFull
from ._values import INT_RANGE, PLAIN_SCALARS, check_ints, encode_row, encode_value, prepare_fields

log = logging.getLogger("dreamlake")

__all__ = ["SessionPipe", "StreamRef", "EVENT_COST", "DEFAULT_MEMORY_BUDGET", "LOG_STREAM"]

#: Measured cost of one queued small-row event (tuple + dict of 3 floats), bytes.
EVENT_COST = 512
DEFAULT_MEMORY_BUDGET = 64 << 20
MIN_MEMORY_BUDGET = 64 << 10
#: The log stream's key: not a valid track name, so a track named "logs" is its own stream.
LOG_STREAM = "\x00logs"
#: How long ``block`` waits on a store that keeps failing (disk full, read-only)
#: before it gives way: rows that do not fit the budget are then dropped and
#: counted, and ``flush()``/``close()`` raise ``SinkError`` instead of waiting.
SINK_STALL_LIMIT = 5.0
#: Most rows the writer holds for one session before it writes them.
MAX_WRITER_ROWS = 4096


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
        #: the sink writes encoded rows (``msgspec.Raw``) as they are (the local store does)
        self.sink_takes_encoded = bool(getattr(sink, "takes_encoded_rows", False))
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
        self.journal_waits = 0
        self.dropped_journal_full = 0  # of ``dropped``: the journal ring had no room
        self.dropped_sink_failing = 0  # of ``dropped``: ``block`` gave way to a failing store
        self.warned_stalled = False
        #: monotonic time of the first failure of the current run of failures (writer side)
        self.failing_since: float | None = None
        self.recovered_rows = 0  # rows of killed processes replayed when this session opened
        self.write_errors = 0
        self.last_error: str | None = None
        self.pending_params: dict = {}
        #: rows whose write failed, per stream: [rows, ts, first key, last key]
        self.retry: dict[StreamRef, list] = {}
        self.retry_at = 0.0
        self.writer_backlog = 0
        self.closed = False
        self.close_request: tuple | None = None
        #: how long a stream's newest row stays open for merging (None: the writer's default);
        #: the agent widens it so rows from several processes can meet
        self.row_max_age: float | None = None
        # writer-side state (touched only by the writer thread)
        self.pending: dict[int, list] = {}  # stream id -> [ts list, rows list, journal keys]
        self.held_rows = 0
        #: the crash journal (None: not journaled, e.g. the agent's own pipes)
        self.journal: Journal | None = None
        self.drain_offset = 0  # journal offset of the next queued record (writer side)
        self.backlog_since: float | None = None  # monotonic time the writer last had nothing unwritten
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

    def attach_journal(self, journal: Journal) -> None:
        """Journal every row from now on (before the first stream is made)."""
        self.journal = journal
        for ref in self.stream_refs:
            journal.declare(ref.sid, ref.name, ref.is_log)

    # -- the producers' path -------------------------------------------------------
    def put_row(self, sid: int, fields: dict, stamp: Any, wake_writer, remember: bool = True) -> bool:
        """Stamp, encode, journal and queue one row (a dict of the caller's own,
        not yet validated). ``stamp``: None (now), ``-1`` (this thread's last
        ``_ts``) or a checked float, which ``remember`` makes this thread's last
        ``_ts``. Returns False if the row was dropped."""
        if len(self.queue) >= self.max_items and not self.wait_room(wake_writer):
            return False
        for value in fields.values():
            kind = type(value)
            if kind is int:
                if not _INT_MIN <= value <= _INT_MAX:
                    check_ints(fields)  # raises the clear error
            elif kind not in PLAIN_SCALARS:  # containers, strings, numpy, ...
                fields = prepare_fields(fields)
                break
        while True:
            self.ts_acquire()
            try:
                if stamp is None:
                    t = time.time()
                    if t <= self.last_auto_ts:
                        t = self.last_auto_ts + 1e-6
                    self.last_auto_ts = self.thread_ts.last = t
                elif stamp == -1:
                    t = getattr(self.thread_ts, "last", 0.0)
                    if t == 0.0:  # no _ts yet in this thread: now
                        t = time.time()
                        if t <= self.last_auto_ts:
                            t = self.last_auto_ts + 1e-6
                        self.last_auto_ts = self.thread_ts.last = t
                else:
                    t = stamp
                    if remember:
                        self.thread_ts.last = t
                fields["_ts"] = t
                try:
                    payload = _encode(fields)
                except (UnicodeEncodeError, TypeError):
                    payload = encode_value(fields)  # raises the clear error
                if b"null" in payload:  # None, or NaN/inf: tagged
                    payload = encode_value(fields)
                journal = self.journal
                if len(payload) <= EVENT_COST:
                    if journal is not None:
                        journal.put(sid << 2, payload)
                    self.push((sid, t, payload))
                    return True
                # a large row: one item that takes budget in proportion to its size
                weight = len(payload) // EVENT_COST
                payload = _batch_blob(weight, [t], payload)
                if journal is not None:
                    journal.put(sid << 2 | 1, payload)
                with self.space:  # admitted on one slot; later producers see the rest taken
                    self.max_items -= 3 * (weight - 1)
                self.push((-BATCH, sid, payload))
                return True
            except JournalFull:
                pass
            finally:
                self.ts_release()
            if not self.wait_journal(RECORD.size + len(payload), wake_writer):
                return False

    def put_batch(self, sid: int, ts: list, rows: list, weight: int, wake_writer) -> bool:
        """Queue rows of one stream (dicts holding ``_ts``, already captured) as
        one journaled item worth ``weight`` budget slots."""
        blob = encode_value([weight, ts, rows])
        if not self.admit(weight, len(rows), wake_writer):
            return False
        while True:
            self.ts_acquire()
            try:
                if self.journal is not None:
                    self.journal.put(sid << 2 | 1, blob)
                self.push((-BATCH, sid, blob))
                return True
            except JournalFull:
                pass
            finally:
                self.ts_release()
            if not self.wait_journal(RECORD.size + len(blob), wake_writer):
                with self.space:
                    self.max_items += 3 * (weight - 1)
                return False

    def wait_room(self, wake_writer) -> bool:
        """The queue is at budget: wait for the writer (``block``) or count a drop."""
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
                    self._drop_stalled(1)
                    return False
                wake_writer()
                self.space.wait(0.05)
                if self.closed:
                    raise SessionStateError("the session is closed")
        return True

    def sink_stalled(self) -> bool:
        """The sink has been failing for longer than ``SINK_STALL_LIMIT``."""
        since = self.failing_since
        return since is not None and time.monotonic() - since > SINK_STALL_LIMIT

    def _drop_stalled(self, rows: int) -> None:
        """``block`` gives way: the store has failed too long to wait for (space held)."""
        self.dropped += rows
        self.dropped_sink_failing += rows
        if not self.warned_stalled:
            self.warned_stalled = True
            log.warning(
                "dreamlake: the store has been failing for over %.0f s (%s); rows that do not fit "
                "the memory budget are dropped and counted in health()['lost'] until it recovers",
                SINK_STALL_LIMIT, self.last_error,
            )

    def wait_journal(self, size: int, wake_writer) -> bool:
        """The journal ring is full (the writer holds unwritten rows): wait for it
        to write them (``block``) or count a drop."""
        journal = self.journal
        if self.on_full_policy == "drop":
            with self.space:
                self.dropped += 1
                self.dropped_journal_full += 1
            return False
        with self.space:
            self.journal_waits += 1
            while journal.head + size - journal.tail > journal.capacity:
                if self.sink_stalled():
                    self._drop_stalled(1)
                    return False
                wake_writer()
                self.space.wait(0.05)
                if self.closed:
                    raise SessionStateError("the session is closed")
        return True

    def admit(self, weight: int, rows: int, wake_writer) -> bool:
        """Reserve ``weight`` budget slots for one item (``max_items`` shrinks by
        ``3 * (weight - 1)`` until the writer takes it, :meth:`rows_taken`);
        waits (``block``) or counts ``rows`` dropped."""
        extra = 3 * (weight - 1)
        with self.space:
            if self.closed:
                raise SessionStateError("the session is closed")
            # a weight larger than the whole budget is admitted once the queue is empty
            if self.queue and len(self.queue) + 3 * weight > self.max_items:
                if self.on_full_policy == "drop":
                    self.dropped += rows
                    return False
                self.blocked_waits += 1
                while self.queue and len(self.queue) + 3 * weight > self.max_items and not self.closed:
                    if self.sink_stalled():
                        self._drop_stalled(rows)
                        return False
                    wake_writer()
                    self.space.wait(0.05)
            self.max_items -= extra
            return True

    def mark_closed(self) -> None:
        """Make every later push raise, at no cost to the open hot path."""
        self.closed = True
        self.max_items = -1
        self.push = _refuse

    def after_fork_in_child(self) -> None:
        """Events queued before fork belong to the parent, which writes them; so
        does its journal (the child starts its own)."""
        self.queue.clear()
        journal, self.journal = self.journal, None
        self.drain_offset = 0
        if journal is not None:
            journal.forget_in_child()
            try:
                self.attach_journal(Journal(journal.session_dir, journal.capacity))
            except OSError:
                pass  # the child's rows are then kept as before: in memory until written
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
        """Queue rows of one stream as one item worth ``weight`` budget slots."""
        return self.push_rows((-ROWS, (stream.sid, ts, rows, weight), None), weight, wake_writer)

    def push_rows(self, item: tuple, weight: int, wake_writer) -> bool:
        """Queue a ROWS item (see :meth:`push_batch`) worth ``weight`` budget slots."""
        if not self.admit(weight, len(item[1][2]), wake_writer):
            return False
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

    def health(self) -> dict:
        return {
            "queued": len(self.queue) // 3,
            "max_queued": self.max_events,
            "memory_budget": self.memory_budget,
            "on_full": self.on_full_policy,
            "dropped": self.dropped,
            "blocked_waits": self.blocked_waits,
            "rows_written": self.rows_written,
            "write_errors": self.write_errors,
            "last_error": self.last_error,
            "pending_retry_rows": sum(len(held[0]) for held in self.retry.values()),
            **self.backlog(),
        }

    def backlog(self) -> dict:
        """Rows appended and not yet in the store, and for how long the writer has
        had such rows; with the journal, what a ``kill -9`` now would leave to
        recover on the next open."""
        rows = len(self.queue) // 3 + self.held_rows + sum(len(held[0]) for held in self.retry.values())
        since = self.backlog_since
        journal = self.journal
        return {
            "backlog_rows": rows,
            "backlog_age_s": round(time.monotonic() - since, 3) if rows and since is not None else 0.0,
            "journal": journal.path if journal is not None else None,
            "journal_bytes": journal.used() if journal is not None else 0,
            "journal_waits": self.journal_waits,
            # rows lost, by reason (``dropped`` is their sum)
            "lost": {
                "queue_full": self.dropped - self.dropped_journal_full - self.dropped_sink_failing,
                "journal_full": self.dropped_journal_full,
                "sink_failing": self.dropped_sink_failing,
            },
            "sink_failing_s": round(time.monotonic() - self.failing_since, 3) if self.failing_since is not None else 0.0,
            "recovered_rows": self.recovered_rows,
        }


def _refuse(event: tuple) -> None:
    raise SessionStateError("the session is closed")


def _batch_blob(weight: int, ts: list, payload: bytes) -> bytes:
    """``[weight, ts, [row]]`` around an already encoded row."""
    return encode_row([weight, ts, [msgspec.Raw(payload)]])


_encode = encode_row
_INT_MIN, _INT_MAX = INT_RANGE
