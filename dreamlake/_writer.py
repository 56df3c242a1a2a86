"""The one background writer thread of a process.

It drains every open session's queue, feeds the rows to the :class:`Batcher`
(merge rule), and hands closed rows to each session's sink. Reads, flushes,
uploads and close arrive as barriers in the same queue and run here, after the
data queued before them is written.

Tail latency: a thread holding the GIL delays the training loop. The writer
therefore works in short slices (``SLICE_EVENTS`` events, sinks encode at most
``ENCODE_CHUNK_ROWS`` rows per C call) and gives the GIL back between slices
(``time.sleep(0)``), so a producer waits at most one slice, not the
interpreter's 5 ms switch interval.

Failures never reach ``append()``: a failed write is kept (within the
session's memory budget), counted in ``health()``, logged once per error kind
and retried with backoff; an explicit ``flush()`` reports it.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import Any

from ._batcher import Batcher
from ._errors import SinkError
from ._events import BARRIER, PARAMS, ROW, ROWS, Waiter
from ._pipe import SessionPipe, StreamRef

__all__ = ["Writer", "get_writer", "TICK", "ROW_MAX_AGE"]

log = logging.getLogger("dreamlake")

#: The writer wakes at least this often (seconds): the bound on what a
#: ``kill -9`` can lose in thread mode, together with ``ROW_MAX_AGE``.
TICK = 0.02
#: A track's newest row stays open for merging at most this long (seconds).
ROW_MAX_AGE = 0.1
#: Events taken from a queue before the writer gives the GIL back.
SLICE_EVENTS = 256
#: Retry backoff after a failed write (seconds): doubles up to the maximum.
RETRY_MIN, RETRY_MAX = 0.05, 2.0


def yield_gil() -> None:
    """Let a waiting producer thread run (sleep(0) releases the GIL)."""
    time.sleep(0)


class Writer:
    def __init__(self) -> None:
        self._pipes: list[SessionPipe] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._batcher = Batcher()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._pid = os.getpid()
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
        pipe.push((BARRIER, op, args, waiter))
        self._wake.set()
        if not waiter.wait(timeout):
            from ._errors import FlushTimeout

            raise FlushTimeout(
                f"{op} did not complete within {timeout}s; {len(pipe.queue)} events still queued"
            )
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
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
            if self._stopping and not self._pipes:
                return

    def _cycle(self) -> None:
        with self._lock:
            pipes = list(self._pipes)
        for pipe in pipes:
            self._drain(pipe)
        now = time.monotonic()
        self._batcher.close_open(older_than=now - ROW_MAX_AGE)
        self._write_closed(None)
        for pipe in pipes:
            if pipe.pending_params:
                self._write_params(pipe)
            if pipe.retry and now >= pipe.retry_at:
                self._write_retry(pipe)

    def _drain(self, pipe: SessionPipe) -> None:
        queue = pipe.queue
        popleft = queue.popleft
        batcher = self._batcher
        add = batcher.add
        while queue:
            if pipe.retry and pipe.writer_backlog >= pipe.max_events:
                return  # sink failing and budget used: leave the rest queued
            now = time.monotonic()
            for _ in range(min(SLICE_EVENTS, len(queue))):
                event = popleft()
                kind = event[0]
                if kind == ROW:
                    stream = event[1]
                    add(stream, event[2], event[3], now, stream.merge)
                elif kind == ROWS:
                    stream = event[1]
                    batcher.add_many(stream, event[2], now, stream.merge)
                    pipe.rows_taken(len(event[2]))
                elif kind == PARAMS:
                    pipe.pending_params.update(event[1])
                else:
                    self._barrier(pipe, event)
            if pipe.blocked_waits:
                pipe.made_room()
            if batcher.closed_count >= pipe.batch_rows:
                self._write_closed(None)
            yield_gil()

    def _streams_of(self, pipe: SessionPipe) -> list[StreamRef]:
        return list(pipe.streams.values())

    def _write_closed(self, streams: list[StreamRef] | None) -> None:
        taken = self._batcher.take_closed(streams)
        for stream, (rows, ts) in taken.items():
            pipe = stream.pipe
            if pipe.retry:
                self._stash(pipe, stream, rows, ts)
                continue
            self._write_rows(pipe, stream, rows, ts)

    def _write_rows(self, pipe: SessionPipe, stream: StreamRef, rows: list, ts: list) -> bool:
        try:
            start = pipe.sink.write_rows(stream.name, stream.is_log, rows, ts)
        except Exception as exc:
            self._record_failure(pipe, exc)
            self._stash(pipe, stream, rows, ts)
            return False
        stream.note_written(start, len(rows))
        pipe.rows_written += len(rows)
        return True

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
        if not pipe.retry:
            pipe.retry_at = 0.0
            self._retry_delay = RETRY_MIN
            pipe.made_room()

    def _write_params(self, pipe: SessionPipe) -> None:
        params, pipe.pending_params = pipe.pending_params, {}
        try:
            pipe.sink.write_params(params)
        except Exception as exc:
            self._record_failure(pipe, exc)
            params.update(pipe.pending_params)
            pipe.pending_params = params

    def _record_failure(self, pipe: SessionPipe, exc: BaseException) -> None:
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
        streams = self._streams_of(pipe)
        self._batcher.close_open(streams)
        if pipe.retry:
            self._write_retry(pipe)
        self._write_closed(streams)
        if pipe.pending_params:
            self._write_params(pipe)

    def _barrier(self, pipe: SessionPipe, event: tuple) -> None:
        _, op, args, waiter = event
        try:
            self._settle(pipe)
            if op == "flush":
                waiter.succeed(self._flush(pipe, *args))
            elif op == "close":
                waiter.succeed(self._close(pipe, *args))
            else:
                waiter.succeed(getattr(pipe.sink, op)(*args))
        except BaseException as exc:
            waiter.fail(exc)

    def _unwritten_error(self, pipe: SessionPipe) -> SinkError:
        held = sum(len(rows) for rows, _ in pipe.retry.values())
        return SinkError(f"{held} rows are not written yet ({pipe.last_error}); kept and retried")

    def _flush(self, pipe: SessionPipe, names: list[str] | None) -> list[dict]:
        if pipe.retry or pipe.pending_params:
            raise self._unwritten_error(pipe)
        pipe.sink.flush()
        streams = self._streams_of(pipe) if names is None else [pipe.stream(n) for n in names]
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

    def _close(self, pipe: SessionPipe, status: str, error: str | None) -> None:
        unwritten = self._unwritten_error(pipe) if (pipe.retry or pipe.pending_params) else None
        if unwritten is None:
            pipe.sink.close(status, error)
        with self._lock:
            if unwritten is None and pipe in self._pipes:
                self._pipes.remove(pipe)
        self._batcher.forget(self._streams_of(pipe))
        if unwritten is not None:
            raise unwritten

    # -- lifecycle ---------------------------------------------------------
    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._batcher = Batcher()
        self._thread = None
        self._pid = os.getpid()
        for pipe in self._pipes:
            pipe.after_fork_in_child()
            after_fork = getattr(pipe.sink, "after_fork_in_child", None)
            if after_fork is not None:
                after_fork()
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
