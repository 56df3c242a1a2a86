"""Nothing a client sends crashes the server, stalls it, or writes outside --root:
oversized bodies → 413, bombs refused while decompressing, malformed input,
bad ``_ts``, unknown levels and escaping names → 400 with a JSON error, slow
bodies → 408."""

from __future__ import annotations

import socket
import time

import msgspec
import psutil
import pytest
import zstandard

from dreamlake.server.wire import BATCH_CONTENT_TYPE, IngestBatch, StreamBatch, encode_batch
from server_process import ServerProcess, make_key

ZSTD = {"content-type": BATCH_CONTENT_TYPE, "content-encoding": "zstd"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    root = base / "store"
    key = make_key(root, "ada", ("lab",))
    with ServerProcess(root, "--max-body-mb", "0.25", "--max-batch-mb", "1", "--body-timeout", "1") as srv:
        srv.key = key
        srv.base = base
        with srv.client(key) as c:
            srv.sid = c.post("/workspaces/lab/sessions", json={"name": "run"}).json()["session"]["id"]
            srv.c = c
            yield srv
        assert srv.proc.poll() is None, srv.stderr()  # still alive after everything


def _error(reply, status: int, kind: str | None = None) -> dict:
    assert reply.status_code == status, reply.text
    body = reply.json()["error"]
    assert body["message"]
    if kind:
        assert body["kind"] == kind
    return body


def _rows_in(server, track: str = "t") -> int:
    reply = server.c.get(f"/sessions/{server.sid}/tracks/{track}/stats")
    return reply.json()["totalDataPoints"] if reply.status_code == 200 else 0


def test_oversized_bodies_are_413(server):
    big = {"dataPoints": [{"v": "x" * 1000}] * 400}
    _error(server.c.post(f"/sessions/{server.sid}/tracks/t/append-batch", json=big), 413, "too_large")

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(400):
            yield b"x" * 1000

    _error(server.c.post(f"/sessions/{server.sid}/tracks/t/append-batch", content=chunks()), 413, "too_large")
    assert _rows_in(server) == 0


@pytest.mark.parametrize("declared", [True, False])
def test_zstd_bomb_is_refused_without_allocating_it(server, declared):
    raw = msgspec.msgpack.encode(IngestBatch("c", 1, [StreamBatch("t", [{"v": "a" * (192 << 20)}])]))
    bomb = zstandard.ZstdCompressor(level=1, write_content_size=declared).compress(raw)
    del raw
    assert len(bomb) < 256 << 10
    process = psutil.Process(server.proc.pid)
    before = process.memory_info().rss
    _error(server.c.post("/ingest/lab/run", content=bomb, headers=ZSTD), 413, "too_large")
    assert process.memory_info().rss - before < 48 << 20
    assert _rows_in(server) == 0


@pytest.mark.parametrize(
    "body, encoding",
    [
        (b"not zstd at all", "zstd"),
        (zstandard.ZstdCompressor().compress(b"\xc1\xc1 not msgpack"), "zstd"),
        (msgspec.msgpack.encode({"seq": 1}), ""),  # no client
        (msgspec.msgpack.encode({"client": "c", "seq": 1, "streams": [{"name": "t", "rows": "nope"}]}), ""),
        (msgspec.msgpack.encode({"client": "c", "seq": 1, "streams": [{"name": "t", "rows": [{"v": b"bytes"}]}]}), ""),
        (msgspec.msgpack.encode({"client": "c", "seq": 0, "streams": []}), ""),
        (msgspec.msgpack.encode({"client": "", "seq": 1, "streams": []}), ""),
        (msgspec.msgpack.encode({"client": "c", "seq": 1, "streams": [], "evil": 1}), ""),
        (msgspec.msgpack.encode({"client": "c", "seq": 1}), "gzip"),
        (b"\x91" * 100000 + b"\x90", ""),  # arrays nested 100,000 deep
    ],
)
def test_malformed_batches_are_400(server, body, encoding):
    headers = {"content-type": BATCH_CONTENT_TYPE, **({"content-encoding": encoding} if encoding else {})}
    _error(server.c.post("/ingest/lab/run", content=body, headers=headers), 400, "bad_request")


@pytest.mark.parametrize("ts", ["yesterday", float("nan"), float("inf"), True, [1.0]])
def test_bad_ts_is_400_and_nothing_of_the_batch_is_written(server, ts):
    stream = StreamBatch("t", [{"_ts": 1.0, "v": 1}, {"_ts": ts, "v": 2}])
    _error(server.c.post("/ingest/lab/run", content=encode_batch(IngestBatch("c", 5, [stream])), headers=ZSTD), 400)
    _error(server.c.post(f"/sessions/{server.sid}/tracks/t/append", json={"data": {"_ts": "x", "v": 1}}), 400)
    assert _rows_in(server) == 0


def test_unknown_level_is_400(server):
    _error(server.c.post(f"/sessions/{server.sid}/logs", json={"logs": [{"message": "m", "level": "loud"}]}), 400)
    log = StreamBatch("", [{"_ts": 1.0, "message": "m", "level": "loud"}], kind="log")
    _error(server.c.post("/ingest/lab/run", content=encode_batch(IngestBatch("c", 9, [log])), headers=ZSTD), 400)


@pytest.mark.parametrize(
    "method, path, kwargs",
    [
        ("POST", "/sessions/{sid}/tracks/a/%2E%2E/%2E%2E/%2E%2E/x/append", {"json": {"data": {"v": 1}}}),
        ("POST", "/sessions/{sid}/tracks/data.jsonl/append", {"json": {"data": {"v": 1}}}),
        ("POST", "/workspaces/lab/sessions", {"json": {"name": ".."}}),
        ("POST", "/workspaces/lab/sessions", {"json": {"name": "a/b"}}),
        ("POST", "/workspaces/.dreamlake-server/sessions", {"json": {"name": "x"}}),
        ("POST", "/sessions/{sid}/files", {"files": {"file": ("../../evil.txt", b"x")}}),
        ("POST", "/sessions/{sid}/files", {"files": {"file": ("ok.txt", b"x")}, "data": {"prefix": "../../up"}}),
        ("GET", "/sessions/{sid}/files", {"params": {"prefix": "/../x"}}),
        ("POST", "/ingest/lab/..%2Fescape", {"content": b""}),
    ],
)
def test_names_escaping_the_store_are_400(server, method, path, kwargs):
    reply = server.c.request(method, path.format(sid=server.sid), **kwargs)
    # 403: the key has no workspace ".dreamlake-server"; 404: a decoded "/" matches no route
    assert reply.status_code in (400, 403, 404), reply.text
    assert reply.json()["error"]["message"]
    escaped = {p.name for p in server.base.rglob("*")} & {"evil.txt", "x", "escape", "up"}
    assert not escaped


def test_reads_cannot_leave_the_session(server):
    with server.client(server.key) as c:
        other = c.post("/workspaces/lab/sessions", json={"name": "other"}).json()["session"]["id"]
        c.post(f"/sessions/{other}/tracks/secret/append", json={"data": {"v": 42}}).raise_for_status()
        for track in ("..%2Fother%2Ftracks%2Fsecret", "../other/tracks/secret", "..%2F..%2Flab%2Fother%2Ftracks%2Fsecret"):
            for suffix in ("/data", "/stats", ""):
                reply = c.get(f"/sessions/{server.sid}/tracks/{track}{suffix}")
                assert reply.status_code in (400, 404), (track, suffix, reply.text)
                assert "42" not in reply.text


def test_malformed_json_and_bad_query_are_400(server):
    c, sid = server.c, server.sid
    _error(c.post(f"/sessions/{sid}/parameters", content=b"{not json", headers={"content-type": "application/json"}), 400)
    _error(c.post(f"/sessions/{sid}/parameters", json=[1, 2]), 400)
    _error(c.post(f"/sessions/{sid}/parameters", content=b"[" * 100000 + b"]" * 100000), 400)
    _error(c.post(f"/sessions/{sid}/tracks/t/append-batch", json={"dataPoints": [1, 2]}), 400)
    _error(c.post(f"/sessions/{sid}/tracks/t/append", json={"data": {"_ts": 1.0}}), 400)
    _error(c.get(f"/sessions/{sid}/tracks/t/data", params={"limit": "lots"}), 400)
    _error(c.get(f"/sessions/{sid}/tracks/t/data", params={"limit": 10**9}), 400)
    _error(c.get(f"/sessions/{sid}/tracks/t/by-time", params={"st": "nan"}), 400)


def test_slow_body_times_out_with_408(server):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /sessions/{server.sid}/parameters HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"data\"".encode()
        )
        started = time.monotonic()
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert time.monotonic() - started < 8
