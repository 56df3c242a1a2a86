"""Remote mode against a server's limits: a request the server timed out
(408) is retried, a batch refused as too large (413) is split in halves and
every row arrives exactly once; a single row too large for the server is kept
in rejected.zst and counted."""

from __future__ import annotations

import glob
from pathlib import Path
import secrets

import pytest

from dreamlake import Session
from dreamlake.sinks.remote.spool import Spool
from dreamlake.sinks.remote.encoder import rows_in_body
from remote_helpers import FaultProxy, free_port, keyed_server, server_rows, start_server
from server_process import make_key


@pytest.fixture
def server(tmp_path):
    yield from keyed_server(tmp_path)


@pytest.fixture
def small_server(tmp_path):
    """A server that refuses batches over 40 kB decompressed."""
    root = tmp_path / "server"
    root.mkdir()
    key = make_key(root, workspaces=("ws",))
    srv = start_server(root, free_port(), "--max-batch-mb", "0.04")
    srv.key = key
    yield srv
    srv.stop()


def _through_faults(srv, name: str, plan, rows) -> tuple[dict, int]:
    """Log ``rows`` to track ``t`` of ``ws/name`` through a FaultProxy; the
    health after close (every batch delivered) and the faults injected."""
    with FaultProxy(srv.url, plan) as proxy:
        with Session(prefix=f"ws/{name}", url=proxy.url, api_key=srv.key) as session:
            track = session.track("t")
            for row in rows:
                track.append(**row)
        return session.health(), proxy.faults


def test_a_408_is_retried_not_quarantined(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    health, faults = _through_faults(server, "slow", lambda n: (408, {}) if n in (2, 3) else None,
                                     ({"i": i} for i in range(1000)))
    assert faults == 2
    assert health["batches_rejected"] == 0 and health["rows_rejected"] == 0, health
    assert health["retries"] == 2 and health["spooled_batches"] == 0
    assert glob.glob(str(tmp_path / "**" / "rejected.zst"), recursive=True, include_hidden=True) == []
    assert [r["i"] for r in server_rows(server.root, "ws", "slow", "t")] == list(range(1000))


def _payload(i: int) -> dict:
    return {"i": i, "blob": secrets.token_hex(40)}  # incompressible: 80 chars


def test_a_batch_too_large_is_split_and_arrives_once(small_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Session(prefix="ws/big", url=small_server.url, api_key=small_server.key) as session:
        track = session.track("t")
        for i in range(3000):
            track.append(**_payload(i))
        session.flush()
        health = session.health()
    assert health["batches_split"] >= 1, health
    assert health["rows_rejected"] == 0 and health["spooled_batches"] == 0, health
    assert [r["i"] for r in server_rows(small_server.root, "ws", "big", "t")] == list(range(3000))


def test_a_split_interrupted_by_a_500_is_resent_and_applied_once(small_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # request 1 is the session upsert, 2 the whole batch (413), then pieces: fail some midway
    health, faults = _through_faults(small_server, "resplit", lambda n: (500, {}) if n in (6, 9) else None,
                                     (_payload(i) for i in range(3000)))
    assert faults == 2
    assert health["retries"] == 2 and health["duplicates"] >= 1, health
    assert [r["i"] for r in server_rows(small_server.root, "ws", "resplit", "t")] == list(range(3000))


def test_one_row_too_large_is_rejected_counted_and_kept_the_rest_arrive(small_server, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with Session(prefix="ws/huge", url=small_server.url, api_key=small_server.key) as session:
        track = session.track("t")
        for i in range(600):
            track.append(**(_payload(i) if i != 300 else {"i": i, "blob": secrets.token_hex(40_000)}))
        session.flush()
        health = session.health()
    assert health["rows_too_large"] == 1 and health["rows_rejected"] == 1, health
    assert health["batches_split"] >= 1 and health["spooled_batches"] == 0
    assert "too large" in caplog.text
    assert [r["i"] for r in server_rows(small_server.root, "ws", "huge", "t")] == [i for i in range(600) if i != 300]
    [kept] = glob.glob(str(tmp_path / "**" / "rejected.zst"), recursive=True, include_hidden=True)
    spool = Spool(kept, budget=1 << 62)
    _seq, body = spool.peek()
    assert spool.frames == 1 and rows_in_body(body) == 1


def test_the_slot_state_is_saved_by_two_threads_at_once_without_losing_a_reservation(tmp_path):
    """The writer reserves sequence numbers while the sender records what the
    server acknowledged: both save state.json, and neither may fail or leave
    an older reservation on disk."""
    import json
    import threading

    from dreamlake.sinks.remote.spool import acquire_new_slot

    slot = acquire_new_slot(str(tmp_path), {}, owner=True)
    errors: list[BaseException] = []
    stop = threading.Event()

    def acker():
        try:
            seq = 0
            while not stop.is_set():
                seq += 1
                slot.set_acked(seq)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=acker)
    thread.start()
    try:
        last = 0
        for _ in range(20):
            for _ in range(1000):  # one reservation (a synced save) per SEQ_BLOCK numbers
                last = slot.next_seq()
    finally:
        stop.set()
        thread.join()
    assert errors == []
    on_disk = json.loads((Path(slot.directory) / "state.json").read_text())
    assert on_disk["reserved"] >= last
