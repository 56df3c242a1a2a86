"""The remote sink: rows -> open batch -> sealed batch -> sender thread.

The writer thread only hands rows over (``write_rows`` never touches the
network or the disk); the sender thread (:mod:`.delivery`) encodes, sends,
retries and spools. Index ranges are assigned by the server and come back in
its acknowledgements: ``write_rows`` returns a provisional local index and
``wait_and_report`` returns the server's ranges.

What ``flush()`` waits for: every batch sealed before it acknowledged by the
server, or — while the server is unreachable or refuses the key — safely in
the on-disk spool; at most ``FLUSH_WAIT`` seconds, then ``SinkError``.
Reads wait until the server acknowledged everything before them, then ask the
server's REST API (a ``SinkError`` when it cannot be reached).
Closing is split (:class:`~dreamlake.sinks.ClosesLater`): ``seal`` on the
writer thread cuts the last batch and records the status; ``finish_close`` on
the caller's thread tries once more at once and waits ``CLOSE_WAIT`` seconds
at most (less if the caller's timeout is shorter; it stops waiting as soon as
the server proved unreachable and everything is in the spool); what is still
unacknowledged stays in the spool and is delivered by the next process that
opens the session or by ``dreamlake sync``. A server that never answers holds
only the thread that closes, never the writer that serves other sessions.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable

from ..._errors import SinkError
from ...server.wire import IngestAck
from .batch import BatchBuilder
from .config import CLOSE_WAIT, FLUSH_WAIT, RemoteTarget
from .delivery import Delivery
from .encoder import estimate_row_bytes
from .service import DeliveryError, IngestService, RemoteStore
from .spool import ClientSlot, acquire_new_slot, free_slots

__all__ = ["RemoteSink", "RemoteStoreCalls", "Backpressure"]

log = logging.getLogger("dreamlake")


class Backpressure(SinkError):
    """Memory and spool are full: the writer keeps the rows and retries."""


class RemoteSink:
    def __init__(self, target: RemoteTarget, session_dir: str) -> None:
        self.target = target
        self.directory = os.path.abspath(session_dir)
        self.service = IngestService(target)
        self.store = RemoteStoreCalls(RemoteStore(target, self._session_id), target.url)
        self._info: dict = {}
        self._row_bytes: dict[tuple[str, bool], int] = {}
        self._counts: dict[tuple[str, bool], int] = {}
        self._windows: dict[str, list] = {}
        self._windows_lock = threading.Lock()
        self._drains: list[Delivery] = []
        self._delivery: Delivery | None = None

    # -- lifecycle -----------------------------------------------------------
    def open(self, info: dict) -> dict:
        if self._delivery is not None:  # another owner of the session (agent mode): one slot serves all
            return {**info, "status": "running", "remote": self.target.url, "clientId": self._slot.client}
        os.makedirs(self.directory, exist_ok=True)
        self._info = {k: v for k, v in info.items() if k not in ("url", "userName")}
        slot = self._adopt_or_create()
        slot.state["url"] = self.target.url  # where `dreamlake sync` delivers a leftover spool
        slot.save()
        self._start(slot, owner=True)
        return {**info, "status": "running", "remote": self.target.url, "clientId": slot.client}

    def join(self, info: dict) -> None:
        """Send from a slot of its own without owning the session (a forked
        child of an agent client, writing by itself after losing the agent)."""
        if self._delivery is not None:
            return
        os.makedirs(self.directory, exist_ok=True)
        self._info = {k: v for k, v in info.items() if k not in ("url", "userName")}
        slot = acquire_new_slot(self.directory, self._info, owner=False)
        slot.state["url"] = self.target.url
        slot.save()
        self._start(slot, owner=False)

    def _adopt_or_create(self) -> ClientSlot:
        """Continue a dead owner's slot (its spool goes first, same client id);
        drain other dead slots on their own threads."""
        mine = None
        for slot in free_slots(self.directory):
            sealed = slot.state.get("close") is not None  # closed; only its spool is left
            if mine is None and slot.state.get("owner") and not slot.state.get("closed") and not sealed:
                mine = slot
            elif slot.spool.frames:
                drain = Delivery(slot, self.service, None)
                self._drains.append(drain)
                drain.start()
            else:
                slot.state["closed"] = True
                slot.release()
        if mine is None:
            return acquire_new_slot(self.directory, self._info, owner=True)
        mine.state.update(info=self._info, pid=os.getpid())
        mine.save()
        return mine

    def _start(self, slot: ClientSlot, owner: bool) -> None:
        self._slot = slot
        self._builder = BatchBuilder(slot.next_seq)
        self._delivery = Delivery(slot, self.service, self._builder, self._on_ack, self._info if owner else None)
        self._delivery.start()

    def seal(self, status: str, error: str | None) -> int:
        """Writer thread, quick: cut the last batch (it carries the status) and
        record the status in the slot; no network. Returns the mark
        :meth:`finish_close` waits for."""
        delivery = self._require()
        delivery.push(self._builder.seal(close=(status, error)))
        self._slot.state["close"] = [status, error]  # what `dreamlake sync` records if this process dies
        try:
            self._slot.save()
        except OSError as exc:  # the final batch carries the status anyway
            log.error("dreamlake: could not record the close in %s: %s", self._slot.directory, exc)
        return delivery.sealed_upto

    def finish_close(self, mark: int, timeout: float | None = None) -> bool:
        """Caller's thread (or an agent worker): wait for the server's
        acknowledgement of ``mark``, at most ``CLOSE_WAIT`` (and ``timeout``),
        stopping early once the server proved unreachable; then leave what is
        unacknowledged in the spool, delivered by the next run of the session or
        ``dreamlake sync``, and say so. True when the server has everything."""
        delivery = self._require()
        wait = CLOSE_WAIT if timeout is None else max(0.0, min(CLOSE_WAIT, timeout))
        delivered = delivery.wait_settled(mark, wait, delivered_only=True, one_try=True)
        unspooled = delivery.hand_over()
        delivered = delivered or delivery.done_upto >= mark
        self._slot.state["closed"] = delivered
        if unspooled:
            log.error(
                "dreamlake: %s/%s: %d batches not acknowledged by %s could not be spooled (%s); they are lost "
                "when this process ends", self.target.workspace, self.target.name, unspooled, self.target.url,
                delivery.last_error,
            )
        elif not delivered:
            log.warning(
                "dreamlake: %s/%s: %d batches not acknowledged by %s; kept in %s and delivered by the next "
                "run of this session or `dreamlake sync`",
                self.target.workspace, self.target.name, delivery.pending()["spooled_batches"], self.target.url,
                self._slot.directory,
            )
        self._slot.release()
        for drain in self._drains:  # what is left is delivered by the next run or sync
            drain.hand_over()
            drain.slot.state["closed"] = drain.slot.clean
            drain.slot.release()
        self._drains = []
        return delivered

    def close(self, status: str, error: str | None) -> None:
        self.finish_close(self.seal(status, error))

    def after_fork_in_child(self) -> None:
        """The child sends from its own slot (new client id); what the parent
        had queued or open is the parent's to send."""
        self._slot.forget_after_fork()
        self._drains = []
        self._windows = {}
        self._windows_lock = threading.Lock()
        self._delivery = None
        self.join(self._info)

    # -- writing (writer thread: no network, no disk) ---------------------------
    def write_rows(self, name: str, is_log: bool, rows: list, ts: list) -> int:
        delivery = self._require()
        refused = delivery.refusal()
        if refused is not None:
            raise Backpressure(refused)
        key = (name, is_log)
        # the largest row size seen so far (sampled once per call): rows that grow
        # must not make a batch the server refuses as too large (413), for good
        size = max(self._row_bytes.get(key, 0), estimate_row_bytes(rows[-1:]))
        self._row_bytes[key] = size
        if self._builder.add_rows(key, rows, size):
            delivery.push(self._builder.seal())
        first = self._counts.get(key, 0)
        self._counts[key] = first + len(rows)
        return first

    def refusal(self) -> str | None:
        """Why :meth:`write_rows` would refuse rows now, or None (the fan-out
        asks before it writes its primary)."""
        return self._require().refusal()

    def write_params(self, flat: dict) -> None:
        self._require()
        self._builder.add_params(flat)

    # -- acknowledgements and flush ----------------------------------------------
    def _on_ack(self, ack: IngestAck) -> None:
        with self._windows_lock:
            for r in ack.ranges:
                if r.kind != "track" or not r.count:
                    continue
                window = self._windows.get(r.name)
                if window is None:
                    self._windows[r.name] = [r.startIndex, r.endIndex, r.count]
                else:
                    window[1] = r.endIndex
                    window[2] += r.count

    def delivery_mark(self) -> int:
        """Seal the open batch; the seq a reader must see acknowledged."""
        delivery = self._require()
        delivery.push(self._builder.seal())
        return delivery.sealed_upto

    def wait_delivered(self, mark: int, timeout: float | None = None, delivered_only: bool = True) -> None:
        delivery = self._require()
        # a read (delivered_only) fails fast once the server proved unreachable
        if not delivery.wait_settled(mark, FLUSH_WAIT if timeout is None else timeout, delivered_only, one_try=delivered_only):
            pending = delivery.pending()
            raise SinkError(
                f"the server at {self.target.url} has not acknowledged {pending['memory_batches'] + pending['spooled_batches']} "
                f"batches ({delivery.last_error or 'still sending'}); they are kept and retried"
            )

    def flush(self) -> None:
        self.wait_delivered(self.delivery_mark(), delivered_only=False)

    def wait_and_report(self, mark: int, names: list[str] | None, timeout: float | None = None) -> list[dict]:
        """Wait (any thread) until ``mark`` is settled, then hand out the index
        windows the server acknowledged per track since the previous report."""
        self.wait_delivered(mark, timeout, delivered_only=False)
        with self._windows_lock:
            wanted = [n for (n, is_log) in self._counts if not is_log] if names is None else names
            report = []
            for name in wanted:
                start, end, count = self._windows.pop(name, (None, None, 0))
                report.append({"trackId": name, "startIndex": start, "endIndex": end, "count": count})
            return report

    def health(self) -> dict:
        delivery = self._require()
        return {
            "remote": self.target.url,
            "client": self._slot.client,
            "delivery": delivery.state,
            "remote_error": delivery.last_error,
            "auth_failed": delivery.state == "auth_failed",
            **delivery.counters,
            **delivery.pending(),
        }

    def _require(self) -> Delivery:
        if self._delivery is None:
            raise SinkError("the remote sink is not open")
        return self._delivery

    def _session_id(self) -> str:
        delivery = self._require()
        if delivery.session_id is None:
            try:
                delivery.session_id = self.service.upsert(self._info)["id"]
            except DeliveryError as exc:
                raise SinkError(f"cannot reach the session at {self.target.url}: {exc}") from exc
        return delivery.session_id



class RemoteStoreCalls:
    """The session's :class:`~dreamlake.sinks.Store` in remote mode: the
    server's REST API (any thread), httpx errors mapped to ``SinkError``. The
    caller waits for delivery first (:class:`~dreamlake.sinks.DeliversLater`)."""

    def __init__(self, store: RemoteStore, url: str) -> None:
        self._store = store
        self._url = url

    def _mapped(self, op: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except DeliveryError as exc:
            raise SinkError(f"{op} at {self._url} failed: {exc}") from exc

    def read(self, name: str, is_log: bool, start_index: int, limit: int) -> dict:
        return self._mapped("read", lambda: self._store.read(name, is_log, start_index, limit))

    def read_range(self, name: str, is_log: bool, start_ts: Any, end_ts: Any, limit: int) -> dict:
        return self._mapped("read_range", lambda: self._store.read_range(name, is_log, start_ts, end_ts, limit))

    def stats(self, name: str) -> dict:
        return self._mapped("stats", lambda: self._store.stats(name))

    def list_tracks(self) -> list[dict]:
        return self._mapped("list_tracks", self._store.list_tracks)

    def params_get(self) -> dict:
        return self._mapped("params_get", self._store.params_get)

    def files_upload(self, src: str, folder: str, description: Any, tags: list, metadata: dict) -> dict:
        return self._mapped("files_upload", lambda: self._store.files_upload(src, folder, description, tags, metadata))

    def files_list(self, folder: str | None, tags: list | None) -> list[dict]:
        return self._mapped("files_list", lambda: self._store.files_list(folder, tags))

    def files_download(self, file_id: str, dest: str) -> str:
        return self._mapped("files_download", lambda: self._store.files_download(file_id, dest))

    def files_delete(self, file_id: str) -> dict:
        return self._mapped("files_delete", lambda: self._store.files_delete(file_id))

    def files_update(self, file_id: str, changes: dict) -> dict:
        return self._mapped("files_update", lambda: self._store.files_update(file_id, changes))
