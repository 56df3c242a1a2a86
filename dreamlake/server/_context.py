"""What every route needs, built once per app: settings, storage, keys, metrics."""

from __future__ import annotations

import dataclasses
import threading
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
    _clocks: dict[str, SessionClock] = dataclasses.field(default_factory=dict)
    _clocks_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def clock(self, session_id: str) -> SessionClock:
        with self._clocks_lock:
            clock = self._clocks.get(session_id)
            if clock is None:
                clock = self._clocks[session_id] = SessionClock()
            return clock

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
