"""The writer's C helpers against their pure-Python reference: the ring read
grouped by stream, the framing of track lines, and the GIL handoff's rule."""

from __future__ import annotations

import array
import math
import threading
import time

import msgspec
import pytest

from disk import disk_rows
from dreamlake import Session
from dreamlake import _format
from dreamlake._format import decode_line, encode_track_chunk, encode_track_lines, line_payload
from dreamlake._gil import BUSY_STEP_ROWS, step_rows, waiting_on_writer
from dreamlake._pipe import HOTPATH, _hotpath

pytestmark = pytest.mark.skipif(not HOTPATH, reason="C helpers of the hot path")

KINDS = [
    {"loss": 0.1, "step": 3},
    {"x": 1e-7, "y": 1e22, "z": -0.0, "w": 123456789.123456789, "big": 2**63 - 1, "neg": -(2**63)},
    {"q": [0.5, -1.25, 3.0e-300, 7.0], "nested": {"a": [1, 2], "b": "ok"}},
    {"s": 'quote " backslash \\ newline \n tab \t', "u": "héllo ☃", "ctl": "\x01"},
    {"none": None, "flag": True, "off": False},
    {"nan": math.nan, "inf": math.inf, "ninf": -math.inf},
    {"$float": "a user key that needs the escape"},
    {"text": "null is just a word here"},
]


def _reference(rows: list[dict], first: int, size: int) -> tuple[bytes, list[int], int]:
    buf = encode_track_lines(rows, first)
    return _format._with_line_starts(buf, size)


def _starts(value) -> list[int]:
    return list(array.array("Q", value)) if type(value) is bytes else list(value)


@pytest.mark.parametrize("kind", range(len(KINDS)))
def test_framed_track_lines_are_byte_for_byte_the_reference_encoding(kind):
    rows = [{**KINDS[kind], "_ts": 1.7e9 + i * 1e-3} for i in range(50)]
    first, size = 2**40 + 7, 123_456
    buf, starts, end = encode_track_chunk(rows, first, size)
    ref_buf, ref_starts, ref_end = _reference(rows, first, size)
    assert buf == ref_buf
    assert _starts(starts) == ref_starts and end == ref_end == size + len(buf)
    lines = buf.split(b"\n")[:-1]
    for i, (line, start) in enumerate(zip(lines, ref_starts)):
        obj = decode_line(line)
        assert obj["index"] == first + i
        assert start == size + sum(len(x) + 1 for x in lines[:i])
        payload = line_payload(obj)
        assert msgspec.json.encode(payload) == msgspec.json.encode(rows[i]) or kind == 5
        if kind == 5:  # non-finite floats come back as themselves
            assert math.isnan(payload["nan"]) and payload["inf"] == math.inf and payload["ninf"] == -math.inf


def test_framing_refuses_raw_text_that_may_need_tagging_unless_checked():
    raw = msgspec.json.Encoder().encode_lines([{"a": None, "_ts": 1.0}])
    assert _hotpath.frame_track_lines(raw, 0, 0) is None
    buf, starts, end = _hotpath.frame_track_lines(raw, 0, 10, True)
    assert buf == b'{"index":0,"data":{"a":null,"_ts":1.0}}\n'
    assert _starts(starts) == [10] and end == 10 + len(buf)
    with pytest.raises(ValueError):
        _hotpath.frame_track_lines(b'{"a":1}', 0, 0)  # no final newline
    with pytest.raises(ValueError):
        _hotpath.frame_track_lines(b'{"a":1}\n', -1, 0)


def test_the_pure_python_encoding_gives_the_same_chunk(monkeypatch):
    rows = [{**KINDS[2], "_ts": float(i)} for i in range(20)]
    fast = encode_track_chunk(rows, 5, 0)
    monkeypatch.setattr(_format, "_frame_track_lines", None)
    slow = encode_track_chunk(rows, 5, 0)
    assert fast[0] == slow[0] and _starts(fast[1]) == _starts(slow[1]) and fast[2] == slow[2]


def test_interleaved_streams_read_back_grouped_in_append_order():
    ring = _hotpath.Ring(bytearray(4096 + 8 * 65536 + (1 << 16)), 1 << 16)
    encode = msgspec.msgpack.Encoder().encode
    order = [3, 1, 3, 2, 1, 3]
    for n, sid in enumerate(order):
        assert ring.put(sid, float(n), 2, encode({"n": n, "_ts": float(n)}), 1)  # 2: one msgpack row
    count, streams = ring.read(100, None, msgspec.msgpack.decode)
    assert count == len(order)
    assert [sid for sid, *_ in streams] == [3, 1, 2]  # first appearance
    for sid, ts, rows, keys in streams:
        mine = [n for n, s in enumerate(order) if s == sid]
        assert [row["n"] for row in rows] == mine and ts == [float(n) for n in mine]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert ring.read(100, None, msgspec.msgpack.decode) == (0, [])


def _idle_producers(deadline_s: float = 5.0) -> None:
    """Wait out the producer window (20 ms after the last commit the writer saw)."""
    until = time.monotonic() + deadline_s
    while _hotpath.producers_running():
        assert time.monotonic() < until, "producers_running() stayed True with nothing committed"
        time.sleep(0.005)


def test_the_writer_hands_over_and_takes_short_steps_only_while_a_producer_runs():
    ring = _hotpath.Ring(bytearray(4096 + 8 * 65536 + (1 << 16)), 1 << 16)
    _idle_producers()
    assert _hotpath.handoff(1000) is False and step_rows(1024) == 1024
    assert ring.put(0, 1.0, 2, msgspec.msgpack.encode({"_ts": 1.0}), 1)
    assert _hotpath.producers_running() is True
    assert step_rows(1024) == BUSY_STEP_ROWS
    assert _hotpath.handoff(1000) is True
    with waiting_on_writer():  # a thread blocked on the writer wants it at full speed
        assert step_rows(1024) == 1024
    assert step_rows(1024) == BUSY_STEP_ROWS
    _idle_producers()
    assert _hotpath.handoff(1000) is False


def test_interleaved_tracks_are_written_whole_with_their_line_offsets(tmp_path):
    """End to end through the grouped read and the framing: a producer thread
    per track, so the ring interleaves them; every row is on disk once, in
    order, and the offsets file points at the start of each line."""
    with Session(name="interleave", workspace="ws", local_path=str(tmp_path)) as s:
        tracks = [s.track(f"t{k}") for k in range(4)]
        barrier = threading.Barrier(len(tracks))

        def produce(k: int) -> None:
            barrier.wait()
            for i in range(5000):
                tracks[k].append(v=[float(i), float(k)], i=i, _ts=float(i) + k / 10)

        threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for k in range(4):
        track_dir = tmp_path / "ws" / "interleave" / "tracks" / f"t{k}"
        rows = disk_rows(tmp_path / "ws" / "interleave", f"t{k}")
        assert [r["i"] for r in rows] == list(range(5000))
        assert rows[7] == {"v": [7.0, float(k)], "i": 7, "_ts": 7.0 + k / 10}
        data = (track_dir / "data.jsonl").read_bytes()
        offsets = array.array("Q", (track_dir / "index.offsets").read_bytes())
        assert len(offsets) == 5000
        assert all(data[o : o + 9] == b'{"index":' and (o == 0 or data[o - 1 : o] == b"\n") for o in offsets)
