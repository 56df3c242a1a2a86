"""A hostile client against a real ``dreamlake-agent`` process, over its real
socket with raw frames (issue 8, points 4 and 6): nothing it sends may escape
the store root, stall the agent, or stop another client's rows; and the agent
starts once, under its own name, and goes away when idle.

Raw frames are sent with the client link's own connection (``connect`` +
``send``/``request``), which is exactly what any other-language client speaks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

import dreamlake._agent_link as link
from dreamlake import Session
from dreamlake._agent_link import AgentSink, UnsendableRows, connect
from dreamlake._config import resolve
from dreamlake._agent_socket import running_pid
from dreamlake._protocol import Call, Close, Err, Join, Open, Params, Rows
from test_agent_processes import PY, REPO, agents, client, expect_line, read_all, wait_until  # noqa: F401 (agents: fixture)


@pytest.fixture(autouse=True)
def short_io_timeout(monkeypatch):
    monkeypatch.setattr(link, "IO_TIMEOUT", 10.0)  # a stalled agent fails the test in seconds, not minutes
    monkeypatch.setattr(link, "_warned", False)  # each test sees the once-per-process warning


def owner(agents, name):
    """A raw connection that opened session ``ws/<name>``."""
    connection, _ = connect(agents.sock)
    connection.request(lambda seq: Open(seq, f"ws/{name}", {"name": name}))
    return connection


def refused(connection, make):
    """The ``err`` reply to a request, as the exception the client raises for it."""
    with pytest.raises(Exception) as caught:
        connection.request(make)
    return caught.value


def agent_status(agents):
    run = subprocess.run([PY, "-m", "dreamlake_agent", "status", "--json", "--socket", agents.sock],
                         capture_output=True, text=True, cwd=REPO, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout)


def closed_by_agent(connection):
    """True once the agent closed this connection (an ``err`` frame may come first)."""
    connection.sock.settimeout(10)
    while True:
        data = connection.sock.recv(1 << 16)
        if not data:
            return True


def test_files_update_cannot_carry_a_storage_path_out_of_the_root(agents, tmp_path):
    """Before: files_update set storagePath '../../../../victim/x' and files_delete
    then removed tmp_path/victim, outside the agent's root."""
    agents.start()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    src = tmp_path / "model.bin"
    src.write_bytes(b"weights")
    connection = owner(agents, "files")
    entry = connection.request(lambda seq: Call(seq, "files_upload", [str(src), "/models", None, [], {}]))
    for changes in ({"storagePath": "../../../../victim/x"}, {"id": "../x"}, {"description": 3}, {"tags": "a"}):
        error = refused(connection, lambda seq: Call(seq, "files_update", [entry["id"], changes]))
        assert isinstance(error, (ValueError, TypeError)), error
    for bad_id in ("..", "../victim", "a/b", 7):
        assert isinstance(refused(connection, lambda seq: Call(seq, "files_delete", [bad_id])), (ValueError, TypeError))
    assert isinstance(refused(connection, lambda seq: Call(seq, "files_update", [entry["id"], {}, "extra"])), TypeError)
    connection.request(lambda seq: Call(seq, "files_update", [entry["id"], {"description": "fine"}]))
    connection.request(lambda seq: Call(seq, "files_delete", [entry["id"]]))
    assert (victim / "precious.txt").read_text() == "keep me"
    assert connection.request(lambda seq: Call(seq, "files_list", [None, None])) == []
    connection.request(lambda seq: Close(seq, "completed"))


def test_uploading_a_fifo_is_refused_and_stalls_no_other_session(agents, tmp_path):
    """Before: the upload opened the FIFO on the writer thread every session shares,
    and every session of the agent stalled."""
    agents.start()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    busy = owner(agents, "busy")
    hostile = owner(agents, "hostile")
    try:
        hostile.send(Call(99, "files_upload", [str(fifo), "/", None, [], {}]))
        for i in range(100):
            busy.send(Rows("t", False, [{"_ts": float(i), "v": i}]))
        busy.request(lambda seq: Call(seq, "flush", [None]))  # would time out behind a blocked writer
        reply = hostile.receive()
        assert isinstance(reply, Err) and reply.seq == 99 and reply.kind == "IsADirectoryError", reply
        assert read_all(agents.root / "ws" / "busy", "t")["total"] == 100
        dev = refused(hostile, lambda seq: Call(seq, "files_upload", ["/dev/zero", "/", None, [], {}]))
        assert isinstance(dev, IsADirectoryError)
        assert isinstance(refused(hostile, lambda seq: Call(seq, "files_download", ["x", str(fifo)])), (ValueError, KeyError))
    finally:
        try:  # if a reader is stuck on the FIFO (the bug), let it go
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        busy.close()
        hostile.close()


def test_a_poison_frame_closes_only_its_connection_and_is_counted(agents):
    """Before: a 10,000-character multi-segment track name (and values the API
    refuses) were queued; the writer failed on them forever and the session's
    other clients stalled behind them."""
    agents.start()
    good = owner(agents, "shared")
    long_name = "/".join(["s" * 200] * 50)
    with Session(prefix="ws/api", root=str(agents.root)) as api, pytest.raises(ValueError):
        api.track(long_name)  # the API's rule, thread mode
    deep = [1]
    for _ in range(40):
        deep = [deep]
    poison = [
        (Rows(long_name, False, [{"_ts": 1.0, "v": 1}]), "rows_refused_bad_track_name"),
        (Rows("/".join(["d"] * 17), False, [{"_ts": 1.0, "v": 1}]), "rows_refused_bad_track_name"),
        (Rows("t", False, [{"_ts": 2.0, "v": 1}, {"_ts": 3.0, "v": b"\x00bytes"}]), "rows_refused_bad_value"),
        (Rows("t", False, [{"_ts": 2.0, "v": deep}]), "rows_refused_bad_value"),
        (Rows("t", False, [{"_ts": True, "v": 1}]), "rows_refused_bad_ts"),
        (Rows("t", False, [{"_ts": float("nan"), "v": 1}]), "rows_refused_bad_ts"),
        (Rows("logs", True, [{"_ts": 1.0, "level": "shout", "message": "x"}]), "rows_refused_bad_log_entry"),
        (Rows("logs", True, [{"_ts": 1.0, "level": "info", "message": 5}]), "rows_refused_bad_log_entry"),
        (Params({"": 1}), "params_refused"),
        (Params({"lr": b"\x01"}), "params_refused"),
    ]
    for i, (frame, _) in enumerate(poison):
        hostile, _ = connect(agents.sock)
        hostile.request(lambda seq: Join(seq, str(agents.root / "ws" / "shared")))
        hostile.send(frame)
        assert closed_by_agent(hostile), frame
        hostile.close()
        good.send(Rows("t", False, [{"_ts": 100.0 + i, "v": i}]))  # the other client goes on
        good.request(lambda seq: Call(seq, "flush", [None]))
    rows = read_all(agents.root / "ws" / "shared", "t")["data"]
    assert [r["data"]["v"] for r in rows] == list(range(len(poison)))  # nothing of any poison frame
    good.request(lambda seq: Close(seq, "completed"))
    good.close()
    losses = agent_status(agents)["losses"]
    expected: dict = {}
    for frame, reason in poison:
        expected[reason] = expected.get(reason, 0) + (len(frame.rows) if isinstance(frame, Rows) else 1)
    assert losses == expected
    text = subprocess.run([PY, "-m", "dreamlake_agent", "status", "--socket", agents.sock],
                          capture_output=True, text=True, cwd=REPO, timeout=30).stdout
    assert "losses: " in text and "rows_refused_bad_track_name 2" in text


def test_open_and_call_fields_are_allow_listed(agents, tmp_path):
    agents.start()
    connection, _ = connect(agents.sock)
    for directory in ("ws/../x", "ws", "a/b/c", "ws/.", "ws/a b#", "/abs/ws/..", "/abs/./ws", "/abs/ws\x00"):
        assert isinstance(refused(connection, lambda seq: Open(seq, directory, {})), (ValueError, TypeError))
    for info in ({"status": "completed"}, {"createdAt": "1970"}, {"tags": b"x"}):
        assert isinstance(refused(connection, lambda seq: Open(seq, "ws/info", info)), (ValueError, TypeError))
    connection.request(lambda seq: Open(seq, "ws/info", {"name": "info", "tags": ["a"]}))
    bad_calls = [
        ("read", ["t", False, -1, 10]),
        ("read", ["t", False, 0, 10, "extra"]),
        ("read", ["../t", False, 0, 10]),
        ("read", ["t", "no", 0, 10]),
        ("read_range", ["t", False, float("inf"), None, 10]),
        ("stats", []),
        ("flush", ["t"]),
        ("list_tracks", [1]),
        ("files_upload", ["relative.txt", "/", None, [], {}]),
        ("files_upload", [str(tmp_path), "/../..", None, [], {}]),
        ("files_download", ["id", "relative"]),
        ("no_such_op", []),
    ]
    for op, args in bad_calls:
        assert isinstance(refused(connection, lambda seq: Call(seq, op, args)), (ValueError, TypeError)), op
    assert connection.request(lambda seq: Call(seq, "list_tracks", [])) == []
    connection.request(lambda seq: Close(seq, "completed"))
    info = json.loads((agents.root / "ws" / "info" / "session.json").read_text())
    assert info["status"] == "completed" and info["tags"] == ["a"]


def test_a_batch_that_cannot_be_encoded_is_refused_whole_before_any_frame_is_sent(agents):
    agents.start()
    connection, _ = connect(agents.sock)
    sink = AgentSink(agents.sock, connection, resolve(prefix="ws/enc", name=None, workspace=None, root=str(agents.root),
                                                      local_path=None, url=None, remote=None, user_name=None,
                                                      api_key=None, session_dir=None, agent=None))
    sink.open({"name": "enc"})
    rows = [{"_ts": float(i), "v": i} for i in range(5000)]  # two frames
    rows[4500]["v"] = 2**70
    with pytest.raises(UnsendableRows):
        sink.write_rows("t", False, rows, [r["_ts"] for r in rows])
    sink.write_rows("t", False, [{"_ts": 1e6, "v": -1}], [1e6])
    sink.flush()
    assert [r["data"]["v"] for r in read_all(agents.root / "ws" / "enc", "t")["data"]] == [-1]
    assert sink.health()["mode"] == "agent"
    sink.close("completed", None)


@pytest.mark.parametrize("stop", ["kill -9", "clean stop"])
def test_health_says_local_fallback_and_counts_rows_lost_with_the_agent(agents, stop):
    """After kill -9 the rows the agent had not read are lost and counted exactly;
    after a clean stop (SIGTERM) it writes all it received and nothing is counted."""
    proc = agents.start()
    session = Session(prefix="ws/lost", root=str(agents.root), agent=agents.address).open()
    sink = session._pipe.sink
    try:
        track = session.track("t")
        for i in range(100):
            track.append(_ts=float(i), v=i)
        track.flush()
        assert sink.health() == {"mode": "agent", "socket": agents.sock, "lost_with_agent": 0,
                                 "unconfirmed_rows": 0, "fallback_reason": None}
        assert session.health()["mode"] == "agent"  # what the user sees
        if stop == "kill -9":
            os.kill(proc.pid, signal.SIGSTOP)  # it reads nothing more from here on
        for i in range(100, 150):
            track.append(_ts=float(i), v=i)
        wait_until(lambda: sink.health()["unconfirmed_rows"] == 50, what="the writer to send 50 rows")
        os.kill(proc.pid, signal.SIGKILL if stop == "kill -9" else signal.SIGTERM)
        proc.wait(timeout=30)
        with pytest.warns(RuntimeWarning, match="lost the dreamlake-agent"):
            track.append(_ts=1000.0, v=1000)
            track.flush()
        health = session.health()
        assert health["mode"] == "local-fallback"
        assert health["lost_with_agent"] == (50 if stop == "kill -9" else 0)
        assert ("stopped cleanly" in health["fallback_reason"]) == (stop == "clean stop")
    finally:
        session.close()
    on_disk = [r["data"]["v"] for r in read_all(agents.root / "ws" / "lost", "t")["data"]]
    written = 100 if stop == "kill -9" else 150  # the missing ones are exactly those counted
    assert on_disk == list(range(written)) + [1000]


RACER = """
    import sys
    from dreamlake._agent_link import _connect_or_start
    connection, info = _connect_or_start(sys.argv[1], True, sys.argv[2])
    print("PID", info["pid"], flush=True)
"""


def test_repeated_auto_races_start_exactly_one_agent(tmp_path):
    """Before: racing clients each spawned an agent; the losers found the lock and
    exited, so two agents were briefly alive (and logged 'already running')."""
    for round_ in range(6):
        sockdir = tempfile.mkdtemp(dir="/tmp", prefix="dlr-")
        path = os.path.join(sockdir, "a.sock")
        try:
            racers = [client(RACER, path, tmp_path / "root") for _ in range(4)]
            pids = {expect_line(proc, "PID") for proc in racers}
            for proc in racers:
                assert proc.wait(timeout=20) == 0
            assert len(pids) == 1, pids
            log = Path(path + ".log").read_text()
            assert log.count("serving") == 1 and "already running" not in log, log
            pid = int(pids.pop())
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: running_pid(path) is None, what="the agent to stop")
        finally:
            shutil.rmtree(sockdir, ignore_errors=True)


def test_a_users_own_agent_package_does_not_hijack_auto(tmp_path):
    fake = tmp_path / "fake"
    (fake / "agent").mkdir(parents=True)
    (fake / "agent" / "__init__.py").write_text("raise SystemExit('the user\\'s own agent package')\n")
    (fake / "agent" / "__main__.py").write_text("raise SystemExit('the user\\'s own agent package')\n")
    sockdir = tempfile.mkdtemp(dir="/tmp", prefix="dlf-")
    path = os.path.join(sockdir, "a.sock")
    code = """
        import sys
        from dreamlake import Session
        with Session(prefix="ws/own", root=sys.argv[2], agent="auto+unix://" + sys.argv[1]) as s:
            print("SINK", type(s._pipe.sink).__name__, flush=True)
            s.track("t").append(v=1)
    """
    try:
        proc = client(code, path, tmp_path / "root", env={"PYTHONPATH": str(fake), "DREAMLAKE_AGENT_IDLE_EXIT": "0"})
        assert expect_line(proc, "SINK") == "AgentSink"
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
        pid = running_pid(path)
        assert pid and pid > 0 and "dreamlake_agent" in psutil.Process(pid).cmdline()
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: running_pid(path) is None, what="the agent to stop")
        assert read_all(tmp_path / "root" / "ws" / "own", "t")["total"] == 1
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_an_auto_started_agent_exits_when_idle_and_not_before(tmp_path):
    sockdir = tempfile.mkdtemp(dir="/tmp", prefix="dli-")
    path = os.path.join(sockdir, "a.sock")
    code = """
        import sys
        from dreamlake import Session
        with Session(prefix="ws/idle", root=sys.argv[2], agent="auto+unix://" + sys.argv[1]) as s:
            s.track("t").append(v=1)
            print("OPEN", flush=True)
            sys.stdin.readline()
        print("DONE", flush=True)
    """
    try:
        proc = client(code, path, tmp_path / "root", env={"DREAMLAKE_AGENT_IDLE_EXIT": "0.5"})
        expect_line(proc, "OPEN")
        pid = running_pid(path)
        assert pid and pid > 0
        deadline = time.monotonic() + 1.5  # three idle periods with a client attached: it stays
        while time.monotonic() < deadline:
            assert psutil.pid_exists(pid) and running_pid(path) == pid
            time.sleep(0.05)
        proc.stdin.write("\n")
        proc.stdin.flush()
        expect_line(proc, "DONE")
        assert proc.wait(timeout=10) == 0
        wait_until(lambda: running_pid(path) is None, timeout=10, what="the idle agent to exit")
        assert not os.path.exists(path)
        assert "no clients for 0.5 s; exiting" in Path(path + ".log").read_text()
        assert json.loads((tmp_path / "root" / "ws" / "idle" / "session.json").read_text())["status"] == "completed"
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_help_describes_the_subcommands_and_idle_exit():
    run = subprocess.run([PY, "-m", "dreamlake_agent", "--help"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0
    for text in ("status  print", "stop    SIGTERM", "run     serve", "--idle-exit SECONDS", "0 = never"):
        assert text in run.stdout, text


def test_a_session_dir_with_dots_goes_through_the_agent_to_the_same_place(agents, tmp_path, monkeypatch):
    agents.start()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with Session(prefix="ws/dots", session_dir="runs/../runs/my run #1", agent=agents.address) as session:
        assert type(session._pipe.sink) is AgentSink
        session.track("t").append(v=1)
    assert read_all(tmp_path / "runs" / "my run #1", "t")["total"] == 1
