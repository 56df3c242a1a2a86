"""Helpers for the remote-mode tests: a server on a fixed port (so it can be
restarted at the same URL), a fault-injecting proxy, and reading back what the
server stored."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from pathlib import Path

import httpx

from dreamlake._local_sink import stream_files
from server_process import ServerProcess, make_key

__all__ = ["free_port", "start_server", "server_rows", "server_logs", "server_meta", "FaultProxy", "wait_for"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int, *args: str) -> ServerProcess:
    return ServerProcess(root, "--port", str(port), *args)


def keyed_server(tmp_path: Path):
    """A real server under ``tmp_path/server`` with ``.key`` valid for workspace ``ws``;
    stopped when the generator is closed (use with ``yield from`` in a fixture)."""
    root = tmp_path / "server"
    root.mkdir()
    key = make_key(root, workspaces=("ws",))
    srv = start_server(root, free_port())
    srv.key = key
    try:
        yield srv
    finally:
        srv.stop()


def server_rows(root: Path, workspace: str, name: str, track: str) -> list[dict]:
    files = stream_files(str(Path(root) / workspace / name), track)
    rows, _ = files.read(0, 10**9)
    return [row for _, _, row in rows]


def server_logs(root: Path, workspace: str, name: str) -> list[dict]:
    files = stream_files(str(Path(root) / workspace / name), "logs", True)
    rows, _ = files.read(0, 10**9)
    return [row for _, _, row in rows]


def server_meta(root: Path, workspace: str, name: str) -> dict:
    return json.loads((Path(root) / workspace / name / "session.json").read_text())


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


class FaultProxy:
    """Forwards to ``upstream``; ``plan(n)`` (n = request number from 1) may
    return ``(status, headers)`` to answer instead of forwarding, or
    ``(status, headers, True)`` to forward and then lose the real reply."""

    def __init__(self, upstream: str, plan) -> None:
        self.upstream = upstream
        self.plan = plan
        self.count = 0
        self.delay: threading.Event | None = None
        self.faults = 0
        self.forwarded = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.count += 1
                fault = proxy.plan(proxy.count)
                if proxy.delay:
                    proxy.delay.wait()  # hold the reply until the test releases it
                headers_in = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                if fault is not None and len(fault) == 3:
                    httpx.request(self.command, proxy.upstream + self.path, headers=headers_in, content=body, timeout=30)
                    proxy.forwarded += 1
                if fault is not None:
                    status, headers = fault[:2]
                    proxy.faults += 1
                    payload = json.dumps({"error": "injected"}).encode()
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                reply = httpx.request(self.command, proxy.upstream + self.path, headers=headers, content=body, timeout=30)
                proxy.forwarded += 1
                self.send_response(reply.status_code)
                for k, v in reply.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
