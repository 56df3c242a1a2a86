"""Fan-out: one primary sink that answers reads and files (the local store),
and secondary sinks that receive the same writes (the remote sink).

A secondary never makes the primary fail, and never loses or doubles rows:

* before the primary writes, each secondary is asked whether it would refuse
  rows now (:meth:`RemoteSink.refusal`: its memory and spool are full); if so
  the fan-out refuses the rows whole (``SinkError``), the writer keeps them
  and retries, and nothing has reached either destination twice;
* a secondary that fails after the primary wrote (an unexpected error, or it
  could not open) gets the rows later: they wait in the fan-out's backlog for
  that secondary, in order, and are handed over before anything newer. The
  backlog is bounded (``BACKLOG_MAX_ROWS``): past it the fan-out refuses rows
  as above, so memory stays bounded and still nothing is dropped;
* what a secondary still holds at close is counted by reason in ``health()``
  (``secondary_lost``), in the primary's ``lost`` totals (``secondary_<reason>``)
  and logged; those rows are in the primary.

``write_rows`` calls the primary first, because the local sink stamps log
entries in place and the remote sink encodes them later on its own thread."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable

from .._errors import SinkError
from .._local_sink import LocalStore
from ._interfaces import ClosesLater, DeliversLater, ForkAware, HasHealth, Joins, Quarantines, RecordsLosses, Sink, Store

__all__ = ["FanOutSink", "FanOutStore", "BACKLOG_MAX_ROWS"]

log = logging.getLogger("dreamlake")

#: Rows the fan-out holds for one secondary that failed after the primary
#: wrote them; beyond this it refuses new rows (the writer keeps them).
BACKLOG_MAX_ROWS = 200_000


class _Secondary:
    """One secondary and what it still has to receive, in order."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.open_info: dict | None = None  # set while an open is owed to it
        self.backlog: list[tuple] = []  # ("rows", name, is_log, rows, ts) | ("params", flat)
        self.backlog_rows = 0


class FanOutSink:
    def __init__(self, primary: Sink, *secondaries: Sink) -> None:
        self.primary = primary
        self._secondaries = [_Secondary(sink) for sink in secondaries]
        self.secondary_errors = 0
        self.last_secondary_error: str | None = None
        self._last_reason = "failing"
        self.refused_for_secondary = 0  # writes refused whole because a secondary was full
        self.failures_by_reason: dict[str, int] = {}  # rows a secondary failed to take, retried
        self.lost_by_reason: dict[str, int] = {}  # rows a secondary never got (still held at close)
        self._recorded: dict[str, int] = {}  # the writer's losses, for the primary's session.json
        self.store = FanOutStore(self)

    @property
    def secondaries(self) -> list[Sink]:
        return [s.sink for s in self._secondaries]

    def _call_one(self, sink: Sink, op: str, call: Callable[[Sink], Any]) -> bool:
        try:
            call(sink)
        except Exception as exc:
            self._secondary_failed(sink, op, exc)
            return False
        return True

    def _secondary_failed(self, sink: Any, op: str, exc: BaseException) -> None:
        self.secondary_errors += 1
        self._last_reason = type(exc).__name__
        if self.last_secondary_error is None:
            log.warning("dreamlake: %s on %s failed: %s", op, type(sink).__name__, exc)
        self.last_secondary_error = f"{op}: {type(exc).__name__}: {exc}"

    # -- the backlog ---------------------------------------------------------------
    def _deliver(self, second: _Secondary, item: tuple) -> None:
        sink = second.sink
        if item[0] == "rows":
            sink.write_rows(item[1], item[2], item[3], item[4])
        else:
            sink.write_params(item[1])

    def _pump(self, second: _Secondary) -> bool:
        """Hand the secondary what it is owed, oldest first; True when nothing is left."""
        if second.open_info is not None:
            if not self._call_one(second.sink, "open", lambda sink: sink.open(second.open_info)):
                return False
            second.open_info = None
        while second.backlog:
            item = second.backlog[0]
            if not self._call_one(second.sink, "write_" + item[0], lambda sink: self._deliver(second, item)):
                return False
            second.backlog.pop(0)
            second.backlog_rows -= len(item[3]) if item[0] == "rows" else 0
        return True

    def _send(self, item: tuple, rows: int) -> None:
        for second in self._secondaries:
            if self._pump(second):
                try:
                    self._deliver(second, item)
                    continue
                except Exception as exc:
                    self._secondary_failed(second.sink, "write_" + item[0], exc)
                    reason = type(exc).__name__
                    self.failures_by_reason[reason] = self.failures_by_reason.get(reason, 0) + rows
            second.backlog.append(item)
            second.backlog_rows += rows

    def _refusal(self) -> str | None:
        for second in self._secondaries:
            if second.backlog_rows >= BACKLOG_MAX_ROWS and not self._pump(second):
                return f"{second.backlog_rows} rows wait for {type(second.sink).__name__}"
            refusal = getattr(second.sink, "refusal", None)
            if refusal is not None and second.open_info is None:
                try:
                    why = refusal()
                except Exception:  # not open: the backlog takes the rows
                    why = None
                if why is not None:
                    return why
        return None

    # -- the Sink interface -----------------------------------------------------------
    def open(self, info: dict) -> dict:
        meta = self.primary.open(info)
        for second in self._secondaries:
            second.open_info = info
            self._pump(second)
        return meta

    def write_rows(self, name: str, is_log: bool, rows: list, ts: list) -> int:
        refused = self._refusal()
        if refused is not None:  # before the primary: the writer keeps the rows for both
            self.refused_for_secondary += 1
            raise SinkError(f"a secondary sink cannot take rows now: {refused}")
        first = self.primary.write_rows(name, is_log, rows, ts)
        self._send(("rows", name, is_log, rows, ts), len(rows))
        return first

    def write_params(self, flat: dict) -> None:
        self.primary.write_params(flat)
        self._send(("params", flat), 0)

    def flush(self) -> None:
        """Durable means durable in the primary. A secondary that delivers
        later (the remote sink) only seals its open batch, so a slow server
        never holds the writer."""
        self.primary.flush()
        for second in self._secondaries:
            if not self._pump(second):
                continue
            if isinstance(second.sink, DeliversLater):
                self._call_one(second.sink, "flush", lambda s: s.delivery_mark())
            else:
                self._call_one(second.sink, "flush", lambda s: s.flush())

    def seal(self, status: str, error: str | None) -> list:
        """Writer thread: close the primary, hand each secondary what it is
        owed, and seal (or close) it; the waits are :meth:`finish_close`'s."""
        for second in self._secondaries:
            if not self._pump(second):
                self._count_lost(second)
        if self.lost_by_reason and isinstance(self.primary, RecordsLosses):  # session.json says so too
            lost = dict(self._recorded)
            for reason, count in self.lost_by_reason.items():
                lost[f"secondary_{reason}"] = lost.get(f"secondary_{reason}", 0) + count
            self.primary.record_losses(lost)
        self.primary.close(status, error)
        sealed = []
        for second in self._secondaries:
            sink = second.sink
            if second.open_info is not None:
                continue  # never opened: nothing to close
            if isinstance(sink, ClosesLater):
                try:
                    sealed.append((sink, sink.seal(status, error)))
                except Exception as exc:
                    self._secondary_failed(sink, "close", exc)
            else:
                self._call_one(sink, "close", lambda s: s.close(status, error))
        return sealed

    def finish_close(self, sealed: list, timeout: float | None = None) -> bool:
        delivered = True
        for sink, mark in sealed:
            try:
                delivered = sink.finish_close(mark, timeout) and delivered
            except Exception as exc:
                self._secondary_failed(sink, "close", exc)
                delivered = False
        return delivered

    def close(self, status: str, error: str | None) -> None:
        self.finish_close(self.seal(status, error))

    def _count_lost(self, second: _Secondary) -> None:
        reason = self._last_reason
        self.lost_by_reason[reason] = self.lost_by_reason.get(reason, 0) + second.backlog_rows
        log.error("dreamlake: %d rows never reached %s (%s); they are in the local store",
                  second.backlog_rows, type(second.sink).__name__, self.last_secondary_error)
        second.backlog, second.backlog_rows = [], 0

    def join(self, info: dict) -> None:
        for sink in [self.primary, *self.secondaries]:
            if isinstance(sink, Joins):
                sink.join(info)

    def record_losses(self, lost: dict[str, int]) -> None:
        self._recorded = dict(lost)
        if isinstance(self.primary, RecordsLosses):
            self.primary.record_losses(lost)

    def quarantine(self, name: str, is_log: bool, row: Any, reason: str) -> None:
        if isinstance(self.primary, Quarantines):
            self.primary.quarantine(name, is_log, row, reason)

    def after_fork_in_child(self) -> None:
        for second in self._secondaries:  # the parent hands over its own backlog
            second.backlog, second.backlog_rows = [], 0
        for sink in [self.primary, *self.secondaries]:
            if isinstance(sink, ForkAware):
                sink.after_fork_in_child()

    def health(self) -> dict:
        out: dict = {
            "secondary_errors": self.secondary_errors,
            "last_secondary_error": self.last_secondary_error,
            "secondary_backlog_rows": sum(s.backlog_rows for s in self._secondaries),
            "secondary_refusals": self.refused_for_secondary,
            "secondary_retried": dict(self.failures_by_reason),
            "secondary_lost": dict(self.lost_by_reason),
        }
        for sink in self.secondaries:
            if isinstance(sink, HasHealth):
                try:
                    out.update(sink.health())
                except Exception as exc:
                    out["secondary_health_error"] = f"{type(exc).__name__}: {exc}"
        return out


class FanOutStore:
    """The primary's store answers; an upload also goes to every secondary,
    from the primary's copy, on its own thread, so a large upload never holds
    up the rows (the caller's ``src`` may be gone by then)."""

    def __init__(self, fanout: FanOutSink) -> None:
        self._fanout = fanout

    @property
    def _primary(self) -> Store:
        return self._fanout.primary.store

    def read(self, name: str, is_log: bool, start_index: int, limit: int) -> dict:
        return self._primary.read(name, is_log, start_index, limit)

    def read_range(self, name: str, is_log: bool, start_ts: Any, end_ts: Any, limit: int) -> dict:
        return self._primary.read_range(name, is_log, start_ts, end_ts, limit)

    def stats(self, name: str) -> dict:
        return self._primary.stats(name)

    def list_tracks(self) -> list[dict]:
        return self._primary.list_tracks()

    def params_get(self) -> dict:
        return self._primary.params_get()

    def files_upload(self, src: str, folder: str, description: Any, tags: list, metadata: dict) -> dict:
        entry = self._primary.files_upload(src, folder, description, tags, metadata)
        primary = self._primary
        copy = src
        if isinstance(primary, LocalStore) and entry.get("storagePath"):  # upload the stored copy
            copy = os.path.join(primary.files.root, *entry["storagePath"].split("/"))
        for sink in self._fanout.secondaries:
            thread = threading.Thread(
                target=self._upload_one,
                args=(sink, copy, folder, description, tags, metadata),
                name="dreamlake-fanout-upload",
                daemon=True,
            )
            thread.start()
        return entry

    def _upload_one(self, sink: Sink, src: str, folder: str, description: Any, tags: list, metadata: dict) -> None:
        try:
            sink.store.files_upload(src, folder, description, tags, metadata)
        except Exception as exc:
            self._fanout._secondary_failed(sink, "files_upload", exc)

    def files_list(self, folder: str | None, tags: list | None) -> list[dict]:
        return self._primary.files_list(folder, tags)

    def files_download(self, file_id: str, dest: str) -> str:
        return self._primary.files_download(file_id, dest)

    def files_delete(self, file_id: str) -> dict:
        return self._primary.files_delete(file_id)

    def files_update(self, file_id: str, changes: dict) -> dict:
        return self._primary.files_update(file_id, changes)
