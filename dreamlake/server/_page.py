"""The web page (:mod:`dreamlake.ui`) inside the server, behind the server's keys.

The API authenticates every request with ``Authorization: Bearer <key>``; a
browser cannot send that header on its own, so the page is opened once as
``/ui/?key=<key>``: the key is checked, kept in an HttpOnly, SameSite=Strict
cookie scoped to the page, and the browser is sent to the same URL without it.
The page shows every workspace, so it needs a key valid for all workspaces
(one created without ``--workspace``); a narrower key gets 403. In ``--dev``
mode, as for the API, no key is needed.
"""

from __future__ import annotations

from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Receive, Scope, Send

from ._auth import KeyStore
from ._errors import ServerError

__all__ = ["KeyGate", "COOKIE"]

COOKIE = "dreamlake_page_key"

_LOGIN_HELP = (
    "<!doctype html><title>DreamLake</title><h1>{title}</h1>"
    "<p>{why}</p><p>Open this page once as <code>/ui/?key=YOUR_KEY</code> with a key made by "
    "<code>dreamlake-server keys create --user NAME</code> (no <code>--workspace</code>: the page "
    "shows every workspace).</p>"
)


class KeyGate:
    """ASGI wrapper: let a request through to ``app`` only with a valid key."""

    def __init__(self, app: ASGIApp, keys: KeyStore) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        given = query.pop("key", None)
        token = given or _cookie(scope) or _bearer(scope)
        try:
            identity = self.keys.authenticate(f"Bearer {token}" if token else None)
        except ServerError as exc:
            await _page(send, 401, "Sign in", str(exc))
            return
        if "*" not in identity.workspaces and not identity.dev:
            await _page(send, 403, "This key cannot open the page", "Its workspaces are limited.")
            return
        if given is not None:  # keep the key in a cookie, drop it from the address bar
            root = scope.get("root_path", "") or "/"
            location = root + scope["path"][len(scope.get("root_path", "")) :]
            if query:
                location += "?" + urlencode(query)
            cookie = f"{COOKIE}={given}; Path={root}; HttpOnly; SameSite=Strict"
            await send({"type": "http.response.start", "status": 303, "headers": [(b"location", location.encode()), (b"set-cookie", cookie.encode())]})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _cookie(scope: Scope) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    morsel = SimpleCookie(raw).get(COOKIE)
    return morsel.value if morsel else None


def _bearer(scope: Scope) -> str | None:
    scheme, _, value = (_header(scope, b"authorization") or "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


async def _page(send: Send, status: int, title: str, why: str) -> None:
    body = _LOGIN_HELP.format(title=title, why=why.replace("<", "&lt;")).encode()
    headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
