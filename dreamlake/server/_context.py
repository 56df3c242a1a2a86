"""What every route needs, built once per app: settings, storage, keys, metrics."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

import anyio.to_thread
from starlette.requests import Request

from ._auth import Identity, KeyStore
from ._metrics import Metrics
from ._prepare import SessionClock
from ._settings import Settings
from ._storage import SessionRef, Storage

__all__ = ["ServerContext", "context"]


@dataclasses.dataclass
class ServerContext:
    settings: Settings
    storage: Storage
    keys: KeyStore
    metrics: Metrics
    #: per session its clock and when it was last used, least recently used first
    _clocks: OrderedDict[str, tuple[SessionClock, float]] = dataclasses.field(default_factory=OrderedDict)
    _clocks_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def clock(self, session_id: str) -> SessionClock:
        """The session's ``_ts`` clock. Bounded like the storage's sessions: one
        unused for ``session_idle_seconds``, or the least recently used beyond
        ``max_live_sessions``, is dropped; a new one starts from the wall clock
        (so ``_ts=-1`` after a long pause means "now", not the last ``_ts``)."""
        now = time.monotonic()
        with self._clocks_lock:
            found = self._clocks.pop(session_id, None)
            clock = found[0] if found is not None else SessionClock()
            cutoff = now - self.settings.session_idle_seconds
            limit = max(1, self.settings.max_live_sessions)
            while self._clocks and (len(self._clocks) >= limit or next(iter(self._clocks.values()))[1] < cutoff):
                self._clocks.popitem(last=False)
            self._clocks[session_id] = (clock, now)
            return clock

    def held(self) -> dict[str, int]:
        """Per-session state in memory (storage's and the clocks), for /metrics."""
        return {**self.storage.held(), "clocks": len(self._clocks)}

    def authenticate(self, request: Request) -> Identity:
        return self.keys.authenticate(request.headers.get("authorization"))

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Storage calls block (files, fsync): they run in worker threads."""
        return await anyio.to_thread.run_sync(fn, *args)

    async def session(self, request: Request) -> tuple[Identity, SessionRef]:
        """Authenticate (401), find the session (404), authorise (403)."""
        identity = self.authenticate(request)
        session_id = request.path_params["session_id"]
        # a session the backend already holds is found without a thread hop
        ref = self.storage.cached_session(session_id) or await self.run(self.storage.get_session, session_id)
        identity.allow(ref.workspace)
        return identity, ref


def context(request: Request) -> ServerContext:
    return request.app.state.dreamlake
