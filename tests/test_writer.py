"""The writer thread against in-memory sinks: ordering, barriers, failures,
retries and the memory-budget policies. Real threads; no sleeps as sync."""

import threading

import pytest

from dreamlake._errors import SessionStateError, SinkError
from dreamlake._pipe import SessionPipe
from dreamlake._writer import Writer
from dreamlake.sinks import MemorySink, MemoryStore


@pytest.fixture
def writer():
    return Writer()


def _push_rows(pipe, name, n, start=0):
    stream = pipe.stream(name)
    for i in range(start, start + n):
        if len(pipe.queue) < pipe.max_items:
            pipe.push((stream.sid, float(i), {"i": i, "_ts": float(i)}))
        else:
            pipe.on_full((stream.sid, float(i), {"i": i, "_ts": float(i)}), lambda: None)


def test_flush_barrier_returns_window_after_all_earlier_rows(writer):
    sink = MemorySink()
    pipe = SessionPipe(sink)
    writer.register(pipe)
    _push_rows(pipe, "t", 1000)
    (result,) = writer.call(pipe, "flush", (["t"],))
    assert result == {"trackId": "t", "startIndex": 0, "endIndex": 999, "count": 1000}
    assert [r["i"] for r in sink.rows("t")] == list(range(1000))
    _push_rows(pipe, "t", 5, start=1000)
    (result,) = writer.call(pipe, "flush", (["t"],))
    assert (result["startIndex"], result["endIndex"], result["count"]) == (1000, 1004, 5)


def test_failed_writes_are_counted_kept_in_order_and_retried(writer):
    sink = MemorySink()
    sink.fail_next = 3
    pipe = SessionPipe(sink)
    writer.register(pipe)
    _push_rows(pipe, "t", 50)
    with pytest.raises(SinkError, match="not written yet"):
        writer.call(pipe, "flush", (None,))
    assert pipe.write_errors >= 1
    assert "No space left" in pipe.health()["last_error"]
    _push_rows(pipe, "t", 50, start=50)
    # the sink recovers after its failures; the next barriers retry and succeed
    for _ in range(10):
        try:
            writer.call(pipe, "flush", (None,))
            break
        except SinkError:
            continue
    assert [r["i"] for r in sink.rows("t")] == list(range(100))  # once each, in order
    assert pipe.health()["pending_retry_rows"] == 0


def test_drop_policy_counts_what_it_drops(writer):
    sink = MemorySink()
    sink.gate.clear()  # the sink stalls: the queue must fill
    pipe = SessionPipe(sink, memory_budget=64 << 10, on_full="drop")
    writer.register(pipe)
    n = pipe.max_events * 3
    _push_rows(pipe, "t", n)
    sink.gate.set()
    writer.call(pipe, "flush", (None,))
    assert pipe.dropped > 0
    assert sink.count("t") + pipe.dropped == n


def test_block_policy_loses_nothing_and_bounds_the_queue(writer):
    sink = MemorySink()
    sink.gate.clear()
    pipe = SessionPipe(sink, memory_budget=64 << 10, on_full="block")
    writer.register(pipe)
    n = pipe.max_events * 4
    peak = []
    producer = threading.Thread(target=lambda: _push_rows(pipe, "t", n))
    producer.start()
    # the producer cannot finish while the sink is stalled: it is blocked on the budget
    producer.join(0.3)
    assert producer.is_alive()
    peak.append(len(pipe.queue))
    sink.gate.set()
    producer.join(20)
    assert not producer.is_alive()
    writer.call(pipe, "flush", (None,))
    assert [r["i"] for r in sink.rows("t")] == list(range(n))
    assert pipe.dropped == 0 and pipe.blocked_waits > 0
    assert max(peak) <= pipe.max_items  # queue items, three per row


def test_params_merge_and_close_marks_status(writer):
    sink = MemorySink()
    pipe = SessionPipe(sink)
    writer.register(pipe)
    pipe.push_params({"a": 1, "b": 2})
    pipe.push_params({"b": 3})
    writer.call(pipe, "close", ("completed", None))
    assert sink.params == {"a": 1, "b": 3}
    assert sink.status == ("completed", None)
    assert pipe not in writer.pipes()
    pipe.mark_closed()
    with pytest.raises(SessionStateError):
        pipe.push_params({"c": 1})


def test_barrier_errors_reach_the_caller_not_the_writer(writer):
    class Broken(MemoryStore):
        def stats(self, name):
            raise KeyError(name)

    sink = MemorySink()
    sink.store = Broken(sink)
    pipe = SessionPipe(sink)
    writer.register(pipe)
    with pytest.raises(KeyError):
        writer.call(pipe, "stats", ("nope",))
    _push_rows(pipe, "t", 3)
    writer.call(pipe, "flush", (None,))  # the writer is still alive
    assert pipe.sink.count("t") == 3


def test_many_producer_threads_one_stream(writer):
    sink = MemorySink()
    pipe = SessionPipe(sink)
    writer.register(pipe)
    stream = pipe.stream("t")
    barrier = threading.Barrier(8)

    def produce(k):
        barrier.wait()
        for i in range(2000):
            ts = float(k * 10**6 + i)
            pipe.push((stream.sid, ts, {"k": k, "i": i, "_ts": ts}))

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.call(pipe, "flush", (None,))
    rows = sink.rows("t")
    assert len(rows) == 16000
    for k in range(8):
        assert [r["i"] for r in rows if r["k"] == k] == list(range(2000))


def test_batch_events_count_their_rows_against_the_budget(writer):
    sink = MemorySink()
    sink.gate.clear()
    pipe = SessionPipe(sink, memory_budget=64 << 10, on_full="drop")
    writer.register(pipe)
    stream = pipe.stream("t")
    chunk = pipe.batch_rows
    accepted = 0
    for k in range(20):
        ts = [float(k * chunk + i) for i in range(chunk)]
        rows = [{"i": k * chunk + i, "_ts": t} for i, t in zip(range(chunk), ts)]
        if pipe.push_batch(stream, ts, rows, len(rows), writer.wake):
            accepted += len(rows)
    assert pipe.dropped > 0  # 20 chunks of budget/4 rows cannot all fit
    sink.gate.set()
    writer.call(pipe, "flush", (None,))
    assert sink.count("t") == accepted == 20 * chunk - pipe.dropped


def test_close_while_the_sink_fails_finishes_once_the_retry_succeeds(writer):
    sink = MemorySink()
    pipe = SessionPipe(sink)
    writer.register(pipe)
    _push_rows(pipe, "t", 10)
    sink.fail_next = 1
    with pytest.raises(SinkError):
        writer.call(pipe, "close", ("completed", None))
    assert sink.status is None
    pipe.mark_closed()
    deadline = __import__("time").monotonic() + 10
    while sink.status is None and __import__("time").monotonic() < deadline:
        writer.wake()
        threading.Event().wait(0.01)  # bounded poll for the background retry
    assert sink.status == ("completed", None)
    assert [r["i"] for r in sink.rows("t")] == list(range(10))
    assert pipe not in writer.pipes()


def test_large_rows_count_their_size_against_the_budget(tmp_path):
    """A row of ~40 KB takes ~80 budget slots, so a 64 KiB budget holds about one."""
    from dreamlake import Session

    with Session(prefix="ws/big", root=str(tmp_path), memory_budget=64 << 10, on_full="drop") as s:
        pipe = s._pipe
        gate = threading.Event()
        real_write = pipe.sink.write_rows
        pipe.sink.write_rows = lambda *a: (gate.wait(10), real_write(*a))[1]
        payload = "x" * 40_000
        for i in range(50):
            s.track("t").append(blob=payload, i=i)
        dropped = s.health()["dropped"]
        gate.set()
        written = s.track("t").read(limit=100)["total"]
    assert dropped > 0 and written + dropped == 50
