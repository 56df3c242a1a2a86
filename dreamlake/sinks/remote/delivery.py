"""Delivery of one client slot: memory queue -> (spool) -> server, run by
the :class:`Sender` of its server URL: one thread per URL in a process, so
the agent sends every session of the machine to a server from one thread
over one connection pool, taking the sessions in turn.

Order is kept by one rule: the spool holds the *oldest* unacknowledged
batches, memory the newer ones. So once anything is spooled, every later
batch is spooled behind it, and sending always takes the spool's head first.
Batches move from memory to the spool when the server is unreachable (a
network error, 5xx, 429), when auth failed, when memory holds more than
``MEMORY_MAX_BATCHES``, and at close. A spooled batch is dropped from the
spool only after the server acknowledged it.

Closing never waits for the sender: :meth:`Delivery.hand_over` (any thread)
moves what is still in memory to the spool itself and takes the slot away
from the sender, even while a request hangs on a server that never answers.
The slot's files are touched under one lock (``_io``), held for disk work
only, never across a request.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Callable

from ...server.wire import IngestAck
from .batch import BatchBuilder, SealedBatch
from .config import MEMORY_MAX_BATCHES, MEMORY_MAX_BYTES
from .encoder import encode, rows_in_body
from .service import AuthFailed, IngestService, Rejected, Retryable, TooLarge, backoff
from .split import deliver_split, splittable
from .spool import ClientSlot, SpoolFull

__all__ = ["Delivery", "Sender", "sender_for", "OK", "OUTAGE", "AUTH_FAILED"]

log = logging.getLogger("dreamlake")

OK, OUTAGE, AUTH_FAILED = "ok", "outage", "auth_failed"
#: How often the spool's acknowledged position is saved while replaying (s).
ACK_SAVE_INTERVAL = 0.2
#: Batches one delivery sends before the sender turns to the next session.
TURN_BATCHES = 4
#: A sender with no deliveries ends its thread after this long (seconds).
SENDER_IDLE_EXIT = 5.0


class Sender:
    """The thread that runs every delivery to one server URL, in turn."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._deliveries: list["Delivery"] = []
        self._thread: threading.Thread | None = None

    def add(self, delivery: "Delivery") -> None:
        with self._lock:
            self._deliveries.append(delivery)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="dreamlake-sender", daemon=True)
                self._thread.start()
        self.wake.set()

    def alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _run(self) -> None:
        idle_since = None
        while True:
            with self._lock:
                deliveries = list(self._deliveries)
                if deliveries:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= SENDER_IDLE_EXIT:
                    self._thread = None  # the next add() starts a new one
                    return
            self.wake.wait(min([1.0, *(d.next_wait() for d in deliveries)]))
            self.wake.clear()
            for delivery in deliveries:
                if not delivery.turn():
                    with self._lock:
                        self._deliveries.remove(delivery)


_senders: dict[str, Sender] = {}
_senders_lock = threading.Lock()


def sender_for(url: str) -> Sender:
    with _senders_lock:
        sender = _senders.get(url)
        if sender is None:
            sender = _senders[url] = Sender(url)
        return sender


def _after_fork_in_child() -> None:
    global _senders_lock
    _senders.clear()  # the parent's threads are not ours
    _senders_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Delivery:
    def __init__(
        self,
        slot: ClientSlot,
        service: IngestService,
        builder: BatchBuilder | None,
        on_ack: Callable[[IngestAck], None] | None = None,
        upsert_info: dict | None = None,
    ) -> None:
        self.slot = slot
        self.service = service
        self.builder = builder
        self._on_ack = on_ack
        self._upsert_info = upsert_info
        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)
        self._sender = sender_for(service.target.url)
        self._wake = self._sender.wake
        self._finished = False
        self._ready: deque[SealedBatch] = deque()
        self._bodies: dict[int, bytes] = {}
        self.ready_bytes = 0
        self.sealed_upto = 0
        self.done_upto = 0
        self.state = OK
        self._attempt = 0
        self.failures = 0  # network errors: the server is unreachable
        self._retry_at = 0.0
        self._io = threading.Lock()  # the slot's files and _ready's head: sender vs. hand_over
        self._handed_over = False
        self._last_ack_save = 0.0
        self._warned: set[str] = set()
        self.session_id: str | None = None
        self.counters = dict.fromkeys(
            (
                "batches_sent", "bytes_sent", "rows_acked", "duplicates", "retries", "batches_spooled",
                "batches_replayed", "batches_rejected", "rows_quarantined", "spool_full", "spool_errors",
                "batches_unspooled", "rows_rejected", "batches_split", "rows_too_large",
            ),
            0,
        )
        self.last_error: str | None = None

    # -- producer side (writer thread) ------------------------------------------
    def start(self) -> None:
        self._sender.add(self)

    def _running(self) -> bool:
        return not self._finished and self._sender.alive()

    def refusal(self) -> str | None:
        """Why rows would be refused now (memory and spool full), or None."""
        if self.ready_bytes >= MEMORY_MAX_BYTES:
            return f"{self.ready_bytes} bytes of batches wait for the server and the spool is full"
        return None

    def push(self, batch: SealedBatch | None) -> None:
        if batch is None:
            return
        with self._lock:
            self._ready.append(batch)
            self.ready_bytes += batch.raw_bytes
            self.sealed_upto = max(self.sealed_upto, batch.seq)
        self._wake.set()

    def settled(self, target: int, delivered_only: bool = False) -> bool:
        """Everything up to ``target`` is acknowledged, or (when the server is
        unreachable and ``delivered_only`` is false) safe in the spool."""
        if self.done_upto >= target:
            return True
        if delivered_only or self.state == OK:
            return False
        return not self._ready or self._ready[0].seq > target

    def wait_settled(self, target: int, timeout: float, delivered_only: bool = False, one_try: bool = False) -> bool:
        """Wait until :meth:`settled`. ``one_try`` (close): retry now, and stop
        waiting as soon as the server proved unreachable (a network error, not
        a 5xx/429 answer) with everything safe in the spool."""
        deadline = time.monotonic() + timeout
        failures = self.failures
        if one_try:
            self._retry_at = 0.0
        self._wake.set()
        with self._progress:
            while not self.settled(target, delivered_only):
                if self.settled(target) and (self.state == AUTH_FAILED or (one_try and self.failures > failures)):
                    return False  # refused or unreachable, and safe in the spool
                left = deadline - time.monotonic()
                if left <= 0 or not self._running():
                    return self.settled(target, delivered_only)
                self._progress.wait(min(left, 0.5))
        return True

    def hand_over(self) -> int:
        """Stop sending from this slot now, from any thread, without waiting for
        a request in flight: what is in memory goes to the spool (behind what is
        there), and the sender never touches the slot again (an answer still in
        flight is dropped; its batch stays spooled and the server acknowledges it
        as a duplicate later). Returns the batches that could not be spooled
        (they go with this process), counted as ``batches_unspooled``."""
        with self._io:
            self._handed_over = True
            self._spool_ready_locked()
            left = len(self._ready)
            self.counters["batches_unspooled"] += left
        self._finish()
        self._wake.set()
        return left

    def pending(self) -> dict:
        return {"memory_batches": len(self._ready), "spooled_batches": self.slot.spool.frames, "spool_bytes": self.slot.spool.size}

    # -- the sender's thread ---------------------------------------------------------
    def turn(self) -> bool:
        """One turn on the sender's thread; False once this delivery is done
        (handed over, or a drain-only delivery with nothing left)."""
        if self._finished:
            return False
        try:
            self._cycle()
        except Exception as exc:  # never die silently: count, log once, go on
            self._note(f"{type(exc).__name__}: {exc}", "internal")
            self._retry_at = time.monotonic() + backoff(self._attempt)
            self._attempt += 1
        if self.builder is None and not self._ready and self.slot.spool.frames == 0:
            return self._finish()  # a drain-only delivery is done
        return True

    def _finish(self) -> bool:
        with self._progress:
            self._finished = True
            self._progress.notify_all()
        return False

    def next_wait(self) -> float:
        waits = [1.0]
        if self.builder is not None:
            due = self.builder.due_in()
            if due is not None:
                waits.append(due)
        if self._retry_at:
            waits.append(max(0.0, self._retry_at - time.monotonic()))
        elif self.state != AUTH_FAILED and (self._ready or self.slot.spool.frames):
            waits.append(0.0)  # refused credentials: nothing to send until a retry is asked
        return min(waits)

    def _seal_aged(self) -> None:
        if self.builder is not None and self.builder.due_in() == 0:
            self.push(self.builder.seal())

    def _cycle(self) -> None:
        self._seal_aged()
        if self.state != OK or self.slot.spool.frames or len(self._ready) > MEMORY_MAX_BATCHES:
            self._spool_ready()
        if self.state == AUTH_FAILED or time.monotonic() < self._retry_at:
            return
        self._retry_at = 0.0
        for _ in range(TURN_BATCHES):  # then the sender turns to the next session
            if not self._send_next():
                return
            self._seal_aged()
            if self.slot.spool.frames:
                self._spool_ready()

    def _body(self, batch: SealedBatch) -> bytes:
        body = self._bodies.get(batch.seq)
        if body is None:
            body, dropped = encode(batch, self.slot.client)
            if dropped:
                self.counters["rows_quarantined"] += dropped
                self._note(f"{dropped} rows could not be encoded and were quarantined", "encode")
            self._bodies[batch.seq] = body
        return body

    def _spool_ready(self) -> None:
        with self._io:
            if not self._handed_over:
                self._spool_ready_locked()

    def _spool_ready_locked(self) -> None:
        while self._ready:
            batch = self._ready[0]
            try:
                self.slot.spool.append(batch.seq, self._body(batch))
            except SpoolFull as exc:
                self.counters["spool_full"] += 1
                self._note(f"spool full ({exc.strerror}); batches kept in memory", "spool_full")
                return
            except OSError as exc:  # the spool's directory is gone, read-only, ...
                self.counters["spool_errors"] += 1
                self._note(f"cannot spool ({exc}); batches kept in memory", "spool_error")
                return
            self.counters["batches_spooled"] += 1
            with self._progress:
                self._ready.popleft()
                self._bodies.pop(batch.seq, None)
                self.ready_bytes -= batch.raw_bytes
                self._progress.notify_all()

    def _send_next(self) -> bool:
        """Send the oldest batch; False when there is nothing to send or it failed."""
        with self._io:
            if self._handed_over:
                return False
            spooled = self.slot.spool.peek() if self.slot.spool.frames else None
            if spooled is not None:
                seq, body = spooled
            elif self._ready:
                seq, body = self._ready[0].seq, self._body(self._ready[0])
            else:
                return False
        try:
            self._ensure_session()
            if self._handed_over:  # closed while the session was being created
                return False
            acks, refused = self._deliver(seq, body)
        except Retryable as exc:
            self.failures += exc.unreachable
            self.counters["retries"] += 1
            self.state = OUTAGE
            self._retry_at = time.monotonic() + backoff(self._attempt, exc.retry_after)
            self._attempt += 1
            self._note(f"server unreachable ({exc}); batches are spooled and retried", "retry")
            self._spool_ready()
            with self._progress:
                self._progress.notify_all()
            return False
        except AuthFailed as exc:
            self.state = AUTH_FAILED
            self._note(f"the server refused the credentials ({exc}); batches are kept in the spool for `dreamlake sync`", "auth")
            self._spool_ready()
            return False
        with self._io:
            if self._handed_over:  # the slot is no longer ours: the batch stays spooled
                return False
            for piece, why in refused:  # counted before flush() can see the batch done
                self._reject(seq, piece, why)
            self._acknowledged(seq, body, acks, from_spool=spooled is not None, clean=not refused)
        return True

    def _deliver(self, seq: int, body: bytes) -> tuple[list[IngestAck], list[tuple[bytes, Rejected]]]:
        """Send one batch: (acknowledgements, pieces refused for good). A batch
        refused as too large is sent again in halves (split.py)."""
        try:
            return [self.service.send(body)], []
        except TooLarge as exc:
            if not splittable(seq):
                return [], [(body, exc)]
            self.counters["batches_split"] += 1
            return deliver_split(body, self.service.send)
        except Rejected as exc:
            return [], [(body, exc)]

    def _reject(self, seq: int, body: bytes, why: Rejected) -> None:
        rows = rows_in_body(body)
        self.counters["batches_rejected"] += 1
        self.counters["rows_rejected"] += rows
        if isinstance(why, TooLarge):
            self.counters["rows_too_large"] += rows
            self._note(f"the server refused {rows} row(s) of batch {seq} as too large ({why}); "
                       f"kept in {self.slot.directory}/rejected.zst", "too_large")
        else:
            self._note(f"the server rejected batch {seq} ({why}); it is kept in {self.slot.directory}/rejected.zst", "rejected")
        self._quarantine(seq, body)

    def _acknowledged(self, seq: int, body: bytes, acks: list[IngestAck], from_spool: bool, clean: bool = True) -> None:
        """The server answered batch ``seq`` (one ack, one per piece of a split
        batch, or none: it refused all of it for good)."""
        if acks:
            self.counters["batches_sent"] += 1
            self.counters["bytes_sent"] += len(body)
        for ack in acks:
            self.counters["duplicates"] += ack.duplicate
            self.counters["rows_acked"] += sum(r.count for r in ack.ranges)
            self.session_id = ack.sessionId
            if self._on_ack is not None:
                self._on_ack(ack)
        self.state, self._attempt, self.last_error = OK, 0, None if acks and clean else self.last_error
        self._done(seq, from_spool)

    def _ensure_session(self) -> None:
        """The owner process upserts its session once (description, tags, ...)
        before its first batch; ingest alone would create it bare."""
        if self._upsert_info is None:
            return
        try:
            self.session_id = self.service.upsert(self._upsert_info)["id"]
        except Rejected as exc:
            self._note(f"the server refused the session's metadata ({exc}); rows are sent anyway", "upsert")
        self._upsert_info = None

    def _done(self, seq: int, from_spool: bool) -> None:
        if from_spool:
            self.slot.spool.pop()
            self.counters["batches_replayed"] += 1
            now = time.monotonic()
            save = self.slot.spool.frames == 0 or now - self._last_ack_save >= ACK_SAVE_INTERVAL
            if save:
                self._last_ack_save = now
            self.slot.set_acked(seq, save=save)
        with self._progress:
            if not from_spool and self._ready and self._ready[0].seq == seq:
                batch = self._ready.popleft()
                self._bodies.pop(seq, None)
                self.ready_bytes -= batch.raw_bytes
            self.done_upto = max(self.done_upto, seq)
            self._progress.notify_all()

    def _quarantine(self, seq: int, body: bytes) -> None:
        from .spool import Spool

        try:
            Spool(f"{self.slot.directory}/rejected.zst", budget=1 << 62).append(seq, body)
        except OSError as exc:
            self._note(f"could not keep rejected batch {seq}: {exc}", "rejected_io")

    def _note(self, message: str, kind: str) -> None:
        self.last_error = message
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("dreamlake: %s", message)
