"""The local store under real faults: a disk that fills, a filesystem remounted
read-only, a metadata rewrite that fails, and files corrupted behind our back.
Every row is written exactly once (no duplicates, no gaps) and corruption is
reported and repaired from the data, never papered over (DESIGN.md §6)."""

import contextlib
import errno
import logging
import os
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import dreamlake._local_sink as local_sink
import dreamlake._stream_files as stream_files
from dreamlake import Session
from disk import disk_rows, read_all, strict_loads

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@contextlib.contextmanager
def small_tmpfs(size="1m"):
    """A real, small filesystem of our own; always unmounted."""
    where = tempfile.mkdtemp(prefix="dreamlake-fs-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", where], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", where], check=False)
        os.rmdir(where)


def remount(path: str, mode: str) -> None:
    """Remount read-only or read-write; the kernel answers EBUSY while a write is
    under way on it, so try again until it takes."""
    deadline = time.monotonic() + 10
    while subprocess.run(["mount", "-o", f"remount,{mode}", path], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, f"could not remount {path} {mode}"
        time.sleep(0.005)


def fill(path: str, leave: int) -> str:
    """Fill the filesystem of ``path`` until at most ``leave`` bytes are free."""
    filler = os.path.join(path, "filler")
    with open(filler, "wb", buffering=0) as out:
        block = b"\0" * 4096
        while os.statvfs(path).f_bavail * os.statvfs(path).f_frsize > leave:
            try:
                out.write(block)
            except OSError:
                break
    return filler


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def assert_exactly_once(sdir, track, n):
    rows = disk_rows(sdir, track)  # checks index == position on every line
    assert [r["i"] for r in rows] == list(range(n)), "rows on disk are not each row exactly once, in order"


@needs_root
def test_disk_full_mid_batch_then_space_again_writes_each_row_once():
    with small_tmpfs("2m") as fs:
        root = os.path.join(fs, "store")
        with Session(prefix="ws/full", root=root) as s:
            t = s.track("t")
            for i in range(100):
                t.append(i=i, pad="x" * 200)
            s.flush()
            filler = fill(fs, leave=96 << 10)  # room for part of the next batch only
            for i in range(100, 4000):
                t.append(i=i, pad="x" * 200)
            wait_for(lambda: s.health()["write_errors"] > 0, what="a failed write")
            os.unlink(filler)
            s.flush()
        assert_exactly_once(Path(root) / "ws" / "full", "t", 4000)


@needs_root
def test_read_only_remount_then_writable_again_writes_each_row_once():
    """Linux refuses a read-only remount while a file on it is open for writing,
    so the remount comes before the writer opens the track's files: every write
    then fails with EROFS until the filesystem is writable again."""
    with small_tmpfs("8m") as fs:
        root = os.path.join(fs, "store")
        with Session(prefix="ws/ro", root=root) as s:
            t = s.track("t")
            remount(fs, "ro")
            try:
                for i in range(6000):
                    t.append(i=i, pad="y" * 100)
                wait_for(lambda: s.health()["write_errors"] > 0, what="a failed write")
                assert "Read-only file system" in s.health()["last_error"]
            finally:
                remount(fs, "rw")
            s.flush()
            assert [p["data"]["i"] for p in read_all(t)] == list(range(6000))
        assert_exactly_once(Path(root) / "ws" / "ro", "t", 6000)


def test_a_batch_that_landed_in_part_and_could_not_be_cut_back_is_completed_not_repeated(tmp_path, monkeypatch):
    """The read-only-remount case made deterministic: the second chunk of a batch
    fails, and the files cannot be truncated back (EROFS); the retry writes only
    the rows that did not land."""
    monkeypatch.setattr(stream_files, "ENCODE_CHUNK_ROWS", 8)
    files = stream_files.StreamFiles(str(tmp_path / "t"))
    files._chunk_rows = 8
    rows = [{"i": i, "_ts": float(i)} for i in range(20)]
    real_write, calls = stream_files._write_all, []

    def failing_write(fd, data):
        calls.append(fd)
        if len(calls) == 4:  # the data write of the second chunk
            raise OSError(errno.EROFS, "Read-only file system")
        real_write(fd, data)

    def no_truncate(fd, size):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(stream_files, "_write_all", failing_write)
    monkeypatch.setattr(stream_files.os, "ftruncate", no_truncate)
    with pytest.raises(OSError):
        files.append([dict(r) for r in rows], [r["_ts"] for r in rows])
    monkeypatch.setattr(stream_files, "_write_all", real_write)
    monkeypatch.undo()
    retry = rows + [{"i": 20, "_ts": 20.0}]  # the writer retries with more rows behind
    assert files.append([dict(r) for r in retry], [r["_ts"] for r in retry]) == 0
    got, total = files.read(0, 100)
    assert total == 21 and [row["i"] for _, _, row in got] == list(range(21))


def test_a_failing_metadata_rewrite_never_makes_rows_repeat(tmp_path, monkeypatch):
    real = local_sink.write_json_atomic
    failures = []

    def flaky(path, obj):
        if path.endswith("metadata.json") and len(failures) < 3:
            failures.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, obj)

    monkeypatch.setattr(local_sink, "write_json_atomic", flaky)
    with Session(prefix="ws/meta", root=str(tmp_path)) as s:
        for i in range(50):
            s.track("t").append(i=i)
            s.flush()
    assert failures, "the metadata rewrite was never attempted"
    assert_exactly_once(tmp_path / "ws" / "meta", "t", 50)
    meta = strict_loads((tmp_path / "ws" / "meta" / "tracks" / "t" / "metadata.json").read_text())
    assert meta["totalDataPoints"] == 50  # rewritten once the disk let it


# -- corruption ------------------------------------------------------------------------


def test_garbage_session_and_parameters_files_are_kept_aside_and_reported(tmp_path, caplog):
    with Session(prefix="ws/c", root=str(tmp_path), tags=["a"]) as s:
        s.params.set(lr=0.1)
    sdir = tmp_path / "ws" / "c"
    (sdir / "session.json").write_text('{"name": "c", "createdAt": "2020-01-01T00:00:00Z", "tags": [')
    (sdir / "parameters.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="dreamlake"):
        with Session(prefix="ws/c", root=str(tmp_path)) as s:
            s.params.set(bs=4)
    kept = sorted(p.name for p in sdir.iterdir() if ".corrupt-" in p.name)
    assert [k.split(".corrupt-")[0] for k in kept] == ["parameters.json", "session.json"]
    assert (sdir / kept[1]).read_text().startswith('{"name": "c", "createdAt": "2020')
    assert (sdir / kept[0]).read_text() == "{not json"
    assert sum("not valid JSON" in r.getMessage() for r in caplog.records) == 2
    assert strict_loads((sdir / "session.json").read_text())["status"] == "completed"


def _rewrite(path, fn):
    data = path.read_bytes()
    path.write_bytes(fn(data))


@pytest.mark.parametrize("damage", ["zeroed_ts", "shifted_offsets"])
def test_a_corrupted_index_is_detected_and_rebuilt_from_the_data(tmp_path, damage, caplog):
    with Session(prefix="ws/ix", root=str(tmp_path)) as s:
        for i in range(500):
            s.track("t").append(i=i, _ts=1000.0 + i)
    tdir = tmp_path / "ws" / "ix" / "tracks" / "t"
    if damage == "zeroed_ts":
        _rewrite(tdir / "index.ts", lambda b: b"\0" * len(b))
    else:
        _rewrite(tdir / "index.offsets", lambda b: b"".join(struct.pack("<Q", v + 7) for (v,) in struct.iter_unpack("<Q", b)))
    with caplog.at_level(logging.WARNING, logger="dreamlake"):
        with Session(prefix="ws/ix", root=str(tmp_path)) as s:
            page = s.track("t").read(start_index=490, limit=20)
            assert [(p["index"], p["data"]["i"], p["timestamp"]) for p in page["data"]] == [(i, i, 1000.0 + i) for i in range(490, 500)]
            ranged = s.track("t").read(start_ts=1100.0, end_ts=1105.0)["data"]
            assert [p["data"]["i"] for p in ranged] == list(range(100, 105))
            assert s.track("t").stats()["firstTs"] == 1000.0
    assert any("rebuilding it from the data" in r.getMessage() for r in caplog.records)


def test_an_index_corrupted_while_the_session_is_open_is_caught_by_the_read(tmp_path):
    with Session(prefix="ws/live", root=str(tmp_path)) as s:
        for i in range(300):
            s.track("t").append(i=i, _ts=10.0 + i)
        s.flush()
        tdir = tmp_path / "ws" / "live" / "tracks" / "t"
        _rewrite(tdir / "index.ts", lambda b: b[:800] + b"\0" * (len(b) - 800))
        page = s.track("t").read(start_index=200, limit=5)["data"]
        assert [(p["data"]["i"], p["timestamp"]) for p in page] == [(i, 10.0 + i) for i in range(200, 205)]


# -- the files area: a second line of defence behind the API's checks ------------------


def test_file_entries_cannot_point_or_be_changed_outside_the_files_area(tmp_path):
    from dreamlake._file_store import FileStore
    from dreamlake._errors import SinkError

    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    src = tmp_path / "a.bin"
    src.write_bytes(b"abc")
    store = FileStore(str(tmp_path / "ws" / "s"))
    entry = store.upload(str(src), "models", None, [], {})
    with pytest.raises(ValueError, match="cannot be changed"):
        store.update(entry["id"], {"storagePath": "../../../precious/keep.txt"})
    # an entry written behind our back that points outside is refused, not followed
    doc = strict_loads(Path(store.index_path).read_text())
    doc["files"][0]["storagePath"] = "../../../precious/keep.txt"
    Path(store.index_path).write_text(__import__("json").dumps(doc))
    with pytest.raises(SinkError, match="outside"):
        store.delete(entry["id"])
    assert (outside / "keep.txt").read_text() == "keep"


def test_uploading_a_fifo_is_refused_at_once(tmp_path):
    from dreamlake._file_store import FileStore

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(IsADirectoryError, match="not a regular file"):
        FileStore(str(tmp_path / "ws" / "s")).upload(str(fifo), "", None, [], {})


def test_reading_logs_never_takes_a_sound_index_for_a_corrupt_one(tmp_path, caplog):
    """Log entries keep their time as ISO text (microseconds) while the index keeps
    the float: the check must not call that a disagreement (and rebuild on every read)."""
    with caplog.at_level(logging.WARNING, logger="dreamlake"):
        with Session(prefix="ws/logs", root=str(tmp_path)) as s:
            for i in range(50):
                s.log(f"m{i}")
            assert [e["data"]["message"] for e in s.logs()["data"]] == [f"m{i}" for i in range(50)]
        files = local_sink.stream_files(str(tmp_path / "ws" / "logs"), "", is_log=True)
        rows, total = files.read(0, 100)
    assert total == 50 and [row["sequenceNumber"] for _, _, row in rows] == list(range(50))
    assert not [r for r in caplog.records if "rebuilding" in r.getMessage()]


# -- one bad value never stalls a session -------------------------------------------


@pytest.mark.parametrize("bad", [2**70, -(2**64), "lone \udcff surrogate", "complex"])
def test_values_no_sink_can_store_are_refused_at_the_call(tmp_path, bad):
    import numpy as np

    value = np.complex64(1 + 2j) if bad == "complex" else bad
    with Session(prefix="ws/refuse", root=str(tmp_path)) as s:
        t = s.track("t")
        with pytest.raises((ValueError, TypeError)):
            t.append(v=value)
        with pytest.raises((ValueError, TypeError)):
            t.append_batch([{"v": 1}, {"v": value}])
        with pytest.raises((ValueError, TypeError)):
            t.append(meta={"nested": [value]})
        t.append(v=(1 << 64) - 1)  # the edges of the one rule are fine
        t.append(v=-(1 << 63))
    assert [r["v"] for r in disk_rows(tmp_path / "ws" / "refuse", "t")] == [(1 << 64) - 1, -(1 << 63)]


def test_a_row_that_still_fails_in_the_writer_is_quarantined_alone_and_the_session_goes_on(tmp_path, caplog):
    """The safety net behind the checks at the call: a field name with a lone
    surrogate goes through append's fast path (names are not looked at there)."""
    with caplog.at_level(logging.WARNING, logger="dreamlake"):
        with Session(prefix="ws/poison", root=str(tmp_path)) as s:
            t = s.track("t")
            for i in range(100):
                t.append(i=i)
                if i == 50:
                    t.append(**{"bad\udcff": 1.0, "i": -1})
            s.flush()
            health = s.health()
            assert health["lost"] == {"dropped_for_budget": 0, "quarantined": 1, "sink_failing": 0}
            assert health["quarantine_reasons"] == {"UnicodeEncodeError": 1}
    sdir = tmp_path / "ws" / "poison"
    assert_exactly_once(sdir, "t", 100)  # every other row, in order, once
    (kept,) = [strict_loads(line) for line in (sdir / "quarantine.jsonl").read_text().splitlines()]
    assert kept["stream"] == "t" and kept["reason"].startswith("UnicodeEncodeError") and "bad" in kept["row"]
    meta = strict_loads((sdir / "session.json").read_text())
    assert meta["status"] == "completed" and meta["lost"] == {"quarantined": 1}
    shown = subprocess.run([__import__("sys").executable, "-m", "dreamlake", "show", "ws/poison", "--root", str(tmp_path)],
                           capture_output=True, text=True, check=True).stdout
    assert "lost rows: quarantined 1" in shown
    assert sum("could not be written" in r.getMessage() for r in caplog.records) == 1


def test_a_user_dict_shaped_like_the_non_finite_tag_round_trips_unchanged(tmp_path):
    shaped = {"$float": "nan"}
    with Session(prefix="ws/tag", root=str(tmp_path)) as s:
        s.track("t").append(tag=shaped, x=float("nan"))
        s.params.set(p=shaped)
        row = s.track("t").read()["data"][0]["data"]
        assert row["tag"] == shaped and row["x"] != row["x"]
        assert s.params.get() == {"p.$float": "nan"}  # params flatten dicts (as designed)
    reader = __import__("dreamlake").open_session("ws/tag", root=str(tmp_path))
    assert reader.track("t").read()["data"][0]["data"]["tag"] == shaped


@needs_root
def test_a_full_disk_never_freezes_the_loop_and_flush_says_so_at_once(monkeypatch):
    """With ``block`` (the default) and a store failing past the stall limit, the
    loop goes on (rows that do not fit are dropped and counted), flush() raises
    SinkError instead of waiting out its timeout, and the rows kept in memory are
    written once, in order, when space comes back."""
    import dreamlake._pipe as pipe_module
    from dreamlake import SinkError

    monkeypatch.setattr(pipe_module, "SINK_STALL_LIMIT", 0.5)
    with small_tmpfs("2m") as fs:
        root = os.path.join(fs, "store")
        s = Session(prefix="ws/stall", root=root, memory_budget=64 << 10, timeout=600).open()
        t = s.track("t")
        t.append(i=0)
        s.flush()
        filler = fill(fs, leave=0)
        n = 1
        while s.health()["lost"]["sink_failing"] == 0:  # blocks while the store may still recover, then goes on
            t.append(i=n, pad="z" * 100)
            n += 1
        with pytest.raises(SinkError, match="failing for"):
            s.flush()  # at once, not after timeout=600
        assert s.health()["write_errors"] > 0
        os.unlink(filler)
        wait_for(lambda: s.health()["pending_retry_rows"] == 0 and s.health()["queued"] == 0, what="the kept rows to be written")
        s.flush()
        s.close()
        kept = [r["i"] for r in disk_rows(Path(root) / "ws" / "stall", "t")]
        lost = s.health()["lost"]["sink_failing"]
    assert kept == sorted(set(kept)) and kept[0] == 0, "kept rows are written once, in order"
    assert len(kept) + lost == n, "every row is either written or counted as lost"
