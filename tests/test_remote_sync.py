"""Offline mode and ``dreamlake sync`` against a real server: exactly once,
a second run is a no-op, an interrupted run resumes; and a client killed with
``kill -9`` while its spool is non-empty is delivered by the next sync."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from dreamlake import Session
from dreamlake._sync import unsynced_summary
from dreamlake.cli import main
from disk import disk_params
from remote_helpers import FaultProxy, free_port, keyed_server, server_logs, server_meta, server_rows, start_server
from server_process import make_key


@pytest.fixture
def server(tmp_path):
    yield from keyed_server(tmp_path)


def _offline_session(tmp_path, url, rows=2500):
    local = tmp_path / "local"
    src = tmp_path / "notes.txt"
    src.write_text("checkpoint notes\n" * 1000)
    with Session(prefix="ws/off", root=str(local), url=url, mode="offline", description="offline run") as session:
        for i in range(rows):
            session.track("train").append(loss=float(i), step=i)
        session.track("eval").append(acc=0.5)
        session.log("started")
        session.params.set(lr=0.1) if hasattr(session.params, "set") else session.params.update(lr=0.1)
        session.files.upload(str(src))
    return local


def test_offline_mode_records_the_url_and_writes_nothing_remote(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMLAKE_MODE", "offline")
    local = tmp_path / "local"
    with Session(prefix="ws/o", root=str(local), url="http://127.0.0.1:9") as session:
        session.track("t").append(x=1)
    meta = json.loads((local / "ws" / "o" / "session.json").read_text())
    assert meta["mode"] == "offline" and meta["url"] == "http://127.0.0.1:9"
    summary = unsynced_summary(str(local / "ws" / "o"))
    assert summary["unsynced_rows"] == 1 and summary["status"] and not summary["synced"]
    with pytest.raises(ValueError):
        Session(prefix="ws/o", mode="sideways")


def test_sync_uploads_once_and_second_run_is_a_no_op(server, tmp_path, capsys):
    local = _offline_session(tmp_path, server.url)
    sdir = local / "ws" / "off"
    assert not unsynced_summary(str(sdir))["synced"]
    capsys.readouterr()
    assert main(["ls", "--root", str(local)]) == 0
    assert "unsynced: 2,502 rows, params, files, status" in capsys.readouterr().out  # 2,501 track rows + 1 log entry
    assert main(["sync", str(local), "--api-key", server.key, "-q"]) == 0
    assert [r["step"] for r in server_rows(server.root, "ws", "off", "train")] == list(range(2500))
    assert len(server_rows(server.root, "ws", "off", "eval")) == 1
    assert [e["message"] for e in server_logs(server.root, "ws", "off")] == ["started"]
    meta = server_meta(server.root, "ws", "off")
    assert meta["status"] == "completed" and meta["description"] == "offline run"
    assert disk_params(server.root / "ws" / "off")["lr"] == 0.1
    files = list((server.root / "ws" / "off" / "files").rglob("notes.txt"))
    assert len(files) == 1
    assert unsynced_summary(str(sdir))["synced"]
    capsys.readouterr()
    assert main(["ls", "--root", str(local)]) == 0
    assert " synced " in capsys.readouterr().out
    assert main(["sync", str(local), "--api-key", server.key, "-q"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert len(server_rows(server.root, "ws", "off", "train")) == 2500
    assert len(list((server.root / "ws" / "off" / "files").rglob("notes.txt"))) == 1


def test_interrupted_sync_resumes_without_duplicates(server, tmp_path, monkeypatch):
    monkeypatch.setattr("dreamlake._sync.SYNC_ATTEMPTS", 2)
    monkeypatch.setattr("dreamlake._sync.BATCH_MAX_ROWS", 500)
    local = _offline_session(tmp_path, server.url, rows=3000)

    # requests 1-4 pass (upsert + 3 batches); the 5th is applied but its reply
    # is lost; then the server keeps failing: sync gives up with exit 1
    def failing(n):
        if n == 5:
            return (502, {}, True)
        return (502, {}) if n > 5 else None

    with FaultProxy(server.url, failing) as proxy:
        assert main(["sync", str(local), "--url", proxy.url, "--api-key", server.key, "-q"]) == 1
        partial = len(server_rows(server.root, "ws", "off", "train"))
        saved = json.loads((local / "ws" / "off" / ".sync.json").read_text())
        pending = saved["pending"]["ranges"]["track:train"]
        assert saved["streams"]["track:train"] == pending[0] < pending[1] == partial < 3000
        # the batch in flight was applied but never acknowledged: its rows are on the server
        proxy.plan = lambda n: None  # the server is back, same URL
        assert main(["sync", str(local), "--url", proxy.url, "--api-key", server.key, "-q"]) == 0
    assert [r["step"] for r in server_rows(server.root, "ws", "off", "train")] == list(range(3000))
    assert json.loads((local / "ws" / "off" / ".sync.json").read_text())["pending"] is None


def test_sync_reports_auth_and_server_errors_with_nonzero_exit(server, tmp_path, capsys):
    local = _offline_session(tmp_path, server.url, rows=10)
    assert main(["sync", str(local), "--api-key", "wrong", "-q"]) == 1
    assert "authentication failed" in capsys.readouterr().err
    with FaultProxy(server.url, lambda n: (503, {"Retry-After": "0"})) as proxy:
        import dreamlake._sync as sync_module

        old = sync_module.SYNC_ATTEMPTS
        sync_module.SYNC_ATTEMPTS = 2
        try:
            assert main(["sync", str(local), "--url", proxy.url, "--api-key", server.key, "-q"]) == 1
        finally:
            sync_module.SYNC_ATTEMPTS = old
    assert "kept failing" in capsys.readouterr().err


CHILD = textwrap.dedent(
    """
    import sys, time
    from dreamlake import Session
    url, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    session = Session(prefix="ws/killed", url=url, api_key=key)
    session.open()
    for i in range(n):
        session.track("t").append(i=i)
    session.flush()   # server down: returns once every batch is in the spool
    h = session.health()
    print(h["spooled_batches"], h["memory_batches"], flush=True)
    time.sleep(60)
    """
)


def test_client_kill9_with_spool_then_sync_delivers_exactly_once(tmp_path):
    root = tmp_path / "server"
    root.mkdir()
    key = make_key(root, workspaces=("ws",))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, url, key, "5000"], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        spooled, memory = map(int, proc.stdout.readline().split())
        assert spooled >= 1 and memory == 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    assert unsynced_summary(str(tmp_path / ".dreamlake" / "ws" / "killed"))["spooled_batches"] == spooled
    srv = start_server(root, port)
    try:
        assert main(["sync", str(tmp_path / ".dreamlake"), "--api-key", key, "-q"]) == 0
        assert [r["i"] for r in server_rows(root, "ws", "killed", "t")] == list(range(5000))
        assert server_meta(root, "ws", "killed")["status"] == "interrupted"
        assert main(["sync", str(tmp_path / ".dreamlake"), "--api-key", key, "-q"]) == 0
        assert len(server_rows(root, "ws", "killed", "t")) == 5000
        assert unsynced_summary(str(tmp_path / ".dreamlake" / "ws" / "killed"))["synced"]
    finally:
        srv.stop()


def test_next_process_of_the_session_delivers_a_dead_clients_spool(tmp_path):
    root = tmp_path / "server"
    root.mkdir()
    key = make_key(root, workspaces=("ws",))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, url, key, "3000"], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    srv = start_server(root, port)
    try:
        os.chdir(tmp_path)
        with Session(prefix="ws/killed", url=url, api_key=key) as session:
            for i in range(3000, 3100):
                session.track("t").append(i=i)
        assert [r["i"] for r in server_rows(root, "ws", "killed", "t")] == list(range(3100))
    finally:
        srv.stop()
