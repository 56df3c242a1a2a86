"""The server's error tree; mapped to HTTP in exactly one place (:func:`error_response`).

::

    ServerError (500)
    ├── BadRequest (400)        malformed body, bad name, bad _ts, unknown level
    ├── Unauthorized (401)      no key, unknown key
    ├── Forbidden (403)         key not scoped to the workspace; write-protected session
    ├── NotFound (404)          no such session, track, file or upload
    ├── RequestTimeout (408)    body did not arrive in time
    ├── Conflict (409)          a chunk that would leave a gap (``details`` names the offset to send)
    ├── TooLarge (413)          body, batch or upload over its limit
    └── Busy (503)              another request is completing this upload: retry soon

``ValueError``/``TypeError`` raised by the shared validators (names, values,
``_ts``) are bad requests too. The JSON body is always
``{"error": {"kind": ..., "message": ...}}`` (plus the error's ``details``, if
any); ``kind`` is also the label of the ``errors`` counter in /metrics.
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
    "Conflict",
    "TooLarge",
    "Busy",
    "classify",
    "error_response",
]


class ServerError(Exception):
    status = 500
    kind = "internal"
    #: extra fields for the JSON error (e.g. the offset a resumed upload must send next)
    details: dict | None = None


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


class Conflict(ServerError):
    status = 409
    kind = "conflict"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.details = details


class TooLarge(ServerError):
    status = 413
    kind = "too_large"


class Busy(ServerError):
    status = 503
    kind = "busy"


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


def error_response(status: int, kind: str, message: str, details: dict | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    error = {**(details or {}), "kind": kind, "message": message}
    return JSONResponse({"error": error}, status_code=status, headers=headers)
