"""Upstream DreamLake 0.3's REST routes against a real server process, with
the request and reply shapes upstream's client sends and reads."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys

import pytest

from server_process import ServerProcess, make_key


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("rest") / "store"
    key = make_key(root, "ada", ("lab",))
    with ServerProcess(root) as srv:
        srv.key = key
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with server.client(server.key) as c:
        yield c


def _session(client, name: str, **fields) -> str:
    reply = client.post("/workspaces/lab/sessions", json={"name": name, **fields})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["workspace"]["name"] == "lab"
    return body["session"]["id"]


def test_create_session_is_an_upsert_with_upstreams_reply(client):
    sid = _session(client, "upsert", description="first", tags=["a", "b"], folder="/exp", metadata={"k": 1})
    again = client.post("/workspaces/lab/sessions", json={"name": "upsert"}).json()["session"]
    assert again["id"] == sid
    assert again["description"] == "first" and again["tags"] == ["a", "b"]  # not reset by a re-open
    assert again["status"] == "running" and again["writeProtected"] is False
    assert client.get(f"/sessions/{sid}").json()["session"]["folder"] == "/exp"


def test_logs_get_sequence_numbers_and_read_back(client):
    sid = _session(client, "logs")
    logs = [
        {"timestamp": "2026-01-02T03:04:05Z", "level": "info", "message": "start", "metadata": {"epoch": 1}},
        {"timestamp": "2026-01-02T03:04:06Z", "level": "error", "message": "boom"},
    ]
    reply = client.post(f"/sessions/{sid}/logs", json={"logs": logs}).json()
    assert reply == {"created": 2, "startSequence": 0, "endSequence": 1, "sessionId": sid}
    more = client.post(f"/sessions/{sid}/logs", json={"logs": [{"level": "warn", "message": "later"}]}).json()
    assert (more["startSequence"], more["endSequence"]) == (2, 2)
    page = client.get(f"/sessions/{sid}/logs").json()
    assert [row["data"]["message"] for row in page["data"]] == ["start", "boom", "later"]
    assert page["data"][0]["data"]["metadata"] == {"epoch": 1}
    assert page["data"][0]["data"]["_ts"] == pytest.approx(1767323045.0)


def test_parameters_merge_and_flatten(client):
    sid = _session(client, "params")
    first = client.post(f"/sessions/{sid}/parameters", json={"data": {"model": {"lr": 0.1, "layers": 3}}}).json()
    assert first["data"] == {"model.lr": 0.1, "model.layers": 3}
    client.post(f"/sessions/{sid}/parameters", json={"data": {"model.lr": 0.01, "seed": 7}})
    assert client.get(f"/sessions/{sid}/parameters").json()["data"] == {"model.lr": 0.01, "model.layers": 3, "seed": 7}


def test_track_append_batch_read_stats_and_list(client):
    sid = _session(client, "tracks")
    one = client.post(f"/sessions/{sid}/tracks/robot/pose/left/append", json={"data": {"_ts": 1.0, "x": 0.5}}).json()
    assert one["trackId"] == "robot/pose/left" and one["index"] == 0
    points = [{"_ts": 2.0 + i, "x": float(i), "q": [i, i + 1]} for i in range(5)]
    batch = client.post(f"/sessions/{sid}/tracks/robot/pose/left/append-batch", json={"dataPoints": points}).json()
    assert batch == {"trackId": "robot/pose/left", "startIndex": 1, "endIndex": 5, "count": 5}

    page = client.get(f"/sessions/{sid}/tracks/robot/pose/left/data", params={"startIndex": 2, "limit": 2}).json()
    assert [r["index"] for r in page["data"]] == [2, 3]
    assert page["data"][0]["data"] == {"_ts": 3.0, "x": 1.0, "q": [1, 2]}
    assert (page["startIndex"], page["endIndex"], page["total"], page["hasMore"]) == (2, 3, 6, True)
    upstream = client.get(f"/sessions/{sid}/tracks/robot/pose/left", params={"s": 4, "limit": 10}).json()
    assert [r["index"] for r in upstream["data"]] == [4, 5] and upstream["hasMore"] is False

    by_ts = client.get(f"/sessions/{sid}/tracks/robot/pose/left/by-time", params={"st": 3.0, "et": 5.0}).json()
    assert [r["data"]["_ts"] for r in by_ts["data"]] == [3.0, 4.0]

    stats = client.get(f"/sessions/{sid}/tracks/robot/pose/left/stats").json()
    assert stats["totalDataPoints"] == 6 and stats["firstTs"] == 1.0 and stats["lastTs"] == 6.0
    client.post(f"/sessions/{sid}/tracks/loss/append", json={"data": {"value": 1}})
    names = [t["name"] for t in client.get(f"/sessions/{sid}/tracks").json()["tracks"]]
    assert names == ["loss", "robot/pose/left"]


def test_equal_ts_rows_in_one_request_merge(client):
    sid = _session(client, "merge")
    points = [{"_ts": 1.0, "a": 1}, {"_ts": 1.0, "b": 2}, {"_ts": 2.0, "a": 3}]
    assert client.post(f"/sessions/{sid}/tracks/m/append-batch", json={"dataPoints": points}).json()["count"] == 2
    rows = client.get(f"/sessions/{sid}/tracks/m/data").json()["data"]
    assert [r["data"] for r in rows] == [{"_ts": 1.0, "a": 1, "b": 2}, {"_ts": 2.0, "a": 3}]


def test_missing_ts_is_stamped_increasing_and_nan_round_trips(client):
    sid = _session(client, "nan")
    client.post(f"/sessions/{sid}/tracks/v/append-batch", content=b'{"dataPoints": [{"x": NaN}, {"x": Infinity}]}',
                headers={"content-type": "application/json"}).raise_for_status()
    rows = client.get(f"/sessions/{sid}/tracks/v/data").json()["data"]
    assert math.isnan(rows[0]["data"]["x"]) and rows[1]["data"]["x"] == math.inf
    assert rows[0]["data"]["_ts"] < rows[1]["data"]["_ts"]


def test_files_upload_list_download_update_delete(client, tmp_path):
    sid = _session(client, "files")
    payload = bytes(range(256)) * 1000
    checksum = hashlib.sha256(payload).hexdigest()
    form = {"prefix": "/models", "checksum": checksum, "sizeBytes": str(len(payload)), "description": "ckpt",
            "tags": "best,v1", "metadata": '{"epoch": 3}'}
    reply = client.post(f"/sessions/{sid}/files", files={"file": ("model.pt", payload, "application/octet-stream")},
                        data=form)
    assert reply.status_code == 201, reply.text
    entry = reply.json()
    assert entry["filename"] == "model.pt" and entry["checksum"] == checksum and entry["sizeBytes"] == len(payload)
    assert entry["tags"] == ["best", "v1"] and entry["metadata"] == {"epoch": 3} and entry["path"] == "/models"
    listed = client.get(f"/sessions/{sid}/files", params={"prefix": "/models", "tags": "best"}).json()["files"]
    assert [f["id"] for f in listed] == [entry["id"]]
    assert client.get(f"/sessions/{sid}/files/{entry['id']}").json()["checksum"] == checksum
    download = client.get(f"/sessions/{sid}/files/{entry['id']}/download")
    assert download.status_code == 200 and download.content == payload
    updated = client.patch(f"/sessions/{sid}/files/{entry['id']}", json={"description": "final", "tags": ["x"]}).json()
    assert updated["description"] == "final" and updated["tags"] == ["x"]
    deleted = client.delete(f"/sessions/{sid}/files/{entry['id']}").json()
    assert deleted["id"] == entry["id"] and "deletedAt" in deleted
    assert client.get(f"/sessions/{sid}/files").json()["files"] == []
    assert client.get(f"/sessions/{sid}/files/{entry['id']}").status_code == 404


def test_upload_with_wrong_checksum_is_refused_and_not_stored(client):
    sid = _session(client, "badsum")
    reply = client.post(f"/sessions/{sid}/files", files={"file": ("a.txt", b"hello")}, data={"checksum": "0" * 64})
    assert reply.status_code == 400
    assert client.get(f"/sessions/{sid}/files").json()["files"] == []


def test_unknown_session_track_and_file_are_404_json(client):
    sid = _session(client, "missing")
    for path in ("/sessions/bm9wZS9ub3Bl", f"/sessions/{sid}/tracks/nope/data", f"/sessions/{sid}/tracks/nope/stats",
                 f"/sessions/{sid}/files/abc"):
        reply = client.get(path)
        assert reply.status_code == 404, path
        assert reply.json()["error"]["kind"] == "not_found"


def test_cli_reads_the_servers_store(client, server):
    sid = _session(client, "cli")
    client.post(f"/sessions/{sid}/tracks/loss/append-batch", json={"dataPoints": [{"_ts": i, "v": i} for i in range(3)]})
    out = subprocess.run([sys.executable, "-m", "dreamlake.cli", "ls", "--root", str(server.root)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if "lab/cli" in line)
    assert line.split()[:4] == ["lab/cli", "running", "1", "3"]  # session, status, tracks, rows
    tail = subprocess.run([sys.executable, "-m", "dreamlake.cli", "tail", "lab/cli", "loss", "--root", str(server.root)],
                          capture_output=True, text=True, timeout=30)
    assert tail.returncode == 0, tail.stderr
    assert [json.loads(line)["v"] for line in tail.stdout.splitlines()] == [0, 1, 2]


def test_health_and_metrics(server, client):
    assert client.get("/health").json()["devMode"] is False
    text = client.get("/metrics").text
    assert "dreamlake_rows_total" in text and "dreamlake_errors_total" in text
