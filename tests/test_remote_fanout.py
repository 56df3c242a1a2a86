"""Fan-out (a URL plus a local root): what the remote side refuses or cannot
take yet is never dropped silently and never doubled, in either destination.
Real server processes; the server's refusals come from a fault proxy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dreamlake import Session
from dreamlake.sinks.remote import delivery
from dreamlake.sinks.remote.spool import Spool
from remote_helpers import FaultProxy, free_port, keyed_server, server_rows, start_server, wait_for
from server_process import make_key


@pytest.fixture
def server(tmp_path):
    yield from keyed_server(tmp_path)


def local_rows(root: Path, name: str, track: str = "t") -> list:
    with Session(prefix=f"ws/{name}", root=root) as session:  # re-open to read what is stored
        return [e["data"]["i"] for e in session.track(track).read(0, 100_000)["data"]]


def test_rows_the_remote_cannot_take_wait_in_the_writer_and_reach_both_once(tmp_path, monkeypatch):
    """Server down, spool budget used up, remote memory full: the fan-out
    refuses rows whole *before* the local store writes them, so the writer
    keeps them (counted, visible) and writes both once the server is back."""
    server_root = tmp_path / "server"
    server_root.mkdir()
    key = make_key(server_root, workspaces=("ws",))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("DREAMLAKE_SPOOL_BUDGET", "0")
    monkeypatch.setattr(delivery, "MEMORY_MAX_BYTES", 1)  # one batch waiting fills the remote's memory
    root = tmp_path / "local"
    session = Session(prefix="ws/fan", root=root, url=url, api_key=key).open()
    track = session.track("t")
    for i in range(100):
        track.append(i=i)
    session.flush()  # written locally; the remote's batch waits (no server, no spool)
    for i in range(100, 200):
        track.append(i=i)
    health = wait_for(lambda: (h := session.health())["pending_retry_rows"] == 100 and h)
    assert health["secondary_refusals"] >= 1 and health["secondary_lost"] == {}
    assert health["spool_full"] >= 1 and health["lost"] == {"dropped_for_budget": 0, "quarantined": 0, "sink_failing": 0}
    srv = start_server(server_root, port)
    try:
        wait_for(lambda: session.health()["pending_retry_rows"] == 0, timeout=60)
        session.close()
        health = session.health()
        assert health["secondary_backlog_rows"] == 0 and health["secondary_lost"] == {}
        assert [r["i"] for r in server_rows(server_root, "ws", "fan", "t")] == list(range(200))
        assert local_rows(root, "fan") == list(range(200))
    finally:
        srv.stop()


def test_a_batch_the_server_refuses_is_kept_aside_and_counted_the_rest_arrive_once(server, tmp_path):
    """A 4xx on one batch: it can never be applied, so it is not resent; its
    rows are counted (``rows_rejected``) and kept in ``rejected.zst``; every
    other batch arrives once and the local store has every row."""
    with FaultProxy(server.url, lambda n: None) as proxy:
        root = tmp_path / "local"
        session = Session(prefix="ws/refused", root=root, url=proxy.url, api_key=server.key).open()
        track = session.track("t")

        def second_batch(n):  # request 1 is the session's upsert, 2 the first batch
            return (400, {}) if n == 3 else None

        proxy.plan = second_batch
        for step in range(3):
            for i in range(step * 100, (step + 1) * 100):
                track.append(i=i)
            session.flush()
            wait_for(lambda: session.health()["rows_acked"] + session.health()["rows_rejected"] >= (step + 1) * 100)
        session.close()
        health = session.health()
        assert proxy.faults == 1
    assert health["batches_rejected"] == 1 and health["rows_rejected"] == 100
    assert [r["i"] for r in server_rows(server.root, "ws", "refused", "t")] == list(range(100)) + list(range(200, 300))
    assert local_rows(root, "refused") == list(range(300))
    kept = list((root / "ws" / "refused" / ".remote").glob("*/rejected.zst"))
    assert len(kept) == 1 and Spool(str(kept[0]), budget=1 << 40).frames == 1


def test_a_secondary_that_fails_after_the_primary_wrote_gets_the_rows_later_in_order(tmp_path):
    """The layer alone: rows and params a secondary failed to take wait in
    the fan-out's backlog and go first on the next write; what it still
    lacks at close is counted by reason."""
    from dreamlake._local_sink import LocalSink
    from dreamlake.sinks import FanOutSink, MemorySink

    primary, secondary = LocalSink(str(tmp_path / "s")), MemorySink()
    fan = FanOutSink(primary, secondary)
    fan.open({"name": "x"})
    secondary.fail_next = 2  # the rows, then the params
    fan.write_rows("t", False, [{"_ts": 0.0, "i": 0}], [0.0])
    fan.write_params({"lr": 0.1})
    health = fan.health()
    assert health["secondary_backlog_rows"] == 1 and health["secondary_retried"] == {"OSError": 1}
    fan.write_rows("t", False, [{"_ts": 1.0, "i": 1}], [1.0])
    assert [r["i"] for r in secondary.rows("t")] == [0, 1]
    assert secondary.params == {"lr": 0.1} and fan.health()["secondary_backlog_rows"] == 0
    secondary.fail_next = 100  # it never recovers
    fan.write_rows("t", False, [{"_ts": 2.0, "i": 2}, {"_ts": 3.0, "i": 3}], [2.0, 3.0])
    fan.record_losses({"dropped_for_budget": 1})  # the writer's, at close
    fan.close("completed", None)
    assert fan.health()["secondary_lost"] == {"OSError": 2}
    assert [e["data"]["i"] for e in primary.store.read("t", False, 0, 10)["data"]] == [0, 1, 2, 3]
    stored = json.loads((tmp_path / "s" / "session.json").read_text())
    assert stored["status"] == "completed" and stored["lost"] == {"dropped_for_budget": 1, "secondary_OSError": 2}


def test_a_batch_is_sealed_by_its_bytes_when_a_streams_rows_grow(tmp_path):
    """The batch byte limit counts with the largest row seen, not the first:
    a stream whose rows grow (small scalars, then big arrays) never makes a
    batch the server would refuse as too large."""
    from dreamlake.sinks import RemoteSink, RemoteTarget
    from dreamlake.sinks.remote.config import BATCH_MAX_BYTES

    sink = RemoteSink(RemoteTarget(f"http://127.0.0.1:{free_port()}", "ws", "grow", "k"), str(tmp_path / "s"))
    sink.open({"name": "grow"})
    sink.write_rows("t", False, [{"_ts": 0.0, "v": 1}], [0.0])
    big = [0.5] * (BATCH_MAX_BYTES // 9 // 20)  # a row of about a twentieth of the limit
    for i in range(25):
        sink.write_rows("t", False, [{"_ts": 1.0 + i, "v": big}], [1.0 + i])
    assert sink._delivery.sealed_upto >= 1
    sink.close("completed", None)
