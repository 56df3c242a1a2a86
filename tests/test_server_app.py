"""The app factory in-process: other ASGI apps (the web page) mount into it."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from dreamlake.server import Settings, create_app


@pytest.mark.asyncio
async def test_a_mounted_app_is_served_beside_the_api(tmp_path):
    page = Starlette(routes=[Route("/", lambda request: PlainTextResponse("the page"))])
    app = create_app(Settings(root=tmp_path / "store"), mounts={"/ui": page})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert (await client.get("/ui/")).text == "the page"
        assert (await client.get("/health")).json()["status"] == "ok"
        assert (await client.post("/workspaces/lab/sessions", json={"name": "x"})).status_code == 401
        missing = await client.get("/no/such/route")
        assert missing.status_code == 404 and missing.json()["error"]["kind"] == "not_found"


def test_wire_module_imports_without_the_server_stack():
    import subprocess
    import sys

    code = ("import sys, dreamlake.server.wire; "
            "bad = [m for m in ('starlette', 'uvicorn', 'prometheus_client') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0
