"""The agent forwards remote sessions: real ``dreamlake-server`` processes, a
real ``dreamlake-agent`` and real client processes. Several processes through
one agent (every row once, read back through the server's REST API), the
server down mid-run (the agent's spool replays), a bad key in the client's
health(), and ``kill -9`` of the agent with a non-empty spool (the client's
fallback or ``dreamlake sync`` delivers it once).

Synchronisation is by ready-lines on the children's stdout and bounded polls.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import sys
from pathlib import Path

import pytest

from dreamlake.sinks.remote import RemoteTarget
from dreamlake.sinks.remote.service import IngestService, RemoteStore
from remote_helpers import free_port, start_server, wait_for
from server_process import make_key
from test_agent_processes import REPO, agents, client, expect_line  # noqa: F401 (agents: fixture)


class Remote:
    """A keyed server on a fixed port (so it can come back at the same URL)."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "server"
        self.root.mkdir()
        self.key = make_key(self.root, workspaces=("ws",))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        self.proc = start_server(self.root, self.port)
        return self

    def stop(self, sig=signal.SIGTERM):
        if self.proc is not None:
            self.proc.stop(sig) if sig == signal.SIGTERM else self.proc.kill()
            self.proc = None


@pytest.fixture
def remote(tmp_path):
    server = Remote(tmp_path).start()
    yield server
    server.stop()


def rest_rows(remote: Remote, name: str, track: str = "t") -> list[dict]:
    """Every row of a track, read through the server's REST API."""
    target = RemoteTarget(remote.url, "ws", name, remote.key)
    session_id = IngestService(target).upsert({})["id"]
    store = RemoteStore(target, lambda: session_id)
    rows, start = [], 0
    while True:
        page = store.read(track, False, start, 1000)
        rows.extend(entry["data"] for entry in page["data"])
        if not page["hasMore"]:
            return rows
        start = page["endIndex"] + 1


def slot_owners(session_dir: Path) -> set[int]:
    """Pids recorded in a session's client slots (who sent from it)."""
    slots = session_dir / ".remote"
    return {json.loads((d / "state.json").read_text())["pid"] for d in slots.iterdir() if (d / "state.json").exists()}


WRITER = """
    import sys
    from dreamlake import Session
    address, url, key, prefix, tag, n = sys.argv[1:7]
    n = int(n)
    session = Session(prefix=prefix, url=url, api_key=key, agent=address).open()
    assert type(session._pipe.sink).__name__ == "AgentSink"
    print("READY", flush=True)
    sys.stdin.readline()
    track = session.track("t")
    base = "abc".index(tag) * 1e6  # distinct _ts: equal ones from two processes would merge
    for i in range(n):
        track.append(_ts=base + i, tag=tag, i=i)
    session.params.set(**{tag: n})
    window = track.flush()
    health = session.health()
    print("FLUSHED", window["count"], health["mode"], health["delivery"], health["client"], flush=True)
    if prefix.endswith("solo"):  # reads and files of an agent session go to the server too
        assert track.read(0, 5)["total"] == n, track.read(0, 5)
        assert session.params.get()[tag] == n
        with open(sys.argv[7], "w") as out:
            out.write("weights")
        entry = session.files.upload(sys.argv[7], path="/models")
        assert [f["id"] for f in session.files.list()] == [entry["id"]]
    session.close()
    print("DONE", flush=True)
"""


def test_several_processes_log_remote_sessions_through_one_agent_exactly_once(agents, remote, tmp_path):
    agent = agents.start()
    env = {"DREAMLAKE_ROOT": str(tmp_path / "client")}
    n = 3000
    jobs = [("ws/shared", "a"), ("ws/shared", "b"), ("ws/solo", "c")]
    procs = [
        client(WRITER, agents.address, remote.url, remote.key, prefix, tag, n, tmp_path / f"{tag}.bin", env=env)
        for prefix, tag in jobs
    ]
    for proc in procs:
        expect_line(proc, "READY")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    senders, counts = [], []
    for proc in procs:
        count, mode, delivery, sender = expect_line(proc, "FLUSHED").split()
        assert (mode, delivery) == ("agent", "ok")
        senders.append(sender)
        counts.append(int(count))
        expect_line(proc, "DONE")
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    # one client slot per session, in the agent, shared by the session's processes
    assert senders[0] == senders[1] != senders[2]
    # flush windows are the session's: together the two shared clients' cover every row once
    assert counts[0] + counts[1] == 2 * n and counts[2] == n
    shared = rest_rows(remote, "shared")
    assert len(shared) == 2 * n
    for tag in "ab":
        assert [r["i"] for r in shared if r["tag"] == tag] == list(range(n))
    assert [r["i"] for r in rest_rows(remote, "solo")] == list(range(n))
    # the agent sent (its slots, if any are left), not the clients; the key is in no file
    for name in ("shared", "solo"):
        session_dir = tmp_path / "client" / "ws" / name
        assert not (session_dir / ".remote").exists() or slot_owners(session_dir) <= {agent.pid}
        for path in session_dir.rglob("*"):
            if path.is_file():
                assert remote.key not in path.read_text(errors="replace"), path
    assert remote.key not in agents.log_text()


OUTAGE = """
    import sys
    from dreamlake import Session
    address, url, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    session = Session(prefix="ws/outage", url=url, api_key=key, agent=address).open()
    track = session.track("t")
    for step in range(3):
        sys.stdin.readline()
        for i in range(step * n, (step + 1) * n):
            track.append(i=i)
        track.flush()  # delivered, or safe in the agent's spool
        health = session.health()
        print("STEP", health["mode"], health["delivery"], health["spooled_batches"], flush=True)
    session.close()
    print("DONE", flush=True)
"""


def test_the_server_down_mid_run_the_agents_spool_replays_exactly_once(agents, remote, tmp_path):
    agents.start()
    n = 2000
    proc = client(OUTAGE, agents.address, remote.url, remote.key, n, env={"DREAMLAKE_ROOT": str(tmp_path / "client")})

    def step():
        proc.stdin.write("go\n")
        proc.stdin.flush()
        return expect_line(proc, "STEP").split()

    assert step() == ["agent", "ok", "0"]
    remote.stop(signal.SIGKILL)  # down hard, mid-run
    mode, delivery, spooled = step()
    assert mode == "agent" and delivery != "ok" and int(spooled) >= 1
    remote.start()  # back at the same URL
    assert step()[0] == "agent"
    expect_line(proc, "DONE")
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert [r["i"] for r in rest_rows(remote, "outage")] == list(range(3 * n))


BAD_KEY = """
    import sys
    from dreamlake import Session
    address, url = sys.argv[1], sys.argv[2]
    with Session(prefix="ws/badkey", url=url, api_key="dlk_not-a-key", agent=address) as session:
        session.track("t").append(v=1)
        session.track("t").flush()  # refused: kept in the agent's spool
        health = session.health()
        print("HEALTH", health["mode"], health["auth_failed"], health["delivery"], flush=True)
        sys.stdin.readline()
"""


def test_a_bad_api_key_surfaces_in_the_clients_health(agents, remote, tmp_path):
    agents.start()
    proc = client(BAD_KEY, agents.address, remote.url, env={"DREAMLAKE_ROOT": str(tmp_path / "client")})
    assert expect_line(proc, "HEALTH").split() == ["agent", "True", "auth_failed"]
    status = subprocess.run([sys.executable, "-m", "dreamlake_agent", "status", "--socket", agents.sock],
                            capture_output=True, text=True, cwd=REPO, timeout=30)
    assert f"to {remote.url}: auth_failed" in status.stdout, status.stdout + status.stderr
    proc.stdin.write("done\n")
    proc.stdin.flush()
    assert proc.wait(timeout=30) == 0, proc.stderr.read()
    assert "dlk_not-a-key" not in agents.log_text()


SPOOLED = """
    import sys
    from dreamlake import Session
    address, url, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    session = Session(prefix="ws/crash", url=url, api_key=key, agent=address).open()
    track = session.track("t")
    for i in range(n):
        track.append(i=i)
    track.flush()  # the server is down: safe in the agent's spool
    print("SPOOLED", session.health()["spooled_batches"], flush=True)
    sys.stdin.readline()  # the agent is killed meanwhile; the server comes back
    for i in range(n, 2 * n):
        track.append(i=i)
    session.close()
    health = session.health()
    print("CLOSED", health["mode"], flush=True)
"""


@pytest.mark.parametrize("then", ["fallback", "sync", "clean stop"])
def test_kill9_of_the_agent_with_a_spool_then_delivered_exactly_once(agents, remote, tmp_path, then):
    """The agent acknowledged a flush while the server was down (its spool holds
    the rows), then dies by kill -9. Either the client goes on by itself (its
    fallback adopts the agent's client slot and replays the spool first), or
    the client dies too and ``dreamlake sync`` delivers the spool. A clean stop
    (SIGTERM) leaves the same spool behind, and the client goes on the same way."""
    agent = agents.start()
    remote.stop(signal.SIGKILL)
    n = 1500
    client_root = tmp_path / "client"
    proc = client(SPOOLED, agents.address, remote.url, remote.key, n, env={"DREAMLAKE_ROOT": str(client_root)})
    assert int(expect_line(proc, "SPOOLED")) >= 1
    os.kill(agent.pid, signal.SIGTERM if then == "clean stop" else signal.SIGKILL)
    agent.wait(timeout=30)
    remote.start()
    if then in ("fallback", "clean stop"):
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert expect_line(proc, "CLOSED") == "local-fallback"
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        expected = list(range(2 * n))
    else:
        proc.kill()
        proc.wait(timeout=10)
        for _ in range(2):  # the second run is a no-op
            done = subprocess.run(
                [sys.executable, "-m", "dreamlake", "sync", str(client_root), "--url", remote.url,
                 "--api-key", remote.key, "-q"],
                capture_output=True, text=True, cwd=REPO, timeout=120,
            )
            assert done.returncode == 0, done.stdout + done.stderr
        expected = list(range(n))
    wait_for(lambda: len(rest_rows(remote, "crash")) >= len(expected), timeout=30)
    assert [r["i"] for r in rest_rows(remote, "crash")] == expected


def test_sessions_sending_to_one_server_share_one_sender_thread(remote, tmp_path, monkeypatch):
    """What lets the agent send every session of the machine from one thread
    and one connection pool per server: the sender belongs to the URL."""
    from dreamlake import Session

    monkeypatch.setenv("DREAMLAKE_ROOT", str(tmp_path / "client"))

    def senders():
        return {t.ident for t in threading.enumerate() if t.name == "dreamlake-sender"}

    before = senders()
    sessions = [Session(prefix=f"ws/turn{i}", url=remote.url, api_key=remote.key).open() for i in range(3)]
    for step in range(2000):
        for session in sessions:
            session.track("t").append(i=step)
    for session in sessions:
        assert session.track("t").flush()["count"] == 2000
    assert len({session._pipe.sink._delivery._sender for session in sessions}) == 1
    assert len(senders() - before) <= 1
    for session in sessions:
        session.close()
    for i in range(3):
        assert [r["i"] for r in rest_rows(remote, f"turn{i}")] == list(range(2000))


def test_a_bad_remote_map_is_refused_at_open_without_echoing_the_key(agents, tmp_path):
    from dreamlake._agent_link import connect
    from dreamlake._protocol import Open

    agents.start()
    connection, _ = connect(agents.sock)
    secret = "dlk_secret-value"
    good = {"url": "http://127.0.0.1:9", "apiKey": secret, "mode": "remote", "workspace": "ws", "name": "r"}
    bad = [
        {**good, "token": "x"},  # unknown key
        {**good, "url": "ftp://host"},
        {**good, "apiKey": 7},
        {**good, "mode": "local"},
        {**good, "url": None},  # remote without a url
        {**good, "workspace": "../up"},
        {**good, "localRoot": "yes"},
    ]
    for seq, remote in enumerate(bad, 1):
        with pytest.raises((ValueError, TypeError)) as caught:
            connection.request(lambda s: Open(s, str(tmp_path / "ws" / "r"), {"name": "r"}, remote))
        assert secret not in str(caught.value)
    # the connection stays usable; a session the agent serves locally keeps its destination
    directory = str(tmp_path / "ws" / "l")
    connection.request(lambda s: Open(s, directory, {"name": "l"}))
    other, _ = connect(agents.sock)
    with pytest.raises(ValueError, match="already open here, locally"):
        other.request(lambda s: Open(s, directory, {"name": "l"}, good))
    other.close()
    connection.close()
    assert secret not in agents.log_text()


FORKING = """
    import os, sys
    from dreamlake import Session
    address, url, key = sys.argv[1:4]
    session = Session(prefix="ws/fork", url=url, api_key=key, agent=address).open()
    session.track("t").append(_ts=0.5, who="parent", i=0)
    children = []
    for k in range(2):
        pid = os.fork()
        if pid == 0:  # joins the parent's session in the agent; exits normally (atexit flushes)
            for i in range(500):
                session.track("t").append(_ts=1000.0 * (k + 1) + i, who=f"child{k}", i=i)
            raise SystemExit(0)
        children.append(pid)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    session.track("t").append(_ts=5000.0, who="parent", i=1)
    health = session.health()
    session.close()
    print("DONE", health["mode"], flush=True)
"""


def test_forked_children_of_a_remote_agent_session_send_through_the_agent(agents, remote, tmp_path):
    agents.start()
    proc = client(FORKING, agents.address, remote.url, remote.key, env={"DREAMLAKE_ROOT": str(tmp_path / "client")})
    assert expect_line(proc, "DONE") == "agent"
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    rows = rest_rows(remote, "fork")
    for who, count in (("parent", 2), ("child0", 500), ("child1", 500)):
        assert [r["i"] for r in rows if r["who"] == who] == list(range(count)), who
    assert len(rows) == 1002
