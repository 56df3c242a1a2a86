"""The Session surface: both constructor generations, storage root, lifecycle
styles, params, files. Everything is read back from disk or the read API."""

import hashlib
import json
import os

import pytest

import dreamlake
from dreamlake import Session, SessionStateError, dreamlake_session
from disk import disk_logs, disk_params, disk_rows


def _meta(directory):
    return json.loads((directory / "session.json").read_text())


# -- identity and storage root ------------------------------------------------

def test_prefix_and_name_workspace_styles_reach_the_same_directory(tmp_path):
    with Session(prefix="ws/run", root=str(tmp_path)) as a:
        a.track("t").append(x=1)
    with Session(name="run", workspace="ws", local_path=str(tmp_path)) as b:
        b.track("t").append(x=2)
        assert b.directory == a.directory == (tmp_path / "ws" / "run").absolute()
        assert [p["data"]["x"] for p in b.track("t").read()["data"]] == [1, 2]


def test_generations_mix_in_one_call(tmp_path):
    with Session(
        prefix="ws/mixed", root=str(tmp_path), local_path="store", description="d", tags=["a"], folder="/f"
    ) as s:
        assert (s.name, s.workspace, s.prefix) == ("mixed", "ws", "ws/mixed")
        assert (s.description, s.tags, s.folder) == ("d", ["a"], "/f")
    assert (tmp_path / "store" / "ws" / "mixed" / "session.json").exists()
    meta = _meta(tmp_path / "store" / "ws" / "mixed")
    assert meta["description"] == "d" and meta["tags"] == ["a"] and meta["folder"] == "/f"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prefix": "ws/a", "name": "b"},
        {"prefix": "ws/a", "workspace": "other"},
        {"url": "http://a", "remote": "http://b", "prefix": "ws/a"},
        {"prefix": "no-slash"},
        {},
    ],
)
def test_conflicting_or_missing_identity_is_refused(tmp_path, kwargs):
    with pytest.raises(ValueError):
        Session(root=str(tmp_path), **kwargs)


def test_storage_root_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DREAMLAKE_ROOT", raising=False)
    assert Session(prefix="w/n").directory == (tmp_path / ".dreamlake" / "w" / "n")
    assert Session(prefix="w/n", root="r").directory == (tmp_path / "r" / "w" / "n")
    assert Session(prefix="w/n", local_path="l").directory == (tmp_path / "l" / "w" / "n")
    assert Session(prefix="w/n", root="r", local_path="l").directory == (tmp_path / "r" / "l" / "w" / "n")
    monkeypatch.setenv("DREAMLAKE_ROOT", str(tmp_path / "env"))
    assert Session(prefix="w/n").directory == (tmp_path / "env" / "w" / "n")


def test_url_without_server_keeps_data_locally_and_says_so(tmp_path, caplog):
    """A URL plus a local root writes both; an unreachable server leaves the
    batches in the spool for later (remote mode, issue 11)."""
    from dreamlake._sync import unsynced_summary

    with Session(prefix="ws/r", root=str(tmp_path), url="https://example.invalid", user_name="me") as s:
        s.log("kept locally")
    meta = _meta(tmp_path / "ws" / "r")
    assert meta["url"] == "https://example.invalid" and meta["userName"] == "me"
    assert "api_key" not in json.dumps(meta).lower()
    assert "kept locally" in (tmp_path / "ws" / "r" / "logs.jsonl").read_text()
    assert unsynced_summary(str(tmp_path / "ws" / "r"))["spooled_batches"] == 1
    assert any("server unreachable" in r.getMessage() for r in caplog.records)


# -- lifecycle ------------------------------------------------------------------

def test_explicit_open_close_and_state(tmp_path):
    s = Session(name="test", workspace="test", local_path=str(tmp_path))
    assert not s._is_open and s.status == "created"
    with pytest.raises(SessionStateError):
        s.log("not open yet")
    s.open()
    assert s._is_open and s.status == "running"
    assert _meta(s.directory)["status"] == "running"
    s.log("Working...")
    s.close()
    assert not s._is_open and s.status == "completed"
    assert _meta(s.directory)["status"] == "completed"
    with pytest.raises(SessionStateError):
        s.track("t").append(x=1)


def test_decorator_injects_the_session_and_closes_it(tmp_path):
    seen = {}

    @dreamlake_session(name="deco", workspace="ws", local_path=str(tmp_path))
    def train(epochs, session):
        seen["session"] = session
        for epoch in range(epochs):
            session.track("loss").append(value=1.0 / (epoch + 1), epoch=epoch)
        return "done"

    assert train(3) == "done"
    assert not seen["session"]._is_open
    assert [row["epoch"] for row in disk_rows(tmp_path / "ws" / "deco", "loss")] == [0, 1, 2]


def test_exception_in_with_marks_failed_logs_it_and_reraises(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with Session(prefix="ws/boom", root=str(tmp_path)) as s:
            s.log("Starting risky operation")
            1 / 0
    meta = _meta(tmp_path / "ws" / "boom")
    assert meta["status"] == "failed" and "ZeroDivisionError" in meta["error"]
    entries = disk_logs(tmp_path / "ws" / "boom")
    assert entries[-1]["level"] == "error" and "ZeroDivisionError" in entries[-1]["metadata"]["traceback"]
    assert [e["sequenceNumber"] for e in entries] == [0, 1]


def test_reopen_continues_indices_and_merges_params(tmp_path):
    with Session(name="long", workspace="ml", local_path=str(tmp_path)) as s:
        s.parameters().set(epoch=0, learning_rate=0.001)
        s.track("loss").append(value=0.5, epoch=1)
    with Session(name="long", workspace="ml", local_path=str(tmp_path)) as s:
        s.params.set(epoch=1)
        s.track("loss").append(value=0.3, epoch=2)
        page = s.track("loss").read()
        assert [(p["index"], p["data"]["epoch"]) for p in page["data"]] == [(0, 1), (1, 2)]
        assert s.params.get() == {"epoch": 1, "learning_rate": 0.001}
    meta = _meta(tmp_path / "ml" / "long")
    assert meta["opens"] == 2 and meta["status"] == "completed"


def test_both_spellings_are_the_same_objects(tmp_path):
    with Session(prefix="ws/sp", root=str(tmp_path)) as s:
        assert s.parameters() is s.params
        assert s.files() is s.files
        assert s.tracks() is s.tracks


# -- params ---------------------------------------------------------------------

def test_params_flatten_merge_and_nest(tmp_path):
    with Session(prefix="ws/p", root=str(tmp_path)) as s:
        s.params.set(learning_rate=0.001, batch_size=32)
        s.params.set(**{"model": {"architecture": "resnet50", "layers": 50}})
        s.params.set(learning_rate=0.0001)
        assert s.params.get() == {
            "learning_rate": 0.0001,
            "batch_size": 32,
            "model.architecture": "resnet50",
            "model.layers": 50,
        }
        assert s.params.get(flatten=False)["model"] == {"architecture": "resnet50", "layers": 50}
        with pytest.raises(TypeError):
            s.params.set(bad=object())
    on_disk = disk_params(tmp_path / "ws" / "p")
    assert on_disk["model.layers"] == 50 and on_disk["learning_rate"] == 0.0001


# -- files ------------------------------------------------------------------------

def test_upload_list_download_update_delete(tmp_path):
    src = tmp_path / "model.pth"
    payload = os.urandom(100_000)
    src.write_bytes(payload)
    with Session(prefix="ws/f", root=str(tmp_path / "store")) as s:
        entry = s.files.upload(str(src), path="models/", description="m", tags=["best"], metadata={"epoch": 5})
        assert entry["filename"] == "model.pth" and entry["sizeBytes"] == len(payload)
        assert entry["checksum"] == hashlib.sha256(payload).hexdigest()
        assert entry["path"] == "/models" and entry["prefix"] == "/models/"
        stored = s.directory / "files" / "models" / entry["id"] / "model.pth"
        assert stored.read_bytes() == payload

        other = tmp_path / "cfg.json"
        other.write_text("{}")
        s.files().upload(str(other), path="/config", tags=["config"])
        assert [f["filename"] for f in s.files.list(path="/models")] == ["model.pth"]
        assert [f["filename"] for f in s.files.list(tags=["config"])] == ["cfg.json"]
        assert len(s.files.list()) == 2

        out = s.files.download(entry["id"], tmp_path / "out.pth")
        assert open(out, "rb").read() == payload

        updated = s.files.update(entry["id"], description="better", tags=["final"])
        assert updated["description"] == "better" and updated["tags"] == ["final"]

        # same path + filename replaces the old entry and its stored copy
        src.write_bytes(b"v2")
        again = s.files.upload(str(src), path="/models")
        assert [f["id"] for f in s.files.list(path="/models")] == [again["id"]]
        assert not stored.exists()

        s.files.delete(again["id"])
        assert [f["filename"] for f in s.files.list()] == ["cfg.json"]
        with pytest.raises(KeyError):
            s.files.delete("no-such-id")
    index = json.loads((tmp_path / "store" / "ws" / "f" / "files" / ".files_metadata.json").read_text())
    assert [e["filename"] for e in index["files"]] == ["cfg.json"]


def test_upload_refuses_directories_and_bad_metadata(tmp_path):
    with Session(prefix="ws/f2", root=str(tmp_path)) as s:
        with pytest.raises(IsADirectoryError):
            s.files.upload(str(tmp_path))
        (tmp_path / "x").write_text("x")
        with pytest.raises(TypeError):
            s.files.upload(str(tmp_path / "x"), tags="not-a-list")
        with pytest.raises(TypeError):
            s.files.upload(str(tmp_path / "x"), metadata={"k": object()})
        assert s.files.list() == []


# -- budget arguments -----------------------------------------------------------

def test_budget_arguments_are_checked_at_construction(tmp_path):
    with pytest.raises(ValueError):
        Session(prefix="ws/b", root=str(tmp_path), on_full="sometimes")
    with pytest.raises(ValueError):
        Session(prefix="ws/b", root=str(tmp_path), memory_budget=10)
    with pytest.raises(TypeError):
        Session(prefix="ws/b", root=str(tmp_path), memory_budget="big")


def test_public_names_are_exported():
    for name in dreamlake.__all__:
        assert hasattr(dreamlake, name), name
    assert {"Session", "dreamlake_session"} <= set(dreamlake.__all__)


def test_close_with_a_status_and_on_close_callbacks(tmp_path):
    seen = []
    s = Session(prefix="ws/st", root=str(tmp_path)).open()
    s.on_close(lambda status, error: seen.append((status, error)))
    with pytest.raises(ValueError):
        s.close(status="great")
    s.close(status="failed", error="diverged")
    assert seen == [("failed", "diverged")]
    meta = _meta(tmp_path / "ws" / "st")
    assert meta["status"] == "failed" and meta["error"] == "diverged"


def test_nonfinite_params_round_trip_and_file_stays_valid_json(tmp_path):
    import math

    with Session(prefix="ws/nan", root=str(tmp_path)) as s:
        s.params.set(x=float("nan"), y=float("-inf"), z=1.5)
        got = s.params.get()
        assert math.isnan(got["x"]) and got["y"] == -math.inf and got["z"] == 1.5

    def refuse(name):
        raise AssertionError(name)

    json.loads((tmp_path / "ws" / "nan" / "parameters.json").read_text(), parse_constant=refuse)


def test_a_track_named_logs_is_not_the_log_stream(tmp_path):
    with Session(prefix="ws/lg", root=str(tmp_path)) as s:
        s.log("a log entry")
        s.track("logs").append(value=1)
        assert [p["data"]["value"] for p in s.track("logs").read()["data"]] == [1]
        assert [p["data"]["message"] for p in s.logs()["data"]] == ["a log entry"]
    assert (tmp_path / "ws" / "lg" / "tracks" / "logs" / "data.jsonl").exists()


def test_append_batch_fast_path_copies_stamps_in_order_and_falls_back(tmp_path):
    with Session(prefix="ws/batch", root=str(tmp_path)) as s:
        s.track("a").append(first=True)
        rows = [{"v": i} for i in range(5)]
        s.track("a").append_batch(rows)  # plain rows: the whole-batch fast path
        rows[0]["v"] = 999  # captured at the call
        # a mixed batch takes the row-by-row path; _ts=-1 is the batch's last _ts,
        # so that row merges into the still-open v=4 row (later fields win)
        s.track("a").append_batch([{"w": 5, "_ts": -1}, {"v": 6, "tag": "x" * 10}])
        with pytest.raises(TypeError):
            s.track("a").append_batch([{"v": 1}, "not a dict"])
        with pytest.raises(TypeError):
            s.track("a").append_batch([{"v": {1, 2}}])
        with pytest.raises(ValueError):
            s.track("a").append_batch([{"v": 1}, {}])
        data = [p["data"] for p in s.track("a").read()["data"]]
    assert [d.get("v") for d in data] == [None, 0, 1, 2, 3, 4, 6]
    assert data[5]["w"] == 5 and data[6]["tag"] == "x" * 10
    stamps = [d["_ts"] for d in data]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


@pytest.mark.parametrize("name", ["a/data.jsonl", "index.ts", "x/.lock/y", "metadata.json"])
def test_track_names_that_would_collide_with_store_files_are_refused(tmp_path, name):
    with Session(prefix="ws/res", root=str(tmp_path)) as s:
        s.track("a").append(x=1)
        with pytest.raises(ValueError, match="names a file of the store"):
            s.track(name)
        assert s.track("a").read()["total"] == 1


def test_append_batch_with_explicit_ts_in_every_row(tmp_path):
    with Session(prefix="ws/bts", root=str(tmp_path)) as s:
        t = s.track("replay")
        t.append_batch([{"_ts": 10 + i, "v": i} for i in range(4)] + [{"_ts": 13, "w": 9}])  # equal _ts merges
        s.track("other").append(x=1, _ts=-1)  # -1 is the batch's last _ts
        with pytest.raises(ValueError):
            t.append_batch([{"_ts": 1.0, "v": 1}, {"_ts": 2.0}])
        with pytest.raises(ValueError):
            t.append_batch([{"_ts": float("nan"), "v": 1}])
        data = [p["data"] for p in t.read()["data"]]
        assert [(d["_ts"], d["v"]) for d in data] == [(10.0, 0), (11.0, 1), (12.0, 2), (13.0, 3)]
        assert data[-1]["w"] == 9 and type(data[0]["_ts"]) is float
        assert s.track("other").read()["data"][0]["data"]["_ts"] == 13.0
        assert [p["index"] for p in t.read(start_ts=11, end_ts=13)["data"]] == [1, 2]


def test_append_batch_minus_one_ts_as_the_first_row_of_a_session_is_now(tmp_path):
    import time as _time

    before = _time.time()
    with Session(prefix="ws/first", root=str(tmp_path)) as s:
        s.track("t").append_batch([{"_ts": -1, "v": 1}, {"v": 2}])
        data = [p["data"] for p in s.track("t").read()["data"]]
    assert data[0]["_ts"] >= before  # like append(_ts=-1) with no earlier _ts: now
    assert data[1]["_ts"] > data[0]["_ts"]


def test_health_says_where_the_rows_go(tmp_path):
    """``thread`` here; ``agent`` when the suite runs with every session through an
    agent (tests/test_agent_processes.py sets DREAMLAKE_AGENT)."""
    with Session(prefix="ws/h", root=str(tmp_path)) as s:
        s.track("t").append(v=1)
        s.flush()
        health = s.health()
    assert health["mode"] == ("agent" if os.environ.get("DREAMLAKE_AGENT") else "thread")
    assert health["status"] == "running" and health["rows_written"] == 1
