"""Upstream DreamLake 0.3's REST routes (DESIGN §8), thin: parse, authorise,
call the storage. Shapes are written down in ``docs/protocol.md``."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import anyio
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from .._fsutil import now_iso
from .._names import check_file_folder, check_segment
from .._tracks import check_ts
from ._body import decode_json, encode_json, read_body
from ._context import context
from ._errors import BadRequest, RequestTimeout, TooLarge
from ._prepare import check_end_status, prepare_log_rows, prepare_params, prepare_track_rows

__all__ = ["rest_routes", "json_response"]


def json_response(value: Any, status: int = 200) -> Response:
    return Response(encode_json(value), status_code=status, media_type="application/json")


async def _json_body(request: Request) -> Any:
    ctx = context(request)
    body = await read_body(request, ctx.settings.max_body_bytes, ctx.settings.body_timeout)
    ctx.metrics.bytes_in.inc(len(body))
    value = decode_json(body)
    if type(value) is not dict:
        raise BadRequest("request body must be a JSON object")
    return value


def _int_param(request: Request, names: tuple[str, ...], default: int, maximum: int | None = None) -> int:
    for name in names:
        raw = request.query_params.get(name)
        if raw is not None:
            try:
                value = int(raw)
            except ValueError:
                raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
            if value < 0:
                raise BadRequest(f"{name} must not be negative")
            if maximum is not None and value > maximum:
                raise BadRequest(f"{name} may be at most {maximum}")
            return value
    return default


def _ts_param(request: Request, names: tuple[str, ...]) -> float | None:
    for name in names:
        raw = request.query_params.get(name)
        if raw is not None:
            try:
                return check_ts(float(raw))
            except ValueError:
                raise BadRequest(f"{name} must be a finite number, got {raw!r}") from None
    return None


# -- sessions ----------------------------------------------------------------------
async def upsert_session(request: Request) -> Response:
    ctx = context(request)
    identity = ctx.authenticate(request)
    workspace = request.path_params["workspace"]
    identity.allow(workspace)
    body = await _json_body(request)
    name = body.get("name")
    fields: dict[str, Any] = {}
    for key, kind in (("description", str), ("folder", str), ("tags", list), ("metadata", dict), ("error", str)):
        value = body.get(key)
        if value is not None and not isinstance(value, kind):
            raise BadRequest(f"{key} must be a {kind.__name__}")
        fields[key] = value
    if fields["tags"] is not None and not all(isinstance(t, str) for t in fields["tags"]):
        raise BadRequest("tags must be a list of strings")
    fields["writeProtected"] = bool(body.get("writeProtected"))
    if body.get("status") is not None:
        fields["status"] = check_end_status(body["status"])
    record = await ctx.run(ctx.storage.upsert_session, workspace, name, fields)
    return json_response(
        {
            "session": record,
            "workspace": {"name": record["workspace"], "slug": record["workspace"]},
            "folder": record.get("folder"),
            "namespace": {"name": identity.user, "slug": identity.user},
        }
    )


async def get_session(request: Request) -> Response:
    ctx = context(request)
    _, ref = await ctx.session(request)
    return json_response({"session": await ctx.run(ctx.storage.session_record, ref)})


# -- logs --------------------------------------------------------------------------
async def create_logs(request: Request) -> Response:
    ctx = context(request)
    _, ref = await ctx.session(request)
    body = await _json_body(request)
    rows = prepare_log_rows(body.get("logs"), ctx.clock(ref.id))
    first, last = await ctx.run(ctx.storage.append_logs, ref, rows)
    ctx.metrics.rows.labels("log").inc(len(rows.rows))
    return json_response({"created": len(rows.rows), "startSequence": first, "endSequence": last, "sessionId": ref.id})


async def read_logs(request: Request) -> Response:
    ctx = context(request)
    _, ref = await ctx.session(request)
    start = _int_param(request, ("startIndex", "s"), 0)
    limit = _int_param(request, ("limit",), 1000, ctx.settings.max_read_limit)
    return json_response(await ctx.run(ctx.storage.read_logs, ref, start, limit))


# -- parameters --------------------------------------------------------------------
async def set_parameters(request: Request) -> Response:
    ctx = context(request)
    _, ref = await ctx.session(request)
    body = await _json_body(request)
    flat = prepare_params(body.get("data"))
    result = await ctx.run(ctx.storage.set_params, ref, flat)
    return json_response({"sessionId": ref.id, **result, "updatedAt": now_iso()})


async def get_parameters(request: Request) -> Response:
    ctx = context(request)
    _, ref = await ctx.session(request)
    return json_response({"sessionId": ref.id, **await ctx.run(ctx.storage.get_params, ref)})


# -- tracks ------------------------------------------------------------------------
async def append_one(request: Request) -> Response:
    ctx = context(request)
    _, ref = await ctx.session(request)
    body = await _json_body(request)
    if type(body.get("data")) is not dict:
        raise BadRequest('body must be {"data": {...}}')
    rows = prepare_track_rows(request.path_params["name"], [body["data"]], ctx.clock(ref.id))
    result = await ctx.run(ctx.storage.append_rows, ref, rows)
    ctx.metrics.rows.labels("track").inc(1)
    return json_response({**result, "index": result["startIndex"]})


async def append_batch(request: Request) -> Response:
    ctx = context(request)
    _, ref = await ctx.session(request)
    body = await _json_body(request)
    rows = prepare_track_rows(request.path_params["name"], body.get("dataPoints"), ctx.clock(ref.id))
    result = await ctx.run(ctx.storage.append_rows, ref, rows)
    ctx.metrics.rows.labels("track").inc(result["count"])
    return json_response(result)


async def read_track(request: Request) -> Response:
    """By index (``startIndex``/upstream's ``s``, ``limit``), or by ``_ts``
    (``startTs``/``st``, ``endTs``/``et``) when either bound is given."""
    ctx = context(request)
    _, ref = await ctx.session(request)
    name = request.path_params["name"]
    limit = _int_param(request, ("limit",), 1000, ctx.settings.max_read_limit)
    start_ts = _ts_param(request, ("startTs", "st", "startTime"))
    end_ts = _ts_param(request, ("endTs", "et", "endTime"))
    by_time = request.url.path.endswith("/by-time")
    if by_time and request.query_params.get("reverse", "false").lower() not in ("false", "0"):
        raise BadRequest("reverse=true is not supported; page forward by _ts")
    if by_time or start_ts is not None or end_ts is not None:
        page = await ctx.run(ctx.storage.read_rows_by_ts, ref, name, start_ts, end_ts, limit)
        page.setdefault("startTime", start_ts)
        page.setdefault("endTime", end_ts)
        return json_response(page)
    start = _int_param(request, ("startIndex", "s"), 0)
    return json_response(await ctx.run(ctx.storage.read_rows, ref, name, start, limit))


async def track_stats(request: Request) -> Response:
    ctx = context(request)
    _, ref = await ctx.session(request)
    return json_response(await ctx.run(ctx.storage.track_stats, ref, request.path_params["name"]))


async def list_tracks(request: Request) -> Response:
    ctx = context(request)
    _, ref = await ctx.session(request)
    return json_response({"tracks": await ctx.run(ctx.storage.list_tracks, ref)})


# -- files -------------------------------------------------------------------------
def _stage(upload: Any, target: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    upload.file.seek(0)
    with open(target, "wb") as out:
        while chunk := upload.file.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _tags(raw: Any) -> list[str]:
    if raw is None or raw == "":
        return []
    if not isinstance(raw, str):
        raise BadRequest("tags must be a comma-separated string")
    return [t.strip() for t in raw.split(",") if t.strip()]


async def upload_file(request: Request) -> Response:
    ctx = context(request)
    _, ref = await ctx.session(request)
    limit = ctx.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        raise BadRequest("file uploads need a Content-Length")
    if int(declared) > limit:
        raise TooLarge(f"upload of {declared} bytes is over the limit of {limit}")
    ctx.metrics.bytes_in.inc(int(declared))
    try:
        with anyio.fail_after(ctx.settings.body_timeout):
            form = await request.form(max_files=1, max_fields=32, max_part_size=1 << 20)
    except TimeoutError:
        raise RequestTimeout("upload did not arrive in time") from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise BadRequest('multipart field "file" is missing')
        filename = check_segment(upload.filename or "upload", "file name")
        folder = check_file_folder(form.get("prefix") or form.get("path") or "/")
        metadata: Any = {}
        if form.get("metadata"):
            try:
                metadata = json.loads(str(form.get("metadata")))
            except ValueError:
                raise BadRequest("metadata must be a JSON object") from None
            if type(metadata) is not dict:
                raise BadRequest("metadata must be a JSON object")
        description = form.get("description") or None
        scratch = await ctx.run(ctx.storage.scratch_dir)
        try:
            staged = scratch / filename
            size, checksum = await ctx.run(_stage, upload, staged)
            expected = form.get("checksum")
            if expected and str(expected).lower() != checksum:
                raise BadRequest("checksum does not match the uploaded bytes (sha256)")
            if form.get("sizeBytes") and str(form.get("sizeBytes")) != str(size):
                raise BadRequest(f"sizeBytes says {form.get('sizeBytes')}, received {size}")
            entry = await ctx.run(
                ctx.storage.upload_file, ref, staged, folder, description, _tags(form.get("tags")), metadata
            )
        finally:
            await ctx.run(shutil.rmtree, scratch, True)
    finally:
        await form.close()
    return json_response(entry, status=201)


async def list_files(request: Request) -> Response:
    ctx = context(request)
    _, ref = await ctx.session(request)
    raw = request.query_params.get("prefix", request.query_params.get("path"))
    folder = check_file_folder(raw) if raw is not None else None
    tags = _tags(request.query_params.get("tags")) or None
    return json_response({"files": await ctx.run(ctx.storage.list_files, ref, folder, tags)})


async def get_file(request: Request) -> Response:
    ctx = context(request)
    _, ref = await ctx.session(request)
    return json_response(await ctx.run(ctx.storage.get_file, ref, request.path_params["file_id"]))


async def download_file(request: Request) -> Response:
    ctx = context(request)
    _, ref = await ctx.session(request)
    scratch = await ctx.run(ctx.storage.scratch_dir)
    try:
        path = await ctx.run(ctx.storage.export_file, ref, request.path_params["file_id"], scratch)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return FileResponse(path, filename=path.name, background=BackgroundTask(shutil.rmtree, scratch, True))


async def update_file(request: Request) -> Response:
    ctx = context(request)
    _, ref = await ctx.session(request)
    body = await _json_body(request)
    changes: dict[str, Any] = {}
    for key, kind in (("description", str), ("tags", list), ("metadata", dict)):
        if key in body and body[key] is not None:
            if not isinstance(body[key], kind):
                raise BadRequest(f"{key} must be a {kind.__name__}")
            changes[key] = body[key]
    if "tags" in changes and not all(isinstance(t, str) for t in changes["tags"]):
        raise BadRequest("tags must be a list of strings")
    return json_response(await ctx.run(ctx.storage.update_file, ref, request.path_params["file_id"], changes))


async def delete_file(request: Request) -> Response:
    ctx = context(request)
    _, ref = await ctx.session(request)
    entry = await ctx.run(ctx.storage.delete_file, ref, request.path_params["file_id"])
    return json_response({**entry, "deletedAt": now_iso()})


_S = "/sessions/{session_id}"
_T = _S + "/tracks/{name:path}"

rest_routes = [
    Route("/workspaces/{workspace}/sessions", upsert_session, methods=["POST"]),
    Route(_S, get_session, methods=["GET"]),
    Route(_S + "/logs", create_logs, methods=["POST"]),
    Route(_S + "/logs", read_logs, methods=["GET"]),
    Route(_S + "/parameters", set_parameters, methods=["POST"]),
    Route(_S + "/parameters", get_parameters, methods=["GET"]),
    Route(_S + "/files", upload_file, methods=["POST"]),
    Route(_S + "/files", list_files, methods=["GET"]),
    Route(_S + "/files/{file_id}/download", download_file, methods=["GET"]),
    Route(_S + "/files/{file_id}", get_file, methods=["GET"]),
    Route(_S + "/files/{file_id}", update_file, methods=["PATCH"]),
    Route(_S + "/files/{file_id}", delete_file, methods=["DELETE"]),
    Route(_S + "/tracks", list_tracks, methods=["GET"]),
    Route(_T + "/append", append_one, methods=["POST"]),
    Route(_T + "/append-batch", append_batch, methods=["POST"]),
    Route(_T + "/data", read_track, methods=["GET"]),
    Route(_T + "/by-time", read_track, methods=["GET"]),
    Route(_T + "/stats", track_stats, methods=["GET"]),
    Route(_T, read_track, methods=["GET"]),
]
