"""``dreamlake-server``: the ingest and query server (DESIGN §8).

Public names: :func:`create_app` (the ASGI app factory; mount extra apps such
as the web page with ``mounts={"/ui": app}``), :class:`Settings`, :func:`main`
(the console script). The batched-ingest message types live in
:mod:`dreamlake.server.wire`, importable without the server's dependencies.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "Settings", "main"]


def __getattr__(name: str) -> Any:  # keep ``import dreamlake.server.wire`` free of starlette
    if name == "create_app":
        from ._app import create_app

        return create_app
    if name == "Settings":
        from ._settings import Settings

        return Settings
    if name == "main":
        from ._cli import main

        return main
    raise AttributeError(name)
