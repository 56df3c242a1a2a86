"""The on-disk stream: index, reconciliation after crashes, O(limit) reads."""

import json
import math
import os

from dreamlake._stream_files import StreamFiles


def _append(files, values, start_ts=0.0):
    rows = [{"_ts": start_ts + i, "v": v} for i, v in enumerate(values)]
    return files.append(rows, [r["_ts"] for r in rows])


def _all(files):
    rows, total = files.read(0, 10**9)
    return [(i, row["v"]) for i, _, row in rows], total


def test_append_assigns_consecutive_indices_and_reads_pages(tmp_path):
    files = StreamFiles(str(tmp_path / "t"))
    assert _append(files, range(5)) == 0
    assert _append(files, range(5, 8), start_ts=5) == 5
    rows, total = files.read(3, 3)
    assert total == 8
    assert [(i, ts, r["v"]) for i, ts, r in rows] == [(3, 3.0, 3), (4, 4.0, 4), (5, 5.0, 5)]
    assert files.read(8, 10) == ([], 8)


def test_torn_last_line_is_cut_and_earlier_rows_survive(tmp_path):
    files = StreamFiles(str(tmp_path / "t"))
    _append(files, range(3))
    files.close()
    with open(files.data_path, "ab") as data:
        data.write(b'{"_ts": 9, "v": ')  # a crash mid-line
    fresh = StreamFiles(str(tmp_path / "t"))
    assert _all(fresh) == ([(0, 0), (1, 1), (2, 2)], 3)
    assert _append(fresh, [42], start_ts=3) == 3
    assert _all(fresh) == ([(0, 0), (1, 1), (2, 2), (3, 42)], 4)
    for line in open(fresh.data_path, encoding="utf-8"):
        json.loads(line)  # every line is whole JSON again


def test_lines_written_but_not_indexed_are_picked_up(tmp_path):
    files = StreamFiles(str(tmp_path / "t"))
    _append(files, range(2))
    files.close()
    with open(files.data_path, "ab") as data:  # crash after data, before index
        data.write(b'{"_ts":2.0,"v":2}\nnot json at all\n{"_ts":3.0,"v":3}\n')
    fresh = StreamFiles(str(tmp_path / "t"))
    assert _append(fresh, [4], start_ts=4) == 4
    assert _all(fresh) == ([(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)], 5)


def test_index_ahead_of_data_is_trimmed(tmp_path):
    files = StreamFiles(str(tmp_path / "t"))
    _append(files, range(4))
    files.close()
    with open(files.data_path, "r+b") as data:  # data lost its last two lines
        lines = data.read().split(b"\n")
        data.seek(0)
        data.truncate()
        data.write(b"\n".join(lines[:2]) + b"\n")
    fresh = StreamFiles(str(tmp_path / "t"))
    fresh.reconcile()
    assert _all(fresh) == ([(0, 0), (1, 1)], 2)


def test_deleted_index_is_rebuilt(tmp_path):
    files = StreamFiles(str(tmp_path / "t"))
    _append(files, range(6))
    files.close()
    os.unlink(files.offsets_path)
    os.unlink(files.ts_path)
    fresh = StreamFiles(str(tmp_path / "t"))
    fresh.reconcile()
    assert _all(fresh) == ([(i, i) for i in range(6)], 6)


def test_ts_range_uses_sorted_index_and_scans_when_unsorted(tmp_path):
    files = StreamFiles(str(tmp_path / "t"))
    _append(files, range(100))
    assert files.index_range(10.0, 20.0) == (10, 20)
    assert not os.path.exists(files.unsorted_path)
    files.append([{"_ts": 5.5, "v": -1}], [5.5])
    assert os.path.exists(files.unsorted_path)
    assert files.scan_ts(5.0, 6.5, 10) == [5, 6, 100]


def test_nonfinite_values_round_trip_and_stay_valid_json(tmp_path):
    files = StreamFiles(str(tmp_path / "t"))
    files.append([{"_ts": 1.0, "a": math.nan, "b": [math.inf, -math.inf], "c": None}], [1.0])
    (_, _, row), = files.read(0, 1)[0]
    assert math.isnan(row["a"]) and row["b"] == [math.inf, -math.inf] and row["c"] is None

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    for line in open(files.data_path, encoding="utf-8"):
        json.loads(line, parse_constant=refuse)
