"""SIGTERM drains: a request in flight when the signal arrives finishes and is
acknowledged, and everything acknowledged is on disk after the exit."""

from __future__ import annotations

import re
import signal
import socket
import time

from dreamlake.server.wire import BATCH_CONTENT_TYPE, IngestBatch, StreamBatch, encode_batch
from server_process import ServerProcess, make_key


def _in_flight(srv: ServerProcess) -> float:
    with srv.client() as c:
        text = c.get("/metrics").text
    return float(re.search(r"^dreamlake_requests_in_flight (\S+)$", text, re.M).group(1))


def test_sigterm_lets_the_request_in_flight_finish_and_keeps_it(tmp_path):
    root = tmp_path / "store"
    key = make_key(root, "ada", ("lab",))
    body = encode_batch(IngestBatch("c", 1, [StreamBatch("t", [{"_ts": float(i), "v": i} for i in range(1000)])]))
    srv = ServerProcess(root, "--log-level", "info")
    host, port = srv.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(
            f"POST /ingest/lab/run HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: {BATCH_CONTENT_TYPE}\r\nContent-Encoding: zstd\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        deadline = time.monotonic() + 10
        while _in_flight(srv) < 2:  # ours, plus the /metrics request asking
            assert time.monotonic() < deadline, "the request never reached the app"
            time.sleep(0.01)
        srv.proc.send_signal(signal.SIGTERM)
        sock.sendall(body[10:])
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply
    assert b'"duplicate":false' in reply
    assert srv.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
    assert "storage closed, everything acknowledged is on disk" in srv.stderr()
    with ServerProcess(root) as again, again.client(key) as c:
        sid = c.post("/workspaces/lab/sessions", json={"name": "run"}).json()["session"]["id"]
        assert c.get(f"/sessions/{sid}/tracks/t/stats").json()["totalDataPoints"] == 1000
        dup = c.post("/ingest/lab/run", content=body, headers={"content-type": BATCH_CONTENT_TYPE,
                                                                "content-encoding": "zstd"}).json()
        assert dup["duplicate"] is True
