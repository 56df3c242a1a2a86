"""The storage contract every server backend must keep (``_storage.Storage``).

Parametrised by backend: the PostgreSQL backend joins by adding a factory to
``BACKENDS``. A factory takes a fresh directory and returns a function that
opens the backend on it; calling it again is a server restart.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import pytest

from dreamlake.server._errors import Forbidden, NotFound
from dreamlake.server._local_storage import LocalStorage
from dreamlake.server._prepare import SessionClock, prepare_batch, prepare_log_rows, prepare_track_rows
from dreamlake.server._settings import Settings
from dreamlake.server._storage import Storage
from dreamlake.server.wire import IngestBatch, StreamBatch

from pg import postgres_backend


def _local(tmp: Path) -> Callable[[], Storage]:
    return lambda: LocalStorage(Settings(root=tmp / "store", fsync="never"))


BACKENDS = {"local": _local, "postgres": postgres_backend}


@pytest.fixture(params=sorted(BACKENDS))
def open_storage(request, tmp_path):
    opened: list[Storage] = []

    def factory() -> Storage:
        storage = BACKENDS[request.param](tmp_path)()
        opened.append(storage)
        return storage

    yield factory
    for storage in opened:
        storage.close()


def _ref(storage: Storage, name: str = "run", **fields):
    return storage.get_session(storage.upsert_session("lab", name, fields)["id"])


def test_sessions_upsert_find_and_keep_their_id(open_storage):
    storage = open_storage()
    record = storage.upsert_session("lab", "run", {"description": "d", "tags": ["t"]})
    assert record["id"] and record["workspace"] == "lab" and record["name"] == "run"
    assert storage.upsert_session("lab", "run", {})["description"] == "d"
    assert storage.find_session("lab", "run").id == record["id"]
    assert storage.find_session("lab", "other") is None
    with pytest.raises(NotFound):
        storage.get_session("no-such-id")
    assert open_storage().get_session(record["id"]).workspace == "lab"  # after a restart


def test_rows_get_consecutive_indices_under_concurrent_writers(open_storage):
    storage = open_storage()
    ref = _ref(storage)
    clock = SessionClock()
    results: list[dict] = []

    def writer() -> None:
        for _ in range(40):
            results.append(storage.append_rows(ref, prepare_track_rows("t", [{"v": 1}] * 3, clock)))

    threads = [threading.Thread(target=writer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans = sorted((r["startIndex"], r["endIndex"]) for r in results)
    assert spans[0][0] == 0 and spans[-1][1] == 6 * 40 * 3 - 1
    assert all(b[0] == a[1] + 1 for a, b in zip(spans, spans[1:]))
    assert storage.track_stats(ref, "t")["totalDataPoints"] == 720


def test_reads_by_index_and_ts_have_the_api_shapes(open_storage):
    storage = open_storage()
    ref = _ref(storage)
    storage.append_rows(ref, prepare_track_rows("t", [{"_ts": float(i), "v": i} for i in range(10)], SessionClock()))
    page = storage.read_rows(ref, "t", 8, 5)
    assert [r["index"] for r in page["data"]] == [8, 9]
    assert (page["startIndex"], page["endIndex"], page["total"], page["hasMore"]) == (8, 9, 10, False)
    by_ts = storage.read_rows_by_ts(ref, "t", 2.0, 5.0, 2)
    assert [r["data"]["v"] for r in by_ts["data"]] == [2, 3] and by_ts["hasMore"] is True
    assert [t["name"] for t in storage.list_tracks(ref)] == ["t"]
    with pytest.raises(NotFound):
        storage.read_rows(ref, "missing", 0, 10)


def test_logs_and_params(open_storage):
    storage = open_storage()
    ref = _ref(storage)
    first, last = storage.append_logs(ref, prepare_log_rows([{"message": "a"}, {"message": "b", "level": "warn"}],
                                                            SessionClock()))
    assert (first, last) == (0, 1)
    page = storage.read_logs(ref, 0, 10)["data"]
    assert [r["data"]["level"] for r in page] == ["info", "warn"]
    # upstream's entry shape in both backends; the entry's time is also the page's timestamp
    assert [sorted(r["data"]) for r in page] == [["level", "message", "sequenceNumber", "timestamp"]] * 2
    assert [r["data"]["sequenceNumber"] for r in page] == [0, 1] and all(isinstance(r["timestamp"], float) for r in page)
    storage.set_params(ref, {"a": 1, "b.c": 2})
    assert storage.set_params(ref, {"a": 3})["data"] == {"a": 3, "b.c": 2}
    assert storage.get_params(ref)["data"] == {"a": 3, "b.c": 2}


def test_ingest_is_exactly_once_across_restarts(open_storage):
    storage = open_storage()
    ref = _ref(storage)
    batch = IngestBatch("c", 1, [StreamBatch("t", [{"_ts": 1.0, "v": 1}, {"_ts": 2.0, "v": 2}])])
    ack = storage.ingest(ref, prepare_batch(batch, SessionClock()))
    assert not ack.duplicate and (ack.ranges[0].startIndex, ack.ranges[0].endIndex) == (0, 1)
    dup = storage.ingest(ref, prepare_batch(batch, SessionClock()))
    assert dup.duplicate and dup.ranges == ack.ranges
    storage.close()
    again = open_storage()
    ref = again.get_session(ref.id)
    assert again.ingest(ref, prepare_batch(batch, SessionClock())).duplicate
    older = IngestBatch("c", 0 + 1, [])  # same seq, different content: still a duplicate
    assert again.ingest(ref, prepare_batch(older, SessionClock())).duplicate
    other_client = again.ingest(ref, prepare_batch(IngestBatch("d", 1, batch.streams), SessionClock()))
    assert not other_client.duplicate and other_client.ranges[0].startIndex == 2
    assert again.track_stats(ref, "t")["totalDataPoints"] == 4


def test_write_protected_sessions_refuse_every_write(open_storage, tmp_path):
    storage = open_storage()
    ref = _ref(storage, "frozen", writeProtected=True)
    assert ref.write_protected
    clock = SessionClock()
    staged = tmp_path / "f.txt"
    staged.write_text("x")
    for write in (
        lambda: storage.append_rows(ref, prepare_track_rows("t", [{"v": 1}], clock)),
        lambda: storage.append_logs(ref, prepare_log_rows([{"message": "m"}], clock)),
        lambda: storage.set_params(ref, {"a": 1}),
        lambda: storage.ingest(ref, prepare_batch(IngestBatch("c", 1, [StreamBatch("t", [{"v": 1}])]), clock)),
        lambda: storage.upload_file(ref, staged, "", None, [], {}),
    ):
        with pytest.raises(Forbidden):
            write()
    assert storage.upsert_session("lab", "frozen", {"description": "changed"})["description"] is None
    assert storage.list_tracks(ref) == []


def test_files_round_trip(open_storage, tmp_path):
    storage = open_storage()
    ref = _ref(storage)
    staged = tmp_path / "weights.bin"
    staged.write_bytes(b"\x00\x01" * 5000)
    entry = storage.upload_file(ref, staged, "models", "d", ["a"], {"k": 1})
    assert storage.get_file(ref, entry["id"])["sizeBytes"] == 10000
    assert [f["id"] for f in storage.list_files(ref, "models", ["a"])] == [entry["id"]]
    out = tmp_path / "out"
    out.mkdir()
    assert storage.export_file(ref, entry["id"], out).read_bytes() == staged.read_bytes()
    assert storage.update_file(ref, entry["id"], {"description": "e"})["description"] == "e"
    storage.delete_file(ref, entry["id"])
    with pytest.raises(NotFound):
        storage.get_file(ref, entry["id"])


def test_list_sessions_and_scattered_reads_for_the_page(open_storage):
    storage = open_storage()
    assert storage.list_sessions() == []
    ref = _ref(storage, "b", tags=["t"], description="d")
    _ref(storage, "a")
    storage.upsert_session("other", "z", {})
    listed = storage.list_sessions()
    assert [(r["workspace"], r["name"]) for r in listed] == [("lab", "a"), ("lab", "b"), ("other", "z")]
    assert listed[1] == storage.session_record(ref)
    clock = SessionClock()
    for start in range(0, 1500, 300):  # several writes, so several chunks on PostgreSQL
        storage.append_rows(ref, prepare_track_rows("t", [{"v": i, "_ts": float(i)} for i in range(start, start + 300)], clock))
    wanted = [0, 1, 299, 300, 511, 512, 1024, 1499, 1500, 9999]
    got = storage.read_rows_at(ref, "t", wanted)
    assert [(i, ts, row["v"]) for i, ts, row in got] == [(i, float(i), i) for i in wanted if i < 1500]
    assert storage.read_rows_at(ref, "t", []) == []
    with pytest.raises(NotFound):
        storage.read_rows_at(ref, "missing", [0])
