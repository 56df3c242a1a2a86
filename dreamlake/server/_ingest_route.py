"""``POST /ingest/{workspace}/{name}``: the batched ingest of our own clients
(wire format in :mod:`.wire`, spec in docs/protocol.md). Creates the session
when it does not exist yet, so a client replaying its spool needs no other call."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._body import decode_batch, decompress_bounded, read_body
from ._context import ServerContext, context
from ._errors import BadRequest
from ._prepare import check_session_name, check_workspace, prepare_batch
from ._routes import json_response
from ._storage import SessionRef
from .wire import IngestAck

__all__ = ["ingest_routes"]


def _ingest(ctx: ServerContext, workspace: str, name: str, body: bytes, encoding: str) -> IngestAck:
    if encoding == "zstd":
        raw = decompress_bounded(body, ctx.settings.max_batch_bytes)
    elif encoding in ("", "identity"):
        raw = body
    else:
        raise BadRequest(f"unsupported Content-Encoding {encoding!r} (use zstd)")
    batch = decode_batch(raw)
    ref: SessionRef | None = ctx.storage.find_session(workspace, name)
    if ref is None:
        ref = ctx.storage.get_session(ctx.storage.upsert_session(workspace, name, {})["id"])
    prepared = prepare_batch(batch, ctx.clock(ref.id))
    ack = ctx.storage.ingest(ref, prepared)
    if ack.duplicate:
        ctx.metrics.duplicates.inc()
    else:
        ctx.metrics.batches.inc()
        for stream in prepared.streams:
            ctx.metrics.rows.labels(stream.kind).inc(len(stream.rows))
    return ack


async def ingest(request: Request) -> Response:
    ctx = context(request)
    identity = ctx.authenticate(request)
    workspace = check_workspace(request.path_params["workspace"])
    name = check_session_name(request.path_params["name"])
    identity.allow(workspace)
    body = await read_body(request, ctx.settings.max_body_bytes, ctx.settings.body_timeout)
    ctx.metrics.bytes_in.inc(len(body))
    encoding = request.headers.get("content-encoding", "").strip().lower()
    ack = await ctx.run(_ingest, ctx, workspace, name, body, encoding)
    return json_response(ack)


ingest_routes = [Route("/ingest/{workspace}/{name}", ingest, methods=["POST"])]
