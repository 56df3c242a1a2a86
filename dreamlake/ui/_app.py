"""The web app: one page (``static/index.html``) plus the JSON endpoints it reads.

Every URL the page uses is relative, so the same app works at ``/`` (``dreamlake
ui``) and mounted under a prefix (``/ui`` in ``dreamlake-server``). Endpoints are
plain functions: Starlette runs them in its worker threads, so the blocking
reads of a :class:`~._source.DataSource` never stall the event loop. Bad
arguments answer 400 and unknown names 404, both as ``{"error": "..."}``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ._reads import X_TS, field_stats, filter_logs, read_series, track_fields
from ._source import DataSource, NotFound

__all__ = ["create_app"]

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_POINTS = 5000
MAX_TABLE_ROWS = 1000
MAX_COMPARE = 20


class BadRequest(ValueError):
    pass


def _arg(request: Request, name: str, required: bool = True) -> str | None:
    value = request.query_params.get(name)
    if required and not value:
        raise BadRequest(f"missing query parameter {name!r}")
    return value


def _int(request: Request, name: str, default: int | None, lo: int = 0, hi: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if value < lo or (hi is not None and value > hi):
        raise BadRequest(f"{name} must be between {lo} and {hi if hi is not None else 'any'}, got {value}")
    return value


def _list(request: Request, name: str) -> list[str]:
    raw = request.query_params.get(name) or ""
    return [part for part in (p.strip() for p in raw.split(",")) if part]


def _endpoint(source: DataSource, handler: Callable[[DataSource, Request], Any]) -> Callable[[Request], Response]:
    """Wraps a ``(source, request) -> JSON-able`` read; maps errors to 4xx."""

    def endpoint(request: Request) -> Response:
        try:
            result = handler(source, request)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except NotFound as exc:
            return JSONResponse({"error": str(exc.args[0]) if exc.args else "not found"}, status_code=404)
        if isinstance(result, Response):
            return result
        return JSONResponse(result)

    endpoint.__name__ = handler.__name__
    return endpoint


# -- sessions ---------------------------------------------------------------------


def _matches(session: dict, workspace: str | None, status: str | None, tag: str | None, q: str | None) -> bool:
    if workspace and session.get("workspace") != workspace:
        return False
    if status and session.get("status") != status:
        return False
    if tag and tag not in (session.get("tags") or []):
        return False
    if q:
        needle = q.lower()
        haystack = f"{session.get('prefix', '')} {session.get('description') or ''}".lower()
        if needle not in haystack:
            return False
    return True


def sessions(source: DataSource, request: Request) -> dict:
    everything = source.list_sessions()
    workspace, status, tag, q = (request.query_params.get(k) for k in ("workspace", "status", "tag", "q"))
    chosen = [s for s in everything if _matches(s, workspace, status, tag, q)]
    chosen.sort(key=lambda s: s.get("createdAt") or "", reverse=True)
    if request.query_params.get("params") == "1":
        for s in chosen:
            s["params"] = source.params(s["prefix"])
    return {
        "sessions": chosen,
        "total": len(everything),
        "workspaces": sorted({s["workspace"] for s in everything if s.get("workspace")}),
        "statuses": sorted({s["status"] for s in everything if s.get("status")}),
        "tags": sorted({t for s in everything for t in (s.get("tags") or [])}),
    }


def session(source: DataSource, request: Request) -> dict:
    prefix = _arg(request, "prefix")
    tracks = []
    for name in source.track_names(prefix):
        info = source.track_info(prefix, name)
        tracks.append({"name": name, **{k: info.get(k) for k in ("totalDataPoints", "firstTs", "lastTs")}})
    return {
        "session": source.session(prefix),
        "params": source.params(prefix),
        "tracks": tracks,
        "logCount": source.log_count(prefix),
    }


# -- tracks -----------------------------------------------------------------------


def track(source: DataSource, request: Request) -> dict:
    prefix, name = _arg(request, "prefix"), _arg(request, "track")
    info = source.track_info(prefix, name)
    return {**info, "fields": track_fields(source, prefix, name)}


def series(source: DataSource, request: Request) -> dict:
    prefix, name = _arg(request, "prefix"), _arg(request, "track")
    fields = _list(request, "fields")
    if not fields:
        fields = track_fields(source, prefix, name)
    return read_series(
        source,
        prefix,
        name,
        fields,
        x=request.query_params.get("x") or X_TS,
        lo=_int(request, "lo", None),
        hi=_int(request, "hi", None),
        points=_int(request, "points", 1000, lo=2, hi=MAX_POINTS) or 1000,
    )


def rows(source: DataSource, request: Request) -> dict:
    prefix, name = _arg(request, "prefix"), _arg(request, "track")
    total = int(source.track_info(prefix, name)["totalDataPoints"])
    limit = _int(request, "limit", 100, lo=1, hi=MAX_TABLE_ROWS) or 100
    start = _int(request, "start", None)
    if start is None:
        start = max(0, total - limit)  # the newest rows by default
    got = source.read_rows(prefix, name, start, limit)
    return {
        "total": total,
        "start": start,
        "rows": [{"index": i, "ts": ts, "data": {k: v for k, v in d.items() if k != "_ts"}} for i, ts, d in got],
    }


def stats(source: DataSource, request: Request) -> dict:
    prefix, name = _arg(request, "prefix"), _arg(request, "track")
    return field_stats(source, prefix, name, _list(request, "fields") or track_fields(source, prefix, name))


def compare(source: DataSource, request: Request) -> dict:
    prefixes = _list(request, "prefixes")
    if not prefixes:
        raise BadRequest("missing query parameter 'prefixes' (comma-separated)")
    if len(prefixes) > MAX_COMPARE:
        raise BadRequest(f"compare at most {MAX_COMPARE} sessions at once")
    params = {p: source.params(p) for p in prefixes}
    keys = sorted({k for values in params.values() for k in values})
    missing = object()
    table = []
    for key in keys:
        values = [params[p].get(key, missing) for p in prefixes]
        differs = any(v is missing for v in values) or any(v != values[0] for v in values[1:])
        table.append({"key": key, "values": [None if v is missing else v for v in values], "differs": differs})
    name, fields = request.query_params.get("track"), _list(request, "fields")
    track_names = {p: source.track_names(p) for p in prefixes}
    common = sorted(set.intersection(*(set(n) for n in track_names.values())))
    track_stats = {}
    if name:
        for p in prefixes:
            if name in track_names[p]:
                track_stats[p] = field_stats(source, p, name, fields or track_fields(source, p, name))
    return {
        "sessions": [source.session(p) for p in prefixes],
        "params": table,
        "commonTracks": common,
        "stats": track_stats,
    }


# -- logs and files -----------------------------------------------------------------


def logs(source: DataSource, request: Request) -> dict:
    prefix = _arg(request, "prefix")
    levels = {lvl.lower() for lvl in _list(request, "level")} or None
    return filter_logs(
        source,
        prefix,
        levels,
        request.query_params.get("q") or None,
        limit=_int(request, "limit", 200, lo=1, hi=5000) or 200,
        before=_int(request, "before", None),
        after=_int(request, "after", None, lo=-1),
    )


def files(source: DataSource, request: Request) -> dict:
    return {"files": source.list_files(_arg(request, "prefix"))}


def file_download(source: DataSource, request: Request) -> Response:
    prefix, file_id = _arg(request, "prefix"), _arg(request, "id")
    scratch = tempfile.mkdtemp(prefix="dreamlake-ui-")
    try:
        path = source.download_file(prefix, file_id, scratch)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return FileResponse(
        path,
        filename=os.path.basename(path),
        background=BackgroundTask(shutil.rmtree, scratch, ignore_errors=True),
    )


# -- the page -------------------------------------------------------------------------


def index(request: Request) -> Response:
    if not request.url.path.endswith("/"):
        # relative URLs in the page need the trailing slash (mounted at /ui -> /ui/)
        return RedirectResponse(request.url.replace(path=request.url.path + "/"), status_code=307)
    return FileResponse(os.path.join(STATIC_DIR, "index.html"), headers={"Cache-Control": "no-cache"})


def create_app(source: DataSource, *, debug: bool = False) -> Starlette:
    """The page and its JSON API over ``source``; mount it anywhere."""
    api = [
        ("sessions", sessions),
        ("session", session),
        ("track", track),
        ("series", series),
        ("rows", rows),
        ("stats", stats),
        ("compare", compare),
        ("logs", logs),
        ("files", files),
        ("file", file_download),
    ]
    routes = [Route("/", index), *(Route(f"/api/{path}", _endpoint(source, fn)) for path, fn in api)]
    routes.append(Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"))
    app = Starlette(debug=debug, routes=routes)
    app.state.source = source
    return app
