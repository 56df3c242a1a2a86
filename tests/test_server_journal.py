"""The local backend's ingest journal: a crash at any point between the
journal record and the rows ends with the batch applied exactly once."""

from __future__ import annotations

import os

from dreamlake.server._journal import JournalRecord
from dreamlake.server._local_storage import LocalStorage
from dreamlake.server._prepare import SessionClock, prepare_batch
from dreamlake.server._settings import Settings
from dreamlake.server.wire import IngestBatch, StreamBatch


def _open(tmp_path, **settings) -> LocalStorage:
    return LocalStorage(Settings(root=tmp_path / "store", **settings))


def _values(storage: LocalStorage, ref, track: str = "t") -> list:
    return [row["data"]["v"] for row in storage.read_rows(ref, track, 0, 1000)["data"]]


def _crash_after_record(tmp_path, rows_written: int) -> tuple[LocalStorage, object]:
    """Journal a 4-row batch, write only ``rows_written`` of its rows, then 'crash'
    (drop the storage without closing it)."""
    storage = _open(tmp_path)
    ref = storage.get_session(storage.upsert_session("lab", "run", {})["id"])
    live = storage._live_for("lab", "run", create=False)
    rows = [{"_ts": float(i), "v": i} for i in range(4)]
    live.journal.record(JournalRecord("c", 1, [("track", "t", 0, 4)], [rows]))
    if rows_written:
        live.sink.write_rows("t", False, [dict(r) for r in rows[:rows_written]], [r["_ts"] for r in rows[:rows_written]])
    live.journal.close()
    return _open(tmp_path), ref


def test_record_without_rows_is_redone_on_restart(tmp_path):
    storage, ref = _crash_after_record(tmp_path, 0)
    assert _values(storage, storage.get_session(ref.id)) == [0, 1, 2, 3]


def test_partly_written_batch_is_completed_without_duplicates(tmp_path):
    storage, ref = _crash_after_record(tmp_path, 2)
    ref = storage.get_session(ref.id)
    assert _values(storage, ref) == [0, 1, 2, 3]
    ack = storage.ingest(ref, prepare_batch(IngestBatch("c", 1, []), SessionClock()))
    assert ack.duplicate and (ack.ranges[0].startIndex, ack.ranges[0].endIndex) == (0, 3)
    storage.close()
    third = _open(tmp_path)  # the redo is recorded: nothing happens twice
    assert _values(third, third.get_session(ref.id)) == [0, 1, 2, 3]


def test_torn_journal_tail_is_cut_and_ingest_goes_on(tmp_path):
    storage = _open(tmp_path)
    ref = storage.get_session(storage.upsert_session("lab", "run", {})["id"])
    storage.ingest(ref, prepare_batch(IngestBatch("c", 1, [StreamBatch("t", [{"v": 0}])]), SessionClock()))
    storage.close()
    journal = tmp_path / "store" / "lab" / "run" / ".ingest" / "journal"
    with open(journal, "ab") as out:
        out.write(b"\x40\x00\x00\x00garbage")  # a frame header promising 64 bytes, then a crash
    again = _open(tmp_path)
    ref = again.get_session(ref.id)
    ack = again.ingest(ref, prepare_batch(IngestBatch("c", 2, [StreamBatch("t", [{"v": 1}])]), SessionClock()))
    assert not ack.duplicate and ack.ranges[0].startIndex == 1
    assert _values(again, ref) == [0, 1]


def test_compaction_keeps_duplicates_known(tmp_path):
    storage = _open(tmp_path, journal_compact_bytes=1)
    ref = storage.get_session(storage.upsert_session("lab", "run", {})["id"])
    for seq in (1, 2, 3):
        storage.ingest(ref, prepare_batch(IngestBatch("c", seq, [StreamBatch("t", [{"v": seq}])]), SessionClock()))
    journal = tmp_path / "store" / "lab" / "run" / ".ingest" / "journal"
    assert os.path.getsize(journal) == 0 and journal.with_name("applied.json").exists()
    storage.close()
    again = _open(tmp_path)
    ref = again.get_session(ref.id)
    ack = again.ingest(ref, prepare_batch(IngestBatch("c", 3, []), SessionClock()))
    assert ack.duplicate and ack.ranges[0].startIndex == 2
    assert again.ingest(ref, prepare_batch(IngestBatch("c", 1, []), SessionClock())).duplicate
    assert _values(again, ref) == [1, 2, 3]


def test_rows_lost_to_a_power_cut_come_back_but_params_are_not_reapplied(tmp_path):
    """Only the journal is fsynced per batch: after a power cut took the stream's
    tail (here: the whole file), the rows are appended again from the journal;
    the params the batch merged are not merged again over a later change."""
    from dreamlake._local_sink import stream_files

    storage = _open(tmp_path)
    ref = storage.get_session(storage.upsert_session("lab", "run", {})["id"])
    rows = [{"_ts": float(i), "v": i} for i in range(3)]
    storage.ingest(ref, prepare_batch(IngestBatch("c", 1, [StreamBatch("t", rows)], params={"a": 1}), SessionClock()))
    storage.set_params(ref, {"a": 2})
    data_path = stream_files(str(tmp_path / "store" / "lab" / "run"), "t").data_path
    storage._live_for("lab", "run", create=False).sink.close("running", None)
    os.truncate(data_path, 0)  # the page cache never reached the disk
    again = _open(tmp_path)
    ref = again.get_session(ref.id)
    assert _values(again, ref) == [0, 1, 2]
    assert again.get_params(ref)["data"] == {"a": 2}


def test_many_sessions_do_not_exhaust_file_descriptors(tmp_path):
    storage = _open(tmp_path, max_open_sessions=2, fsync="never")
    clock = SessionClock()

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    refs = [storage.get_session(storage.upsert_session("lab", f"s{i}", {})["id"]) for i in range(12)]
    baseline = open_fds()
    for round_no in range(2):
        for n, ref in enumerate(refs):
            batch = IngestBatch("c", round_no + 1, [StreamBatch(f"t{k}", [{"v": round_no}]) for k in range(3)])
            storage.ingest(ref, prepare_batch(batch, clock))
    assert open_fds() - baseline <= 2 * (3 * 4 + 1) + 4  # two sessions' streams and journals, at most
    for ref in refs:  # evicted sessions kept writing in order
        assert _values(storage, ref, "t2") == [0, 1]
    storage.close()
