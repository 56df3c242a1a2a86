"""The merge rule and the open-row split, as pure functions."""

from dreamlake._batcher import merge_events, merge_rows, open_group_start


def _rows(*pairs):
    """(ts, fields) pairs as the writer holds them: a ts list and a rows list."""
    return [ts for ts, _ in pairs], [{**fields, "_ts": ts} for ts, fields in pairs]


def test_equal_ts_merges_and_later_fields_win():
    rows = merge_rows([(1.0, {"q": 1}), (1.0, {"v": 2}), (1.0, {"q": 3}), (2.0, {"q": 4})])
    assert rows == [{"_ts": 1.0, "q": 3, "v": 2}, {"_ts": 2.0, "q": 4}]


def test_non_consecutive_equal_ts_does_not_merge():
    assert merge_rows([(1.0, {"a": 1}), (2.0, {"a": 2}), (1.0, {"a": 3})]) == [
        {"_ts": 1.0, "a": 1},
        {"_ts": 2.0, "a": 2},
        {"_ts": 1.0, "a": 3},
    ]


def test_distinct_ts_fast_path_returns_the_rows_themselves():
    ts_in, rows_in = _rows((1.0, {"a": 1}), (2.0, {"a": 2}), (3.0, {"a": 3}))
    rows, ts = merge_events(ts_in, rows_in)
    assert ts == [1.0, 2.0, 3.0]
    assert rows is rows_in  # no copies


def test_merge_disabled_for_log_streams():
    rows, ts = merge_events(*_rows((1.0, {"m": "a"}), (1.0, {"m": "b"})), merge=False)
    assert [r["m"] for r in rows] == ["a", "b"] and ts == [1.0, 1.0]


def test_open_group_is_the_trailing_equal_ts_run():
    assert open_group_start([]) == 0
    assert open_group_start([1.0, 2.0, 2.0]) == 1
    assert open_group_start([5.0, 5.0]) == 0
    assert open_group_start([1.0, 2.0, 3.0]) == 2
