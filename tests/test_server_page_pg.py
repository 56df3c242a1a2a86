"""The web page over ``dreamlake-server --store postgresql://…``: the same data
logged to a local-store server and to a PostgreSQL server reads back the same
through the page's JSON API (sessions, params, tracks, curves, stats, logs,
files), and the PostgreSQL backend's scattered reads return exactly the rows
a range read returns."""

from __future__ import annotations

import math

import pytest
from pg import fresh_schema, postgres_backend
from server_process import ServerProcess, make_key

from dreamlake import Session
from dreamlake.server._page_source import StorageSource
from dreamlake.server._storage import StreamRows
from dreamlake.ui import NotFound
from dreamlake.ui._reads import read_series

STEPS = 1000
T0 = 1_700_000_000.0
SPIKE_AT = 437


def write_runs(url: str, key: str, scratch) -> None:
    """Two sessions with params, tracks (one long enough to be sampled), logs and a file;
    every ``_ts`` given, so two servers store identical rows."""
    for run in range(2):
        with Session(prefix=f"ws/run{run}", url=url, api_key=key, tags=["exp", f"r{run}"],
                     description=f"run {run}") as s:
            s.params.set(lr=0.1 / (run + 1), batch=32, model={"arch": "mlp", "layers": 4})
            train = s.track("train")
            for step in range(STEPS):
                loss = 50.0 if step == SPIKE_AT else 1.0 / (step + 1) + 0.1 * run
                train.append(loss=loss, step=step, _ts=T0 + step)
            s.track("robot/arm/pose").append(q=[0.5, 1.5, 2.5], _ts=T0)
            s.log("training started", level="info")
            s.log("loss is nan-ish", level="warn", metadata={"step": 7})
            s.log("disk almost full", level="error")
            ckpt = scratch / f"ckpt{run}.bin"
            ckpt.write_bytes(bytes(range(256)) * 4)
            s.files.upload(str(ckpt), path="checkpoints", tags=["final"])


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """{"local": (server, key), "pg": (server, key)} holding the same runs."""
    with fresh_schema() as database:
        made = {}
        try:
            for backend in ("local", "pg"):
                root = tmp_path_factory.mktemp(backend) / "root"
                root.mkdir()
                args = () if backend == "local" else ("--store", database, "--objects", (root.parent / "objects").as_uri())
                server = ServerProcess(root, *args)
                made[backend] = (server, make_key(root))
                write_runs(server.url, made[backend][1], root.parent)
            yield made
        finally:
            for server, _ in made.values():
                server.stop()


def page(servers, backend: str, path: str, **params):
    server, key = servers[backend]
    with server.client(key) as http:
        reply = http.get(f"/ui/api/{path}", params=params)
    assert reply.status_code == 200, f"{backend}: {reply.status_code} {reply.text}"
    return reply.json()


def both(servers, path: str, **params) -> tuple[dict, dict]:
    return page(servers, "local", path, **params), page(servers, "pg", path, **params)


SUMMARY_KEYS = ("prefix", "workspace", "name", "status", "tags", "description")


def test_sessions_and_params_are_the_same_on_both_backends(servers):
    local, pg = both(servers, "sessions", params=1)
    def view(body):
        return [({k: s[k] for k in SUMMARY_KEYS}, s["params"]) for s in body["sessions"]]
    assert view(pg) == view(local)
    assert [s["prefix"] for s in pg["sessions"]] == ["ws/run1", "ws/run0"]
    assert pg["sessions"][1]["params"] == {"lr": 0.1, "batch": 32, "model.arch": "mlp", "model.layers": 4}
    assert pg["sessions"][0]["status"] == "completed" and pg["sessions"][0]["createdAt"]
    for key in ("workspaces", "statuses", "tags", "total"):
        assert pg[key] == local[key]
    assert page(servers, "pg", "sessions", tag="r1")["sessions"][0]["prefix"] == "ws/run1"


def test_session_tracks_and_log_counts_are_the_same(servers):
    local, pg = both(servers, "session", prefix="ws/run0")
    assert pg["tracks"] == local["tracks"]
    assert [t["name"] for t in pg["tracks"]] == ["robot/arm/pose", "train"]
    assert pg["tracks"][1]["totalDataPoints"] == STEPS and pg["tracks"][1]["firstTs"] == T0
    assert pg["logCount"] == local["logCount"] == 3
    assert pg["params"] == local["params"]
    for track in ("train", "robot/arm/pose"):
        local_track, pg_track = both(servers, "track", prefix="ws/run0", track=track)
        assert pg_track["fields"] == local_track["fields"] and pg_track["totalDataPoints"] == local_track["totalDataPoints"]


@pytest.mark.parametrize("args", [
    {"points": 50},                          # sampled: 200 of 1000 rows
    {"points": 50, "x": "step"},
    {"points": 1000},                        # exact
    {"points": 20, "lo": 400, "hi": 500},    # a zoomed view around the spike
])
def test_curves_are_the_same(servers, args):
    local, pg = both(servers, "series", prefix="ws/run1", track="train", fields="loss,step", **args)
    assert pg == local
    if args.get("points") == 50:
        assert not pg["exact"] and pg["sampled"] == 200
    assert pg["index"][0] == pg["lo"] and pg["index"][-1] == pg["hi"] - 1


def test_the_spike_survives_downsampling_on_postgres(servers):
    # 437 is not on the sampling grid of 200 rows over 1000; zooming in makes the view exact
    zoomed = page(servers, "pg", "series", prefix="ws/run0", track="train", fields="loss", points=100, lo=400, hi=480)
    assert zoomed["exact"] and max(zoomed["columns"]["loss"]) == 50.0


def test_rows_stats_compare_logs_and_files_are_the_same(servers):
    local, pg = both(servers, "rows", prefix="ws/run0", track="train", start=995, limit=10)
    assert pg == local and [r["data"]["step"] for r in pg["rows"]] == [995, 996, 997, 998, 999]
    local, pg = both(servers, "stats", prefix="ws/run0", track="train", fields="loss")
    assert pg == local and pg["fields"]["loss"]["max"] == 50.0
    local, pg = both(servers, "compare", prefixes="ws/run0,ws/run1", track="train", fields="loss")
    assert pg["params"] == local["params"] and pg["stats"] == local["stats"] and pg["commonTracks"] == local["commonTracks"]
    assert [row["key"] for row in pg["params"] if row["differs"]] == ["lr"]
    local, pg = both(servers, "logs", prefix="ws/run0", level="warn,error")
    def view(body):
        return [(e["index"], e["level"], e["message"], e.get("metadata")) for e in body["entries"]]
    assert view(pg) == view(local) == [(1, "warn", "loss is nan-ish", {"step": 7}), (2, "error", "disk almost full", None)]
    local, pg = both(servers, "files", prefix="ws/run1")
    def files(body):  # the folder is "/checkpoints" on PostgreSQL, as in its REST replies
        return [(f["filename"], f["path"].strip("/"), f["sizeBytes"], f["tags"]) for f in body["files"]]
    assert files(pg) == files(local) == [("ckpt1.bin", "checkpoints", 1024, ["final"])]
    assert "storagePath" not in pg["files"][0]
    server, key = servers["pg"]
    with server.client(key) as http:
        download = http.get("/ui/api/file", params={"prefix": "ws/run1", "id": pg["files"][0]["id"]})
    assert download.status_code == 200 and download.content == bytes(range(256)) * 4


def test_unknown_names_are_404_and_the_key_gate_holds_on_postgres(servers):
    server, key = servers["pg"]
    with server.client(key) as http:
        for params in ({"prefix": "ws/none"}, {"prefix": "../etc"}, {"prefix": "ws"}):
            assert http.get("/ui/api/session", params=params).status_code == 404
        assert http.get("/ui/api/series", params={"prefix": "ws/run0", "track": "nope"}).status_code == 404
    with server.client() as anonymous:
        assert anonymous.get("/ui/api/sessions").status_code == 401


# -- the scattered read itself, in process --------------------------------------------------


@pytest.fixture
def pg_storage(tmp_path):
    storage = postgres_backend(tmp_path)()
    yield storage
    storage.close()


def test_scattered_reads_match_range_reads_across_chunk_shapes(pg_storage):
    storage = pg_storage
    ref = storage.get_session(storage.upsert_session("ws", "shapes", {})["id"])

    def append(start: int, n: int) -> None:
        rows = [{"v": float(i), "i": i, "_ts": T0 + i} for i in range(start, start + n)]
        storage.append_rows(ref, StreamRows("track", "t", rows, [r["_ts"] for r in rows]))

    position = 0
    for n in (1, 1, 3, 700, 5, 2000, 1, 1300):  # merged small chunks, multi-chunk batches, odd sizes
        append(position, n)
        position += n
    total = position
    wanted = [0, 1, 2, 4, 5, 511, 512, 705, 709, 710, 2000, 2709, 2710, 2711, total - 1, total, total + 5]
    got = storage.read_rows_at(ref, "t", wanted)
    expected = [i for i in wanted if i < total]
    assert [index for index, _, _ in got] == expected
    assert all(row["i"] == index and ts == T0 + index for index, ts, row in got)
    full = {e["index"]: e["data"] for e in storage.read_rows(ref, "t", 0, total)["data"]}
    assert all(full[index] == row for index, _, row in got)
    assert storage.read_rows_at(ref, "t", []) == []
    with pytest.raises(Exception, match="no track"):
        storage.read_rows_at(ref, "missing", [0])


def test_the_adapter_downsamples_a_long_pg_track_to_the_sample(pg_storage):
    storage = pg_storage
    ref = storage.get_session(storage.upsert_session("ws", "long", {})["id"])
    total = 100_000
    for start in range(0, total, 10_000):
        rows = [{"v": math.sin(i / 1000), "_ts": T0 + i} for i in range(start, start + 10_000)]
        storage.append_rows(ref, StreamRows("track", "signal", rows, [r["_ts"] for r in rows]))
    source = StorageSource(storage)
    series = read_series(source, "ws/long", "signal", ["v"], points=500)
    assert not series["exact"] and series["sampled"] == 2000 and series["total"] == total
    assert series["index"][0] == 0 and series["index"][-1] == total - 1
    assert all(v == pytest.approx(math.sin(i / 1000)) for i, v in zip(series["index"], series["columns"]["v"]))
    with pytest.raises(NotFound):
        source.params("ws/none")
