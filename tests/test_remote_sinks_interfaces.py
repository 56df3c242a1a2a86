"""The sink layer's small pieces: the typed interfaces, the factory's modes,
the fan-out (a URL plus a local root writes both), the in-library MemorySink,
and the spool's crash safety (a torn tail is cut, the rest kept)."""

from __future__ import annotations

import os

import pytest

from dreamlake import Session
from dreamlake._config import resolve
from dreamlake._local_sink import LocalSink, LocalStore
from dreamlake.sinks import (
    DeliversLater, FanOutSink, MemorySink, OfflineSink, RemoteSink, Sink, Store, call_store, make_sink,
)
from dreamlake.sinks.remote.spool import Spool, SpoolFull
from remote_helpers import free_port, server_rows, start_server
from server_process import make_key


def _config(**kw):
    base = dict(prefix="ws/s", name=None, workspace=None, root=None, local_path=None, url=None, remote=None,
                user_name=None, api_key=None, session_dir=None, agent=None)
    base.update(kw)
    return resolve(**base)


def test_every_sink_satisfies_the_small_interface(tmp_path):
    remote = make_sink(_config(url="http://127.0.0.1:9"))
    for sink in (MemorySink(), LocalSink(str(tmp_path)), FanOutSink(MemorySink(), MemorySink()), remote):
        assert isinstance(sink, Sink)
        assert isinstance(sink.store, Store)
    # writes and reads are apart: the local sink writes, its store reads
    assert not isinstance(LocalSink(str(tmp_path)), Store)
    assert isinstance(remote, DeliversLater) and not isinstance(LocalSink(str(tmp_path)), DeliversLater)


def test_the_local_store_reads_what_its_sink_wrote_through_one_view(tmp_path):
    sink = LocalSink(str(tmp_path))
    sink.open({"name": "s"})
    sink.write_rows("t", False, [{"_ts": 1.0, "a": 1}, {"_ts": 2.0, "a": 2}], [1.0, 2.0])
    sink.write_params({"lr": 0.1})
    assert [e["data"]["a"] for e in sink.store.read("t", False, 0, 10)["data"]] == [1, 2]
    assert call_store(sink.store, "stats", ("t",))["totalDataPoints"] == 2
    assert sink.store.params_get() == {"lr": 0.1}
    sink.close("completed", None)
    alone = LocalStore(str(tmp_path))  # a store of its own reads the same directory
    assert alone.read("t", False, 0, 10)["total"] == 2
    with pytest.raises(ValueError, match="unknown store operation"):
        call_store(alone, "write_rows", ())


def test_factory_picks_the_sink_by_mode(tmp_path):
    assert type(make_sink(_config(root=str(tmp_path)))) is LocalSink
    assert type(make_sink(_config(url="http://127.0.0.1:9"))) is RemoteSink
    both = make_sink(_config(url="http://127.0.0.1:9", root=str(tmp_path)))
    assert isinstance(both, FanOutSink) and type(both.primary) is LocalSink and type(both.secondaries[0]) is RemoteSink
    assert type(make_sink(_config(url="http://127.0.0.1:9", mode="offline"))) is OfflineSink
    with pytest.raises(ValueError):
        make_sink(_config(mode="remote"))
    # no agent at the named socket: the session sends itself
    missing = f"unix://{tmp_path}/no-agent.sock"
    assert type(make_sink(_config(url="http://127.0.0.1:9", agent=missing))) is RemoteSink


def test_memory_sink_keeps_rows_in_order_and_can_fail():
    sink = MemorySink()
    sink.open({"name": "s"})
    assert sink.write_rows("t", False, [{"_ts": 1.0, "a": 1}], [1.0]) == 0
    sink.fail_next = 1
    with pytest.raises(OSError):
        sink.write_rows("t", False, [{"_ts": 2.0, "a": 2}], [2.0])
    assert sink.write_rows("t", False, [{"_ts": 2.0, "a": 2}], [2.0]) == 1
    assert [e["data"]["a"] for e in sink.store.read("t", False, 0, 10)["data"]] == [1, 2]


def test_fanout_url_plus_root_writes_both(tmp_path):
    root = tmp_path / "server"
    root.mkdir()
    key = make_key(root, workspaces=("ws",))
    srv = start_server(root, free_port())
    try:
        local = tmp_path / "local"
        with Session(prefix="ws/both", url=srv.url, api_key=key, root=str(local)) as session:
            for i in range(300):
                session.track("t").append(i=i)
            session.log("both")
            assert session.track("t").read(0, 1)["total"] == 300  # reads: the local store
        assert [r["i"] for r in server_rows(root, "ws", "both", "t")] == list(range(300))
        assert (local / "ws" / "both" / "tracks" / "t" / "data.jsonl").read_text().count("\n") == 300
        assert session.health()["secondary_errors"] == 0
    finally:
        srv.stop()


def test_spool_cuts_a_torn_tail_and_keeps_the_frames_before(tmp_path):
    path = str(tmp_path / "spool.zst")
    spool = Spool(path, budget=1 << 20)
    for seq in (1, 2, 3):
        spool.append(seq, bytes([seq]) * 100)
    spool.close()
    with open(path, "ab") as out:
        out.write(b"DLS1\x00\x00\x01\x00garbage")  # a frame cut short by kill -9
    reopened = Spool(path, budget=1 << 20)
    assert reopened.frames == 3 and os.path.getsize(path) == reopened.size
    reopened.skip_acked(1)
    assert reopened.peek() == (2, bytes([2]) * 100)
    reopened.pop()
    reopened.pop()
    assert reopened.frames == 0 and os.path.getsize(path) == 0
    with pytest.raises(SpoolFull):
        Spool(path, budget=50).append(9, b"x" * 100)


@pytest.mark.parametrize("n", [0, 5, 1000, 1001, 2500, 70_000])
def test_encoder_chunks_give_the_same_batch_and_quarantine_bad_rows(n):
    import msgspec
    import zstandard

    from dreamlake.server.wire import IngestBatch
    from dreamlake.sinks.remote.batch import SealedBatch
    from dreamlake.sinks.remote.encoder import encode

    rows = [{"_ts": 1.0 + i, "v": i} for i in range(n)]
    logs = [{"_ts": 1.0, "level": "info", "message": "m"}] * n
    body, dropped = encode(SealedBatch(3, {("t", False): rows, ("logs", True): logs}, {"lr": 0.1}), "c")
    decoded = msgspec.msgpack.decode(zstandard.ZstdDecompressor().decompress(body), type=IngestBatch)
    assert dropped == 0 and decoded.seq == 3 and decoded.params == {"lr": 0.1}
    assert decoded.streams[0].rows == rows and decoded.streams[1].rows == logs
    bad = [{"_ts": 0.5, "v": 2**70}] + rows  # an int msgpack cannot carry
    body, dropped = encode(SealedBatch(4, {("t", False): bad}), "c")
    decoded = msgspec.msgpack.decode(zstandard.ZstdDecompressor().decompress(body), type=IngestBatch)
    assert dropped == 1 and decoded.streams[0].rows == rows
