"""The server's error tree; mapped to HTTP in exactly one place (:func:`error_response`).

::

    ServerError (500)
    ├── BadRequest (400)        malformed body, bad name, bad _ts, unknown level
    ├── Unauthorized (401)      no key, unknown key
    ├── Forbidden (403)         key not scoped to the workspace; write-protected session
    ├── NotFound (404)          no such session, track or file
    ├── RequestTimeout (408)    body did not arrive in time
    └── TooLarge (413)          body, batch or upload over its limit

``ValueError``/``TypeError`` raised by the shared validators (names, values,
``_ts``) are bad requests too. The JSON body is always
``{"error": {"kind": ..., "message": ...}}``; ``kind`` is also the label of the
``errors`` counter in /metrics.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

__all__ = [
    "ServerError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "RequestTimeout",
    "TooLarge",
    "classify",
    "error_response",
]


class ServerError(Exception):
    status = 500
    kind = "internal"


class BadRequest(ServerError):
    status = 400
    kind = "bad_request"


class Unauthorized(ServerError):
    status = 401
    kind = "unauthorized"


class Forbidden(ServerError):
    status = 403
    kind = "forbidden"


class NotFound(ServerError):
    status = 404
    kind = "not_found"


class RequestTimeout(ServerError):
    status = 408
    kind = "timeout"


class TooLarge(ServerError):
    status = 413
    kind = "too_large"


def classify(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, kind, message) for any exception a route let through."""
    if isinstance(exc, ServerError):
        return exc.status, exc.kind, str(exc) or exc.kind
    if isinstance(exc, HTTPException):  # the router's own: no such route, wrong method
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        return exc.status_code, kind, str(exc.detail)
    if isinstance(exc, (ValueError, TypeError)):
        return 400, "bad_request", str(exc)
    if isinstance(exc, KeyError):  # the stores raise KeyError for an unknown id
        return 404, "not_found", str(exc.args[0]) if exc.args else "not found"
    return 500, "internal", "internal server error"


def error_response(status: int, kind: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": {"kind": kind, "message": message}}, status_code=status, headers=headers)
