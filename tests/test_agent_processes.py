"""Agent mode with real processes: a real ``dreamlake-agent`` and real client
processes. Many writers into one session, ``kill -9`` of a client, the agent
killed or stopped under a live client, an agent restart, garbage on the
socket, socket permissions, ``agent="auto"`` races, fork, the CLI, and the
user-doc examples running in agent mode.

Synchronisation is by ready-lines on the children's stdout and bounded polls
with deadlines; never by sleeping for a guessed duration.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from dreamlake_agent.__main__ import running_pid
from dreamlake import Session
from dreamlake._agent_link import AgentSink, connect
from dreamlake._local_sink import read_page, stream_files

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent


def wait_until(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def connectable(path):
    try:
        connection, _ = connect(path, timeout=1.0)
    except Exception:
        return False
    connection.close()
    return True


def read_all(sdir, track):
    return read_page(stream_files(str(sdir), track), 0, 1_000_000)


def meta(sdir):
    return json.loads((Path(sdir) / "session.json").read_text())


class Agents:
    """Agent processes on one private socket; all stopped at teardown."""

    def __init__(self, sockdir, root):
        self.sockdir = sockdir
        self.sock = os.path.join(sockdir, "a.sock")
        self.address = "unix://" + self.sock
        self.root = root
        self.log = os.path.join(sockdir, "agent.log")
        self.procs = []

    def start(self, *extra):
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                [PY, "-m", "dreamlake_agent", "--socket", self.sock, "--root", str(self.root), *extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        self.procs.append(proc)
        wait_until(lambda: proc.poll() is not None or connectable(self.sock), what="agent to listen")
        assert proc.poll() is None, Path(self.log).read_text()
        return proc

    def log_text(self):
        return Path(self.log).read_text()

    def stop_all(self):
        pids = [p.pid for p in self.procs if p.poll() is None]
        auto = running_pid(self.sock)
        if auto and auto > 0:
            pids.append(auto)
        for pid in set(pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if auto and auto > 0:
            wait_until(lambda: not psutil.pid_exists(auto) or psutil.Process(auto).status() == "zombie", what="auto agent exit")


@pytest.fixture
def agents(tmp_path):
    sockdir = tempfile.mkdtemp(dir="/tmp", prefix="dla-")  # short: AF_UNIX paths are limited
    pool = Agents(sockdir, tmp_path / "root")
    yield pool
    pool.stop_all()
    shutil.rmtree(sockdir, ignore_errors=True)


def client(code, *args, env=None):
    """A Python client process running ``code`` (dedented), stdin/stdout as pipes."""
    full_env = dict(os.environ)
    full_env.pop("DREAMLAKE_AGENT", None)
    full_env.update(env or {})
    return subprocess.Popen(
        [PY, "-c", textwrap.dedent(code), *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=full_env,
    )


def expect_line(proc, prefix):
    line = proc.stdout.readline()
    if not line.startswith(prefix):
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"expected {prefix!r}, got {line!r}\n{out}\n{err}")
    return line[len(prefix) :].strip()


WRITER = """
    import sys
    from dreamlake import Session
    address, root, rank, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    session = Session(prefix="ws/shared", root=root, agent=address).open()
    assert type(session._pipe.sink).__name__ == "AgentSink"
    print("READY", flush=True)
    sys.stdin.readline()
    track = session.track("t")
    for i in range(n):
        track.append(_ts=rank * 1e6 + i, rank=rank, i=i)
    session.track("m").append(_ts=1000.0, **{f"f{rank}": rank})
    session.close()
    print("DONE", flush=True)
"""


def test_many_processes_one_session_consecutive_indices_and_merged_rows(agents, tmp_path):
    agents.start("--merge-window", "30")
    ranks, n = 4, 2000
    procs = [client(WRITER, agents.address, agents.root, rank, n) for rank in range(ranks)]
    for proc in procs:
        expect_line(proc, "READY")
    for proc in procs:  # all at once: their rows interleave in the agent
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        expect_line(proc, "DONE")
        assert proc.wait(timeout=15) == 0
    sdir = agents.root / "ws" / "shared"
    page = read_all(sdir, "t")
    assert page["total"] == ranks * n
    assert [row["index"] for row in page["data"]] == list(range(ranks * n))
    for rank in range(ranks):
        assert [r["data"]["i"] for r in page["data"] if r["data"]["rank"] == rank] == list(range(n))
    (merged,) = read_all(sdir, "m")["data"]
    assert merged["data"] == {"_ts": 1000.0, "f0": 0, "f1": 1, "f2": 2, "f3": 3}
    info = meta(sdir)
    assert info["status"] == "completed" and info["opens"] == ranks


KILLED = """
    import sys, time
    from dreamlake import Session
    address, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    session = Session(prefix="ws/killed", root=root, agent=address).open()
    track = session.track("t")
    for i in range(n):
        track.append(_ts=float(i), v=i)
    session.log("about to be killed")
    deadline = time.monotonic() + 20
    while session.health()["rows_written"] < n + 1 and time.monotonic() < deadline:
        time.sleep(0.005)  # until the writer has handed every row to the agent
    print("SENT", session.health()["rows_written"], flush=True)
    time.sleep(60)
"""


def test_kill9_of_a_client_loses_nothing_the_agent_received_and_marks_interrupted(agents):
    agents.start()
    n = 5000
    proc = client(KILLED, agents.address, agents.root, n)
    assert expect_line(proc, "SENT") == str(n + 1)
    proc.kill()
    proc.wait(timeout=10)
    sdir = agents.root / "ws" / "killed"
    wait_until(lambda: meta(sdir)["status"] == "interrupted", what="session marked interrupted")
    page = read_all(sdir, "t")
    assert [row["data"]["v"] for row in page["data"]] == list(range(n))
    assert "went away without closing" in (meta(sdir)["error"] or "")
    assert [e["data"]["message"] for e in read_page(stream_files(str(sdir), "", True), 0, 10)["data"]] == [
        "about to be killed"
    ]


SURVIVOR = """
    import json, sys, time
    from dreamlake import Session
    address, root = sys.argv[1], sys.argv[2]
    session = Session(prefix="ws/survivor", root=root, agent=address).open()
    track = session.track("t")
    for i in range(1000):
        track.append(_ts=float(i), v=i)
    if sys.argv[3] == "flush":
        track.flush()
    else:
        while session.health()["rows_written"] < 1000:
            time.sleep(0.005)
    print("READY", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    for i in range(1000, 1500):
        track.append(_ts=float(i), v=i)
    window = track.flush()
    took = time.perf_counter() - started
    total = track.read(start_index=0, limit=1)["total"]
    session.close()
    print("RESULT", json.dumps({"window": window, "total": total, "took": took}), flush=True)
"""


@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_client_outlives_its_agent_and_writes_itself_with_one_warning(agents, how):
    agent = agents.start()
    proc = client(SURVIVOR, agents.address, agents.root, "flush" if how == "kill9" else "sent")
    expect_line(proc, "READY")
    sdir = agents.root / "ws" / "survivor"
    if how == "kill9":
        agent.kill()
    else:
        agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=15) in (0, -signal.SIGKILL)
    # what the agent received is on disk (sigterm: received but never flushed by the client)
    assert read_all(sdir, "t")["total"] == 1000
    proc.stdin.write("go\n")
    proc.stdin.flush()
    result = json.loads(expect_line(proc, "RESULT"))
    assert proc.wait(timeout=15) == 0
    stderr = proc.stderr.read()
    assert stderr.count("lost the dreamlake-agent") == 1, stderr
    assert result["total"] == 1500
    assert (result["window"]["startIndex"], result["window"]["endIndex"], result["window"]["count"]) == (1000, 1499, 500)
    assert result["took"] < 10
    page = read_all(sdir, "t")
    assert [row["data"]["v"] for row in page["data"]] == list(range(1500))
    assert meta(sdir)["status"] == "completed" and meta(sdir)["pid"] == proc.pid

    # a restarted agent serves new sessions again, and the session continues its indices
    new_agent = agents.start()
    with Session(prefix="ws/survivor", root=agents.root, agent=agents.address) as session:
        assert isinstance(session._pipe.sink, AgentSink)
        session.track("t").append_batch([{"_ts": 2000.0 + i, "v": 1500 + i} for i in range(10)])
        assert session.track("t").flush()["endIndex"] == 1509
        assert meta(sdir)["pid"] == new_agent.pid
    assert meta(sdir)["status"] == "completed"


def test_garbage_on_the_socket_closes_that_connection_and_the_agent_serves_on(agents):
    agents.start()
    with Session(prefix="ws/bystander", root=agents.root, agent=agents.address) as session:
        track = session.track("t")
        track.append(v=1)
        for garbage in (b"\xff\xff\xff\xff", b"\x00\x00\x00\x03\xc1\xc1\xc1", b"\x00\x00\x00\x09abc"):
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            raw.settimeout(10)
            raw.connect(agents.sock)
            raw.sendall(garbage)
            raw.shutdown(socket.SHUT_WR)
            while raw.recv(4096):  # the agent answers with an error frame at most, then closes
                pass
            raw.close()
            track.append(v=2)
            assert track.read()["total"] == track.stats()["totalDataPoints"]
        assert track.flush()["endIndex"] == 3
    assert agents.log_text().count("closing connection") == 3
    assert agents.log_text().count("ended inside a frame") == 1
    status = subprocess.run(
        [PY, "-m", "dreamlake_agent", "status", "--json", "--socket", agents.sock], capture_output=True, text=True, cwd=REPO
    )
    assert status.returncode == 0 and json.loads(status.stdout)["protocolErrors"] == 3


def test_socket_is_0600_even_in_a_0755_dir(agents, tmp_path):
    agents.start()
    assert stat.S_IMODE(os.stat(agents.sock).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(agents.sock + ".lock").st_mode) == 0o600
    shared = tempfile.mkdtemp(dir="/tmp", prefix="dls-")
    path = os.path.join(shared, "a.sock")
    try:
        os.chmod(shared, 0o755)
        with open(os.path.join(shared, "agent.log"), "ab") as log:
            proc = subprocess.Popen([PY, "-m", "dreamlake_agent", "--socket", path], stdout=log, stderr=log, cwd=REPO)
        try:
            wait_until(lambda: proc.poll() is not None or connectable(path), what="agent in a 0755 dir")
            assert proc.poll() is None, Path(shared, "agent.log").read_text()
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert sorted(os.listdir(shared)) == ["a.sock", "a.sock.lock", "agent.log"]  # no staging dir left
        finally:
            proc.terminate()
            assert proc.wait(timeout=15) == 0
        assert not os.path.exists(path)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a socket owned by another user")
def test_a_socket_of_another_user_is_not_used(tmp_path):
    sockdir = tempfile.mkdtemp(dir="/tmp", prefix="dlo-")
    try:
        path = os.path.join(sockdir, "a.sock")
        impostor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        impostor.bind(path)
        impostor.listen()
        os.chown(path, 65534, 65534)
        code = """
            import sys
            from dreamlake import Session
            with Session(prefix="ws/own", root=sys.argv[2], agent=sys.argv[1]) as s:
                print("SINK", type(s._pipe.sink).__name__, flush=True)
                s.track("t").append(v=1)
        """
        proc = client(code, "unix://" + path, tmp_path)
        assert expect_line(proc, "SINK") == "LocalSink"
        assert proc.wait(timeout=15) == 0
        assert "belongs to uid 65534" in proc.stderr.read()
        assert read_all(tmp_path / "ws" / "own", "t")["total"] == 1
        impostor.close()
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_no_agent_means_local_writing_with_one_warning(tmp_path):
    code = """
        import sys
        from dreamlake import Session
        for name in ("a", "b"):
            with Session(prefix="ws/" + name, root=sys.argv[1]) as s:
                s.track("t").append(v=1)
        print("OK", flush=True)
    """
    proc = client(code, tmp_path, env={"DREAMLAKE_AGENT": "unix:///tmp/dreamlake-no-such-dir/a.sock"})
    expect_line(proc, "OK")
    assert proc.wait(timeout=15) == 0
    assert proc.stderr.read().count("no dreamlake-agent at") == 1
    assert read_all(tmp_path / "ws" / "b", "t")["total"] == 1


AUTO = """
    import json, sys
    from dreamlake import Session
    address, root, name = sys.argv[1], sys.argv[2], sys.argv[3]
    with Session(prefix="ws/" + name, root=root, agent=address) as s:
        assert type(s._pipe.sink).__name__ == "AgentSink", "not via the agent"
        s.track("t").append_batch([{"v": i} for i in range(10)])
    print("DONE", flush=True)
"""


def test_auto_starts_one_agent_even_when_clients_race_and_cli_status_stop(agents):
    address = "auto+" + agents.address
    procs = [client(AUTO, address, agents.root, f"r{i}") for i in range(2)]
    # plain "auto" uses the default socket, here redirected by DREAMLAKE_AGENT_SOCKET
    procs.append(client(AUTO, "auto", agents.root, "r2", env={"DREAMLAKE_AGENT_SOCKET": agents.sock}))
    for proc in procs:
        expect_line(proc, "DONE")
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
    pid = running_pid(agents.sock)
    assert pid and pid > 0

    def agent_processes():
        found = []
        for p in psutil.process_iter(["pid", "cmdline", "status"]):
            cmdline = p.info["cmdline"] or []
            if agents.sock in cmdline and "dreamlake_agent" in cmdline and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p.info["pid"])
        return found

    wait_until(lambda: agent_processes() == [pid], what="the extra agents to exit")
    for i in range(3):
        assert meta(agents.root / "ws" / f"r{i}")["pid"] == pid
        assert read_all(agents.root / "ws" / f"r{i}", "t")["total"] == 10
    assert psutil.Process(pid).ppid() != os.getpid()  # detached from whoever started it
    status = subprocess.run([PY, "-m", "dreamlake_agent", "status", "--socket", agents.sock], capture_output=True, text=True)
    assert status.returncode == 0 and str(pid) in status.stdout
    second = subprocess.run(
        [PY, "-m", "dreamlake_agent", "--socket", agents.sock], capture_output=True, text=True, timeout=30
    )
    assert second.returncode == 0 and f"already running (pid {pid})" in second.stdout
    stop = subprocess.run([PY, "-m", "dreamlake_agent", "stop", "--socket", agents.sock], capture_output=True, text=True)
    assert stop.returncode == 0, stop.stdout
    assert running_pid(agents.sock) is None and not os.path.exists(agents.sock)
    status = subprocess.run([PY, "-m", "dreamlake_agent", "status", "--socket", agents.sock], capture_output=True, text=True)
    assert status.returncode == 1 and "not running" in status.stdout


FORKING = """
    import os, sys
    from dreamlake import Session
    session = Session(prefix="ws/fork", root=sys.argv[2], agent=sys.argv[1]).open()
    session.track("parent").append(_ts=1.0, v=0)
    children = []
    for k in range(2):
        pid = os.fork()
        if pid == 0:  # the child logs into the parent's session, then exits normally (atexit flushes)
            for i in range(100):
                session.track("child").append(_ts=k * 1000.0 + i, k=k, i=i)
            if k == 1:
                session.tracks.flush()
            raise SystemExit(0)
        children.append(pid)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    session.track("parent").append(_ts=2.0, v=1)
    session.close()
    print("DONE", flush=True)
"""


def test_forked_children_log_through_the_agent_without_interrupting(agents):
    agents.start()
    proc = client(FORKING, agents.address, agents.root)
    expect_line(proc, "DONE")
    assert proc.wait(timeout=20) == 0, proc.stderr.read()
    sdir = agents.root / "ws" / "fork"
    assert read_all(sdir, "parent")["total"] == 2
    children = read_all(sdir, "child")["data"]
    assert sorted((r["data"]["k"], r["data"]["i"]) for r in children) == [(k, i) for k in range(2) for i in range(100)]
    info = meta(sdir)
    assert info["status"] == "completed" and info["opens"] == 1 and info["pid"] != proc.pid


#: The lead's contract suites, run again with every Session going through the
#: agent (DREAMLAKE_AGENT): flush, read, stats, close, params, files, logs and
#: the user-doc examples must behave exactly as in thread mode.
AGENT_MODE_SUITES = ["tests/test_seed_examples.py", "tests/test_tracks_contract.py", "tests/test_session_api.py"]
#: What differs on purpose: a url= session in agent mode goes to the agent, so the
#: "remote sync is not available" warning of the local fallback is not given.
AGENT_MODE_DIFFERENT = ["tests/test_session_api.py::test_url_without_server_keeps_data_locally_and_says_so"]


def test_user_doc_examples_and_contract_suites_pass_in_agent_mode(agents):
    agents.start()
    env = dict(os.environ, DREAMLAKE_AGENT=agents.address)
    deselect = [arg for node in AGENT_MODE_DIFFERENT for arg in ("--deselect", node)]
    run = subprocess.run(
        [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *AGENT_MODE_SUITES, *deselect],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
    assert "lost the dreamlake-agent" not in run.stdout + run.stderr
    status = subprocess.run(
        [PY, "-m", "dreamlake_agent", "status", "--json", "--socket", agents.sock], capture_output=True, text=True
    )
    served = json.loads(status.stdout)
    assert served["opens"] >= 50 and served["protocolErrors"] == 0


def test_a_frozen_agent_does_not_stall_the_client(agents, monkeypatch):
    """An agent that stops reading (SIGSTOP stands in for a hung disk) must not
    stall the client: a blocked send gives up after SEND_TIMEOUT and the session
    writes itself, with everything appended on disk."""
    import dreamlake._agent_link as link
    from dreamlake import Session

    monkeypatch.setattr(link, "SEND_TIMEOUT", 0.5)
    proc = agents.start()
    session = Session(prefix="ws/frozen", root=str(agents.root), agent=agents.address).open()
    try:
        track = session.track("t")
        track.append(i=-1)
        track.flush()  # through the agent
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            payload = "x" * 2000
            with pytest.warns(RuntimeWarning):
                for i in range(2000):  # ~4 MB: more than the socket buffers hold
                    track.append(i=i, pad=payload)
                track.flush()
            rows = track.read(limit=5000)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
    finally:
        session.close()
    assert [p["data"]["i"] for p in rows["data"]] == list(range(-1, 2000))
    proc.send_signal(signal.SIGTERM)  # the agent resumes, drains what it had, exits
    proc.wait(timeout=30)
    on_disk = [p["data"]["i"] for p in read_all(Path(agents.root) / "ws" / "frozen", "t")["data"]]
    assert sorted(on_disk) == list(range(-1, 2000)), "rows lost or written twice"
