"""Remote mode against a real dreamlake-server process: rows arrive exactly
once through server outages, 500s/429s, a bad key and forked children."""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest

from dreamlake import Session
from remote_helpers import FaultProxy, free_port, keyed_server, server_meta, server_rows, start_server, wait_for
from server_process import make_key


@pytest.fixture
def server(tmp_path):
    yield from keyed_server(tmp_path)


def test_rows_logs_params_reach_the_server_and_read_back(server, tmp_path):
    with Session(prefix="ws/basic", url=server.url, api_key=server.key, local_path=None,
                 session_dir=None, root=None, description="d", tags=["a"]) as session:
        track = session.track("train")
        for i in range(500):
            track.append(loss=1.0 / (i + 1), step=i)
        session.log("hello", level="warn", metadata={"k": 1})
        session.params.set(lr=0.01, **{"model.layers": 3}) if hasattr(session.params, "set") else session.params.update(lr=0.01)
        report = session.flush()
        assert report == [{"trackId": "train", "startIndex": 0, "endIndex": 499, "count": 500}]
        page = track.read(0, 5)
        assert [e["data"]["step"] for e in page["data"]] == [0, 1, 2, 3, 4]
        assert page["total"] == 500
        assert session.logs()["data"][0]["data"]["message"] == "hello"
        assert session.health()["delivery"] == "ok"
    rows = server_rows(server.root, "ws", "basic", "train")
    assert [r["step"] for r in rows] == list(range(500))
    meta = server_meta(server.root, "ws", "basic")
    assert meta["status"] == "completed" and meta["description"] == "d" and meta["tags"] == ["a"]
    # the slot of a cleanly closed session is removed: nothing left to sync
    assert not list((tmp_path.cwd() / ".dreamlake" / "ws" / "basic" / ".remote").glob("*")) if (tmp_path.cwd() / ".dreamlake").exists() else True


def test_files_stream_to_the_server_with_sha256(server, tmp_path, monkeypatch):
    import hashlib

    monkeypatch.chdir(tmp_path)
    src = tmp_path / "weights.bin"
    src.write_bytes(os.urandom(3 << 20))
    with Session(prefix="ws/files", url=server.url, api_key=server.key) as session:
        entry = session.files.upload(str(src), path="models", tags=["best"])
        assert entry["checksum"] == hashlib.sha256(src.read_bytes()).hexdigest()
        assert entry["path"].strip("/") == "models" and entry["tags"] == ["best"]
        assert [e["id"] for e in session.files.list()] == [entry["id"]]
        dest = tmp_path / "back.bin"
        session.files.download(entry["id"], str(dest))
        assert dest.read_bytes() == src.read_bytes()


def test_a_large_upload_streams_from_disk_and_never_holds_up_rows(server, tmp_path, monkeypatch):
    import tracemalloc

    monkeypatch.chdir(tmp_path)
    big = tmp_path / "big.bin"
    with open(big, "wb") as out:  # 192 MiB, sparse on disk
        out.truncate(192 << 20)
    with Session(prefix="ws/bigfile", url=server.url, api_key=server.key) as session:
        result = {}
        tracemalloc.start()
        uploader = threading.Thread(target=lambda: result.update(entry=session.files.upload(str(big))))
        uploader.start()
        try:
            track = session.track("t")
            for i in range(200):
                track.append(i=i)
            report = session.flush()  # rows are delivered while the upload runs
            assert uploader.is_alive(), "the upload finished too fast to prove anything"
            assert report[0]["count"] == 200
        finally:
            uploader.join(60)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert result["entry"]["sizeBytes"] == 192 << 20
        assert peak < 32 << 20  # streamed in chunks, never the whole file in memory
    assert len(server_rows(server.root, "ws", "bigfile", "t")) == 200


def test_server_killed_for_seconds_every_row_arrives_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "server"
    root.mkdir()
    key = make_key(root, workspaces=("ws",))
    port = free_port()
    srv = start_server(root, port)
    session = Session(prefix="ws/outage", url=srv.url, api_key=key)
    session.open()
    track = session.track("t")
    stop = threading.Event()
    sent = []

    def produce():
        i = 0
        while not stop.is_set():
            track.append(i=i)
            sent.append(i)
            i += 1
            if i % 50 == 0:
                time.sleep(0.002)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_for(lambda: session.health()["batches_sent"] >= 3)
        srv.kill()
        wait_for(lambda: session.health()["spooled_batches"] >= 3, timeout=30)
        time.sleep(2.0)  # several seconds down while rows keep coming
        srv = start_server(root, port)
        time.sleep(0.5)
    finally:
        stop.set()
        producer.join()
    session.close()
    health = session.health()
    assert health["retries"] >= 1 and health["batches_replayed"] >= 3, health
    rows = server_rows(root, "ws", "outage", "t")
    assert [r["i"] for r in rows] == sent
    assert server_meta(root, "ws", "outage")["status"] == "completed"
    srv.stop()


def test_500s_and_429s_are_retried_and_rows_arrive_once(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def plan(n):
        if n % 3 == 1:
            return (500, {})
        if n % 3 == 2:
            return (429, {"Retry-After": "0.2"})
        return None

    with FaultProxy(server.url, plan) as proxy:
        with Session(prefix="ws/faults", url=proxy.url, api_key=server.key) as session:
            track = session.track("t")
            for i in range(3000):
                track.append(i=i)
                if i % 500 == 0:
                    session.flush()
        health = session.health()  # after close: every batch delivered
        assert proxy.faults >= 4
    assert health["retries"] == proxy.faults  # each fault retried, none fatal
    assert health["spooled_batches"] == 0 and health["delivery"] == "ok"
    assert [r["i"] for r in server_rows(server.root, "ws", "faults", "t")] == list(range(3000))


def test_bad_key_is_not_retried_surfaces_in_health_and_sync_delivers(server, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.WARNING, logger="dreamlake")
    session = Session(prefix="ws/badkey", url=server.url, api_key="not-a-key")
    session.open()
    for i in range(100):
        session.track("t").append(i=i)
    session.flush()  # returns: the batches are safe in the spool
    health = session.health()
    assert health["auth_failed"] and health["delivery"] == "auth_failed"
    assert health["retries"] == 0 and health["spooled_batches"] >= 1
    session.close()
    warnings = [r for r in caplog.records if "refused the credentials" in r.getMessage()]
    assert len(warnings) == 1
    from dreamlake.cli import main

    assert main(["sync", str(tmp_path / ".dreamlake"), "--api-key", "still-wrong", "-q"]) == 1
    assert main(["sync", str(tmp_path / ".dreamlake"), "--api-key", server.key, "-q"]) == 0
    assert [r["i"] for r in server_rows(server.root, "ws", "badkey", "t")] == list(range(100))
    assert main(["sync", str(tmp_path / ".dreamlake"), "--api-key", server.key, "-q"]) == 0
    assert len(server_rows(server.root, "ws", "badkey", "t")) == 100


def test_fork_children_log_to_a_remote_session(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Session(prefix="ws/forks", url=server.url, api_key=server.key) as session:
        session.track("parent").append(i=-1)
        session.flush()
        pids = []
        for child in range(3):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    track = session.track(f"child{child}")
                    for i in range(200):
                        track.append(i=i)
                    session.flush()
                except BaseException:
                    code = 1
                os._exit(code)
            pids.append(pid)
        for pid in pids:
            assert os.waitpid(pid, 0)[1] == 0
        session.track("parent").append(i=-2)
    for child in range(3):
        assert [r["i"] for r in server_rows(server.root, "ws", "forks", f"child{child}")] == list(range(200))
    assert [r["i"] for r in server_rows(server.root, "ws", "forks", "parent")] == [-1, -2]
    assert server_meta(server.root, "ws", "forks")["status"] == "completed"


def test_a_slow_server_never_holds_up_the_writer_thread(server, tmp_path, monkeypatch):
    """While a remote flush waits for a server that does not answer, a local
    session of the same process (same writer thread) writes and flushes."""
    monkeypatch.chdir(tmp_path)
    held = threading.Event()
    with FaultProxy(server.url, lambda n: None) as proxy:
        remote = Session(prefix="ws/slow", url=proxy.url, api_key=server.key)
        remote.open()
        proxy.delay = held
        remote.track("t").append(i=0)
        waiting = threading.Thread(target=remote.flush)
        waiting.start()
        try:
            wait_for(lambda: proxy.count >= 1)
            with Session(prefix="ws/local", root=str(tmp_path / "local")) as local:
                for i in range(100):
                    local.track("t").append(i=i)
                assert local.flush()[0]["count"] == 100
            assert waiting.is_alive()  # the remote flush is still waiting for its ack
        finally:
            held.set()
            waiting.join(30)
        remote.close()
    assert [r["i"] for r in server_rows(server.root, "ws", "slow", "t")] == [0]


def test_reads_fail_fast_with_a_clear_error_while_the_server_is_down(tmp_path, monkeypatch):
    from dreamlake._errors import SinkError

    monkeypatch.chdir(tmp_path)
    session = Session(prefix="ws/down", url=f"http://127.0.0.1:{free_port()}", api_key="k", timeout=30)
    session.open()
    session.track("t").append(i=1)
    started = time.monotonic()
    with pytest.raises(SinkError, match="has not acknowledged"):
        session.track("t").read(0, 10)
    assert time.monotonic() - started < 10
    session.close()
    assert session.health()["spooled_batches"] == 2  # the row, and the final status


@pytest.mark.skipif(not __import__("dreamlake._pipe", fromlist=["HOTPATH"]).HOTPATH, reason="the C extension is not built")
def test_a_remote_session_takes_the_c_hot_path_and_every_kind_of_row_arrives_once(server, tmp_path):
    """Remote mode must cost the loop what local mode costs: its rows go through
    the C path into an in-memory ring (no file journal: the spool is its promise)."""
    import numpy as np

    with Session(prefix="ws/cpath", url=server.url, api_key=server.key) as session:
        health = session.health()
        assert health["hot_path"] == "c"
        assert health["journal"]["crash_safe"] is False and health["journal"]["path"] is None
        track = session.track("robot")
        for i in range(3000):
            track.append(i=i, q=[0.5, float(i)], v=np.float32(0.25), a=np.arange(3.0), tag="ok", _ts=float(i))
            if i % 2:
                track.append(extra=i, _ts=float(i))  # merges into the row of the same _ts
    rows = server_rows(server.root, "ws", "cpath", "robot")
    assert [r["i"] for r in rows] == list(range(3000))
    assert [r.get("extra") for r in rows[:4]] == [None, 1, None, 3]
    assert rows[7]["q"] == [0.5, 7.0] and rows[7]["a"] == [0.0, 1.0, 2.0] and rows[7]["v"] == 0.25 and rows[7]["tag"] == "ok"
