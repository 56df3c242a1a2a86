"""Resumable chunked uploads end to end: the client (``sinks/remote/uploads.py``)
against a real ``dreamlake-server`` process on the local store and on
PostgreSQL + object storage; a server killed mid-upload; ``dreamlake sync``
interrupted mid-upload; the HTTP API's refusals; memory bounded for a large file."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import httpx
import pytest

from dreamlake import Session
from dreamlake._sync import sync_session
from dreamlake.sinks.remote import uploads
from dreamlake.sinks.remote.config import RemoteTarget
from dreamlake.sinks.remote.service import AuthFailed, RemoteStore
from pg import fresh_schema
from remote_helpers import FaultProxy, free_port, keyed_server, wait_for
from server_process import ServerProcess, make_key

CHUNK = 256 << 10


class Server:
    """A server on a fixed port (restartable at the same URL), on either backend."""

    def __init__(self, tmp_path, backend: str, database: str | None) -> None:
        self.root = tmp_path / "server"
        self.key = make_key(self.root, workspaces=("ws",))
        self.port = free_port()
        self.args = ("--port", str(self.port))
        if backend == "postgres":
            self.args += ("--store", database, "--objects", (tmp_path / "objects").as_uri())
        self.proc = ServerProcess(self.root, *self.args)
        self.url = self.proc.url

    def restart(self) -> None:
        self.proc = ServerProcess(self.root, *self.args)

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics").text
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    def session(self, name: str = "run") -> tuple[RemoteStore, str]:
        reply = httpx.post(f"{self.url}/workspaces/ws/sessions", json={"name": name},
                           headers={"Authorization": f"Bearer {self.key}"})
        sid = reply.json()["session"]["id"]
        return RemoteStore(RemoteTarget(self.url, "ws", name, self.key), lambda: sid), sid


@pytest.fixture(params=["local", "postgres"])
def server(request, tmp_path):
    if request.param == "postgres":
        with fresh_schema() as database:
            srv = Server(tmp_path, "postgres", database)
            yield srv
            srv.proc.stop()
    else:
        srv = Server(tmp_path, "local", None)
        yield srv
        srv.proc.stop()


def _offline_with_file(tmp_path, url: str) -> tuple[Path, bytes]:
    """An offline session holding a six-chunk file; → (its store root, the file's bytes)."""
    src, data = _file(tmp_path, 6 * CHUNK + 7, "ckpt.bin")
    local = tmp_path / "local"
    with Session(prefix="ws/off", root=str(local), url=url, mode="offline") as session:
        session.track("t").append(x=1)
        session.files.upload(src, "/ckpt")
    return local, data


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 256 KiB from 1 MiB up, so a test file of a few MB is many chunks."""
    monkeypatch.setattr(uploads, "CHUNK_BYTES", CHUNK)
    monkeypatch.setattr(uploads, "CHUNKED_THRESHOLD", 1 << 20)


def _file(tmp_path, size: int, name: str = "weights.bin") -> tuple[str, bytes]:
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return str(path), data


def test_a_file_of_several_chunks_arrives_whole_once(server, tmp_path, small_chunks):
    store, _ = server.session()
    src, data = _file(tmp_path, 5 * CHUNK + 1234)
    record = store.files_upload(src, "models", "w", ["t"], {"k": 1})
    assert record["sizeBytes"] == len(data) and record["checksum"] == hashlib.sha256(data).hexdigest()
    assert record["path"] == "/models" and record["filename"] == "weights.bin"
    assert server.metric("dreamlake_upload_chunk_bytes_total") == len(data)  # 6 chunks, nothing sent twice
    out = store.files_download(record["id"], str(tmp_path / "back.bin"))
    assert open(out, "rb").read() == data
    assert [f["id"] for f in store.files_list(None, None)] == [record["id"]]


def test_below_the_threshold_a_file_goes_in_one_request(server, tmp_path, small_chunks):
    store, _ = server.session()
    src, data = _file(tmp_path, 1000)
    record = store.files_upload(src, "", None, [], {})
    assert record["sizeBytes"] == 1000 and server.metric("dreamlake_upload_chunk_bytes_total") == 0


def test_server_killed_mid_upload_resumes_from_the_bytes_it_holds(server, tmp_path, small_chunks, monkeypatch):
    monkeypatch.setattr(uploads, "UPLOAD_ATTEMPTS", 40)  # however slowly the server comes back
    store, _ = server.session()
    src, data = _file(tmp_path, 8 * CHUNK + 99)
    killed = threading.Event()
    seen: list[uploads.ChunkedUpload] = []

    def progress(self, offset: int) -> None:
        if offset == 2 * CHUNK and not killed.is_set():
            seen.append(self)
            server.proc.kill()  # kill -9 after the server acknowledged two chunks
            killed.set()

    monkeypatch.setattr(uploads.ChunkedUpload, "progress", progress)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(store.files_upload(src, "", None, [], {})))
    worker.start()
    assert killed.wait(30)
    wait_for(lambda: seen[0].failures >= 2)  # the client is retrying against a dead server
    server.restart()
    worker.join(60)
    assert result.get("checksum") == hashlib.sha256(data).hexdigest()
    # the restarted server received only what it did not hold yet
    assert server.metric("dreamlake_upload_chunk_bytes_total") == len(data) - 2 * CHUNK
    assert len(store.files_list(None, None)) == 1
    out = store.files_download(result["id"], str(tmp_path / "back.bin"))
    assert open(out, "rb").read() == data


class _Interrupted(BaseException):
    pass


def test_an_interrupted_sync_resumes_the_upload_where_it_stopped(tmp_path, small_chunks, monkeypatch):
    gen = keyed_server(tmp_path)
    srv = next(gen)
    try:
        local, data = _offline_with_file(tmp_path, srv.url)
        sdir = str(local / "ws" / "off")

        def stop_after_three(self, offset: int) -> None:
            if offset >= 3 * CHUNK:
                raise _Interrupted  # as Ctrl-C would, between two chunks

        monkeypatch.setattr(uploads.ChunkedUpload, "progress", stop_after_three)
        with pytest.raises(_Interrupted):
            sync_session(sdir, api_key=srv.key)
        state = json.loads(open(os.path.join(sdir, ".sync.json")).read())
        assert len(state["uploads"]) == 1 and not state["files"]
        monkeypatch.setattr(uploads.ChunkedUpload, "progress", lambda self, offset: None)
        before = _metric(srv.url, "dreamlake_upload_chunk_bytes_total")
        report = sync_session(sdir, api_key=srv.key)
        assert report.files == 1
        resent = _metric(srv.url, "dreamlake_upload_chunk_bytes_total") - before
        assert resent == len(data) - 3 * CHUNK
        state = json.loads(open(os.path.join(sdir, ".sync.json")).read())
        assert state["uploads"] == {} and len(state["files"]) == 1
        again = sync_session(sdir, api_key=srv.key)  # a second run is a no-op
        assert again.files == 0 and again.rows == 0 and again.batches == 0
        sid = httpx.post(f"{srv.url}/workspaces/ws/sessions", json={"name": "off"},
                         headers={"Authorization": f"Bearer {srv.key}"}).json()["session"]["id"]
        listed = httpx.get(f"{srv.url}/sessions/{sid}/files", headers={"Authorization": f"Bearer {srv.key}"}).json()
        assert [f["checksum"] for f in listed["files"]] == [hashlib.sha256(data).hexdigest()]
    finally:
        gen.close()


def _metric(url: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", httpx.get(url + "/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_bad_key_is_refused_and_not_retried(server, tmp_path, small_chunks):
    _, sid = server.session()
    src, _ = _file(tmp_path, 2 << 20)
    bad = RemoteStore(RemoteTarget(server.url, "ws", "run", "not-a-key"), lambda: sid)
    with pytest.raises(AuthFailed):
        bad.files_upload(src, "", None, [], {})
    other = make_key(server.root, "eve", ("elsewhere",))
    with pytest.raises(AuthFailed):
        RemoteStore(RemoteTarget(server.url, "ws", "run", other), lambda: sid).files_upload(src, "", None, [], {})


# -- the HTTP API's answers -----------------------------------------------------------
@pytest.fixture
def api(tmp_path):
    gen = keyed_server(tmp_path)
    srv = next(gen)
    client = srv.client(srv.key)
    sid = client.post("/workspaces/ws/sessions", json={"name": "run"}).json()["session"]["id"]
    yield srv, client, f"/sessions/{sid}/uploads"
    client.close()
    gen.close()


def _spec(data: bytes, **over) -> dict:
    return {"filename": "f.bin", "prefix": "/out", "sizeBytes": len(data),
            "checksum": hashlib.sha256(data).hexdigest(), **over}


def test_http_repeated_chunk_gap_and_completion(api):
    _, client, base = api
    data = os.urandom(3000)
    created = client.post(base, json=_spec(data))
    assert created.status_code == 201, created.text
    uid = created.json()["uploadId"]
    assert client.put(f"{base}/{uid}/0", content=data[:1000]).json()["offset"] == 1000
    assert client.put(f"{base}/{uid}/0", content=data[:1000]).json()["offset"] == 1000  # repeated: accepted
    gap = client.put(f"{base}/{uid}/2000", content=data[2000:])
    assert gap.status_code == 409 and gap.json()["error"]["offset"] == 1000
    early = client.post(f"{base}/{uid}/complete")
    assert early.status_code == 409 and early.json()["error"]["offset"] == 1000
    assert client.get(f"{base}/{uid}").json()["offset"] == 1000
    assert client.put(f"{base}/{uid}/1000", content=data[1000:]).json()["offset"] == 3000
    done = client.post(f"{base}/{uid}/complete")
    assert done.status_code == 201 and done.json()["sizeBytes"] == 3000
    assert client.post(f"{base}/{uid}/complete").json()["id"] == done.json()["id"]
    files = client.get(base.replace("/uploads", "/files")).json()["files"]
    assert len(files) == 1
    assert client.get(base.replace("/uploads", f"/files/{files[0]['id']}/download")).content == data


def test_http_checksum_mismatch_is_refused_and_nothing_appears(api):
    _, client, base = api
    data = os.urandom(2000)
    uid = client.post(base, json=_spec(data, checksum="0" * 64)).json()["uploadId"]
    client.put(f"{base}/{uid}/0", content=data)
    refused = client.post(f"{base}/{uid}/complete")
    assert refused.status_code == 400 and "checksum" in refused.json()["error"]["message"]
    assert client.get(base.replace("/uploads", "/files")).json()["files"] == []
    assert client.get(f"{base}/{uid}").status_code == 404


@pytest.mark.parametrize(
    "spec",
    [
        {"filename": "../x", "sizeBytes": 1, "checksum": "0" * 64},
        {"filename": "x", "sizeBytes": -1, "checksum": "0" * 64},
        {"filename": "x", "sizeBytes": "12", "checksum": "0" * 64},
        {"filename": "x", "sizeBytes": 1, "checksum": "abc"},
        {"filename": "x", "sizeBytes": 1, "checksum": "0" * 64, "prefix": "/a/../../b"},
        {"filename": "x", "sizeBytes": 1, "checksum": "0" * 64, "metadata": [1]},
        {"filename": "x", "sizeBytes": 1, "checksum": "0" * 64, "tags": [1]},
        {"filename": "x", "sizeBytes": 1 << 50, "checksum": "0" * 64},
        {"sizeBytes": 1, "checksum": "0" * 64},
    ],
)
def test_http_bad_specs_are_400(api, spec):
    _, client, base = api
    reply = client.post(base, json=spec)
    assert reply.status_code == 400 and reply.json()["error"]["kind"] == "bad_request", reply.text


def test_http_bad_requests_never_500(api):
    srv, client, base = api
    data = os.urandom(100)
    uid = client.post(base, json=_spec(data)).json()["uploadId"]
    assert client.post(base, content=b"{not json").status_code == 400
    assert client.put(f"{base}/{uid}/0", content=b"").status_code == 400
    assert client.put(f"{base}/{uid}/0", content=data + b"x").status_code == 400  # past the size
    assert client.put(f"{base}/{uid}/-1", content=data).status_code in (404, 405)
    assert client.put(f"{base}/{uid}/abc", content=data).status_code in (404, 405)
    assert client.get(f"{base}/{'f' * 32}").status_code == 404
    assert client.get(f"{base}/..%2F..%2Fkeys").status_code == 404
    assert client.put(f"{base}/{'0' * 31}/0", content=data).status_code == 404
    with srv.client() as anonymous:
        assert anonymous.post(base, json=_spec(data)).status_code == 401
        assert anonymous.put(f"{base}/{uid}/0", content=data).status_code == 401
    with srv.client(make_key(srv.root, "eve", ("elsewhere",))) as stranger:
        assert stranger.get(f"{base}/{uid}").status_code == 403
        assert stranger.post(f"{base}/{uid}/complete").status_code == 403
    assert client.get("/metrics").text.count('dreamlake_errors_total{kind="internal"}') == 0
    assert client.delete(f"{base}/{uid}").status_code == 200
    assert client.get(f"{base}/{uid}").status_code == 404


def test_a_large_file_uploads_in_bounded_memory(tmp_path):
    """200 MB (sparse, so the test stays quick) with the default chunk size:
    the client's peak RSS grows by a few chunks, never by the file."""
    gen = keyed_server(tmp_path)
    srv = next(gen)
    try:
        big = tmp_path / "big.bin"
        with open(big, "wb") as out:
            out.truncate(200 << 20)
        script = textwrap.dedent(
            f"""
            import json, resource, httpx
            from dreamlake.sinks.remote.config import RemoteTarget
            from dreamlake.sinks.remote.service import RemoteStore, http_client
            key, url = {srv.key!r}, {srv.url!r}
            sid = httpx.post(url + "/workspaces/ws/sessions", json={{"name": "big"}},
                             headers={{"Authorization": "Bearer " + key}}).json()["session"]["id"]
            http_client()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            record = RemoteStore(RemoteTarget(url, "ws", "big", key), lambda: sid).files_upload(
                {str(big)!r}, "", None, [], {{}})
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            print(json.dumps({{"growth_kb": after - before, "size": record["sizeBytes"]}}))
            """
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["size"] == 200 << 20
        assert result["growth_kb"] < 32 << 10, result  # the file is 200 MiB; a chunk 8 MiB
        chunked = float(re.search(r"^dreamlake_upload_chunk_bytes_total (\S+)$",
                                  httpx.get(srv.url + "/metrics").text, re.M).group(1))
        assert chunked == 200 << 20
    finally:
        gen.close()


def test_chunks_may_land_on_any_replica(tmp_path):
    """Two PostgreSQL replicas behind "one URL": chunks alternate between them,
    one replica is killed mid-upload, the other finishes and completes it."""
    with fresh_schema() as database:
        root = tmp_path / "root"
        key = make_key(root, "ada", ("ws",))
        args = ("--store", database, "--objects", (tmp_path / "objects").as_uri())
        a, b = ServerProcess(root, *args), ServerProcess(root, *args)
        try:
            with a.client(key) as to_a, b.client(key) as to_b:
                sid = to_a.post("/workspaces/ws/sessions", json={"name": "run"}).json()["session"]["id"]
                base = f"/sessions/{sid}/uploads"
                data = os.urandom(10 * 1000)
                uid = to_b.post(base, json=_spec(data)).json()["uploadId"]
                for i, offset in enumerate(range(0, 6000, 1000)):
                    replica = (to_a, to_b)[i % 2]
                    assert replica.put(f"{base}/{uid}/{offset}", content=data[offset:offset + 1000]).status_code == 200
                assert to_b.put(f"{base}/{uid}/4000", content=data[4000:6000]).json()["offset"] == 6000  # a repeat
                a.kill()
                assert to_b.get(f"{base}/{uid}").json()["offset"] == 6000
                assert to_b.put(f"{base}/{uid}/6000", content=data[6000:]).json()["offset"] == len(data)
                done = to_b.post(f"{base}/{uid}/complete")
                assert done.status_code == 201, done.text
                assert to_b.get(f"/sessions/{sid}/files/{done.json()['id']}/download").content == data
                assert len(to_b.get(f"/sessions/{sid}/files").json()["files"]) == 1
                staged = [p for p in (tmp_path / "objects" / "uploads").rglob("*") if p.is_file()]
                assert staged == []  # the parts are gone once the file is stored
        finally:
            a.stop()
            b.stop()


def test_lost_replies_and_busy_answers_are_retried_without_storing_twice(tmp_path, small_chunks):
    """Through a proxy: request 3 (the 2nd chunk) reaches the server but its reply
    is lost (500), request 5 gets 429 with Retry-After; the upload still arrives
    once, and the server stored each byte once."""
    gen = keyed_server(tmp_path)
    srv = next(gen)
    faults = {3: (500, {}, True), 5: (429, {"Retry-After": "0"})}
    try:
        with FaultProxy(srv.url, lambda n: faults.get(n)) as proxy:
            sid = httpx.post(f"{srv.url}/workspaces/ws/sessions", json={"name": "run"},
                             headers={"Authorization": f"Bearer {srv.key}"}).json()["session"]["id"]
            store = RemoteStore(RemoteTarget(proxy.url, "ws", "run", srv.key), lambda: sid)
            src, data = _file(tmp_path, 5 * CHUNK + 10)
            record = store.files_upload(src, "", None, [], {})
            assert proxy.faults == 2
        assert record["checksum"] == hashlib.sha256(data).hexdigest()
        assert _metric(srv.url, "dreamlake_upload_stored_bytes_total") == len(data)
        with srv.client(srv.key) as client:
            assert len(client.get(f"/sessions/{sid}/files").json()["files"]) == 1
    finally:
        gen.close()


def test_a_server_without_the_chunk_api_gets_one_request(server, tmp_path, small_chunks, monkeypatch):
    store, sid = server.session()
    real = RemoteStore._url
    # where the client looks for the upload API, nothing answers (404), as on upstream's server
    monkeypatch.setattr(RemoteStore, "_url", lambda self, path: real(self, path) if path else real(self, "/nowhere"))
    src, data = _file(tmp_path, 3 << 20)
    record = store.files_upload(src, "", None, [], {})
    assert record["sizeBytes"] == len(data) and server.metric("dreamlake_upload_chunk_bytes_total") == 0


def test_sync_killed_mid_upload_resumes_in_the_next_run(tmp_path, small_chunks):
    """``dreamlake sync`` in a process ``kill -9``-ed after the server holds three
    chunks: the next run sends only the rest, and the file appears once."""
    gen = keyed_server(tmp_path)
    srv = next(gen)
    try:
        local, data = _offline_with_file(tmp_path, srv.url)
        script = textwrap.dedent(
            f"""
            import sys, threading
            from dreamlake.sinks.remote import uploads
            from dreamlake.cli import main
            uploads.CHUNK_BYTES, uploads.CHUNKED_THRESHOLD = {CHUNK}, 1 << 20
            def progress(self, offset):
                if offset >= 3 * {CHUNK}:
                    print("HELD", offset, flush=True)
                    threading.Event().wait()  # hold here until killed
            uploads.ChunkedUpload.progress = progress
            sys.exit(main(["sync", {str(local)!r}, "--api-key", {srv.key!r}]))
            """
        )
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            line = proc.stdout.readline()
            assert line.startswith("HELD"), proc.stderr.read()
        finally:
            proc.kill()
            proc.wait(10)
            proc.stdout.close()
            proc.stderr.close()
        before = _metric(srv.url, "dreamlake_upload_chunk_bytes_total")
        assert before == 3 * CHUNK
        report = sync_session(str(local / "ws" / "off"), api_key=srv.key)
        assert report.files == 1
        assert _metric(srv.url, "dreamlake_upload_chunk_bytes_total") - before == len(data) - 3 * CHUNK
        with srv.client(srv.key) as client:
            sid = client.post("/workspaces/ws/sessions", json={"name": "off"}).json()["session"]["id"]
            listed = client.get(f"/sessions/{sid}/files").json()["files"]
        assert [f["checksum"] for f in listed] == [hashlib.sha256(data).hexdigest()]
    finally:
        gen.close()
