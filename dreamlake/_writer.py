"""The one background writer thread of a process.

It drains every open session's queue into per-stream pending lists (in bulk:
``groupby`` + ``list.extend``, no per-row Python work), applies the ``_ts``
merge rule of :mod:`._batcher` when it writes, and hands the rows to the
session's sink. Reads, flushes,
uploads and close arrive as barriers in the same queue and run here, after the
data queued before them is written.

Tail latency: a thread holding the GIL delays the training loop. The writer
therefore works in short steps (a slice of the queue, one stream's write, a
sink's chunk) and hands the GIL over between them (:mod:`._gil`), so a
producer waits at most one step, not the interpreter's 5 ms switch interval.

Failures never reach ``append()``: a failed write is kept (within the
session's memory budget), counted in ``health()``, logged once per error kind
and retried with backoff; an explicit ``flush()`` reports it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from itertools import groupby

import msgspec
from operator import itemgetter
from typing import Any

from ._batcher import merge_events, open_group_start
from ._errors import SinkError
from ._events import PARAMS, ROWS, Waiter
from ._gil import step_rows, waiting_on_writer, yield_gil
from ._pipe import EVENT_COST, HOTPATH, SessionPipe, StreamRef, _hotpath
from .sinks._interfaces import ClosesLater, DeliversLater, ForkAware, Quarantines, RecordsLosses, ReportsFlush, call_store

_decode_pack = msgspec.msgpack.Decoder().decode
_encode_pack = msgspec.msgpack.Encoder().encode
#: a journal key's record offset is ``key >> KEY_SHIFT`` (see :mod:`._journal`);
#: the C ring's own constant (only journaled pipes, which need the extension, use it)
KEY_SHIFT = _hotpath.KEY_SHIFT if HOTPATH else None

__all__ = ["Writer", "get_writer", "TICK", "ROW_MAX_AGE"]

log = logging.getLogger("dreamlake")

#: The writer wakes at least this often (seconds): the bound on what a
#: ``kill -9`` can lose in thread mode, together with ``ROW_MAX_AGE``.
TICK = 0.02
#: A track's newest row stays open for merging at most this long (seconds).
ROW_MAX_AGE = 0.1
#: Events taken from a queue before the writer gives the GIL back.
SLICE_EVENTS = 256
#: How often a caller waiting for a barrier checks that the store is not failing (seconds).
STALL_POLL = 0.05
#: Retry backoff after a failed write (seconds): doubles up to the maximum.
RETRY_MIN, RETRY_MAX = 0.05, 2.0
#: What a sink raises for a row it can never write (retrying would stall the session):
#: unencodable values, never I/O (OSError is retried).
BAD_ROW_ERRORS = (ValueError, TypeError, OverflowError, RecursionError, msgspec.EncodeError)


_first, _second, _third = itemgetter(0), itemgetter(1), itemgetter(2)


class Writer:
    def __init__(self) -> None:
        self._pipes: list[SessionPipe] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_delay = RETRY_MIN
        self._logged_errors: set[str] = set()

    # -- producer side ---------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def register(self, pipe: SessionPipe) -> None:
        with self._lock:
            if pipe not in self._pipes:
                self._pipes.append(pipe)
            self._ensure_thread()

    def unregister(self, pipe: SessionPipe) -> None:
        with self._lock:
            if pipe in self._pipes:
                self._pipes.remove(pipe)

    def call(self, pipe: SessionPipe, op: str, args: tuple = (), timeout: float | None = 60.0) -> Any:
        """Queue a barrier and wait for its result (see ``_events``)."""
        waiter = Waiter()
        pipe.push_barrier(op, args, waiter)
        self._wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        with waiting_on_writer():
            while not waiter.wait(STALL_POLL):
                if pipe.sink_stalled():  # a failing store: say so now, not after the timeout
                    raise pipe.stall_error()
                if deadline is not None and time.monotonic() > deadline:
                    from ._errors import FlushTimeout

                    raise FlushTimeout(
                        f"{op} did not complete within {timeout}s; {len(pipe.queue)} events still queued"
                    )
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="dreamlake-writer", daemon=True)
            self._thread.start()

    # -- writer thread ---------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait(TICK)
            self._wake.clear()
            try:
                self._cycle()
            except BaseException as exc:  # never let the thread die silently
                log.exception("dreamlake writer cycle failed: %s", exc)

    def _cycle(self) -> None:
        with self._lock:
            pipes = list(self._pipes)
        for pipe in pipes:
            self._drain(pipe)
        now = time.monotonic()
        for pipe in pipes:
            self._write_pipe(pipe, hold_open=True)
            self._close_aged(pipe, now - (pipe.row_max_age or ROW_MAX_AGE))
            if pipe.pending_params:
                self._write_params(pipe)
            if pipe.retry and now >= pipe.retry_at:
                self._write_retry(pipe)
            if pipe.close_request is not None and not pipe.retry and not pipe.pending_params:
                self._close(pipe, *pipe.close_request)  # closed while rows were unwritten

    def _drain(self, pipe: SessionPipe) -> None:
        """Move queued items into per-stream pending lists, a slice at a time.
        A slice of rows of one stream (the common case) moves with two C-level
        slices; mixed slices go run by run."""
        if pipe.ring is not None:
            return self._drain_journaled(pipe)
        queue = pipe.queue
        popleft = queue.popleft
        while len(queue) >= 3:
            if pipe.retry and pipe.writer_backlog >= pipe.max_events:
                return  # sink failing and budget used: leave the rest queued
            items = [popleft() for _ in range(min(SLICE_EVENTS, len(queue) // 3) * 3)]
            sids = items[0::3]
            first = sids[0]
            if first >= 0 and min(sids) == first == max(sids):
                held = self._held(pipe, first)
                held[0].extend(items[1::3])
                held[1].extend(items[2::3])
                pipe.held_rows += len(sids)
            else:
                for key, run in groupby(zip(sids, items[1::3], items[2::3]), _first):
                    if key >= 0:
                        run = list(run)
                        held = self._held(pipe, key)
                        held[0].extend(map(_second, run))
                        held[1].extend(map(_third, run))
                        pipe.held_rows += len(run)
                    elif key == -ROWS:
                        for _, (sid, ts, rows, weight), _ in run:
                            held = self._held(pipe, sid)
                            held[0].extend(ts)
                            held[1].extend(rows)
                            pipe.held_rows += weight  # budget weight, not row count
                            pipe.rows_taken(weight)
                    elif key == -PARAMS:
                        for _, flat, _ in run:
                            pipe.pending_params.update(flat)
                    else:
                        for _, barrier, _ in run:
                            self._barrier(pipe, barrier)
            if pipe.blocked_waits:
                pipe.made_room()
            if pipe.held_rows >= pipe.batch_rows:
                self._write_pipe(pipe, hold_open=True)
            yield_gil()

    def _drain_journaled(self, pipe: SessionPipe) -> None:
        """:meth:`_drain` for a journaled pipe: rows come from the ring, a slice
        (``SLICE_EVENTS`` rows) per C call; the deque's items (params, barriers,
        rows too large for the ring) each wait until the ring is read up to the
        position they were queued at."""
        queue = pipe.queue
        ring = pipe.ring
        while True:
            if pipe.retry and pipe.writer_backlog >= pipe.max_events:
                break  # sink failing and budget used: leave the rest in the ring
            if len(queue) >= 3:
                if ring.read_pos < queue[2] and self._take_ring(pipe, queue[2]):
                    continue
                kind, payload, mark = queue.popleft(), queue.popleft(), queue.popleft()
                if kind == -ROWS:
                    sid, ts, rows, weight = payload
                    self._hold(pipe, sid, ts, rows, [(mark << KEY_SHIFT) - 1] * len(rows))
                    pipe.rows_taken(weight)
                elif kind == -PARAMS:
                    pipe.pending_params.update(payload)
                else:
                    self._barrier(pipe, payload)
                    self._advance_tail(pipe)
            elif not self._take_ring(pipe, None):
                break
        self._advance_tail(pipe)

    def _take_ring(self, pipe: SessionPipe, upto: int | None) -> int:
        """Read one slice of rows from the ring into the pending lists. Large rows
        weigh their size (``EVENT_COST`` bytes a slot), so the writer holds no more
        of the memory budget than with small ones."""
        before = pipe.ring.read_pos
        count, streams = pipe.ring.read(step_rows(SLICE_EVENTS), upto, _decode_pack)
        if not count:
            return 0
        pipe.held_rows += max(0, (pipe.ring.read_pos - before) // EVENT_COST - count)
        for sid, ts, rows, keys in streams:
            self._hold(pipe, sid, ts, rows, keys)
        if pipe.blocked_waits:
            pipe.made_room()
        if pipe.held_rows >= pipe.batch_rows:
            self._write_pipe(pipe, hold_open=True)
            self._advance_tail(pipe)
        yield_gil()
        return count

    def _hold(self, pipe: SessionPipe, sid: int, ts: list, rows: list, keys: list) -> None:
        held = self._held(pipe, sid)
        if sid not in pipe.first_unwritten:
            pipe.first_unwritten[sid] = keys[0]
        held[0].extend(ts)
        held[1].extend(rows)
        held[2].extend(keys)
        pipe.held_rows += len(rows)

    @staticmethod
    def _marked(pipe: SessionPipe, sid: int, upto: int) -> None:
        """Rows of stream ``sid`` up to journal key ``upto`` are in the store."""
        if upto >= 0:
            pipe.ring.set_mark(sid, upto + 1)
        held = pipe.pending.get(sid)
        if held and held[2]:
            pipe.first_unwritten[sid] = held[2][0]
        else:
            pipe.first_unwritten.pop(sid, None)

    @staticmethod
    def _advance_tail(pipe: SessionPipe) -> None:
        """Free the ring's room up to the oldest row not yet in the store. When
        open rows (held for merging) pin more than half the ring, they are
        journaled again at the head (:meth:`_relocate`), so a rarely appended
        track never makes producers wait for room."""
        ring = pipe.ring
        if ring is None:
            return
        oldest = min(pipe.first_unwritten.values(), default=None)
        if oldest is not None and ring.head - (max(0, oldest) >> KEY_SHIFT) > ring.capacity // 2:
            for _ in range(8):  # the oldest few streams; each relocation is one record
                sid = min(pipe.first_unwritten, key=pipe.first_unwritten.__getitem__)
                if not Writer._relocate(pipe, sid):
                    break
            oldest = min(pipe.first_unwritten.values(), default=None)
        ring.set_tail(ring.read_pos if oldest is None else max(0, oldest) >> KEY_SHIFT)
        if oldest is None and ring.rows_in == ring.rows_out:
            pipe.caught_up_at = time.monotonic()
        if pipe.blocked_waits:
            pipe.made_room()

    @staticmethod
    def _relocate(pipe: SessionPipe, sid: int) -> bool:
        """Journal stream ``sid``'s held rows again at the ring's head (one record)
        and mark their old copies done: every row of the stream before the new
        record is then stored or in it."""
        held = pipe.pending.get(sid)
        if not held or not held[1] or pipe.stream_refs[sid] in pipe.retry:
            return False
        ts, rows = held[0], held[1]
        payload = _encode_pack([ts, rows])
        if len(payload) > pipe.ring.capacity // 4:
            return False  # too large to copy: it waits to be written (at most the row age)
        offset = pipe.ring.relocate(sid, ts[-1], payload, len(rows))
        if offset is None:
            return False
        base = offset << KEY_SHIFT
        held[2] = [base | k for k in range(len(rows))]
        pipe.ring.set_mark(sid, base)
        pipe.first_unwritten[sid] = base
        return True

    @staticmethod
    def _held(pipe: SessionPipe, sid: int) -> list:
        held = pipe.pending.get(sid)
        if held is None:
            held = pipe.pending[sid] = [[], [], []]  # ts, rows, journal keys (journaled pipes)
        return held

    def _write_pipe(self, pipe: SessionPipe, hold_open: bool, sids: list | None = None) -> None:
        """Write the pipe's pending rows; with ``hold_open`` each stream's open row
        (trailing equal-_ts group) stays pending so it can still merge."""
        pending = pipe.pending
        for sid in list(pending) if sids is None else sids:
            held = pending.get(sid)
            if not held or not held[0]:
                continue
            ts, rows, keys = held
            stream = pipe.stream_refs[sid]
            hold = hold_open and stream.merge  # logs never merge: nothing of theirs stays open
            cut = open_group_start(ts) if hold else len(ts)
            if hold:
                opened = ts[cut]
                if pipe.open_ts.get(sid) != opened:
                    pipe.open_ts[sid] = opened
                    pipe.open_since[sid] = time.monotonic()
                if cut == 0:
                    continue
                pending[sid] = [ts[cut:], rows[cut:], keys[cut:]]
                ts, rows = ts[:cut], rows[:cut]
            else:
                del pending[sid]
                pipe.open_ts.pop(sid, None)
                pipe.open_since.pop(sid, None)
            rows, ts = merge_events(ts, rows, stream.merge)
            if pipe.retry:
                self._stash(pipe, stream, rows, ts)
            else:
                self._write_rows(pipe, stream, rows, ts)
            if keys:  # journaled: mark what is stored, or remember where the stash ends
                if stream in pipe.retry:
                    pipe.retry_upto[sid] = keys[cut - 1]
                else:
                    self._marked(pipe, sid, keys[cut - 1])
            yield_gil()  # one stream's write is one step
        pipe.held_rows = sum(len(held[0]) for held in pending.values())  # what is left: open rows

    def _close_aged(self, pipe: SessionPipe, opened_before: float) -> None:
        aged = [sid for sid, since in pipe.open_since.items() if since <= opened_before and sid in pipe.pending]
        if aged:
            self._write_pipe(pipe, hold_open=False, sids=aged)

    def _write_rows(self, pipe: SessionPipe, stream: StreamRef, rows: list, ts: list) -> bool:
        try:
            start = pipe.sink.write_rows(stream.name, stream.is_log, rows, ts)
        except BAD_ROW_ERRORS:
            return self._write_rows_one_by_one(pipe, stream, rows, ts)
        except Exception as exc:
            self._record_failure(pipe, exc)
            self._stash(pipe, stream, rows, ts)
            return False
        stream.note_written(start, len(rows))
        pipe.rows_written += len(rows)
        return True

    def _write_rows_one_by_one(self, pipe: SessionPipe, stream: StreamRef, rows: list, ts: list) -> bool:
        """A batch the sink refused for a value in it (the safety net behind the
        checks at the call): write its rows one at a time, so the row that fails
        is quarantined alone and every other row is written, in order, once (the
        store recognises lines of the failed batch that did land)."""
        for i, (row, stamp) in enumerate(zip(rows, ts)):
            try:
                start = pipe.sink.write_rows(stream.name, stream.is_log, [row], [stamp])
            except BAD_ROW_ERRORS as exc:
                self._quarantine(pipe, stream, row, exc)
                continue
            except Exception as exc:
                self._record_failure(pipe, exc)
                self._stash(pipe, stream, rows[i:], ts[i:])
                return False
            stream.note_written(start, 1)
            pipe.rows_written += 1
        return True

    def _quarantine(self, pipe: SessionPipe, stream: StreamRef, row: Any, exc: BaseException) -> None:
        reason = type(exc).__name__
        pipe.quarantined += 1
        pipe.quarantine_reasons[reason] = pipe.quarantine_reasons.get(reason, 0) + 1
        if isinstance(pipe.sink, Quarantines):
            try:
                pipe.sink.quarantine(stream.name, stream.is_log, row, f"{reason}: {exc}")
            except Exception as side_exc:  # the count stays; the side file is best effort
                log.error("dreamlake: could not keep a quarantined row aside: %s", side_exc)
        if pipe.quarantined == 1:
            log.warning("dreamlake: a row of %r could not be written (%s: %s); it is kept aside and counted in "
                        "health()['lost']['quarantined']; the session goes on", stream.name, reason, exc)

    def _stash(self, pipe: SessionPipe, stream: StreamRef, rows: list, ts: list) -> None:
        held = pipe.retry.get(stream)
        if held is None:
            pipe.retry[stream] = (rows, ts)
        else:
            held[0].extend(rows)
            held[1].extend(ts)
        pipe.writer_backlog += len(rows)

    def _write_retry(self, pipe: SessionPipe) -> None:
        held, pipe.retry = pipe.retry, {}
        pipe.writer_backlog = 0
        for stream, (rows, ts) in held.items():
            if pipe.retry:  # failed again: keep order, hold the rest
                self._stash(pipe, stream, rows, ts)
            else:
                self._write_rows(pipe, stream, rows, ts)
            if stream not in pipe.retry and stream.sid in pipe.retry_upto:
                self._marked(pipe, stream.sid, pipe.retry_upto.pop(stream.sid))
        self._advance_tail(pipe)
        if not pipe.retry:
            pipe.retry_at = 0.0
            self._retry_delay = RETRY_MIN
            if not pipe.pending_params:
                pipe.failing_since = None
            pipe.made_room()

    def _write_params(self, pipe: SessionPipe) -> None:
        params, pipe.pending_params = pipe.pending_params, {}
        try:
            pipe.sink.write_params(params)
        except Exception as exc:
            self._record_failure(pipe, exc)
            params.update(pipe.pending_params)
            pipe.pending_params = params
        else:
            if not pipe.retry:
                pipe.failing_since = None

    def _record_failure(self, pipe: SessionPipe, exc: BaseException) -> None:
        if pipe.failing_since is None:
            pipe.failing_since = time.monotonic()
        pipe.write_errors += 1
        pipe.last_error = f"{type(exc).__name__}: {exc}"
        pipe.retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
        key = f"{type(exc).__name__}:{getattr(exc, 'errno', '')}"
        if key not in self._logged_errors:
            self._logged_errors.add(key)
            log.warning("dreamlake: write failed (%s); data kept in memory and retried", pipe.last_error)

    def _settle(self, pipe: SessionPipe) -> None:
        """Write everything of ``pipe`` the writer holds (barrier prelude)."""
        if pipe.retry:
            self._write_retry(pipe)
        self._write_pipe(pipe, hold_open=False)
        if pipe.pending_params:
            self._write_params(pipe)

    def _barrier(self, pipe: SessionPipe, barrier: tuple) -> None:
        op, args, waiter = barrier
        try:
            self._settle(pipe)
            if op == "flush":
                waiter.succeed(self._flush(pipe, *args))
            elif op == "close":
                waiter.succeed(self._close(pipe, *args))
            elif op == "open":
                waiter.succeed(pipe.sink.open(*args))
            elif op == "mark":  # a sink that delivers later: the caller waits for the mark
                if not isinstance(pipe.sink, DeliversLater):
                    raise TypeError(f"{type(pipe.sink).__name__} delivers at once; nothing to mark")
                waiter.succeed(pipe.sink.delivery_mark())
            else:  # a read or file call: everything queued before is written now
                waiter.succeed(call_store(pipe.sink.store, op, args))
        except BaseException as exc:
            waiter.fail(exc)

    def _unwritten_error(self, pipe: SessionPipe) -> SinkError:
        held = sum(len(rows) for rows, _ in pipe.retry.values())
        return SinkError(f"{held} rows are not written yet ({pipe.last_error}); kept and retried")

    def _flush(self, pipe: SessionPipe, names: list[str] | None) -> list[dict]:
        if pipe.retry or pipe.pending_params:
            raise self._unwritten_error(pipe)
        if isinstance(pipe.sink, ReportsFlush):  # agent mode: the agent assigns indices, so it keeps the windows
            return pipe.sink.flush_report([s.name for s in pipe.streams.values() if not s.is_log] if names is None else names)
        pipe.sink.flush()
        streams = list(pipe.streams.values()) if names is None else [pipe.stream(n) for n in names]
        results = []
        for stream in streams:
            if stream.is_log:
                continue
            results.append(
                {
                    "trackId": stream.name,
                    "startIndex": stream.flush_start,
                    "endIndex": stream.flush_end,
                    "count": stream.flush_count,
                }
            )
            stream.reset_flush_window()
        return results

    def _close(self, pipe: SessionPipe, status: str, error: str | None, lost: dict | None = None) -> Any:
        """Close the sink; if rows are still unwritten, keep retrying them and
        close once they are written (the caller gets a SinkError now).
        ``lost``: losses counted elsewhere (an agent's client), added to the pipe's.
        A sink that closes later (remote) is only sealed here: what ``seal``
        returns is the barrier's result, and the caller finishes the close on its
        own thread; a close this cycle completes for an earlier failed one is
        finished on a thread of its own."""
        deferred = pipe.close_request is not None  # retried from _cycle: nobody waits for it
        unwritten = self._unwritten_error(pipe) if (pipe.retry or pipe.pending_params) else None
        pipe.close_request = (status, error, lost) if unwritten is not None else None
        sealed = None
        if unwritten is None:
            sink = pipe.sink
            if isinstance(sink, RecordsLosses):
                totals = pipe.lost()
                for reason, count in (lost or {}).items():
                    totals[reason] = totals.get(reason, 0) + count
                sink.record_losses(totals)
            if isinstance(sink, ClosesLater):
                sealed = sink.seal(status, error)
                if deferred:
                    threading.Thread(target=sink.finish_close, args=(sealed,), name="dreamlake-close", daemon=True).start()
            else:
                sink.close(status, error)
        if unwritten is None and deferred:
            # kept locked since the failed close: its rows are now written. Before the
            # pipe leaves the writer, so a pipe gone from pipes() has no journal left
            pipe.release_journal()
        with self._lock:
            if unwritten is None and pipe in self._pipes:
                self._pipes.remove(pipe)
        if unwritten is not None:
            raise unwritten
        return sealed

    # -- lifecycle ---------------------------------------------------------
    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        for pipe in self._pipes:
            pipe.after_fork_in_child()
            if isinstance(pipe.sink, ForkAware):
                pipe.sink.after_fork_in_child()
        if self._pipes:
            self._ensure_thread()

    def pipes(self) -> list[SessionPipe]:
        with self._lock:
            return list(self._pipes)


_writer: Writer | None = None
_writer_lock = threading.Lock()


def get_writer() -> Writer:
    global _writer
    if _writer is None:
        with _writer_lock:
            if _writer is None:
                _writer = Writer()
    return _writer


def _after_fork_in_child() -> None:
    global _writer_lock
    _writer_lock = threading.Lock()
    if _writer is not None:
        _writer.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
