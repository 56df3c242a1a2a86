"""dreamlake.open_session: a read-only reader that changes nothing on disk, and
to_pandas() on its tracks and on a live session's tracks."""

import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dreamlake
from dreamlake import Session, open_session
from test_store_format import _write_upstream_store


def snapshot(root: Path) -> dict:
    """Every path under root with its bytes and mtime (links as their target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        if path.is_symlink():
            out[str(path)] = ("link", os.readlink(path), st.st_mtime_ns)
        elif path.is_dir():
            out[str(path)] = ("dir", st.st_mtime_ns)
        else:
            out[str(path)] = ("file", path.read_bytes(), st.st_mtime_ns)
    return out


def _write_session(root: Path) -> None:
    model = root.parent / "model.pt"
    model.write_bytes(b"weights" * 10)
    with pytest.raises(RuntimeError):
        with Session(prefix="ws/run", root=str(root), description="d", tags=["t1"]) as s:
            s.params.set(lr=0.1, model={"arch": "mlp"})
            for i in range(50):
                s.track("train").append(loss=1.0 / (i + 1), step=i, _ts=1000.0 + i)
            s.track("train").append(loss=math.nan, step=50, _ts=1050.0)
            s.track("train").append(loss=math.inf, step=51, _ts=1051.0)
            s.track("robot/pose").append(q=[0.1, 0.2], _ts=5.0)
            s.log("hello", metadata={"k": 1})
            s.files.upload(str(model), path="/models", tags=["best"])
            raise RuntimeError("boom")


def _read_everything(reader, tmp_path: Path) -> dict:
    train = reader.track("train")
    out = {
        "status": reader.status,
        "error": reader.error,
        "tags": reader.tags,
        "description": reader.description,
        "params": reader.params,
        "names": reader.tracks.names(),
        "stats": train.stats(),
        "first": train.read(0, 3),
        "range": train.read(start_ts=1010.0, end_ts=1013.0),
        "logs": [e["data"]["message"] for e in reader.logs()["data"]],
        "files": reader.files.list(path="/models", tags=["best"]),
        "frame": train.to_pandas(),
        "all": reader.to_pandas(),
    }
    out["downloaded"] = reader.files.download(out["files"][0]["id"], tmp_path / "got.pt")
    return out


def test_reader_reads_everything_and_writes_nothing(tmp_path):
    root = tmp_path / "store"
    _write_session(root)
    before = snapshot(root)
    got = _read_everything(open_session("ws/run", root=root), tmp_path)
    assert snapshot(root) == before

    assert got["status"] == "failed" and "boom" in got["error"]
    assert (got["tags"], got["description"]) == (["t1"], "d")
    assert got["params"] == {"lr": 0.1, "model.arch": "mlp"}
    assert got["names"] == ["robot/pose", "train"]
    assert got["stats"]["totalDataPoints"] == 52 and (got["stats"]["firstTs"], got["stats"]["lastTs"]) == (1000.0, 1051.0)
    assert [r["data"]["step"] for r in got["first"]["data"]] == [0, 1, 2] and got["first"]["hasMore"]
    assert [r["index"] for r in got["range"]["data"]] == [10, 11, 12]
    assert got["logs"][0] == "hello"
    assert Path(got["downloaded"]).read_bytes() == b"weights" * 10

    frame = got["frame"]
    assert list(frame.columns) == ["_ts", "loss", "step"] and list(frame.index) == list(range(52))
    assert frame["_ts"].dtype == "float64" and frame["loss"].dtype == "float64"
    assert math.isnan(frame["loss"][50]) and frame["loss"][51] == math.inf and frame["loss"][1] == 0.5
    assert set(got["all"]) == {"train", "robot/pose"} and got["all"]["robot/pose"]["q"][0] == [0.1, 0.2]


def test_reader_on_a_store_without_index_reads_it_in_memory(tmp_path):
    """An upstream-written store (no index), a torn last line: read right, nothing written."""
    root = tmp_path / "store"
    sdir = root / "ws" / "up"
    _write_upstream_store(sdir)
    with open(sdir / "tracks" / "loss" / "data.jsonl", "ab") as f:
        f.write(b'{"index": 3, "data": {"value": 9')  # torn
    before = snapshot(root)
    reader = open_session("ws/up", root=root)
    loss = reader.track("loss")
    assert [(r["index"], r["data"]["value"]) for r in loss.read(0, 10)["data"]] == [(0, 1.0), (1, 1.0), (2, 2.0)]
    assert [r["index"] for r in loss.read(1, 1)["data"]] == [1]
    assert [r["index"] for r in loss.read(start_ts=1.7e9 + 1.5)["data"]] == [0, 2]  # unsorted _ts: scanned, index order
    assert loss.stats()["totalDataPoints"] == 3
    assert [e["data"]["message"] for e in reader.logs(1, 5)["data"]] == ["m1", "m2"]
    assert [f["id"] for f in reader.files.list()] == ["f1"] and reader.params["lr"] == 0.1
    assert list(loss.to_pandas()["value"]) == [1.0, 1.0, 2.0]
    assert snapshot(root) == before


def test_reader_sees_rows_past_a_stale_index(tmp_path):
    root = tmp_path / "store"
    with Session(prefix="ws/s", root=str(root)) as s:
        for i in range(5):
            s.track("t").append(x=i, _ts=float(i))
    data = root / "ws/s/tracks/t/data.jsonl"
    with open(data, "ab") as f:  # a process that crashed before indexing these
        f.write(b'{"index": 5, "data": {"_ts": 5.0, "x": 5}}\n{"index": 6, "data": {"_ts": 6.0, "x": 6}}\n')
    before = snapshot(root)
    t = open_session("ws/s", root=root).track("t")
    assert [r["data"]["x"] for r in t.read(3, 10)["data"]] == [3, 4, 5, 6]
    assert [r["index"] for r in t.read(start_ts=4.0, end_ts=6.0)["data"]] == [4, 5]
    assert (t.stats()["totalDataPoints"], t.stats()["lastTs"]) == (7, 6.0)
    assert snapshot(root) == before


def test_reader_refuses_what_is_not_there(tmp_path):
    with pytest.raises(FileNotFoundError, match="no session"):
        open_session("ws/none", root=tmp_path)
    with Session(prefix="ws/s", root=str(tmp_path)):
        pass
    reader = open_session("ws/s", root=tmp_path)
    with pytest.raises(KeyError, match="no track"):
        reader.track("missing")
    with pytest.raises(ValueError):
        open_session("../etc", root=tmp_path)
    with pytest.raises(ValueError):
        reader.logs(-1)
    with Session(prefix="ws/s", root=str(tmp_path)) as session:
        with pytest.raises(ValueError, match="ts must be"):
            session.track("x").to_pandas(ts="seconds")


def _run_on_read_only_copy(store: Path, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` with ``store`` mounted read-only (root: a read-only bind mount in a
    private mount namespace; others: the tree made non-writable)."""
    command = [sys.executable, "-c", script]
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("running as root without unshare: cannot make a read-only directory")
        probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
        if probe.returncode != 0:
            pytest.skip(f"unshare -m not permitted here: {probe.stderr.decode().strip()}")
        inner = f"mount --bind {store} {store} && mount -o remount,ro,bind {store} && exec \"$@\""
        command = ["unshare", "-m", "sh", "-c", inner, "sh", *command]
    else:
        for path in [store, *store.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode & ~0o222)
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60)
    finally:
        if os.geteuid() != 0:
            for path in [store, *store.rglob("*")]:
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | 0o200)


def test_reader_works_on_a_read_only_directory(tmp_path):
    root = tmp_path / "store"
    _write_session(root)
    _write_upstream_store(root / "ws" / "up")  # no index either: nothing may be created
    before = snapshot(root)
    script = textwrap.dedent(f"""
        import os, dreamlake
        probe = os.path.join({str(root)!r}, "probe")
        try:
            open(probe, "w")
            raise SystemExit("the store is writable")
        except OSError:
            pass
        r = dreamlake.open_session("ws/run", root={str(root)!r})
        assert r.track("train").read(0, 100)["total"] == 52 and r.status == "failed"
        assert r.track("train").read(start_ts=1049.0)["data"][0]["data"]["step"] == 49
        assert len(r.track("train").to_pandas()) == 52 and r.logs()["data"][0]["data"]["message"] == "hello"
        up = dreamlake.open_session("ws/up", root={str(root)!r})
        assert up.track("loss").stats()["totalDataPoints"] == 3 and len(up.logs()["data"]) == 3
        print("read-only ok")
    """)
    result = _run_on_read_only_copy(root, script)
    assert result.returncode == 0 and "read-only ok" in result.stdout, result.stderr
    assert snapshot(root) == before


def test_live_track_to_pandas_and_datetime_ts(tmp_path):
    with Session(prefix="ws/live", root=str(tmp_path)) as s:
        track = s.track("m")
        for i in range(3):
            track.append(loss=float(i), _ts=1_700_000_000.0 + i)
        track.append(loss=-math.inf, extra="x", _ts=1_700_000_003.5)
        frame = track.to_pandas()  # sees every append before it (a barrier)
        stamped = track.to_pandas(ts="datetime")
    assert list(frame["loss"]) == [0.0, 1.0, 2.0, -math.inf] and list(frame.columns) == ["_ts", "loss", "extra"]
    assert frame["extra"].isna().tolist() == [True, True, True, False]
    assert str(stamped["_ts"].dtype).startswith("datetime64") and str(stamped["_ts"].dt.tz) == "UTC"
    assert stamped["_ts"].iloc[3].isoformat() == "2023-11-14T22:13:23.500000+00:00"


def test_to_pandas_without_pandas_says_how_to_get_it(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["pandas"] = None  # as if not installed
        import dreamlake
        with dreamlake.Session(prefix="ws/s", root={str(tmp_path)!r}) as s:
            s.track("t").append(x=1)
            try:
                s.track("t").to_pandas()
            except ImportError as exc:
                print(exc)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "needs pandas" in result.stdout and "pip install 'dreamlake[export]'" in result.stdout, result.stderr


def test_reader_is_exported():
    assert dreamlake.open_session is open_session and "open_session" in dreamlake.__all__


def test_parquet_keeps_what_arrow_types_and_writes_the_rest_as_json(tmp_path):
    import pandas as pd

    from dreamlake._export import write_table

    with Session(prefix="ws/m", root=str(tmp_path)) as s:
        s.track("t").append(v=1, q=[1.0, 2.0], w={"a": 1})
        s.track("t").append(v="x", q=[3.0], w=[1, "b"])
        s.track("t").append(u=2.5)
    frame = open_session("ws/m", root=tmp_path).track("t").to_pandas()
    write_table(frame, tmp_path / "t.parquet", "parquet")
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert [list(q) if q is not None else None for q in back["q"]] == [[1.0, 2.0], [3.0], None]
    assert list(back["v"])[:2] == ["1", '"x"'] and back["v"].isna()[2]  # mixed int/str: JSON text
    assert list(back["w"])[:2] == ['{"a": 1}', '[1, "b"]'] and back["u"][2] == 2.5
    with pytest.raises(ValueError, match="format must be"):
        write_table(frame, tmp_path / "t.xlsx", "xlsx")


def test_reader_reads_the_data_when_the_index_disagrees_and_still_writes_nothing(tmp_path):
    root = tmp_path / "store"
    with Session(prefix="ws/s", root=str(root)) as s:
        for i in range(6):
            s.track("t").append(x=i, _ts=float(i))
    offsets = root / "ws/s/tracks/t/index.offsets"
    raw = bytearray(offsets.read_bytes())
    raw[8 * 2 : 8 * 3] = raw[8 * 1 : 8 * 2]  # row 2 points at row 1's line
    offsets.write_bytes(bytes(raw))
    before = snapshot(root)
    t = open_session("ws/s", root=root).track("t")
    assert [r["data"]["x"] for r in t.read(0, 10)["data"]] == list(range(6))
    assert [r["index"] for r in t.read(start_ts=2.0, end_ts=4.0)["data"]] == [2, 3]
    assert snapshot(root) == before
