"""The web page served by a real dreamlake-server at /ui, behind the server's keys."""

from __future__ import annotations

from server_process import ServerProcess, make_key


def test_the_page_needs_a_key_for_every_workspace_then_shows_the_servers_sessions(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    key = make_key(root)
    narrow = make_key(root, "bob", ("lab",))
    with ServerProcess(root) as server:
        with server.client(key) as api:
            sid = api.post("/workspaces/lab/sessions", json={"name": "run1", "tags": ["t"]}).json()["session"]["id"]
            api.post(f"/sessions/{sid}/tracks/loss/append-batch", json={"dataPoints": [{"value": 1.0}, {"value": 0.5}]}).raise_for_status()
        with server.client() as browser:
            refused = browser.get("/ui/")
            assert refused.status_code == 401 and "?key=" in refused.text
            assert browser.get("/ui/api/sessions").status_code == 401
            assert browser.get("/ui/?key=dlk_not-a-key").status_code == 401
            assert browser.get(f"/ui/?key={narrow}").status_code == 403
            signed_in = browser.get(f"/ui/?key={key}")
            assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui/"
            assert "HttpOnly" in signed_in.headers["set-cookie"] and "SameSite=Strict" in signed_in.headers["set-cookie"]
            assert browser.get("/ui/").status_code == 200  # the cookie now opens it
            sessions = browser.get("/ui/api/sessions").json()
            listed = sessions["sessions"] if isinstance(sessions, dict) else sessions
            assert [s["prefix"] for s in listed] == ["lab/run1"]
            track = browser.get("/ui/api/track", params={"prefix": "lab/run1", "track": "loss"})
            assert track.status_code == 200 and track.json()["totalDataPoints"] == 2 and "value" in track.json()["fields"]
        assert key not in server.stderr()


def test_dev_mode_opens_the_page_without_a_key_and_no_ui_turns_it_off(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    with ServerProcess(root, "--dev") as server, server.client() as browser:
        assert browser.get("/ui/").status_code == 200
    with ServerProcess(root, "--dev", "--no-ui") as server, server.client() as browser:
        assert browser.get("/ui/").status_code == 404
