"""The agent server in-process (pytest-asyncio), spoken to over a real Unix
socket with raw frames: what a C++ or Julia client would send, good and bad.

The server pushes onto this process's writer thread, the same one a Session
uses, so these tests also cover the shared pipeline."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import tempfile

import anyio
import pytest

from dreamlake_agent import AgentServer
from dreamlake._protocol import (
    PROTOCOL_VERSION,
    AgentMessage,
    Call,
    Close,
    Err,
    FrameEncoder,
    FrameReader,
    Hello,
    Join,
    Ok,
    Open,
    Params,
    Rows,
    Status,
    Welcome,
)

pytestmark = pytest.mark.asyncio


@pytest.fixture
def sockdir():
    path = tempfile.mkdtemp(dir="/tmp", prefix="dla-")  # short: AF_UNIX paths are limited
    yield path
    shutil.rmtree(path, ignore_errors=True)


class RawClient:
    """A minimal client: frames out, replies in."""

    def __init__(self, stream):
        self.stream = stream
        self.encoder = FrameEncoder()
        self.reader = FrameReader(AgentMessage)
        self.inbox = []
        self.seq = 0

    @classmethod
    async def connect(cls, path, hello=True):
        client = cls(await anyio.connect_unix(path))
        if hello:
            await client.send(Hello(PROTOCOL_VERSION, {"pid": os.getpid()}))
            assert isinstance(await client.receive(), Welcome)
        return client

    async def send(self, message):
        await self.stream.send(bytes(self.encoder.encode(message)))

    async def send_raw(self, data):
        await self.stream.send(data)

    async def receive(self):
        with anyio.fail_after(10):
            while not self.inbox:
                data = await self.stream.receive()
                messages, error = self.reader.feed(data)
                assert error is None
                self.inbox.extend(messages)
        return self.inbox.pop(0)

    async def request(self, make):
        self.seq += 1
        await self.send(make(self.seq))
        reply = await self.receive()
        assert reply.seq == self.seq
        return reply

    async def closed_by_peer(self):
        """True once the agent closed this connection (after an optional error frame)."""
        with anyio.fail_after(10):
            try:
                while True:
                    data = await self.stream.receive()
                    messages, _ = self.reader.feed(data)
                    self.inbox.extend(messages)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return True

    async def aclose(self):
        await self.stream.aclose()


@contextlib.asynccontextmanager
async def running(server):
    """The server serving in a task of this test's event loop, stopped at the end."""
    async with anyio.create_task_group() as group:
        await group.start(server.serve)
        try:
            yield server
        finally:
            server.stop()


def make_agent(sockdir, tmp_path):
    return AgentServer(os.path.join(sockdir, "a.sock"), str(tmp_path / "root"), merge_window=30.0, grace=5.0)


def lines(path):
    """A stream's lines as stored; a track row line ``{"index", "data"}`` gives its data."""
    parsed = [json.loads(line) for line in open(path).read().splitlines()]
    return [line["data"] if set(line) == {"index", "data"} else line for line in parsed]


async def open_session(server, directory, info=None):
    client = await RawClient.connect(server.socket_path)
    reply = await client.request(lambda seq: Open(seq, directory, info or {"name": "run"}))
    assert isinstance(reply, Ok), reply
    return client


async def test_socket_is_private(tmp_path, sockdir):
    async with running(make_agent(sockdir, tmp_path)) as agent:
        assert stat.S_IMODE(os.stat(agent.socket_path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(sockdir).st_mode) == 0o700


async def test_rows_then_barrier_sees_them_and_close_completes(sockdir, tmp_path):
    async with running(make_agent(sockdir, tmp_path)) as agent:
        sdir = str(tmp_path / "ws" / "run")
        client = await open_session(agent, sdir)
        await client.send(Rows("train", False, [{"_ts": float(i), "loss": i / 10} for i in range(100)]))
        await client.send(Params({"lr": 0.1, "model.arch": "mlp"}))
        await client.send(Rows("logs", True, [{"_ts": 5.0, "level": "info", "message": "hi"}]))
        page = (await client.request(lambda seq: Call(seq, "read", ["train", False, 95, 10]))).result
        assert [row["index"] for row in page["data"]] == [95, 96, 97, 98, 99] and page["total"] == 100
        (window,) = (await client.request(lambda seq: Call(seq, "flush", [["train"]]))).result
        assert (window["startIndex"], window["endIndex"], window["count"]) == (0, 99, 100)
        assert (await client.request(lambda seq: Call(seq, "params_get", []))).result == {"lr": 0.1, "model.arch": "mlp"}
        reply = await client.request(lambda seq: Close(seq, "completed", None))
        assert isinstance(reply, Ok)
        meta = json.load(open(os.path.join(sdir, "session.json")))
        assert meta["status"] == "completed" and meta["pid"] == os.getpid()
        assert [row["message"] for row in lines(os.path.join(sdir, "logs.jsonl"))] == ["hi"]
        await client.aclose()


async def test_relative_directory_lands_under_the_agent_root(tmp_path, sockdir):
    async with running(make_agent(sockdir, tmp_path)) as agent:
        client = await open_session(agent, "ws/rel")
        await client.request(lambda seq: Close(seq, "completed", None))
        assert os.path.exists(os.path.join(agent.root, "ws", "rel", "session.json"))


async def test_two_connections_share_indices_and_merge_equal_ts(sockdir, tmp_path):
    async with running(make_agent(sockdir, tmp_path)) as agent:
        sdir = str(tmp_path / "ws" / "shared")
        a = await open_session(agent, sdir)
        b = await open_session(agent, sdir)
        await a.send(Rows("t", False, [{"_ts": float(i), "a": i} for i in range(0, 10)]))
        await b.send(Rows("t", False, [{"_ts": float(i), "b": i} for i in range(10, 20)]))
        await a.send(Rows("m", False, [{"_ts": 7.0, "a": 1}]))
        await b.send(Rows("m", False, [{"_ts": 7.0, "b": 2}]))
        assert isinstance(await a.request(lambda seq: Close(seq, "completed", None)), Ok)
        assert isinstance(await b.request(lambda seq: Close(seq, "completed", None)), Ok)
        rows = lines(os.path.join(sdir, "tracks", "t", "data.jsonl"))
        assert sorted(row["_ts"] for row in rows) == [float(i) for i in range(20)]
        assert lines(os.path.join(sdir, "tracks", "m", "data.jsonl")) == [{"_ts": 7.0, "a": 1, "b": 2}]
        assert json.load(open(os.path.join(sdir, "session.json")))["opens"] == 2


async def test_client_vanishing_without_close_marks_interrupted_after_writing(sockdir, tmp_path):
    async with running(make_agent(sockdir, tmp_path)) as agent:
        sdir = str(tmp_path / "ws" / "vanish")
        client = await open_session(agent, sdir)
        await client.send(Rows("t", False, [{"_ts": float(i), "v": i} for i in range(500)]))
        await client.aclose()  # no close frame
        with anyio.fail_after(10):
            while sdir in agent.sessions:
                await anyio.sleep(0.01)
        meta = json.load(open(os.path.join(sdir, "session.json")))
        assert meta["status"] == "interrupted"
        assert len(lines(os.path.join(sdir, "tracks", "t", "data.jsonl"))) == 500


async def test_a_joined_child_leaving_does_not_interrupt(sockdir, tmp_path):
    async with running(make_agent(sockdir, tmp_path)) as agent:
        sdir = str(tmp_path / "ws" / "forked")
        owner = await open_session(agent, sdir)
        child = await RawClient.connect(agent.socket_path)
        assert isinstance(await child.request(lambda seq: Join(seq, sdir)), Ok)
        await child.send(Rows("t", False, [{"_ts": 1.0, "child": 1}]))
        await child.aclose()
        assert isinstance(await owner.request(lambda seq: Close(seq, "completed", None)), Ok)
        assert json.load(open(os.path.join(sdir, "session.json")))["status"] == "completed"
        assert lines(os.path.join(sdir, "tracks", "t", "data.jsonl")) == [{"_ts": 1.0, "child": 1}]


GARBAGE = [
    pytest.param(b"\xff\xff\xff\xff", id="oversized-length"),
    pytest.param(b"\x00\x00\x00\x00", id="zero-length"),
    pytest.param(b"\x00\x00\x00\x02\xc1\xc1", id="not-msgpack"),
    pytest.param(b"\x00\x00\x00\x05\x92\xa3bad\x01", id="unknown-message"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
]


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_garbage_closes_only_that_connection(sockdir, tmp_path, garbage, caplog):
    async with running(make_agent(sockdir, tmp_path)) as agent:
        sdir = str(tmp_path / "ws" / "good")
        good = await open_session(agent, sdir)
        bad = await RawClient.connect(agent.socket_path)
        with caplog.at_level(logging.ERROR, logger="dreamlake.agent"):
            await bad.send_raw(garbage)
            assert await bad.closed_by_peer()
        assert any(isinstance(m, Err) and m.kind == "ProtocolError" for m in bad.inbox)
        assert "closing connection" in caplog.text
        await good.send(Rows("t", False, [{"_ts": 1.0, "ok": True}]))
        page = (await good.request(lambda seq: Call(seq, "read", ["t", False, 0, 10]))).result
        assert page["total"] == 1
        assert agent.protocol_errors == 1
        await good.request(lambda seq: Close(seq, "completed", None))


async def test_truncated_frame_then_eof_is_logged_and_received_rows_kept(sockdir, tmp_path, caplog):
    async with running(make_agent(sockdir, tmp_path)) as agent:
        sdir = str(tmp_path / "ws" / "torn")
        client = await open_session(agent, sdir)
        await client.send(Rows("t", False, [{"_ts": 1.0, "v": 1}]))
        frame = bytes(FrameEncoder().encode(Rows("t", False, [{"_ts": 2.0, "v": 2}])))
        with caplog.at_level(logging.ERROR, logger="dreamlake.agent"):
            await client.send_raw(frame[:-3])
            await client.aclose()
            with anyio.fail_after(10):
                while sdir in agent.sessions:
                    await anyio.sleep(0.01)
        assert "ended inside a frame" in caplog.text
        assert lines(os.path.join(sdir, "tracks", "t", "data.jsonl")) == [{"_ts": 1.0, "v": 1}]


async def test_messages_before_hello_or_open_are_refused(tmp_path, sockdir):
    async with running(make_agent(sockdir, tmp_path)) as agent:
        early = await RawClient.connect(agent.socket_path, hello=False)
        await early.send(Call(1, "flush", []))
        assert await early.closed_by_peer()
        unattached = await RawClient.connect(agent.socket_path)
        await unattached.send(Rows("t", False, [{"_ts": 1.0}]))
        assert await unattached.closed_by_peer()


@pytest.mark.parametrize(
    "rows",
    [
        pytest.param([{"v": 1}], id="no-ts"),
        pytest.param([{"_ts": "now", "v": 1}], id="string-ts"),
        pytest.param([{"_ts": float("nan"), "v": 1}], id="nan-ts"),
        pytest.param([{"_ts": True, "v": 1}], id="bool-ts"),
    ],
)
async def test_rows_without_a_usable_ts_close_the_connection(sockdir, tmp_path, rows):
    async with running(make_agent(sockdir, tmp_path)) as agent:
        client = await open_session(agent, str(tmp_path / "ws" / "ts"))
        await client.send(Rows("t", False, rows))
        assert await client.closed_by_peer()


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/../../b", "", "a//b"])
async def test_track_names_that_escape_are_refused(sockdir, tmp_path, name):
    async with running(make_agent(sockdir, tmp_path)) as agent:
        sdir = tmp_path / "ws" / "names"
        client = await open_session(agent, str(sdir))
        await client.send(Rows(name, False, [{"_ts": 1.0, "v": 1}]))
        assert await client.closed_by_peer()
        reader = await open_session(agent, str(sdir))
        reply = await reader.request(lambda seq: Call(seq, "read", [name, False, 0, 1]))
        assert isinstance(reply, Err) and reply.kind == "ValueError"
        reply = await reader.request(lambda seq: Call(seq, "stats", [name]))
        assert isinstance(reply, Err)
        await reader.request(lambda seq: Close(seq, "completed", None))
        written = {os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs}
        assert all(path.startswith(os.path.join("ws", "names")) for path in written), written


@pytest.mark.parametrize("directory", ["/tmp/../etc/x", "ws/../../x", "../x", "/a/./b", "ws/"])
async def test_session_directories_that_escape_are_refused_but_the_connection_stays(tmp_path, sockdir, directory):
    async with running(make_agent(sockdir, tmp_path)) as agent:
        client = await RawClient.connect(agent.socket_path)
        reply = await client.request(lambda seq: Open(seq, directory, {}))
        assert isinstance(reply, Err) and reply.kind == "ValueError"
        status = await client.request(lambda seq: Status(seq))
        assert isinstance(status, Ok) and status.result["sessions"] == []


async def test_a_session_that_cannot_be_opened_is_an_error_and_the_connection_stays(sockdir, tmp_path):
    async with running(make_agent(sockdir, tmp_path)) as agent:
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        client = await RawClient.connect(agent.socket_path)
        reply = await client.request(lambda seq: Open(seq, str(blocker / "ws" / "run"), {}))
        assert isinstance(reply, Err) and reply.kind in ("NotADirectoryError", "FileExistsError"), reply
        assert agent.sessions == {}
        reply = await client.request(lambda seq: Open(seq, str(tmp_path / "ws" / "ok"), {}))
        assert isinstance(reply, Ok)


async def test_bad_calls_get_errors_and_the_connection_stays(sockdir, tmp_path):
    async with running(make_agent(sockdir, tmp_path)) as agent:
        client = await open_session(agent, str(tmp_path / "ws" / "calls"))
        for op, args, kind in [
            ("unlink", [], "ValueError"),
            ("files_download", ["nope", "/tmp/x"], "KeyError"),
            ("files_upload", ["relative.txt", "/", None, [], {}], "ValueError"),
            ("files_upload", ["/etc/hostname", "../up", None, [], {}], "ValueError"),
            ("read", ["t", False], "TypeError"),
        ]:
            reply = await client.request(lambda seq: Call(seq, op, args))
            assert isinstance(reply, Err) and reply.kind == kind, (op, reply)
        assert isinstance(await client.request(lambda seq: Call(seq, "list_tracks", [])), Ok)


async def test_stop_writes_what_was_received_and_leaves_status_to_the_clients(sockdir, tmp_path):
    server = AgentServer(os.path.join(sockdir, "b.sock"), str(tmp_path), grace=5.0)
    sdir = str(tmp_path / "ws" / "stop")
    async with anyio.create_task_group() as group:
        await group.start(server.serve)
        client = await open_session(server, sdir)
        await client.send(Rows("t", False, [{"_ts": float(i), "v": i} for i in range(1000)]))
        await client.request(lambda seq: Call(seq, "params_get", []))  # everything above was pushed
        server.stop()
        assert await client.closed_by_peer()
    assert len(lines(os.path.join(sdir, "tracks", "t", "data.jsonl"))) == 1000
    assert json.load(open(os.path.join(sdir, "session.json")))["status"] == "running"
    assert not os.path.exists(server.socket_path)
