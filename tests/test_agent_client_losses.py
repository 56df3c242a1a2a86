"""Agent mode: what a client loses before its rows reach the agent (dropped
for its memory budget with ``on_full="drop"``, quarantined, given up on a
failing sink) is written to ``session.json``'s ``lost`` at close, as in
thread mode: sent with the client's ``close`` frame, added once to what the
agent itself lost for the session. Real agent, real client processes."""

from __future__ import annotations

import json
from pathlib import Path

from test_agent_processes import agents, client, expect_line, meta  # noqa: F401 (agents: fixture)

LOSSY = """
    import json, sys, threading
    from dreamlake import Session, _agent_link

    address, root, extra = sys.argv[1], sys.argv[2], int(sys.argv[3])
    entered, gate = threading.Event(), threading.Event()
    send = _agent_link.AgentSink.write_rows

    def held(self, *args):  # the writer thread waits here: the client's queue fills
        entered.set()
        gate.wait()
        return send(self, *args)

    _agent_link.AgentSink.write_rows = held
    session = Session(prefix="ws/lossy", root=root, agent=address, on_full="drop", memory_budget=64 << 10).open()
    track = session.track("t")
    track.append(i=-1)
    assert entered.wait(10)
    i = 0
    while session.health()["lost"]["dropped_for_budget"] < extra:
        track.append(i=i)
        i += 1
    gate.set()
    print("READY", flush=True)
    sys.stdin.readline()
    lost = session.health()["lost"]
    session.close()
    print("LOST", json.dumps(lost), flush=True)
"""


def test_the_losses_of_every_client_are_written_to_session_json_once(agents, tmp_path):
    agents.start()
    root = tmp_path / "root"
    procs = [client(LOSSY, agents.address, root, extra) for extra in (5, 40)]
    for proc in procs:
        expect_line(proc, "READY")
    counted = []
    for proc in procs:  # the first leaves while the other is still attached: the agent keeps its count
        proc.stdin.write("go\n")
        proc.stdin.flush()
        counted.append(json.loads(expect_line(proc, "LOST")))
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    dropped = sum(c["dropped_for_budget"] for c in counted)
    assert all(c["dropped_for_budget"] > 0 for c in counted)
    stored = meta(Path(root) / "ws" / "lossy")
    assert stored["status"] == "completed"
    assert stored["lost"] == {"dropped_for_budget": dropped}

    # a later opening that loses nothing leaves the totals as they are
    quiet = client(
        """
        import sys
        from dreamlake import Session
        with Session(prefix="ws/lossy", root=sys.argv[2], agent=sys.argv[1]) as session:
            session.track("t").append(i=0)
        """,
        agents.address, root,
    )
    assert quiet.wait(timeout=30) == 0, quiet.stderr.read()
    assert meta(Path(root) / "ws" / "lossy")["lost"] == {"dropped_for_budget": dropped}


def test_a_bad_lost_map_in_close_is_refused_and_the_connection_stays(agents, tmp_path):
    from dreamlake._agent_link import connect
    from dreamlake._protocol import Close, Open

    agents.start()
    connection, _ = connect(agents.sock)
    directory = str(tmp_path / "root" / "ws" / "r")
    connection.request(lambda s: Open(s, directory, {"name": "r"}))
    for bad in ({"": 1}, {"x" * 65: 1}, {"ok": -1}, {f"r{i}": 1 for i in range(33)}, {"../x": 1}):
        try:
            connection.request(lambda s: Close(s, "completed", None, bad))
        except ValueError:
            continue
        raise AssertionError(f"{bad} was accepted")
    connection.request(lambda s: Close(s, "completed", None, {"dropped_for_budget": 3}))
    connection.close()
    stored = meta(Path(directory))
    assert stored["status"] == "completed" and stored["lost"] == {"dropped_for_budget": 3}
