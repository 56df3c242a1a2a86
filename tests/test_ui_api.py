"""The JSON endpoints the page reads, over HTTP against a real ``dreamlake ui``
process and a store written by ``dreamlake.Session``."""

from __future__ import annotations

import math
import os

import httpx
import pytest
from ui_server import STEPS, loss_at, ui_server, write_store

from dreamlake import Session

BIG = 1000  # rows of the "big" track: more than SAMPLE_FACTOR * points for small points
SPIKE_AT, DIP_AT = 437, 812


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("store"))
    write_store(root)
    with Session(prefix="other/big", root=root, tags=["big"]) as s:
        track = s.track("signal")
        for i in range(BIG):
            value = 1e6 if i == SPIKE_AT else -1e6 if i == DIP_AT else math.sin(i / 50)
            track.append(v=value, w=float(i), step=i * 10)
        track.append(note="no numbers here")  # a row without the x field 'step'
        s.log("x" * 10)
    return root


@pytest.fixture(scope="module")
def client(store):
    with ui_server(store) as url, httpx.Client(base_url=url, timeout=10) as http:
        yield http


def get(client, path: str, **params):
    response = client.get(f"api/{path}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


# -- sessions ---------------------------------------------------------------------


def test_sessions_list_and_filters(client):
    body = get(client, "sessions", params=1)
    assert [s["prefix"] for s in body["sessions"]] == ["other/big", "ws/run1", "ws/run0"]  # newest first
    assert body["workspaces"] == ["other", "ws"] and body["statuses"] == ["completed"]
    run0 = body["sessions"][2]
    assert run0["status"] == "completed" and run0["tags"] == ["exp", "r0"] and run0["createdAt"] and run0["updatedAt"]
    assert run0["params"] == {"lr": 0.1, "batch": 32, "model.arch": "mlp", "model.layers": 4}
    assert [s["prefix"] for s in get(client, "sessions", workspace="ws")["sessions"]] == ["ws/run1", "ws/run0"]
    assert [s["prefix"] for s in get(client, "sessions", tag="r1")["sessions"]] == ["ws/run1"]
    assert [s["prefix"] for s in get(client, "sessions", q="BIG")["sessions"]] == ["other/big"]
    assert get(client, "sessions", status="running")["sessions"] == []


def test_session_detail(client):
    body = get(client, "session", prefix="ws/run0")
    assert body["session"]["description"] == "run 0"
    assert body["params"]["lr"] == 0.1
    assert {t["name"]: t["totalDataPoints"] for t in body["tracks"]} == {"robot/arm/pose": 1, "train": STEPS}
    assert body["logCount"] == 3


def test_bad_and_unknown_names_answer_4xx_with_a_json_error(client):
    for path, params, status in [
        ("session", {}, 400),
        ("session", {"prefix": "ws/nope"}, 404),
        ("session", {"prefix": "../../etc"}, 404),
        ("session", {"prefix": "ws/run0/../run1"}, 404),
        ("series", {"prefix": "ws/run0", "track": "nope"}, 404),
        ("series", {"prefix": "ws/run0", "track": "../../session.json"}, 404),
        ("series", {"prefix": "ws/run0", "track": "train", "points": "many"}, 400),
        ("series", {"prefix": "ws/run0", "track": "train", "points": "999999"}, 400),
        ("series", {"prefix": "ws/run0", "track": "train", "lo": "-5"}, 400),
        ("file", {"prefix": "ws/run0", "id": "nope"}, 404),
        ("compare", {}, 400),
    ]:
        response = client.get(f"api/{path}", params=params)
        assert response.status_code == status, (path, params, response.text)
        assert response.json()["error"]


# -- series and downsampling ----------------------------------------------------------


def test_small_track_series_is_exact_and_complete(client):
    body = get(client, "series", prefix="ws/run0", track="train", fields="loss", x="step")
    assert body["exact"] and body["total"] == STEPS and body["sampled"] == STEPS
    assert body["xs"] == list(range(STEPS)) and body["index"] == list(range(STEPS))
    assert body["columns"]["loss"] == pytest.approx([loss_at(0, s) for s in range(STEPS)])


def test_downsampling_keeps_extremes_and_endpoints_within_the_point_budget(client):
    # 1001 rows and points=300: the whole range is read (<= 4 * 300) and bucketed
    body = get(client, "series", prefix="other/big", track="signal", fields="v,w", points=300)
    assert body["exact"] and body["sampled"] == BIG + 1
    assert len(body["xs"]) <= 300 * 2 + 2 and len(body["xs"]) < BIG
    assert body["index"][0] == 0 and body["index"][-1] == BIG  # endpoints (the last row has no v/w, but has _ts)
    v = dict(zip(body["index"], body["columns"]["v"]))
    assert v[SPIKE_AT] == 1e6 and v[DIP_AT] == -1e6  # extremes survive
    assert max(x for x in body["columns"]["v"] if x is not None) == 1e6
    assert body["xs"] == sorted(body["xs"])


def test_downsampling_beyond_the_sample_limit_reads_only_a_sample(client):
    body = get(client, "series", prefix="other/big", track="signal", fields="w", x="step", points=10)
    assert not body["exact"] and body["sampled"] == 40  # SAMPLE_FACTOR * points rows read, not 1001
    assert body["stride"] == pytest.approx((BIG - 1 + 1) / 39)
    assert len(body["xs"]) <= 10 + 2
    assert body["index"][0] == 0  # the row without 'step' (index 1000) cannot be placed on an x=step chart
    assert body["index"][-1] == max(body["index"]) and body["xs"][-1] == body["index"][-1] * 10
    # 'w' equals the row index: the series is the sample's min/max, so every w is an index shown
    assert [int(w) for w in body["columns"]["w"]] == body["index"]


def test_zoomed_series_covers_exactly_the_requested_rows(client):
    body = get(client, "series", prefix="other/big", track="signal", fields="v", lo=400, hi=450, points=100)
    assert body["exact"] and body["lo"] == 400 and body["hi"] == 450
    assert body["index"] == list(range(400, 450))
    assert dict(zip(body["index"], body["columns"]["v"]))[SPIKE_AT] == 1e6
    clamped = get(client, "series", prefix="other/big", track="signal", fields="v", lo=990, hi=10**9)
    assert clamped["hi"] == BIG + 1 and clamped["index"][-1] == BIG


def test_track_fields_flatten_lists_and_rows_page(client):
    assert get(client, "track", prefix="ws/run0", track="robot/arm/pose")["fields"] == ["q[0]", "q[1]", "q[2]"]
    assert get(client, "track", prefix="ws/run0", track="train")["fields"] == ["loss", "step"]
    newest = get(client, "rows", prefix="ws/run0", track="train", limit=5)
    assert newest["total"] == STEPS and [r["index"] for r in newest["rows"]] == list(range(STEPS - 5, STEPS))
    assert newest["rows"][-1]["data"] == {"loss": loss_at(0, STEPS - 1), "step": STEPS - 1}
    first = get(client, "rows", prefix="ws/run0", track="train", start=0, limit=2)
    assert [r["data"]["step"] for r in first["rows"]] == [0, 1]


def test_stats_last_min_max(client):
    body = get(client, "stats", prefix="other/big", track="signal", fields="v,w")
    assert body["exact"] and body["total"] == BIG + 1
    assert body["fields"]["v"]["max"] == 1e6 and body["fields"]["v"]["min"] == -1e6
    assert body["fields"]["w"] == {"last": BIG - 1, "min": 0, "max": BIG - 1, "count": BIG}


# -- compare, logs, files ------------------------------------------------------------


def test_compare_marks_differences_and_gives_stats(client):
    body = get(client, "compare", prefixes="ws/run0,ws/run1,other/big", track="train", fields="loss")
    params = {p["key"]: p for p in body["params"]}
    assert params["lr"]["differs"] and params["lr"]["values"] == [0.1, 0.05, None]
    assert params["batch"]["differs"]  # missing from other/big counts as a difference
    two = {p["key"]: p for p in get(client, "compare", prefixes="ws/run0,ws/run1")["params"]}
    assert not two["batch"]["differs"] and not two["model.arch"]["differs"] and two["lr"]["differs"]
    assert body["commonTracks"] == []
    assert get(client, "compare", prefixes="ws/run0,ws/run1")["commonTracks"] == ["robot/arm/pose", "train"]
    stats = body["stats"]
    assert set(stats) == {"ws/run0", "ws/run1"}  # other/big has no 'train'
    assert stats["ws/run1"]["fields"]["loss"]["last"] == pytest.approx(loss_at(1, STEPS - 1))
    assert stats["ws/run1"]["fields"]["loss"]["max"] == pytest.approx(loss_at(1, 0))


def test_logs_level_filter_search_and_tail(client):
    every = get(client, "logs", prefix="ws/run0")
    assert [e["level"] for e in every["entries"]] == ["info", "warn", "error"] and every["total"] == 3
    assert [e["sequenceNumber"] for e in every["entries"]] == [0, 1, 2]
    assert [e["message"] for e in get(client, "logs", prefix="ws/run0", level="warn,error")["entries"]] == [
        "loss is nan-ish",
        "disk almost full",
    ]
    assert [e["message"] for e in get(client, "logs", prefix="ws/run0", q="DISK")["entries"]] == ["disk almost full"]
    assert [e["metadata"] for e in get(client, "logs", prefix="ws/run0", q="step")["entries"]] == [{"step": 7}]
    assert [e["index"] for e in get(client, "logs", prefix="ws/run0", after=0)["entries"]] == [1, 2]
    assert [e["index"] for e in get(client, "logs", prefix="ws/run0", limit=1)["entries"]] == [2]  # newest
    assert [e["index"] for e in get(client, "logs", prefix="ws/run0", before=2)["entries"]] == [0, 1]  # older page
    assert [e["index"] for e in get(client, "logs", prefix="ws/run0", before=2, level="error")["entries"]] == []


def test_files_list_and_download(client):
    files = get(client, "files", prefix="ws/run1")["files"]
    assert [(f["filename"], f["path"], f["tags"]) for f in files] == [("ckpt1.bin", "/checkpoints", ["final"])]
    response = client.get("api/file", params={"prefix": "ws/run1", "id": files[0]["id"]})
    assert response.status_code == 200 and response.content == bytes(range(256)) * 4
    assert "ckpt1.bin" in response.headers["content-disposition"]


def test_page_and_vendored_assets_are_served_from_the_package(client):
    page = client.get("")
    assert page.status_code == 200 and 'src="static/app.js"' in page.text and "http" not in page.text.split("<body>")[1]
    for asset in ("static/app.js", "static/app.css", "static/vendor/uPlot.iife.min.js", "static/vendor/uPlot.min.css"):
        assert client.get(asset).status_code == 200, asset


def test_app_mounts_under_a_prefix(store):
    """The server mounts the same app at /ui: the page and its API work there."""
    import socket
    import threading
    import time

    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from dreamlake.ui import LocalStoreSource, create_app

    outer = Starlette(routes=[Mount("/ui", app=create_app(LocalStoreSource(store)))])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(outer, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=10) as http:
            assert 'src="static/app.js"' in http.get("/ui/").text
            redirect = http.get("/ui")
            assert redirect.status_code in (307, 308) and redirect.headers["location"].endswith("/ui/")
            assert http.get("/ui/api/session", params={"prefix": "ws/run0"}).json()["logCount"] == 3
            assert http.get("/ui/static/vendor/uPlot.min.css").status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_scattered_reads_return_what_the_store_reads(store):
    """The downsampler's fast scattered read agrees row for row with StreamFiles.read."""
    from dreamlake._local_sink import stream_files
    from dreamlake.ui import LocalStoreSource

    source = LocalStoreSource(store)
    files = stream_files(os.path.join(store, "other", "big"), "signal")
    indices = [0, 1, 2, SPIKE_AT, DIP_AT, 999, BIG, BIG + 5]
    expected = [row for i in indices for row in files.read(i, 1)[0]]
    assert len(expected) == len(indices) - 1  # BIG + 5 does not exist
    assert source.read_rows_at("other/big", "signal", indices) == expected
    assert source.read_rows_at("other/big", "signal", []) == []
