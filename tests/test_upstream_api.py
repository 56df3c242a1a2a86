"""Upstream 0.3 spellings (readme=, session.file(...) builder) and re-opening a
session without resetting what the caller did not pass."""

import json
import os

import pytest

from dreamlake import Session


def _meta(tmp_path, prefix="ws/s"):
    return json.loads((tmp_path / prefix / "session.json").read_text())


def test_readme_is_the_description(tmp_path):
    with Session(prefix="ws/s", root=str(tmp_path), readme="# notes") as s:
        assert s.description == "# notes" == s.readme
    assert _meta(tmp_path)["description"] == "# notes"
    with Session(prefix="ws/t", root=str(tmp_path), readme="same", description="same") as s:
        assert s.description == "same"
    with pytest.raises(ValueError, match="conflicting description/readme"):
        Session(prefix="ws/u", root=str(tmp_path), readme="a", description="b")
    assert not (tmp_path / "ws" / "u").exists()


def test_file_builder_save_download_update_delete(tmp_path):
    src = tmp_path / "model.pt"
    src.write_bytes(b"\x00weights\xff" * 100)
    with Session(prefix="ws/s", root=str(tmp_path)) as s:
        saved = s.file(file_path=str(src), prefix="/models", description="best", tags=["v1"], metadata={"epoch": 3}).save()
        assert (saved["filename"], saved["path"], saved["description"], saved["tags"]) == ("model.pt", "/models", "best", ["v1"])
        assert saved["metadata"] == {"epoch": 3} and "uploadedAt" in saved
        assert [f["id"] for f in s.file(prefix="/models").list()] == [saved["id"]]
        assert s.file(prefix="/other").list() == [] and len(s.file().list()) == 1

        out = tmp_path / "out"
        out.mkdir()
        got = s.file(file_id=saved["id"]).download(dest=str(out))
        assert open(got, "rb").read() == src.read_bytes() and got == str(out / "model.pt")
        named = s.file(file_id=saved["id"], dest_path=str(tmp_path / "copy.pt")).download()
        assert open(named, "rb").read() == src.read_bytes()

        updated = s.file(file_id=saved["id"]).update(description="better", tags=["v2"])
        assert (updated["description"], updated["tags"], updated["metadata"]) == ("better", ["v2"], {"epoch": 3})
        assert s.files.list()[0]["tags"] == ["v2"]

        with pytest.raises(ValueError, match="file_id is required"):
            s.file().delete()
        with pytest.raises(ValueError, match="file_path is required"):
            s.file(prefix="/x").save()
        with pytest.raises(FileNotFoundError):
            s.file(file_path=str(tmp_path / "missing.pt")).save()

        s.file(file_id=saved["id"]).delete()
        assert s.files.list() == []
    stored = json.loads((tmp_path / "ws/s/files/.files_metadata.json").read_text())
    assert stored == {"files": []}


def test_reopen_keeps_tags_description_and_a_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with Session(prefix="ws/s", root=str(tmp_path), description="first", tags=["a", "b"], folder="/f") as s:
            s.track("t").append(x=1)
            raise RuntimeError("boom")
    failed = _meta(tmp_path)
    assert failed["status"] == "failed" and "boom" in failed["error"]

    s = Session(prefix="ws/s", root=str(tmp_path)).open()  # passes no tags, no description
    during = _meta(tmp_path)
    assert (during["tags"], during["description"], during["folder"]) == (["a", "b"], "first", "/f")
    assert during["status"] == "failed" and "boom" in during["error"]  # until this opening closes
    assert (s.tags, s.description, s.folder) == (["a", "b"], "first", "/f")
    assert s.track("t").read()["total"] == 1
    s.close()

    after = _meta(tmp_path)
    assert after["status"] == "completed" and after["error"] is None
    assert [h["status"] for h in after["history"]] == ["failed"] and "boom" in after["history"][0]["error"]
    assert after["tags"] == ["a", "b"] and after["opens"] == 2

    with Session(prefix="ws/s", root=str(tmp_path), tags=["c"]) as s:  # what is passed does change
        assert s.tags == ["c"]
    final = _meta(tmp_path)
    assert final["tags"] == ["c"] and final["description"] == "first"
    assert [h["status"] for h in final["history"]] == ["failed", "completed"]


def test_reopen_of_a_completed_session_runs_again(tmp_path):
    with Session(prefix="ws/s", root=str(tmp_path), tags=["x"]):
        pass
    s = Session(prefix="ws/s", root=str(tmp_path)).open()
    try:
        meta = _meta(tmp_path)
        assert meta["status"] == "running" and meta["pid"] == os.getpid() and meta["tags"] == ["x"]
    finally:
        s.close()


def test_reopen_after_a_kill_keeps_interrupted_and_a_live_opener_adds_no_history(tmp_path):
    import subprocess
    import sys

    script = (
        "import os\n"
        "from dreamlake import Session\n"
        f"s = Session(prefix='ws/k', root={str(tmp_path)!r}, tags=['robot']).open()\n"
        "s.track('t').append(x=1); s.tracks.flush()\n"
        "os._exit(9)\n"  # no close: as after kill -9
    )
    subprocess.run([sys.executable, "-c", script], timeout=60)
    assert _meta(tmp_path, "ws/k")["status"] == "running"  # what the dead process left

    first = Session(prefix="ws/k", root=str(tmp_path)).open()
    second = Session(prefix="ws/k", root=str(tmp_path)).open()  # a live opener: no history entry for it
    try:
        meta = _meta(tmp_path, "ws/k")
        assert meta["status"] == "interrupted" and meta["tags"] == ["robot"]
        assert [h["status"] for h in meta["history"]] == ["interrupted"]
        assert first.track("t").read()["total"] == 1
    finally:
        second.close()
        first.close()
    meta = _meta(tmp_path, "ws/k")
    assert meta["status"] == "completed" and [h["status"] for h in meta["history"]] == ["interrupted"]
