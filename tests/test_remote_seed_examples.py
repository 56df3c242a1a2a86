"""The remote examples of the user docs (seed 000's ``Session(prefix=...,
url=..., user_name=...)``, seed 001's two "Remote Mode" examples) run against
a real local ``dreamlake-server``. The code is the docs' code; only the URL
(and the placeholder key) are replaced by the local server's."""

from __future__ import annotations

import pytest

from dreamlake import Session
from remote_helpers import free_port, server_logs, server_meta, start_server
from server_process import make_key


@pytest.fixture
def dev_server(tmp_path):
    root = tmp_path / "dev-server"
    root.mkdir()
    srv = start_server(root, free_port(), "--dev")
    yield srv
    srv.stop()


@pytest.fixture
def keyed_server(tmp_path):
    root = tmp_path / "server"
    root.mkdir()
    srv = start_server(root, free_port())
    srv.key = make_key(root, workspaces=("production", "workspace-name"))
    yield srv
    srv.stop()


def test_seed000_remote_mode_with_user_name(dev_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Remote mode (with username - auto-generates API key)
    with Session(prefix="workspace-name/experiment-name",
        url=dev_server.url,
        user_name="your-username"
    ) as session:
        # Your code here
        pass
    assert server_meta(dev_server.root, "workspace-name", "experiment-name")["status"] == "completed"


def test_seed000_remote_mode_with_api_key(keyed_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Session(prefix="workspace-name/experiment-name",
        url=keyed_server.url,
        api_key=keyed_server.key,
    ) as session:
        session.log("Training started")
        session.track("train").append(loss=0.5, epoch=0)
    assert [e["message"] for e in server_logs(keyed_server.root, "workspace-name", "experiment-name")] == ["Training started"]


def test_seed001_remote_mode_with_user_name(dev_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Remote mode (requires API server) - with username
    with Session(
        name="cloud-training",
        workspace="production",
        remote=dev_server.url,
        user_name="your-username"
    ) as session:
        session.log("Cloud session started")
    assert [e["message"] for e in server_logs(dev_server.root, "production", "cloud-training")] == ["Cloud session started"]
    assert server_meta(dev_server.root, "production", "cloud-training")["status"] == "completed"


def test_seed001_remote_mode_with_api_key(keyed_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Or with API key (advanced)
    with Session(
        name="cloud-training",
        workspace="production",
        remote=keyed_server.url,
        api_key=keyed_server.key
    ) as session:
        session.log("Cloud session started")
    assert [e["message"] for e in server_logs(keyed_server.root, "production", "cloud-training")] == ["Cloud session started"]
    assert server_meta(keyed_server.root, "production", "cloud-training")["status"] == "completed"


def test_seed001_user_name_alone_is_refused_by_a_keyed_server(keyed_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Session(name="cloud-training", workspace="production", remote=keyed_server.url, user_name="your-username") as session:
        session.log("Cloud session started")
        session.flush()
        assert session.health()["auth_failed"]
    assert not (keyed_server.root / "production" / "cloud-training" / "logs.jsonl").exists()
