"""Closing a remote session never holds the writer on the network.

A server that never answers (``blackhole.Blackhole``) holds a request until
its read timeout. Closing a session that sends there seals its last batch on
the writer thread and waits on the closing thread only; the writer goes on
serving other sessions meanwhile (thread mode: one writer per process; agent
mode: the agent's writer serves every client). What the server never
acknowledged stays in the spool, and ``dreamlake sync`` delivers it once the
server answers, exactly once, with the status the session closed with.

Order is asserted by events: the closing thread's "closed" event must still
be unset when the other session's flush returned.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from blackhole import Blackhole
from dreamlake import Session
from remote_helpers import server_meta, server_rows, wait_for
from test_agent_processes import REPO, agents, client, expect_line  # noqa: F401 (agents: fixture)
from test_agent_remote import Remote


@pytest.fixture
def late(tmp_path):
    """A keyed server root and port; the server starts only when the test says."""
    server = Remote(tmp_path)
    yield server
    server.stop()


def sync_twice(root: Path, key: str) -> list[str]:
    """Run ``dreamlake sync`` twice (the second must be a no-op); their outputs."""
    outputs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "dreamlake", "sync", str(root), "--api-key", key, "-q"],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append(done.stdout + done.stderr)
    return outputs


def slot_states(session_dir: Path) -> list[dict]:
    slots = session_dir / ".remote"
    if not slots.is_dir():
        return []
    return [json.loads((d / "state.json").read_text()) for d in slots.iterdir() if (d / "state.json").exists()]


def test_closing_a_session_whose_server_never_answers_holds_no_other_session(late, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DREAMLAKE_ROOT", str(tmp_path / "client"))
    n = 500
    with Blackhole(late.port) as hole:
        stuck = Session(prefix="ws/stuck", url=late.url, api_key=late.key, timeout=6).open()
        other = Session(prefix="ws/other", root=tmp_path / "local", timeout=4).open()
        for i in range(n):
            stuck.track("t").append(i=i)
        assert hole.requests.wait(10)  # the sender now waits for an answer that never comes
        for i in range(n, 2 * n):
            stuck.track("t").append(i=i)  # the last batch: sealed by close
        closed = threading.Event()
        closer = threading.Thread(target=lambda: (stuck.close(), closed.set()))
        with caplog.at_level(logging.WARNING, logger="dreamlake"):
            closer.start()
            # the writer has taken the close (its queue is empty, the session is closing)
            wait_for(lambda: stuck._state == "closing" and not stuck._pipe.queue, timeout=10)
            for i in range(1000):
                other.track("x").append(i=i)
            other.flush()  # within its 4 s timeout, while the close still waits for the server
            assert not closed.is_set()
            assert other.track("x").read(0, 5)["total"] == 1000
            closer.join(30)
        assert closed.is_set() and stuck.status == "completed"
        other.close()
    assert "dreamlake sync" in caplog.text  # the close said where the rest is
    states = slot_states(tmp_path / "client" / "ws" / "stuck")
    assert [s["close"] for s in states] == [["completed", None]] and not states[0]["closed"]

    late.start()  # the server answers now, at the same URL
    sync_twice(tmp_path / "client", late.key)
    assert [r["i"] for r in server_rows(late.root, "ws", "stuck", "t")] == list(range(2 * n))
    assert server_meta(late.root, "ws", "stuck")["status"] == "completed"
    assert slot_states(tmp_path / "client" / "ws" / "stuck") == []


STUCK_CLIENT = """
    import sys
    from dreamlake import Session
    address, url, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    session = Session(prefix="ws/stuck", url=url, api_key=key, agent=address).open()
    assert type(session._pipe.sink).__name__ == "AgentSink"
    for i in range(n):
        session.track("t").append(i=i)
    print("READY", flush=True)
    sys.stdin.readline()
    for i in range(n, 2 * n):
        session.track("t").append(i=i)
    print(sys.argv[5].upper(), flush=True)
    if sys.argv[5] == "flushing":
        session.flush()  # delivered or spooled: here, once the server fails
        print("FLUSHED", flush=True)
    session.close()
    print("CLOSED", flush=True)
"""

LOCAL_CLIENT = """
    import sys
    from dreamlake import Session
    address, root = sys.argv[1], sys.argv[2]
    session = Session(prefix="ws/local", root=root, agent=address, timeout=4).open()
    assert type(session._pipe.sink).__name__ == "AgentSink"
    print("READY", flush=True)
    sys.stdin.readline()
    track = session.track("x")
    for i in range(1000):
        track.append(i=i)
    track.flush()  # within its 4 s timeout
    print("FLUSHED", track.read(0, 5)["total"], flush=True)
    session.close()
"""


def _go(proc) -> None:
    proc.stdin.write("go\n")
    proc.stdin.flush()


def _still_waiting(proc) -> bool:
    """The process has printed nothing more and is still running."""
    import select

    return proc.poll() is None and not select.select([proc.stdout], [], [], 0)[0]


@pytest.mark.parametrize("what", ["closing", "flushing"])
def test_one_agent_client_waiting_on_a_server_that_never_answers_holds_no_other_client(agents, late, tmp_path, what):
    """Closing (the writer seals, a worker waits) or flushing (the writer
    marks, a worker waits) a remote session whose server never answers, in
    the agent: another client's rows are written meanwhile."""
    agents.start()
    client_root = tmp_path / "client"
    n = 500
    with Blackhole(late.port) as hole:
        stuck = client(STUCK_CLIENT, agents.address, late.url, late.key, n, what, env={"DREAMLAKE_ROOT": str(client_root)})
        other = client(LOCAL_CLIENT, agents.address, tmp_path / "local")
        expect_line(stuck, "READY")
        expect_line(other, "READY")
        assert hole.requests.wait(10)  # the agent's sender waits for an answer that never comes
        _go(stuck)
        expect_line(stuck, what.upper())
        if what == "closing":  # the agent's writer sealed the session: its slot records the status
            wait_for(lambda: any(s.get("close") for s in slot_states(client_root / "ws" / "stuck")), timeout=10)
        _go(other)
        assert expect_line(other, "FLUSHED") == "1000"
        assert _still_waiting(stuck)
        assert other.wait(timeout=30) == 0, other.stderr.read()
    # the server's connections are reset: the stuck client's wait ends, the rest is spooled
    if what == "flushing":
        expect_line(stuck, "FLUSHED")
    expect_line(stuck, "CLOSED")
    assert stuck.wait(timeout=60) == 0, stuck.stderr.read()

    late.start()
    sync_twice(client_root, late.key)
    assert [r["i"] for r in server_rows(late.root, "ws", "stuck", "t")] == list(range(2 * n))
    assert server_meta(late.root, "ws", "stuck")["status"] == "completed"


TWO_SESSIONS = """
    import sys, threading
    from dreamlake import Session
    address, url, key, root = sys.argv[1:5]
    stuck = Session(prefix="ws/stuck", url=url, api_key=key, agent=address).open()
    other = Session(prefix="ws/local", root=root, agent=address, timeout=4).open()
    for i in range(500):
        stuck.track("t").append(i=i)
    print("READY", flush=True)
    sys.stdin.readline()
    closed = threading.Event()
    threading.Thread(target=lambda: (stuck.close(), closed.set())).start()
    print("CLOSING", flush=True)
    sys.stdin.readline()
    for i in range(1000):
        other.track("x").append(i=i)
    other.flush()  # within its 4 s timeout: this process's writer is not waiting for the agent's reply
    print("FLUSHED", closed.is_set(), other.track("x").read(0, 5)["total"], flush=True)
    assert closed.wait(60)
    other.close()
    print("DONE", flush=True)
"""


def test_an_agent_client_closing_a_stuck_session_keeps_writing_its_other_sessions(agents, late, tmp_path):
    """The client's side of the same: ``close`` goes out on the process's
    writer thread and its reply (which the agent sends once it waited for the
    server) is awaited on the closing thread."""
    agents.start()
    client_root = tmp_path / "client"
    with Blackhole(late.port) as hole:
        proc = client(TWO_SESSIONS, agents.address, late.url, late.key, tmp_path / "local",
                      env={"DREAMLAKE_ROOT": str(client_root)})
        expect_line(proc, "READY")
        assert hole.requests.wait(10)
        _go(proc)
        expect_line(proc, "CLOSING")
        wait_for(lambda: any(s.get("close") for s in slot_states(client_root / "ws" / "stuck")), timeout=10)
        _go(proc)
        assert expect_line(proc, "FLUSHED") == "False 1000"
        expect_line(proc, "DONE")
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    late.start()
    sync_twice(client_root, late.key)
    assert [r["i"] for r in server_rows(late.root, "ws", "stuck", "t")] == list(range(500))
    assert server_meta(late.root, "ws", "stuck")["status"] == "completed"


def test_an_answer_that_comes_after_close_gave_up_changes_nothing(tmp_path, monkeypatch):
    """The server applies a batch but answers only after ``close()`` handed
    the slot to the spool: the late answer is ignored (the slot is not the
    sender's any more), the batch stays spooled, and ``dreamlake sync``
    sends it again; the server acknowledges it as a duplicate. Every row once."""
    from remote_helpers import FaultProxy, keyed_server

    servers = keyed_server(tmp_path)
    server = next(servers)
    try:
        monkeypatch.setenv("DREAMLAKE_ROOT", str(tmp_path / "client"))
        held = threading.Event()

        def hold_the_first_batch(n):  # request 1 is the session's upsert, 2 the first batch
            if n == 2:
                proxy.delay = held  # it waits here, before it is forwarded
            return None

        with FaultProxy(server.url, hold_the_first_batch) as proxy:
            session = Session(prefix="ws/late", url=proxy.url, api_key=server.key, timeout=2).open()
            for i in range(300):
                session.track("t").append(i=i)
            wait_for(lambda: proxy.count >= 2)
            session.close()  # gives up after 2 s: everything is spooled
            assert session.health()["spooled_batches"] == 2  # the rows, and the close
            proxy.delay = None
            held.set()  # now the server applies the first batch and answers, too late
            wait_for(lambda: proxy.forwarded >= 2)
            assert proxy.count == 2  # the sender sent nothing after close
            sync_twice(tmp_path / "client", server.key)  # through the proxy: the URL the slot recorded
        assert [r["i"] for r in server_rows(server.root, "ws", "late", "t")] == list(range(300))
        assert server_meta(server.root, "ws", "late")["status"] == "completed"
    finally:
        servers.close()
