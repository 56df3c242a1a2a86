"""The ASGI app: routes, error mapping (one place), lifespan.

``create_app(settings, storage=None, mounts=None, extra_routes=())`` is the one
factory. ``mounts`` maps a path to any ASGI app (the web page is mounted at
``/ui`` this way); ``extra_routes`` adds Starlette routes before ours.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, AsyncIterator, Iterable, Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from ._auth import KeyStore
from ._context import ServerContext, context
from ._errors import ServerError, classify, error_response
from ._ingest_route import ingest_routes
from ._backends import open_storage
from ._metrics import CONTENT_TYPE_LATEST, Metrics
from ._routes import json_response, rest_routes
from ._settings import Settings
from ._storage import Storage
from ._upload_routes import upload_routes

__all__ = ["create_app", "DEV_MODE_WARNING"]

log = logging.getLogger("dreamlake.server")

DEV_MODE_WARNING = (
    "DEVELOPMENT MODE: requests without an API key are accepted and every "
    "workspace is open to everyone. Never expose this server to a network."
)


async def health(request: Request) -> Response:
    ctx = context(request)
    body: dict[str, Any] = {"status": "ok", "devMode": ctx.settings.dev, "storage": type(ctx.storage).__name__}
    if ctx.settings.dev:
        body["warning"] = DEV_MODE_WARNING
    return json_response(body)


async def metrics(request: Request) -> Response:
    ctx = context(request)
    ctx.metrics.set_held(ctx.held())  # counts only: never waits on I/O or a lock
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def _on_error(request: Request, exc: Exception) -> Response:
    status, kind, message = classify(exc)
    ctx = request.app.state.dreamlake
    ctx.metrics.errors.labels(kind).inc()
    if status >= 500:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(status, kind, message, getattr(exc, "details", None))


class _InFlight:
    """Counts requests being handled (a gauge in /metrics; SIGTERM waits for them)."""

    def __init__(self, app: ASGIApp, gauge: Any) -> None:
        self.app = app
        self.gauge = gauge

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.gauge.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.gauge.dec()


def create_app(
    settings: Settings,
    storage: Storage | None = None,
    mounts: Mapping[str, ASGIApp] | None = None,
    extra_routes: Iterable[BaseRoute] = (),
) -> Starlette:
    storage = storage if storage is not None else open_storage(settings)
    ctx = ServerContext(settings, storage, KeyStore(settings.state_dir, settings.dev), Metrics())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.dev:
            log.warning(DEV_MODE_WARNING)
        yield
        await ctx.run(storage.close)  # after uvicorn drained the in-flight requests
        log.info("dreamlake-server: storage closed, everything acknowledged is on disk")

    routes: list[BaseRoute] = [
        *extra_routes,
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *ingest_routes,
        *upload_routes,
        *rest_routes,
        *(Mount(path, app=sub) for path, sub in (mounts or {}).items()),
    ]
    handlers = {cls: _on_error for cls in (ServerError, HTTPException, ValueError, TypeError, KeyError, Exception)}
    app = Starlette(
        routes=routes,
        exception_handlers=handlers,  # type: ignore[arg-type]
        lifespan=lifespan,
        middleware=[Middleware(_InFlight, gauge=ctx.metrics.in_flight)],
    )
    app.state.dreamlake = ctx
    return app
