"""The merge rule and batching, as pure functions (time passed in)."""

from dreamlake._batcher import Batcher, merge_rows


def test_equal_ts_merges_and_later_fields_win():
    rows = merge_rows([(1.0, {"q": 1}), (1.0, {"v": 2}), (1.0, {"q": 3}), (2.0, {"q": 4})])
    assert rows == [{"_ts": 1.0, "q": 3, "v": 2}, {"_ts": 2.0, "q": 4}]


def test_non_consecutive_equal_ts_does_not_merge():
    assert merge_rows([(1.0, {"a": 1}), (2.0, {"a": 2}), (1.0, {"a": 3})]) == [
        {"_ts": 1.0, "a": 1},
        {"_ts": 2.0, "a": 2},
        {"_ts": 1.0, "a": 3},
    ]


def test_batcher_matches_reference_rule_per_stream():
    b = Batcher()
    events = [("a", 1.0, {"x": 1}), ("b", 1.0, {"y": 1}), ("a", 1.0, {"z": 2}), ("a", 2.0, {"x": 3}), ("b", 5.0, {"y": 2})]
    for stream, ts, fields in events:
        b.add(stream, ts, fields, now=0.0)
    b.close_open()
    closed = b.take_closed()
    for stream in ("a", "b"):
        expected = merge_rows([(ts, f) for s, ts, f in events if s == stream])
        assert closed[stream][0] == expected
        assert closed[stream][1] == [r["_ts"] for r in expected]


def test_open_row_stays_open_until_age_then_closes():
    b = Batcher()
    b.add("s", 1.0, {"a": 1}, now=10.0)
    b.close_open(older_than=9.9)
    assert b.take_closed() == {}
    b.add("s", 1.0, {"b": 2}, now=10.05)  # same ts, still open: merges
    b.close_open(older_than=10.0)
    assert b.take_closed()["s"][0] == [{"_ts": 1.0, "a": 1, "b": 2}]


def test_merge_disabled_for_log_streams():
    b = Batcher()
    b.add("logs", 1.0, {"m": "a"}, now=0, merge=False)
    b.add("logs", 1.0, {"m": "b"}, now=0, merge=False)
    b.close_open()
    assert [r["m"] for r in b.take_closed()["logs"][0]] == ["a", "b"]


def test_take_closed_of_some_streams_keeps_the_others_and_counts():
    b = Batcher()
    for i in range(3):
        b.add("a", float(i), {"i": i}, now=0)
        b.add("b", float(i), {"i": i}, now=0)
    assert b.closed_count == 4  # the newest row of each stream is still open
    taken = b.take_closed(["a"])
    assert [r["i"] for r in taken["a"][0]] == [0, 1]
    assert b.closed_count == 2
    assert list(b.closed) == ["b"]
