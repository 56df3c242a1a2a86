"""Idle sessions are not kept in the server's memory forever: past
``--max-live-sessions`` (or ``--session-idle`` seconds unused) a session's state
is dropped and reopened from disk on demand, exactly-once ingest intact."""

from __future__ import annotations

import re
import threading

import pytest
from server_process import ServerProcess, make_key
from test_server_ingest import post, rows

from dreamlake.server._local_storage import LocalStorage
from dreamlake.server._prepare import SessionClock, prepare_batch
from dreamlake.server._settings import Settings
from dreamlake.server.wire import IngestBatch, StreamBatch, decode_ack


def held(client) -> dict[str, float]:
    text = client.get("/metrics").text
    return {m[0]: float(m[1]) for m in re.findall(r'dreamlake_sessions_held\{what="(\w+)"\} (\S+)', text)}


def test_many_sessions_stay_bounded_and_a_late_retry_to_an_evicted_one_applies_once(tmp_path):
    root = tmp_path / "store"
    key = make_key(root, "ada", ("lab",))
    with ServerProcess(root, "--max-live-sessions", "4") as server, server.client(key) as c:
        first_acks = {}
        for i in range(40):
            for seq in (1, 2):
                reply = post(c, IngestBatch("c1", seq, [StreamBatch("t", rows(3, 10.0 * seq))]), f"lab/s{i}")
                assert reply.status_code == 200, reply.text
                if i == 0:
                    first_acks[seq] = decode_ack(reply.content)
        state = held(c)
        assert state["sessions"] <= 4 and state["open"] <= 4 and state["clocks"] <= 4
        assert state["evicted"] >= 36
        # s0 was evicted long ago: its client retries batch 2 (its ack was lost) and sends batch 3
        again = decode_ack(post(c, IngestBatch("c1", 2, [StreamBatch("t", rows(3, 20.0))]), "lab/s0").content)
        assert again.duplicate
        assert [(r.startIndex, r.endIndex) for r in again.ranges] == [(3, 5)]
        assert [(r.startIndex, r.endIndex) for r in first_acks[2].ranges] == [(3, 5)]
        older = decode_ack(post(c, IngestBatch("c1", 1, [StreamBatch("t", rows(3, 10.0))]), "lab/s0").content)
        assert older.duplicate
        third = decode_ack(post(c, IngestBatch("c1", 3, [StreamBatch("t", rows(3, 30.0))]), "lab/s0").content)
        assert not third.duplicate and (third.ranges[0].startIndex, third.ranges[0].endIndex) == (6, 8)
        data = c.get(f"/sessions/{third.sessionId}/tracks/t/data", params={"limit": 100}).json()
        assert [r["timestamp"] for r in data["data"]] == [10.0, 11.0, 12.0, 20.0, 21.0, 22.0, 30.0, 31.0, 32.0]
        assert held(c)["sessions"] <= 4


def _storage(tmp_path, **settings) -> LocalStorage:
    return LocalStorage(Settings(root=tmp_path / "store", fsync="never", **settings))


def test_idle_sessions_are_dropped_after_the_idle_time(tmp_path):
    storage = _storage(tmp_path, max_live_sessions=1000, session_idle_seconds=0.0)
    clock = SessionClock()
    refs = [storage.get_session(storage.upsert_session("lab", f"s{i}", {})["id"]) for i in range(10)]
    for ref in refs:
        storage.ingest(ref, prepare_batch(IngestBatch("c", 1, [StreamBatch("t", [{"v": 1}])]), clock))
    assert storage.held()["sessions"] <= 1  # every other one was idle (limit 0 s) when the next came
    ack = storage.ingest(refs[0], prepare_batch(IngestBatch("c", 1, [StreamBatch("t", [{"v": 1}])]), clock))
    assert ack.duplicate
    assert [r["data"]["v"] for r in storage.read_rows(refs[0], "t", 0, 10)["data"]] == [1]
    storage.close()


def test_eviction_under_concurrent_writers_keeps_indices_consecutive(tmp_path):
    """Eight threads write to 24 sessions with room for 2: sessions are evicted and
    reloaded all the time, yet no write lands twice or in a closed session."""
    storage = _storage(tmp_path, max_live_sessions=2)
    refs = [storage.get_session(storage.upsert_session("lab", f"s{i}", {})["id"]) for i in range(24)]
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        clock = SessionClock()
        try:
            for seq in range(1, 16):
                for ref in refs[worker % 3 :: 3]:
                    batch = IngestBatch(f"w{worker}", seq, [StreamBatch("t", [{"v": worker, "seq": seq}])])
                    storage.ingest(ref, prepare_batch(batch, clock))
                    if seq % 5 == 0:  # a retry of the same batch: a duplicate, never applied again
                        assert storage.ingest(ref, prepare_batch(batch, clock)).duplicate
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert storage.held()["evicted"] > 24
    for i, ref in enumerate(refs):
        page = storage.read_rows(ref, "t", 0, 1000)
        got = sorted((r["data"]["v"], r["data"]["seq"]) for r in page["data"])
        workers = [w for w in range(8) if i % 3 == w % 3]
        assert got == sorted((w, s) for w in workers for s in range(1, 16))
        assert [r["index"] for r in page["data"]] == list(range(len(got)))
    storage.close()


@pytest.mark.parametrize("argv", [("--max-live-sessions", "0"), ("--session-idle", "0")])
def test_a_zero_limit_still_serves_every_request(tmp_path, argv):
    root = tmp_path / "store"
    key = make_key(root, "ada", ("lab",))
    with ServerProcess(root, *argv) as server, server.client(key) as c:
        for seq in (1, 2, 1):
            assert post(c, IngestBatch("c1", seq, [StreamBatch("t", rows(2))])).status_code == 200
        sid = decode_ack(post(c, IngestBatch("c1", 3, [])).content).sessionId
        assert c.get(f"/sessions/{sid}/tracks/t/data").json()["total"] == 4
