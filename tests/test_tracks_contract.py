"""Tracks contract (DESIGN §4 "Tracks", §6 "bad input"), tested from the outside.

Every test writes through the public API and checks what landed: the rows in
``tracks/<name>/data.jsonl`` (parsed strictly: NaN/Infinity literals rejected)
and what ``read()``/``stats()``/``tracks.list()`` give back.
"""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

from disk import disk_rows, read_all, strict_loads
from dreamlake import Session

WS, NAME = "ws", "run"


# ----------------------------------------------------------------- helpers





def point_ts(point):
    # the contract leaves open where _ts sits in a read() point: top level or in "data"
    if "_ts" in point:
        return point["_ts"]
    return point["data"]["_ts"]


def fields(point):
    return {k: v for k, v in point["data"].items() if k != "_ts"}




def tree(root):
    return {p for p in root.rglob("*")}


@pytest.fixture
def sdir(tmp_path):
    return tmp_path / WS / NAME


@pytest.fixture
def session(tmp_path):
    s = Session(prefix=f"{WS}/{NAME}", root=str(tmp_path))
    s.open()
    try:
        yield s
    finally:
        if s._is_open:
            s.close()


# ----------------------------------------------------------------- _ts rules


def test_ts_omitted_is_now_and_strictly_increasing_across_tracks(session, sdir):
    import time

    t0 = time.time()
    for i in range(3000):
        session.track("a" if i % 2 else "b").append(i=i)
    session.close()
    t1 = time.time()
    ts_by_i = {}
    for row in disk_rows(sdir, "a") + disk_rows(sdir, "b"):
        ts_by_i[row["i"]] = row["_ts"]
    assert sorted(ts_by_i) == list(range(3000)), "rows lost or merged"
    ordered = [ts_by_i[i] for i in range(3000)]
    assert all(x < y for x, y in zip(ordered, ordered[1:])), "_ts not strictly increasing in call order"
    assert t0 - 1 <= ordered[0] and ordered[-1] <= t1 + 1, "_ts is not the current time"


def test_ts_minus_one_inherits_last_ts_across_tracks(session):
    session.track("robot/pose").append(position=[1.0, 2.0])
    session.track("camera/left").append(width=640, _ts=-1)
    session.track("robot/velocity").append(linear=[0.1], _ts=-1)
    session.track("x").append(a=1, _ts=123.5)
    session.track("y").append(b=2, _ts=-1)

    pose = read_all(session.track("robot/pose"))
    cam = read_all(session.track("camera/left"))
    vel = read_all(session.track("robot/velocity"))
    y = read_all(session.track("y"))
    assert len(pose) == len(cam) == len(vel) == len(y) == 1
    assert point_ts(cam[0]) == point_ts(pose[0]) == point_ts(vel[0])
    assert fields(cam[0]) == {"width": 640}
    assert point_ts(y[0]) == 123.5 and fields(y[0]) == {"b": 2}


def test_explicit_ts_used_as_is(session, sdir):
    given = [1.5, 7, 1e9 + 0.123456789, -2.5, np.float64(2.25), 0.0]
    t = session.track("explicit")
    for k, ts in enumerate(given):
        t.append(k=k, _ts=ts)
    points = read_all(t)
    assert [fields(p)["k"] for p in points] == list(range(len(given)))
    assert [point_ts(p) for p in points] == [float(x) for x in given]
    session.close()
    assert [r["_ts"] for r in disk_rows(sdir, "explicit")] == [float(x) for x in given]


# True/False are ints to Python but never a timestamp a user meant: ValueError.
@pytest.mark.parametrize(
    "bad",
    ["x", "1.0", True, False, math.nan, math.inf, -math.inf, np.float64("nan"), [], [1.0], {}, 1j, object()],
    ids=repr,
)
def test_bad_ts_raises_valueerror_at_the_call_and_writes_nothing(session, bad):
    t = session.track("t")
    with pytest.raises(ValueError):
        t.append(v=1, _ts=bad)
    with pytest.raises(ValueError):
        t.append_batch([{"v": 2, "_ts": 5.0}, {"v": 3, "_ts": bad}])
    t.append(v=4, _ts=10.0)
    points = read_all(t)
    # a rejected batch is rejected whole: nothing of it is written
    assert [fields(p) for p in points] == [{"v": 4}]


# ----------------------------------------------------------------- merge rule


def test_equal_ts_merges_later_fields_win_and_different_ts_closes_row(session, sdir):
    t = session.track("robot/state")
    t.append(q=[0.1, 0.2], b=1, _ts=10.0)
    t.append(v=[0.01, 0.02], b=2, _ts=10.0)
    t.append(c=3, _ts=11.0)
    # row 10.0 was closed by 11.0: an equal _ts later starts a new row
    t.append(d=4, _ts=10.0)
    t.flush()
    rows = disk_rows(sdir, "robot/state")
    assert rows == [
        {"_ts": 10.0, "q": [0.1, 0.2], "b": 2, "v": [0.01, 0.02]},
        {"_ts": 11.0, "c": 3},
        {"_ts": 10.0, "d": 4},
    ]


def test_merge_is_per_track(session, sdir):
    session.track("a").append(x=1, _ts=5.0)
    session.track("b").append(y=2, _ts=5.0)
    session.track("a").append(z=3, _ts=5.0)
    session.close()
    assert disk_rows(sdir, "a") == [{"_ts": 5.0, "x": 1, "z": 3}]
    assert disk_rows(sdir, "b") == [{"_ts": 5.0, "y": 2}]


def test_flush_closes_the_open_row(session, sdir):
    t = session.track("t")
    t.append(a=1, _ts=5.0)
    t.flush()
    t.append(b=2, _ts=5.0)
    session.close()
    assert disk_rows(sdir, "t") == [{"_ts": 5.0, "a": 1}, {"_ts": 5.0, "b": 2}]


def test_merge_does_not_depend_on_timing_for_quick_successive_appends(session, sdir):
    t = session.track("pairs")
    for i in range(2000):
        t.append(a=i, _ts=float(i))
        t.append(b=-i, _ts=float(i))
    session.close()
    rows = disk_rows(sdir, "pairs")
    assert rows == [{"_ts": float(i), "a": i, "b": -i} for i in range(2000)]


def test_append_batch_stamps_and_merges_like_append(session, sdir):
    t = session.track("loss")
    t.append_batch([{"value": 0.5, "epoch": 1}, {"value": 0.4, "epoch": 2}, {"value": 0.3, "epoch": 3}])
    t.append_batch([{"a": 1, "_ts": 100.0}, {"b": 2, "_ts": 100.0}, {"c": 3, "_ts": 101.0}])
    session.close()
    rows = disk_rows(sdir, "loss")
    assert [{k: v for k, v in r.items() if k != "_ts"} for r in rows[:3]] == [
        {"value": 0.5, "epoch": 1},
        {"value": 0.4, "epoch": 2},
        {"value": 0.3, "epoch": 3},
    ]
    stamped = [r["_ts"] for r in rows[:3]]
    assert stamped[0] < stamped[1] < stamped[2]
    assert rows[3:] == [{"_ts": 100.0, "a": 1, "b": 2}, {"_ts": 101.0, "c": 3}]


def test_flush_reports_the_track(session):
    t = session.track("f")
    for i in range(3):
        t.append(i=i)
    result = t.flush()
    assert {"trackId", "startIndex", "endIndex", "count"} <= set(result)


# ----------------------------------------------------------------- values


def test_values_are_captured_at_the_call(session, sdir):
    lst = [1, 2]
    nested = {"k": [1], "m": {"n": 1}}
    arr = np.arange(3.0)
    t = session.track("cap")
    t.append(l=lst, n=nested, a=arr, _ts=1.0)
    row = {"l": [7], "_ts": 2.0}
    t.append_batch([row])
    lst.append(3)
    nested["k"].append(2)
    nested["m"]["n"] = 99
    nested["new"] = 1
    arr[0] = 42.0
    row["l"].append(8)
    row["extra"] = 1
    points = read_all(t)
    assert [fields(p) for p in points] == [
        {"l": [1, 2], "n": {"k": [1], "m": {"n": 1}}, "a": [0.0, 1.0, 2.0]},
        {"l": [7]},
    ]
    session.close()
    assert disk_rows(sdir, "cap")[0]["a"] == [0.0, 1.0, 2.0]


def test_numpy_scalars_and_arrays_are_stored_as_numbers_and_lists(session, sdir):
    session.track("np").append(
        f32=np.float32(0.5),
        f64=np.float64(0.25),
        i64=np.int64(7),
        i32=np.int32(-3),
        u8=np.uint8(255),
        b=np.bool_(True),
        m=np.array([[1, 2], [3, 4]]),
        v=np.array([0.5, 1.5], dtype=np.float32),
        e=np.zeros(0),
        _ts=1.0,
    )
    session.close()
    (row,) = disk_rows(sdir, "np")
    assert row == {
        "_ts": 1.0,
        "f32": 0.5,
        "f64": 0.25,
        "i64": 7,
        "i32": -3,
        "u8": 255,
        "b": True,
        "m": [[1, 2], [3, 4]],
        "v": [0.5, 1.5],
        "e": [],
    }
    assert type(row["i64"]) is int and type(row["f32"]) is float and row["b"] is True


def test_nan_and_inf_round_trip_and_files_stay_valid_json(session, sdir):
    t = session.track("nf")
    t.append(
        a=math.nan,
        b=math.inf,
        c=-math.inf,
        d=[1.0, math.nan, -math.inf],
        e={"x": math.inf},
        f=np.float64("nan"),
        g=np.array([np.inf, 2.0]),
        _ts=1.0,
    )
    (p,) = read_all(t)
    got = fields(p)
    assert math.isnan(got["a"]) and got["b"] == math.inf and got["c"] == -math.inf
    assert got["d"][0] == 1.0 and math.isnan(got["d"][1]) and got["d"][2] == -math.inf
    assert got["e"] == {"x": math.inf}
    assert math.isnan(got["f"]) and got["g"] == [math.inf, 2.0]
    session.close()
    (raw,) = (session.directory / "tracks" / "nf" / "data.jsonl").read_text().splitlines()
    strict_loads(raw)  # raises on NaN / Infinity literals
    # and read back from disk by a fresh session, not only from memory
    with Session(prefix=f"{WS}/{NAME}", root=str(sdir.parent.parent)) as s2:
        (p2,) = read_all(s2.track("nf"))
        assert math.isnan(fields(p2)["a"]) and fields(p2)["c"] == -math.inf


@pytest.mark.parametrize(
    "bad",
    [object(), {1, 2}, frozenset([1]), b"bytes", 1j, len, [1, object()], {"k": {1, 2}}],
    ids=lambda v: type(v).__name__,
)
def test_unsupported_value_types_raise_typeerror_at_the_call(session, bad):
    t = session.track("types")
    with pytest.raises(TypeError):
        t.append(v=bad)
    with pytest.raises(TypeError):
        t.append_batch([{"v": 1}, {"v": bad}])
    t.append(v=1)
    assert [fields(p) for p in read_all(t)] == [{"v": 1}]


# ----------------------------------------------------------------- reads


def _fill(session, name, n):
    t = session.track(name)
    for i in range(n):
        t.append(i=i, _ts=float(i))
    return t


def test_read_pagination_fields(session):
    t = _fill(session, "pages", 25)
    first = t.read(start_index=0, limit=10)
    assert [p["index"] for p in first["data"]] == list(range(10))
    assert [fields(p)["i"] for p in first["data"]] == list(range(10))
    # endIndex is the index of the last point returned (inclusive)
    assert (first["startIndex"], first["endIndex"], first["hasMore"]) == (0, 9, True)
    # "total" is ambiguous (rows returned vs. rows in track); accept either reading
    assert first["total"] in (10, 25)

    middle = t.read(start_index=10, limit=10)
    assert [fields(p)["i"] for p in middle["data"]] == list(range(10, 20))
    assert (middle["startIndex"], middle["endIndex"], middle["hasMore"]) == (10, 19, True)

    last = t.read(start_index=20, limit=10)
    assert [p["index"] for p in last["data"]] == list(range(20, 25))
    assert (last["startIndex"], last["endIndex"], last["hasMore"]) == (20, 24, False)

    past = t.read(start_index=25, limit=10)
    assert past["data"] == [] and past["hasMore"] is False

    everything = t.read()
    assert [p["index"] for p in everything["data"]] == list(range(25))
    assert [point_ts(p) for p in everything["data"]] == [float(i) for i in range(25)]


def test_read_by_ts_range_is_start_inclusive_end_exclusive(session):
    t = _fill(session, "range", 10)
    page = t.read(start_ts=3.0, end_ts=6.0)
    assert [point_ts(p) for p in page["data"]] == [3.0, 4.0, 5.0]
    assert [p["index"] for p in page["data"]] == [3, 4, 5]
    assert [fields(p)["i"] for p in t.read(start_ts=7.0)["data"]] == [7, 8, 9]
    assert [fields(p)["i"] for p in t.read(start_ts=0.0, end_ts=10.0, limit=4)["data"]] == [0, 1, 2, 3]
    assert t.read(start_ts=20.0, end_ts=30.0)["data"] == []


def test_read_by_ts_range_with_out_of_order_ts(session):
    t = session.track("ooo")
    for i, ts in enumerate([5.0, 1.0, 3.0, 9.0, 2.0]):
        t.append(i=i, _ts=ts)
    page = t.read(start_ts=2.0, end_ts=6.0)
    # rows whose _ts lies in [2, 6), in index order
    assert [(p["index"], point_ts(p)) for p in page["data"]] == [(0, 5.0), (2, 3.0), (4, 2.0)]
    assert t.stats()["firstTs"] == 5.0 and t.stats()["lastTs"] == 2.0 or (
        t.stats()["firstTs"] == 1.0 and t.stats()["lastTs"] == 9.0
    )  # first/last by index or by value: either reading is fine


def test_read_sees_everything_appended_before_it(session):
    t = session.track("barrier")
    for i in range(5000):
        t.append(i=i)
    points = read_all(t)
    assert [fields(p)["i"] for p in points] == list(range(5000))
    assert [p["index"] for p in points] == list(range(5000))


def test_stats(session):
    t = session.track("s")
    for i in range(5):
        t.append(v=i, _ts=10.0 + i)
    stats = t.stats()
    assert int(stats["totalDataPoints"]) == 5
    assert stats["firstTs"] == 10.0 and stats["lastTs"] == 14.0
    assert stats["createdAt"] and stats["updatedAt"]


def test_tracks_list_includes_hierarchical_names(session):
    counts = {"loss": 1, "robot/pose": 2, "robot/pose/left": 3, "robot/velocity": 1}
    for name, n in counts.items():
        for i in range(n):
            session.track(name).append(i=i)
    session.tracks.flush()
    listed = {t["name"]: int(t["totalDataPoints"]) for t in session.tracks.list()}
    assert listed == counts


def test_torn_last_line_never_breaks_reading_and_later_appends_continue(tmp_path, sdir):
    with Session(prefix=f"{WS}/{NAME}", root=str(tmp_path)) as s:
        t = s.track("loss")
        for i in range(5):
            t.append(i=i, _ts=float(i))
    data = sdir / "tracks" / "loss" / "data.jsonl"
    with open(data, "ab") as f:
        f.write(b'{"_ts": 99.0, "i": 9')  # a crash mid-write: half a line, no newline

    with Session(prefix=f"{WS}/{NAME}", root=str(tmp_path)) as s:
        t = s.track("loss")
        points = read_all(t)
        assert [fields(p)["i"] for p in points] == [0, 1, 2, 3, 4]
        assert int(t.stats()["totalDataPoints"]) == 5
        t.append(i=5, _ts=5.0)
        t.append(i=6, _ts=6.0)

    with Session(prefix=f"{WS}/{NAME}", root=str(tmp_path)) as s:
        points = read_all(s.track("loss"))
        assert [p["index"] for p in points] == list(range(7))
        assert [fields(p)["i"] for p in points] == list(range(7))

    parsed, broken = [], []
    for line in data.read_text().splitlines():
        try:
            parsed.append(strict_loads(line))
        except ValueError:
            broken.append(line)
    assert [(r["index"], r["data"]["i"]) for r in parsed] == [(i, i) for i in range(7)]  # new rows are whole lines of their own
    assert len(broken) <= 1


def test_complete_rows_on_disk_are_readable_after_a_writer_died_before_indexing(tmp_path, sdir):
    # data.jsonl is the source of truth; any index is derived. A process killed
    # after writing rows but before indexing them leaves exactly this state.
    with Session(prefix=f"{WS}/{NAME}", root=str(tmp_path)) as s:
        for i in range(5):
            s.track("loss").append(i=i, _ts=float(i))
    with open(sdir / "tracks" / "loss" / "data.jsonl", "a") as f:
        for i in range(5, 8):
            f.write(json.dumps({"_ts": float(i), "i": i}) + "\n")
        f.write('{"_ts": 8.0, "i"')  # and a torn tail

    with Session(prefix=f"{WS}/{NAME}", root=str(tmp_path)) as s:
        t = s.track("loss")
        points = read_all(t)
        assert [(p["index"], fields(p)["i"]) for p in points] == [(i, i) for i in range(8)]
        assert [fields(p)["i"] for p in t.read(start_index=6, limit=10)["data"]] == [6, 7]
        assert [fields(p)["i"] for p in t.read(start_ts=6.0, end_ts=100.0)["data"]] == [6, 7]
        assert int(t.stats()["totalDataPoints"]) == 8 and t.stats()["lastTs"] == 7.0
        assert {x["name"]: int(x["totalDataPoints"]) for x in s.tracks.list()} == {"loss": 8}


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ["../x", "/abs", "", "a/../../b", "..", "a/..", "x/../../../../evil", "a/./b"])
def test_bad_track_names_raise_valueerror_and_write_nothing_outside(session, tmp_path, sdir, name):
    before = tree(tmp_path)
    with pytest.raises(ValueError):
        # raising at track() or at the first append are both "at the call"
        session.track(name).append(x=1)
    session.close()
    outside = {p for p in tree(tmp_path) - before if sdir not in p.parents and p != sdir}
    assert outside == set()
    assert not (tmp_path / "evil").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prefix": "../evil"},
        {"prefix": "ws/../../evil"},
        {"name": "..", "workspace": "ws"},
        {"name": "x", "workspace": "../.."},
        {"name": "a/../../evil", "workspace": "ws"},
    ],
    ids=str,
)
def test_bad_session_names_raise_valueerror_and_write_nothing_outside(tmp_path, kwargs):
    root = tmp_path / "store"
    root.mkdir()
    before = tree(tmp_path)
    with pytest.raises(ValueError):
        with Session(root=str(root), **kwargs) as s:
            s.track("t").append(x=1)
    outside = {p for p in tree(tmp_path) - before if root not in p.parents}
    assert outside == set()


@pytest.mark.parametrize("path", ["../../evil", "/../x", "models/../../../evil"])
def test_bad_file_paths_raise_valueerror_and_write_nothing_outside(session, tmp_path, sdir, path):
    src = tmp_path / "model.pth"
    src.write_bytes(b"weights")
    before = tree(tmp_path)
    with pytest.raises(ValueError):
        session.files.upload(str(src), path=path)
    assert session.files.list() == []
    session.close()
    outside = {p for p in tree(tmp_path) - before if sdir not in p.parents and p != sdir}
    assert outside == set()


def test_unknown_log_level_raises_valueerror(session, sdir):
    for level in ("loud", "verbose", ""):
        with pytest.raises(ValueError):
            session.log("nope", level=level)
    for level in ("debug", "info", "warn", "error", "fatal"):
        session.log(f"at {level}", level=level)
    session.close()
    entries = [strict_loads(line) for line in (sdir / "logs.jsonl").read_text().splitlines()]
    assert [(e["message"], e["level"]) for e in entries] == [
        (f"at {lv}", lv) for lv in ("debug", "info", "warn", "error", "fatal")
    ]


def test_upload_of_missing_file_raises_filenotfounderror_at_the_call(session, tmp_path):
    with pytest.raises(FileNotFoundError):
        session.files.upload(str(tmp_path / "does-not-exist.pth"), path="/models")
    assert session.files.list() == []


# ---------------------------------------------------------------- upstream 0.3 call shapes


def test_append_chains_log_is_a_synonym_and_a_dict_positional_is_the_row(tmp_path):
    with Session(prefix="ws/chain", root=str(tmp_path)) as s:
        t = s.track("a")
        assert t.append(x=1).append(x=2) is t
        assert t.log(x=3) is t
        t.append({"x": 4, "_ts": 50.0}, y=1)  # dict positional, keywords added, _ts inside
        with pytest.raises(TypeError, match="keywords"):
            t.append(3, loss=0.5)  # the step as a positional: refused, not stored as _ts
        with pytest.raises(TypeError, match="field names must be str"):
            t.append({1: 2})
        result = s.track("b").append_batch([{"v": 1}, {"v": 2}])
        assert result["count"] == 2 and result["trackId"] == "b"
        assert [tr["name"] for tr in s.track().list_all()] == ["a", "b"]
        rows = [p["data"] for p in t.read()["data"]]
    assert [r["x"] for r in rows] == [1, 2, 3, 4]
    assert rows[3] == {"x": 4, "y": 1, "_ts": 50.0}
    assert all(r["_ts"] > 1e9 for r in rows[:3])


def test_ts_minus_one_borrows_only_this_threads_last_stamp(tmp_path):
    """A robot thread and a training thread log into one session: ``_ts=-1`` in
    each gets its own thread's last stamp, never the other's."""
    start = threading.Barrier(2)
    with Session(prefix="ws/threads", root=str(tmp_path)) as s:

        def robot():
            start.wait()
            for i in range(2000):
                s.track("robot/pose").append(q=i, _ts=1000.0 + i)
                s.track("robot/cam").append(frame=i, _ts=-1)

        def train():
            start.wait()
            for i in range(2000):
                s.track("train").append(loss=i, _ts=5000.0 + i)
                s.track("train/extra").append(lr=i, _ts=-1)

        threads = [threading.Thread(target=robot), threading.Thread(target=train)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        cam = read_all(s.track("robot/cam"))
        extra = read_all(s.track("train/extra"))
    assert [(p["data"]["frame"], p["data"]["_ts"]) for p in cam] == [(i, 1000.0 + i) for i in range(2000)]
    assert [(p["data"]["lr"], p["data"]["_ts"]) for p in extra] == [(i, 5000.0 + i) for i in range(2000)]
