"""What the PostgreSQL backend adds beyond the shared contract: chunking,
O(limit) reads, and two backends (two replicas' worth) on one database."""

from __future__ import annotations

import math
import threading
import time
import uuid

import psycopg
import pytest

from dreamlake.server._errors import BadRequest
from dreamlake.server._journal import KEEP_ACKS
from dreamlake.server._objects import open_objects
from dreamlake.server._prepare import SessionClock, prepare_batch, prepare_track_rows
from dreamlake.server._settings import Settings
from dreamlake.server.postgres import PostgresStorage, StorageUnavailable
from dreamlake.server.postgres import _streams
from dreamlake.server.postgres._chunks import CHUNK_ROWS, MERGE_ROWS
from dreamlake.server.wire import IngestBatch, StreamBatch
from pg import fresh_schema
from tcp_proxy import TcpProxy


@pytest.fixture()
def database():
    with fresh_schema() as url:
        yield url


@pytest.fixture()
def open_replica(database, tmp_path):
    opened: list[PostgresStorage] = []

    def open_one() -> PostgresStorage:
        storage = PostgresStorage(database, open_objects(str(tmp_path / "objects")), Settings(root=tmp_path / "root"),
                                  pool_size=6)
        opened.append(storage)
        return storage

    yield open_one
    for storage in opened:
        storage.close()


def session(storage: PostgresStorage, name: str = "run"):
    return storage.get_session(storage.upsert_session("lab", name, {})["id"])


def chunk_sizes(database: str, track: str) -> list[int]:
    with psycopg.connect(database) as conn:
        return [n for (n,) in conn.execute(
            "SELECT row_count FROM chunks c JOIN streams s ON s.id = c.stream_id WHERE s.name = %s"
            " ORDER BY first_index", (track,))]


@pytest.fixture()
def count_decodes(monkeypatch):
    calls = []
    real = _streams.decode_chunk
    monkeypatch.setattr(_streams, "decode_chunk", lambda data: calls.append(1) or real(data))
    return calls


def test_a_big_batch_becomes_bounded_chunks_and_reads_across_their_edges(open_replica, database):
    storage = open_replica()
    ref = session(storage)
    n = CHUNK_ROWS * 2 + 100
    storage.append_rows(ref, prepare_track_rows("t", [{"_ts": i / 10, "v": i} for i in range(n)], SessionClock()))
    assert chunk_sizes(database, "t") == [CHUNK_ROWS, CHUNK_ROWS, 100]
    for start, limit in [(0, 5), (CHUNK_ROWS - 3, 7), (CHUNK_ROWS * 2 - 1, 2), (n - 10, 100), (5, CHUNK_ROWS + 10)]:
        page = storage.read_rows(ref, "t", start, limit)
        want = list(range(start, min(n, start + limit)))
        assert [r["index"] for r in page["data"]] == want and [r["data"]["v"] for r in page["data"]] == want
        assert page["hasMore"] == (start + limit < n) and page["total"] == n
    by_ts = storage.read_rows_by_ts(ref, "t", (CHUNK_ROWS - 2) / 10, None, 5)
    assert [r["index"] for r in by_ts["data"]] == list(range(CHUNK_ROWS - 2, CHUNK_ROWS + 3))
    window = storage.read_rows_by_ts(ref, "t", 100.0, 100.35, 50)
    assert [r["data"]["v"] for r in window["data"]] == [1000, 1001, 1002, 1003] and not window["hasMore"]
    past_the_end = storage.read_rows_by_ts(ref, "t", n / 10, None, 5)
    assert past_the_end["data"] == [] and not past_the_end["hasMore"] and past_the_end["total"] == n


def test_row_by_row_appends_are_merged_into_small_chunks(open_replica, database):
    storage = open_replica()
    ref = session(storage)
    clock = SessionClock()
    for i in range(MERGE_ROWS + 10):
        assert storage.append_rows(ref, prepare_track_rows("t", [{"_ts": float(i), "v": i}], clock))["startIndex"] == i
    assert chunk_sizes(database, "t") == [MERGE_ROWS, 10]
    page = storage.read_rows(ref, "t", MERGE_ROWS - 2, 4)
    assert [r["data"]["v"] for r in page["data"]] == [MERGE_ROWS - 2, MERGE_ROWS - 1, MERGE_ROWS, MERGE_ROWS + 1]


def test_reads_at_the_end_of_a_long_track_decode_only_the_chunks_they_need(open_replica, count_decodes):
    storage = open_replica()
    ref = session(storage)
    n = CHUNK_ROWS * 12
    storage.append_rows(ref, prepare_track_rows("t", [{"_ts": float(i), "v": i} for i in range(n)], SessionClock()))
    count_decodes.clear()
    page = storage.read_rows(ref, "t", n - 100, 100)
    assert [r["index"] for r in page["data"]] == list(range(n - 100, n))
    assert len(count_decodes) == 1
    count_decodes.clear()
    by_ts = storage.read_rows_by_ts(ref, "t", float(n - 150), None, 100)
    assert [r["index"] for r in by_ts["data"]] == list(range(n - 150, n - 50)) and by_ts["hasMore"]
    assert len(count_decodes) <= 2


def test_ts_that_went_back_is_still_read_correctly(open_replica):
    storage = open_replica()
    ref = session(storage)
    stamps = [5.0, 1.0, 7.0, 3.0, 9.0, 2.0] * 500
    clock = SessionClock()
    for start in range(0, len(stamps), 700):  # several batches, several chunks
        rows = [{"_ts": t, "i": start + k} for k, t in enumerate(stamps[start:start + 700])]
        storage.append_rows(ref, prepare_track_rows("t", rows, clock))
    page = storage.read_rows_by_ts(ref, "t", 2.0, 5.0, 10)
    want = [i for i, t in enumerate(stamps) if 2.0 <= t < 5.0]
    assert [r["index"] for r in page["data"]] == want[:10] and page["hasMore"]
    assert [r["data"]["i"] for r in page["data"]] == want[:10]


def test_values_round_trip_nonfinite_nested_and_unicode(open_replica):
    storage = open_replica()
    ref = session(storage)
    row = {"_ts": 1.0, "nan": math.nan, "inf": math.inf, "ninf": -math.inf, "arr": [1.5, [2, {"k": "ü✓"}]],
           "big": 2**62, "none": None, "flag": True}
    storage.append_rows(ref, prepare_track_rows("t", [row], SessionClock()))
    got = storage.read_rows(ref, "t", 0, 1)["data"][0]["data"]
    assert math.isnan(got.pop("nan")) and got == {k: v for k, v in row.items() if k != "nan"}
    storage.set_params(ref, {"lr": math.inf, "name": "ü"})
    assert storage.get_params(ref)["data"] == {"lr": math.inf, "name": "ü"}


def test_two_replicas_racing_the_same_batch_apply_it_once(open_replica):
    replicas = [open_replica(), open_replica()]
    ref = session(replicas[0])
    for seq in range(1, 16):
        batch = IngestBatch("c", seq, [StreamBatch("t", [{"_ts": seq + i / 100, "seq": seq} for i in range(20)])])
        acks = []
        barrier = threading.Barrier(4)

        def deliver(storage: PostgresStorage) -> None:
            barrier.wait(10)
            acks.append(storage.ingest(ref, prepare_batch(batch, SessionClock())))

        threads = [threading.Thread(target=deliver, args=(replicas[i % 2],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert sorted(a.duplicate for a in acks) == [False, True, True, True]
        assert all(a.ranges == acks[0].ranges for a in acks)
    rows = replicas[1].read_rows(ref, "t", 0, 1000)
    assert rows["total"] == 300
    assert [r["data"]["seq"] for r in rows["data"]] == [seq for seq in range(1, 16) for _ in range(20)]


def test_many_writers_on_two_replicas_share_one_gap_free_index(open_replica):
    replicas = [open_replica(), open_replica()]
    ref = session(replicas[0])
    spans: list[tuple[int, int]] = []

    def writer(k: int) -> None:
        storage = replicas[k % 2]
        for seq in range(1, 11):
            rows = [{"_ts": float(seq), "w": k}, {"_ts": seq + 0.5, "w": k}]
            batch = IngestBatch(f"w{k}", seq, [StreamBatch("t", rows)])
            r = storage.ingest(ref, prepare_batch(batch, SessionClock())).ranges[0]
            spans.append((r.startIndex, r.endIndex))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    spans.sort()
    assert spans[0][0] == 0 and spans[-1][1] == 4 * 10 * 2 - 1 and len(spans) == 40
    assert all(b[0] == a[1] + 1 for a, b in zip(spans, spans[1:]))


def test_idempotency_records_stay_bounded_and_old_retries_stay_duplicates(open_replica, database):
    storage = open_replica()
    ref = session(storage)
    batches = [IngestBatch("c", seq, [StreamBatch("t", [{"_ts": float(seq), "v": seq}])]) for seq in range(1, 41)]
    acks = [storage.ingest(ref, prepare_batch(b, SessionClock())) for b in batches]
    with psycopg.connect(database) as conn:
        kept = conn.execute("SELECT count(*) FROM ingest_batches WHERE client = 'c'").fetchone()[0]
    assert kept <= 2 * KEEP_ACKS
    latest = storage.ingest(ref, prepare_batch(batches[-1], SessionClock()))
    assert latest.duplicate and latest.ranges == acks[-1].ranges
    oldest = storage.ingest(ref, prepare_batch(batches[0], SessionClock()))
    assert oldest.duplicate and oldest.ranges == []
    assert storage.track_stats(ref, "t")["totalDataPoints"] == 40


def test_values_postgresql_cannot_store_are_a_bad_request_and_change_nothing(open_replica):
    storage = open_replica()
    ref = session(storage)
    with pytest.raises(BadRequest):
        storage.set_params(ref, {"a": "nul\x00byte"})
    with pytest.raises(BadRequest):
        storage.upsert_session("lab", "run", {"description": "nul\x00byte"})
    assert storage.get_params(ref)["data"] == {} and storage.session_record(ref)["description"] is None
    storage.append_rows(ref, prepare_track_rows("t", [{"_ts": 1.0, "s": "nul\x00byte"}], SessionClock()))
    assert storage.read_rows(ref, "t", 0, 1)["data"][0]["data"]["s"] == "nul\x00byte"  # chunks are msgpack


def test_connections_postgresql_dropped_are_replaced_without_failing_a_request(database, tmp_path):
    name = f"dl-test-{uuid.uuid4().hex[:8]}"  # only this test's connections are dropped
    storage = PostgresStorage(f"{database}&application_name={name}", open_objects(str(tmp_path / "objects")),
                              Settings(root=tmp_path / "root"), pool_size=3)
    ref = session(storage)
    storage.append_rows(ref, prepare_track_rows("t", [{"_ts": 1.0, "v": 1}], SessionClock()))
    with psycopg.connect(database, autocommit=True) as admin:  # as a database restart or failover would
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s", (name,)
        ).fetchone()[0]
    assert killed >= 1
    assert storage.append_rows(ref, prepare_track_rows("t", [{"_ts": 2.0, "v": 2}], SessionClock()))["startIndex"] == 1
    assert storage.read_rows(ref, "t", 0, 10)["total"] == 2
    storage.close()


def test_a_database_outage_is_a_503_and_service_resumes_after_it(database, tmp_path):
    server = database.split("/test?")[0].split("@")[1]
    host, port = server.rsplit(":", 1)
    proxy = TcpProxy((host, int(port))).start()
    via_proxy = database.replace(server, f"127.0.0.1:{proxy.port}")
    storage = PostgresStorage(via_proxy, open_objects(str(tmp_path / "objects")), Settings(root=tmp_path / "root"),
                              pool_size=2, pool_timeout=1.0)
    try:
        ref = session(storage)
        storage.append_rows(ref, prepare_track_rows("t", [{"_ts": 1.0, "v": 1}], SessionClock()))
        proxy.cut()
        with pytest.raises(StorageUnavailable):
            storage.append_rows(ref, prepare_track_rows("t", [{"_ts": 2.0, "v": 2}], SessionClock()))
        with pytest.raises(StorageUnavailable):
            storage.read_rows(ref, "t", 0, 10)
        proxy.start()  # the database is back, on the same address
        deadline = time.monotonic() + 30
        while True:
            try:
                ack = storage.append_rows(ref, prepare_track_rows("t", [{"_ts": 3.0, "v": 3}], SessionClock()))
                break
            except StorageUnavailable:
                assert time.monotonic() < deadline, "the pool never reconnected"
                time.sleep(0.2)
        assert ack["startIndex"] == 1  # the refused write left nothing behind
        assert [r["data"]["v"] for r in storage.read_rows(ref, "t", 0, 10)["data"]] == [1, 3]
    finally:
        storage.close()
        proxy.cut()
