"""Keys: made by the operator, shown once, stored hashed, scoped to workspaces;
development mode only when asked for, and loud about it."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys

import pytest

from server_process import ServerProcess, make_key


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth") / "store"
    with ServerProcess(root) as srv:
        srv.lab_key = make_key(root, "ada", ("lab",))
        srv.all_key = make_key(root, "root")
        yield srv


def test_keys_cli_prints_once_and_stores_only_a_hash(tmp_path):
    root = tmp_path / "store"
    out = subprocess.run(
        [sys.executable, "-m", "dreamlake.server", "keys", "create", "--root", str(root), "--user", "bob",
         "--workspace", "lab", "--workspace", "sim"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("dlk_") and len(key) > 40
    keys_file = root / ".dreamlake-server" / "keys.json"
    text = keys_file.read_text()
    assert key not in text and key[4:] not in text
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_file.parent.stat().st_mode) == 0o700
    entry = json.loads(text)["keys"][0]
    assert entry["user"] == "bob" and entry["workspaces"] == ["lab", "sim"]
    listed = subprocess.run([sys.executable, "-m", "dreamlake.server", "keys", "list", "--root", str(root)],
                            capture_output=True, text=True, timeout=30)
    assert "bob" in listed.stdout and key not in listed.stdout


def test_no_key_or_unknown_key_is_401(server):
    with server.client() as anonymous, server.client("dlk_not-a-real-key") as wrong:
        for c in (anonymous, wrong):
            reply = c.post("/workspaces/lab/sessions", json={"name": "x"})
            assert reply.status_code == 401 and reply.json()["error"]["kind"] == "unauthorized"
            assert c.post("/ingest/lab/x", content=b"").status_code == 401
            assert c.get("/sessions/bGFiL3g/tracks").status_code == 401


def test_key_scoped_to_another_workspace_is_403(server):
    with server.client(server.all_key) as admin, server.client(server.lab_key) as ada:
        sid = admin.post("/workspaces/other/sessions", json={"name": "secret"}).json()["session"]["id"]
        assert ada.post("/workspaces/other/sessions", json={"name": "y"}).status_code == 403
        assert ada.get(f"/sessions/{sid}/tracks").status_code == 403
        assert ada.post(f"/sessions/{sid}/tracks/t/append", json={"data": {"v": 1}}).status_code == 403
        assert ada.post("/ingest/other/secret", content=b"").status_code == 403
        assert ada.post("/workspaces/lab/sessions", json={"name": "mine"}).status_code == 200


def test_dev_mode_is_off_by_default(server):
    with server.client() as c:
        assert c.get("/health").json()["devMode"] is False
        token = _upstream_dev_token("ada")
        reply = c.post("/workspaces/lab/sessions", json={"name": "x"}, headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 401


def _upstream_dev_token(user: str) -> str:
    """The shape of upstream's ``user_name=`` token (a JWT; signature irrelevant)."""
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{part({'alg': 'HS256'})}.{part({'userName': user})}.c2ln"


def test_dev_mode_accepts_user_name_and_says_so(tmp_path):
    with ServerProcess(tmp_path / "store", "--dev") as srv, srv.client() as c:
        health = c.get("/health").json()
        assert health["devMode"] is True and "DEVELOPMENT MODE" in health["warning"]
        reply = c.post("/workspaces/any/sessions", json={"name": "x"},
                       headers={"Authorization": f"Bearer {_upstream_dev_token('ada')}"})
        assert reply.status_code == 200 and reply.json()["namespace"]["name"] == "ada"
        assert c.post("/workspaces/any/sessions", json={"name": "y"}).status_code == 200
    assert "DEVELOPMENT MODE" in srv.stderr()


def test_write_protected_session_refuses_writes_over_http(server):
    with server.client(server.lab_key) as c:
        sid = c.post("/workspaces/lab/sessions", json={"name": "frozen", "writeProtected": True}).json()["session"]["id"]
        for method, path, kwargs in (
            ("POST", f"/sessions/{sid}/tracks/t/append", {"json": {"data": {"v": 1}}}),
            ("POST", f"/sessions/{sid}/tracks/t/append-batch", {"json": {"dataPoints": [{"v": 1}]}}),
            ("POST", f"/sessions/{sid}/logs", {"json": {"logs": [{"message": "m"}]}}),
            ("POST", f"/sessions/{sid}/parameters", {"json": {"data": {"a": 1}}}),
            ("POST", f"/sessions/{sid}/files", {"files": {"file": ("a.txt", b"x")}}),
        ):
            reply = c.request(method, path, **kwargs)
            assert reply.status_code == 403, path
            assert "write-protected" in reply.json()["error"]["message"]
        assert c.get(f"/sessions/{sid}/tracks").json() == {"tracks": []}


def test_revoked_key_is_refused_at_once(tmp_path):
    root = tmp_path / "store"
    key = make_key(root, "eve", ("lab",))
    with ServerProcess(root) as srv, srv.client(key) as c:
        assert c.post("/workspaces/lab/sessions", json={"name": "x"}).status_code == 200
        key_id = json.loads((root / ".dreamlake-server" / "keys.json").read_text())["keys"][0]["id"]
        out = subprocess.run([sys.executable, "-m", "dreamlake.server", "keys", "revoke", "--root", str(root), key_id],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert c.post("/workspaces/lab/sessions", json={"name": "x"}).status_code == 401


def test_no_key_is_ever_logged(server):
    assert server.lab_key not in server.stderr() and server.all_key not in server.stderr()
