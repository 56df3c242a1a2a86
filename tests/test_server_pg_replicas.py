"""Two real ``dreamlake-server`` replicas on one PostgreSQL database.

Clients that switch replicas between batches get consecutive, gap-free
indices and exactly-once delivery; a replica ``kill -9``-ed in the middle of a
batch loses nothing acknowledged, and the client's retry to the other replica
is applied once. Both replicas share one ``--root`` (API keys, scratch) and one
object store, as a deployment on a shared volume would.
"""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import psycopg
import pytest

from dreamlake.server.wire import BATCH_CONTENT_TYPE, IngestBatch, StreamBatch, decode_ack, encode_batch
from pg import fresh_schema
from server_process import ServerProcess, make_key


@pytest.fixture()
def database():
    with fresh_schema() as url:
        yield url


APP_NAME = f"dl-replica-{uuid.uuid4().hex[:8]}"  # this test run's replicas in pg_stat_activity


@pytest.fixture()
def replicas(tmp_path, database):
    root = tmp_path / "root"
    key = make_key(root, "ada", ("lab",))
    args = ("--store", f"{database}&application_name={APP_NAME}", "--objects", (tmp_path / "objects").as_uri())
    servers: list[ServerProcess] = []
    starters = [threading.Thread(target=lambda: servers.append(ServerProcess(root, *args))) for _ in range(2)]
    for t in starters:  # both at once: their migrations race, as replicas' would
        t.start()
    for t in starters:
        t.join(40)
    try:
        assert len(servers) == 2, "a replica did not start"
        yield servers, key
    finally:
        for server in servers:
            server.stop()


def post(client: httpx.Client, batch: IngestBatch, session: str = "lab/run") -> httpx.Response:
    return client.post(
        f"/ingest/{session}",
        content=encode_batch(batch),
        headers={"content-type": BATCH_CONTENT_TYPE, "content-encoding": "zstd"},
    )


def batch_of(client: str, seq: int, n: int) -> IngestBatch:
    rows = [{"_ts": seq * 1000.0 + i, "client": client, "seq": seq, "i": i} for i in range(n)]
    logs = [{"_ts": seq * 1000.0, "level": "info", "message": f"{client} {seq}"}]
    return IngestBatch(client, seq, [StreamBatch("shared", rows), StreamBatch(f"own/{client}", rows),
                                     StreamBatch("", logs, kind="log")])


def all_rows(client: httpx.Client, session_id: str, track: str) -> list[dict]:
    out, start = [], 0
    while True:
        page = client.get(f"/sessions/{session_id}/tracks/{track}/data", params={"startIndex": start, "limit": 1000})
        assert page.status_code == 200, page.text
        body = page.json()
        out.extend(body["data"])
        if not body["hasMore"]:
            return out
        start = body["endIndex"] + 1


def test_clients_alternating_replicas_get_gap_free_indices_exactly_once(replicas):
    (a, b), key = replicas
    clients = [a.client(key), b.client(key)]
    acks: dict[str, list] = {"c1": [], "c2": []}
    errors: list[BaseException] = []

    def run(name: str, offset: int) -> None:
        try:
            for seq in range(1, 21):
                http = clients[(seq + offset) % 2]  # a different replica for every batch
                reply = post(http, batch_of(name, seq, 7))
                assert reply.status_code == 200, reply.text
                ack = decode_ack(reply.content)
                assert not ack.duplicate
                acks[name].append(ack)
                again = decode_ack(post(clients[(seq + offset + 1) % 2], batch_of(name, seq, 7)).content)
                assert again.duplicate and again.ranges == ack.ranges  # the retry, at the other replica
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=("c1", 0)), threading.Thread(target=run, args=("c2", 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert not errors, errors
    session_id = acks["c1"][0].sessionId

    shared = sorted((ack.ranges[0].startIndex, ack.ranges[0].endIndex) for name in acks for ack in acks[name])
    assert shared[0][0] == 0 and shared[-1][1] == 2 * 20 * 7 - 1
    assert all(nxt[0] == prev[1] + 1 for prev, nxt in zip(shared, shared[1:]))  # gap-free, no overlap
    for name in acks:  # a client's own track, written through both replicas, is 0..139 in order
        assert [(ack.ranges[1].startIndex, ack.ranges[1].endIndex) for ack in acks[name]] == [
            (i * 7, i * 7 + 6) for i in range(20)]

    for http in clients:  # both replicas read the same thing
        rows = all_rows(http, session_id, "shared")
        assert [r["index"] for r in rows] == list(range(280))
        for name in acks:
            mine = [(r["data"]["seq"], r["data"]["i"]) for r in rows if r["data"]["client"] == name]
            assert mine == [(seq, i) for seq in range(1, 21) for i in range(7)]  # each row once, in order
            ack_by_seq = {ack.seq: ack.ranges[0].startIndex for ack in acks[name]}
            assert all(r["index"] == ack_by_seq[r["data"]["seq"]] + r["data"]["i"]
                       for r in rows if r["data"]["client"] == name)
        logs = http.get(f"/sessions/{session_id}/logs", params={"limit": 100}).json()
        assert logs["total"] == 40 and [r["index"] for r in logs["data"]] == list(range(40))
    for http in clients:
        http.close()


def _backend_waiting_on_a_lock(database: str, deadline: float) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = %s AND wait_event_type = 'Lock' AND query LIKE %s",
                (APP_NAME, "%INSERT INTO streams%"),
            ).fetchone()[0]
            if waiting:
                return
            time.sleep(0.01)
    raise AssertionError("the replica's batch never reached the stream lock")


def test_replica_killed_mid_batch_loses_nothing_acknowledged_and_the_retry_applies_once(replicas, database):
    (a, b), key = replicas
    with a.client(key) as to_a, b.client(key) as to_b:
        for seq in (1, 2):  # acknowledged by A before it dies
            assert post(to_a, batch_of("c", seq, 50)).status_code == 200
        session_id = decode_ack(post(to_a, batch_of("c", 3, 50)).content).sessionId

        # Hold the lock of the "shared" track's row, so A's next batch stops in the
        # middle of its transaction (idempotency record written, indices not yet).
        holder = psycopg.connect(database)
        holder.execute("SELECT next_index FROM streams WHERE kind = 'track' AND name = 'shared' FOR UPDATE")
        outcome: dict = {}

        def send_to_a() -> None:
            try:
                outcome["reply"] = post(to_a, batch_of("c", 4, 5000))
            except httpx.HTTPError as exc:
                outcome["error"] = exc

        sender = threading.Thread(target=send_to_a)
        sender.start()
        _backend_waiting_on_a_lock(database, time.monotonic() + 20)
        a.kill()  # kill -9, mid-batch
        sender.join(20)
        assert "error" in outcome, outcome  # never acknowledged
        holder.rollback()
        holder.close()

        ack = decode_ack(post(to_b, batch_of("c", 4, 5000)).content)  # the client's retry, to the other replica
        assert not ack.duplicate
        assert [(r.startIndex, r.endIndex) for r in ack.ranges[:2]] == [(150, 5149), (150, 5149)]
        assert decode_ack(post(to_b, batch_of("c", 4, 5000)).content).duplicate
        after = decode_ack(post(to_b, batch_of("c", 5, 1)).content)
        assert after.ranges[0].startIndex == 5150  # no gap where A's batch died

        rows = all_rows(to_b, session_id, "shared")
        assert [r["index"] for r in rows] == list(range(5151))
        assert [(r["data"]["seq"], r["data"]["i"]) for r in rows] == (
            [(s, i) for s in (1, 2, 3) for i in range(50)] + [(4, i) for i in range(5000)] + [(5, 0)])
        logs = to_b.get(f"/sessions/{session_id}/logs").json()
        assert [r["data"]["message"] for r in logs["data"]] == [f"c {s}" for s in (1, 2, 3, 4, 5)]


def test_rest_calls_on_either_replica_see_one_session(replicas, tmp_path):
    (a, b), key = replicas
    with a.client(key) as to_a, b.client(key) as to_b:
        created = to_a.post("/workspaces/lab/sessions", json={"name": "rest", "tags": ["x"]})
        assert created.status_code == 200, created.text
        sid = created.json()["session"]["id"]
        assert to_b.get(f"/sessions/{sid}").json()["session"]["tags"] == ["x"]
        assert to_a.post(f"/sessions/{sid}/parameters", json={"data": {"opt": {"lr": 0.1}}}).status_code == 200
        assert to_b.get(f"/sessions/{sid}/parameters").json()["data"] == {"opt.lr": 0.1}
        for i, http in enumerate((to_a, to_b, to_a)):
            reply = http.post(f"/sessions/{sid}/tracks/loss/append", json={"data": {"_ts": float(i), "v": i}})
            assert reply.status_code == 200 and reply.json()["startIndex"] == i, reply.text
        payload = bytes(range(256)) * 400
        uploaded = to_a.post(f"/sessions/{sid}/files", files={"file": ("w.bin", payload)}, data={"prefix": "/models"})
        assert uploaded.status_code == 201, uploaded.text
        file_id = uploaded.json()["id"]
        stored = [p for p in (tmp_path / "objects").rglob("w.bin")]  # the bytes are in the object store
        assert len(stored) == 1 and stored[0].read_bytes() == payload and file_id in str(stored[0])
        assert to_b.get(f"/sessions/{sid}/files/{file_id}/download").content == payload
        assert [f["id"] for f in to_b.get(f"/sessions/{sid}/files").json()["files"]] == [file_id]
        assert to_b.delete(f"/sessions/{sid}/files/{file_id}").status_code == 200
        assert to_a.get(f"/sessions/{sid}/files/{file_id}").status_code == 404
        assert not stored[0].exists()
        stats = to_b.get(f"/sessions/{sid}/tracks/loss/stats").json()
        assert (stats["totalDataPoints"], stats["firstTs"], stats["lastTs"]) == (3, 0.0, 2.0)


def test_a_store_that_is_not_postgresql_is_refused_at_start(tmp_path):
    with pytest.raises(RuntimeError, match="--store must be a postgresql:// URL"):
        ServerProcess(tmp_path / "root", "--store", "mysql://127.0.0.1/test")
