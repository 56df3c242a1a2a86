"""Batched ingest against a real server: ranges, merge, exactly-once across
restarts, many clients on one session, and the journal's crash recovery."""

from __future__ import annotations

import threading

import httpx
import pytest

from dreamlake.server.wire import BATCH_CONTENT_TYPE, IngestBatch, SessionClose, StreamBatch, decode_ack, encode_batch
from server_process import ServerProcess, make_key


def post(client: httpx.Client, batch: IngestBatch, session: str = "lab/run") -> httpx.Response:
    return client.post(
        f"/ingest/{session}",
        content=encode_batch(batch),
        headers={"content-type": BATCH_CONTENT_TYPE, "content-encoding": "zstd"},
    )


def rows(n: int, start: float = 0.0, **extra) -> list[dict]:
    return [{"_ts": start + i, "v": i, **extra} for i in range(n)]


@pytest.fixture()
def root(tmp_path):
    return tmp_path / "store"


@pytest.fixture()
def key(root):
    return make_key(root, "ada", ("lab",))


def test_batch_assigns_ranges_per_stream_and_reads_back(root, key):
    with ServerProcess(root) as srv, srv.client(key) as c:
        batch = IngestBatch(
            client="c1",
            seq=1,
            streams=[
                StreamBatch("loss", rows(3)),
                StreamBatch("robot/pose", rows(2, 10.0)),
                StreamBatch("", [{"_ts": 1.0, "level": "info", "message": "hi"}], kind="log"),
            ],
            params={"opt": {"lr": 0.1}},
        )
        reply = post(c, batch)
        assert reply.status_code == 200, reply.text
        ack = decode_ack(reply.content)
        assert not ack.duplicate and ack.seq == 1
        assert [(r.name, r.kind, r.startIndex, r.endIndex, r.count) for r in ack.ranges] == [
            ("loss", "track", 0, 2, 3), ("robot/pose", "track", 0, 1, 2), ("", "log", 0, 0, 1)]
        second = decode_ack(post(c, IngestBatch("c1", 2, [StreamBatch("loss", rows(2, 5.0))])).content)
        assert (second.ranges[0].startIndex, second.ranges[0].endIndex) == (3, 4)
        sid = ack.sessionId
        data = c.get(f"/sessions/{sid}/tracks/loss/data").json()
        assert [r["data"]["v"] for r in data["data"]] == [0, 1, 2, 0, 1]
        assert c.get(f"/sessions/{sid}/parameters").json()["data"] == {"opt.lr": 0.1}
        assert c.get(f"/sessions/{sid}/logs").json()["data"][0]["data"]["message"] == "hi"
        metrics = c.get("/metrics").text
        assert 'dreamlake_rows_total{kind="track"} 7.0' in metrics


def test_equal_ts_rows_merge_within_a_batch(root, key):
    with ServerProcess(root) as srv, srv.client(key) as c:
        stream = StreamBatch("s", [{"_ts": 1.0, "a": 1}, {"_ts": 1.0, "b": 2}, {"_ts": 2.0, "a": 3}])
        ack = decode_ack(post(c, IngestBatch("c", 1, [stream])).content)
        assert ack.ranges[0].count == 2
        got = c.get(f"/sessions/{ack.sessionId}/tracks/s/data").json()["data"]
        assert [r["data"] for r in got] == [{"_ts": 1.0, "a": 1, "b": 2}, {"_ts": 2.0, "a": 3}]


def test_duplicate_is_acknowledged_not_applied_even_after_a_restart(root, key):
    batch = IngestBatch("robot-7", 1, [StreamBatch("loss", rows(4))])
    with ServerProcess(root) as srv, srv.client(key) as c:
        first = decode_ack(post(c, batch).content)
        again = decode_ack(post(c, batch).content)
        assert again.duplicate and again.ranges == first.ranges
    with ServerProcess(root) as srv, srv.client(key) as c:  # a fresh process, same store
        after = decode_ack(post(c, batch).content)
        assert after.duplicate and after.ranges == first.ranges
        assert c.get(f"/sessions/{first.sessionId}/tracks/loss/stats").json()["totalDataPoints"] == 4
        assert "dreamlake_ingest_duplicates_total 1.0" in c.get("/metrics").text
        nxt = decode_ack(post(c, IngestBatch("robot-7", 2, [StreamBatch("loss", rows(1, 9.0))])).content)
        assert not nxt.duplicate and nxt.ranges[0].startIndex == 4


def test_duplicate_survives_kill_9(root, key):
    batch = IngestBatch("c", 1, [StreamBatch("loss", rows(5))])
    srv = ServerProcess(root)
    with srv.client(key) as c:
        assert not decode_ack(post(c, batch).content).duplicate
    srv.kill()
    with ServerProcess(root) as srv, srv.client(key) as c:
        assert decode_ack(post(c, batch).content).duplicate
        sid = decode_ack(post(c, batch).content).sessionId
        assert c.get(f"/sessions/{sid}/tracks/loss/stats").json()["totalDataPoints"] == 5


def test_many_clients_on_one_session_get_consecutive_indices(root, key):
    clients, batches, per = 4, 15, 20
    errors: list[BaseException] = []
    acks: list = []
    start = threading.Barrier(clients)

    def run(client_no: int) -> None:
        try:
            with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
                start.wait()
                for seq in range(1, batches + 1):
                    stream = StreamBatch("shared", [{"_ts": client_no * 1e6 + seq * 100 + i, "client": client_no,
                                                     "seq": seq, "i": i} for i in range(per)])
                    reply = post(c, IngestBatch(f"client-{client_no}", seq, [stream]))
                    reply.raise_for_status()
                    acks.append((client_no, seq, decode_ack(reply.content)))
        except BaseException as exc:
            errors.append(exc)

    with ServerProcess(root) as srv:
        threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        total = clients * batches * per
        ranges = sorted((a.ranges[0].startIndex, a.ranges[0].endIndex) for _, _, a in acks)
        assert ranges[0][0] == 0 and ranges[-1][1] == total - 1
        assert all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:]))  # no gap, no overlap
        with srv.client(key) as c:
            sid = acks[0][2].sessionId
            page = c.get(f"/sessions/{sid}/tracks/shared/data", params={"limit": total}).json()
            assert page["total"] == total
            for client_no, seq, ack in acks:  # each ack names exactly the rows of its batch
                r = ack.ranges[0]
                got = page["data"][r.startIndex : r.endIndex + 1]
                assert {(row["data"]["client"], row["data"]["seq"]) for row in got} == {(client_no, seq)}


def test_close_in_a_batch_records_the_final_status(root, key):
    with ServerProcess(root) as srv, srv.client(key) as c:
        ack = decode_ack(post(c, IngestBatch("c", 1, [StreamBatch("x", rows(1))], close=SessionClose("failed", "oom"))).content)
        session = c.get(f"/sessions/{ack.sessionId}").json()["session"]
        assert (session["status"], session["error"]) == ("failed", "oom")


def test_uncompressed_msgpack_is_accepted_too(root, key):
    import msgspec

    with ServerProcess(root) as srv, srv.client(key) as c:
        body = msgspec.msgpack.encode(IngestBatch("c", 1, [StreamBatch("x", rows(2))]))
        reply = c.post("/ingest/lab/run", content=body, headers={"content-type": BATCH_CONTENT_TYPE})
        assert reply.status_code == 200 and decode_ack(reply.content).ranges[0].count == 2
