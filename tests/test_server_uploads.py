"""Resumable chunked uploads at the storage seam, on both backends (the
contract of ``Storage.upload_*``; rules in ``dreamlake/server/_uploads.py``).
The HTTP routes and the client are tested against a real server in
``test_remote_uploads.py``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import pytest

from dreamlake.server._errors import BadRequest, Conflict, Forbidden, NotFound
from dreamlake.server._local_storage import LocalStorage
from dreamlake.server._settings import Settings
from dreamlake.server._storage import Storage
from dreamlake.server._uploads import UploadSpec

from pg import postgres_backend


def _local(tmp: Path, **settings) -> Callable[[], Storage]:
    return lambda: LocalStorage(Settings(root=tmp / "store", fsync="never", **settings))


def _postgres(tmp: Path, **settings) -> Callable[[], Storage]:
    opener = postgres_backend(tmp)
    if not settings:
        return opener

    def reopen() -> Storage:
        storage = opener()
        storage.settings = Settings(root=storage.settings.root, **settings)
        storage.uploads.ttl = storage.settings.upload_ttl
        return storage

    return reopen


BACKENDS = {"local": _local, "postgres": _postgres}


@pytest.fixture(params=sorted(BACKENDS))
def open_storage(request, tmp_path):
    opened: list[Storage] = []

    def factory(**settings) -> Storage:
        storage = BACKENDS[request.param](tmp_path, **settings)()
        opened.append(storage)
        return storage

    yield factory
    for storage in opened:
        storage.close()


PAYLOAD = os.urandom(300_000)
SPEC = UploadSpec("w.bin", "models", len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest(), "weights", ["a"], {"k": 1})


def _ref(storage: Storage, name: str = "run", **fields):
    return storage.get_session(storage.upsert_session("lab", name, fields)["id"])


def _download(storage: Storage, ref, file_id: str, tmp_path: Path) -> bytes:
    out = tmp_path / f"out-{file_id}"
    out.mkdir()
    return storage.export_file(ref, file_id, out).read_bytes()


def test_chunks_in_order_become_one_file(open_storage, tmp_path):
    storage = open_storage()
    ref = _ref(storage)
    status = storage.upload_create(ref, SPEC)
    upload_id = status["uploadId"]
    assert status["offset"] == 0 and status["complete"] is False
    for offset in range(0, len(PAYLOAD), 100_000):
        status, stored = storage.upload_chunk(ref, upload_id, offset, PAYLOAD[offset:offset + 100_000])
        assert stored == 100_000 and status["offset"] == offset + 100_000
    record = storage.upload_complete(ref, upload_id)
    assert record["sizeBytes"] == len(PAYLOAD) and record["checksum"] == SPEC.checksum
    assert record["filename"] == "w.bin" and record["path"] == "/models" and record["tags"] == ["a"]
    assert _download(storage, ref, record["id"], tmp_path) == PAYLOAD
    assert [f["id"] for f in storage.list_files(ref, None, None)] == [record["id"]]
    # completing again (a lost reply) returns the same record and stores nothing more
    assert storage.upload_complete(ref, upload_id)["id"] == record["id"]
    assert len(storage.list_files(ref, None, None)) == 1
    assert storage.upload_status(ref, upload_id)["complete"] is True


def test_a_repeated_or_overlapping_chunk_is_stored_once(open_storage, tmp_path):
    storage = open_storage()
    ref = _ref(storage)
    upload_id = storage.upload_create(ref, SPEC)["uploadId"]
    storage.upload_chunk(ref, upload_id, 0, PAYLOAD[:100_000])
    status, stored = storage.upload_chunk(ref, upload_id, 0, PAYLOAD[:100_000])  # the same again
    assert stored == 0 and status["offset"] == 100_000
    status, stored = storage.upload_chunk(ref, upload_id, 50_000, PAYLOAD[50_000:200_000])  # overlaps
    assert stored == 100_000 and status["offset"] == 200_000
    storage.upload_chunk(ref, upload_id, 200_000, PAYLOAD[200_000:])
    record = storage.upload_complete(ref, upload_id)
    assert _download(storage, ref, record["id"], tmp_path) == PAYLOAD


def test_a_gap_names_the_offset_to_send(open_storage):
    storage = open_storage()
    ref = _ref(storage)
    upload_id = storage.upload_create(ref, SPEC)["uploadId"]
    storage.upload_chunk(ref, upload_id, 0, PAYLOAD[:1000])
    with pytest.raises(Conflict) as gap:
        storage.upload_chunk(ref, upload_id, 5000, PAYLOAD[5000:6000])
    assert gap.value.details == {"offset": 1000}
    with pytest.raises(Conflict) as early:  # completing with bytes missing
        storage.upload_complete(ref, upload_id)
    assert early.value.details == {"offset": 1000}
    with pytest.raises(BadRequest):  # past the declared size
        storage.upload_chunk(ref, upload_id, 1000, b"x" * len(PAYLOAD))
    with pytest.raises(BadRequest):
        storage.upload_chunk(ref, upload_id, 1000, b"")
    assert storage.upload_status(ref, upload_id)["offset"] == 1000


def test_a_checksum_mismatch_stores_nothing_and_discards_the_upload(open_storage):
    storage = open_storage()
    ref = _ref(storage)
    upload_id = storage.upload_create(ref, SPEC)["uploadId"]
    storage.upload_chunk(ref, upload_id, 0, bytes(len(PAYLOAD)))  # right size, wrong bytes
    with pytest.raises(BadRequest, match="checksum"):
        storage.upload_complete(ref, upload_id)
    assert storage.list_files(ref, None, None) == []
    with pytest.raises(NotFound):
        storage.upload_status(ref, upload_id)


def test_staged_bytes_survive_a_restart(open_storage, tmp_path):
    storage = open_storage()
    ref = _ref(storage)
    upload_id = storage.upload_create(ref, SPEC)["uploadId"]
    storage.upload_chunk(ref, upload_id, 0, PAYLOAD[:120_000])
    storage.close()
    again = open_storage()
    ref = again.get_session(ref.id)
    assert again.upload_status(ref, upload_id)["offset"] == 120_000
    again.upload_chunk(ref, upload_id, 120_000, PAYLOAD[120_000:])
    record = again.upload_complete(ref, upload_id)
    assert _download(again, ref, record["id"], tmp_path) == PAYLOAD


def test_uploads_belong_to_their_session_and_respect_write_protection(open_storage):
    storage = open_storage()
    ref = _ref(storage)
    other = _ref(storage, "other")
    upload_id = storage.upload_create(ref, SPEC)["uploadId"]
    with pytest.raises(NotFound):
        storage.upload_status(other, upload_id)
    with pytest.raises(NotFound):
        storage.upload_chunk(other, upload_id, 0, PAYLOAD[:10])
    with pytest.raises(NotFound):
        storage.upload_status(ref, "0" * 32)
    locked = _ref(storage, "locked", writeProtected=True)
    with pytest.raises(Forbidden):
        storage.upload_create(locked, SPEC)


def test_an_upload_replaces_an_entry_with_the_same_folder_and_name(open_storage, tmp_path):
    storage = open_storage()
    ref = _ref(storage)
    for payload in (b"first" * 10, b"second" * 10):
        spec = UploadSpec("same.txt", "", len(payload), hashlib.sha256(payload).hexdigest())
        upload_id = storage.upload_create(ref, spec)["uploadId"]
        storage.upload_chunk(ref, upload_id, 0, payload)
        record = storage.upload_complete(ref, upload_id)
    listed = storage.list_files(ref, None, None)
    assert [f["id"] for f in listed] == [record["id"]]
    assert _download(storage, ref, record["id"], tmp_path) == b"second" * 10


def test_abandoned_uploads_are_swept_and_aborts_remove_their_bytes(open_storage):
    storage = open_storage()
    ref = _ref(storage)
    kept = storage.upload_create(ref, SPEC)["uploadId"]
    aborted = storage.upload_create(ref, SPEC)["uploadId"]
    storage.upload_chunk(ref, aborted, 0, PAYLOAD[:10])
    storage.upload_abort(ref, aborted)
    with pytest.raises(NotFound):
        storage.upload_status(ref, aborted)
    storage.upload_chunk(ref, kept, 0, PAYLOAD[:10])
    storage.close()
    # a server started with a TTL of zero sweeps every upload on start
    again = open_storage(upload_ttl=0.0)
    if isinstance(again, LocalStorage):
        assert again.uploads.sweep() == 0  # the start already did it
    else:
        again.uploads.sweep()
    with pytest.raises(NotFound):
        again.upload_status(again.get_session(ref.id), kept)


def _staged_upload(storage: LocalStorage, ref) -> tuple[str, Path]:
    upload_id = storage.upload_create(ref, SPEC)["uploadId"]
    storage.upload_chunk(ref, upload_id, 0, PAYLOAD)
    path, meta = storage.uploads._load(ref.id, upload_id)
    return upload_id, storage.uploads._staged(path, meta)


def test_local_completion_links_the_checked_bytes_instead_of_copying_them(tmp_path, monkeypatch):
    import dreamlake._file_store as file_store

    storage = _local(tmp_path)()
    ref = _ref(storage)
    upload_id, staged = _staged_upload(storage, ref)
    inode = staged.stat().st_ino

    def no_copy(src, dst):
        raise AssertionError("the staged bytes were copied and hashed again")

    monkeypatch.setattr(file_store, "_copy_and_hash", no_copy)
    record = storage.upload_complete(ref, upload_id)
    stored = tmp_path / "store" / "lab" / "run" / "files" / record["storagePath"]
    assert stored.stat().st_ino == inode and stored.stat().st_nlink == 1  # the same bytes, the staged name gone
    assert not staged.exists()
    assert record["checksum"] == SPEC.checksum and record["sizeBytes"] == len(PAYLOAD)
    monkeypatch.undo()  # a download copies, as it should
    assert _download(storage, ref, record["id"], tmp_path) == PAYLOAD
    storage.close()


def test_local_completion_copies_where_links_fail(tmp_path, monkeypatch):
    storage = _local(tmp_path)()
    ref = _ref(storage)
    upload_id, _ = _staged_upload(storage, ref)

    def cross_device(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    record = storage.upload_complete(ref, upload_id)
    assert record["checksum"] == SPEC.checksum and _download(storage, ref, record["id"], tmp_path) == PAYLOAD
    storage.close()
