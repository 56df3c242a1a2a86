"""Resumable chunked uploads: our own routes beside upstream's one-request
``POST /sessions/{id}/files`` (which is unchanged). Rules in :mod:`._uploads`,
spec in docs/protocol.md. Thin: parse, authorise, call the storage."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._body import read_body
from ._context import ServerContext, context
from ._routes import _json_body, json_response
from ._storage import SessionRef
from ._uploads import check_upload_id, parse_spec

__all__ = ["upload_routes"]


async def _upload(request: Request) -> tuple[ServerContext, SessionRef, str]:
    """Authenticate, find the session, authorise; the upload id as given (404 if malformed)."""
    ctx = context(request)
    _, ref = await ctx.session(request)
    return ctx, ref, check_upload_id(request.path_params["upload_id"])


async def create_upload(request: Request) -> Response:
    ctx = context(request)
    _, ref = await ctx.session(request)
    spec = parse_spec(await _json_body(request))
    return json_response(await ctx.run(ctx.storage.upload_create, ref, spec), status=201)


async def upload_status(request: Request) -> Response:
    ctx, ref, upload_id = await _upload(request)
    return json_response(await ctx.run(ctx.storage.upload_status, ref, upload_id))


async def upload_chunk(request: Request) -> Response:
    ctx, ref, upload_id = await _upload(request)
    offset: int = request.path_params["offset"]
    body = await read_body(request, ctx.settings.max_body_bytes, ctx.settings.body_timeout)
    ctx.metrics.bytes_in.inc(len(body))
    ctx.metrics.upload_bytes.inc(len(body))
    status, stored = await ctx.run(ctx.storage.upload_chunk, ref, upload_id, offset, body)
    ctx.metrics.upload_stored.inc(stored)
    return json_response(status)


async def complete_upload(request: Request) -> Response:
    ctx, ref, upload_id = await _upload(request)
    return json_response(await ctx.run(ctx.storage.upload_complete, ref, upload_id), status=201)


async def abort_upload(request: Request) -> Response:
    ctx, ref, upload_id = await _upload(request)
    return json_response(await ctx.run(ctx.storage.upload_abort, ref, upload_id))


_U = "/sessions/{session_id}/uploads"

upload_routes = [
    Route(_U, create_upload, methods=["POST"]),
    Route(_U + "/{upload_id}", upload_status, methods=["GET"]),
    Route(_U + "/{upload_id}", abort_upload, methods=["DELETE"]),
    Route(_U + "/{upload_id}/complete", complete_upload, methods=["POST"]),
    Route(_U + "/{upload_id}/{offset:int}", upload_chunk, methods=["PUT"]),
]
