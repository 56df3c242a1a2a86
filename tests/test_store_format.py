"""The local store's files are upstream DreamLake 0.3's (DESIGN.md §4): what we write
has upstream's shapes, and stores written by upstream or by this project's earlier
format are read, continued and listed by ours."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from dreamlake import Session
from disk import disk_logs, disk_params, disk_rows, strict_loads


def test_written_files_have_upstreams_shapes(tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    with Session(prefix="ws/run", root=str(tmp_path / "store")) as s:
        s.track("train").append(loss=0.5, step=1)
        s.track("train").append(loss=0.25, step=2)
        s.params.set(lr=0.1, model={"arch": "mlp"})
        s.flush()  # version counts the writes of parameters.json: calls between two writes make one
        s.params.set(lr=0.01)
        s.log("hello", level="warn", metadata={"epoch": 1}, step=7)
        entry = s.files.upload(str(model), path="/models")
    sdir = tmp_path / "store" / "ws" / "run"

    rows = disk_rows(sdir, "train")  # {"index": i, "data": {...}} lines, i = 0, 1, ...
    assert [(r["loss"], r["step"]) for r in rows] == [(0.5, 1), (0.25, 2)]
    assert all(isinstance(r["_ts"], float) for r in rows)

    doc = strict_loads((sdir / "parameters.json").read_text())
    assert doc["version"] == 2 and doc["data"] == {"lr": 0.01, "model.arch": "mlp"}
    assert disk_params(sdir) == doc["data"]

    (log,) = disk_logs(sdir)  # one file under both paths
    assert os.path.islink(sdir / "logs.jsonl") and not os.path.islink(sdir / "logs" / "logs.jsonl")
    assert log["sequenceNumber"] == 0 and log["level"] == "warn" and log["message"] == "hello"
    assert log["metadata"] == {"epoch": 1, "step": 7} and log["timestamp"].endswith("Z")
    assert (sdir / "logs" / ".log_sequence").read_text() == "1"  # where upstream numbers on from

    files = strict_loads((sdir / "files" / ".files_metadata.json").read_text())
    (stored,) = files["files"]
    assert stored["id"] == entry["id"] and stored["deletedAt"] is None
    assert stored["uploadedAt"] == entry["uploadedAt"] and stored["path"] == "/models"
    assert (sdir / "files" / "models" / entry["id"] / "model.pt").read_bytes() == b"weights"

    meta = strict_loads((sdir / "tracks" / "train" / "metadata.json").read_text())
    assert meta["nextIndex"] == meta["totalDataPoints"] == 2 and meta["name"] == "train"


def _write_upstream_store(sdir: Path) -> None:
    """A session directory as upstream DreamLake 0.3 writes it (no derived index)."""
    (sdir / "logs").mkdir(parents=True)
    (sdir / "tracks" / "loss").mkdir(parents=True)
    (sdir / "files" / "models" / "f1").mkdir(parents=True)
    (sdir / "session.json").write_text(json.dumps({"name": "up", "workspace": "ws", "tags": ["a"], "created_at": "2025-01-01T00:00:00Z"}))
    (sdir / "logs" / "logs.jsonl").write_text(
        "".join(
            json.dumps({"sequenceNumber": i, "timestamp": f"2025-01-01T00:00:0{i}Z", "level": "info", "message": f"m{i}"}) + "\n"
            for i in range(3)
        )
    )
    (sdir / "logs" / ".log_sequence").write_text("3")
    lines = [{"index": 0, "data": {"value": 1.0}, "createdAt": "2025-01-01T00:00:00Z"}]
    lines += [{"index": i, "data": {"value": float(i), "_ts": 1.7e9 + i}, "createdAt": "2025-01-01T00:00:01Z"} for i in (1, 2)]
    (sdir / "tracks" / "loss" / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (sdir / "tracks" / "loss" / "metadata.json").write_text(json.dumps({"trackId": "local-track-loss", "name": "loss", "totalDataPoints": 3, "nextIndex": 3}))
    (sdir / "parameters.json").write_text(json.dumps({"version": 2, "data": {"lr": 0.1, "model.arch": "mlp"}}))
    (sdir / "files" / "models" / "f1" / "model.pt").write_bytes(b"up-weights")
    digest = hashlib.sha256(b"up-weights").hexdigest()
    entry = {"id": "f1", "path": "/models", "filename": "model.pt", "tags": [], "sizeBytes": 10, "checksum": digest, "deletedAt": None}
    gone = {**entry, "id": "f0", "deletedAt": "2025-01-01T00:00:00Z"}
    (sdir / "files" / ".files_metadata.json").write_text(json.dumps({"files": [gone, entry]}))


def test_a_store_upstream_wrote_is_read_listed_and_continued(tmp_path):
    root = tmp_path / "store"
    sdir = root / "ws" / "up"
    _write_upstream_store(sdir)

    listing = subprocess.run([sys.executable, "-m", "dreamlake.cli", "ls", "--root", str(root)], capture_output=True, text=True, check=True)
    assert "ws/up" in listing.stdout and " 3 " in listing.stdout.replace(",", "")
    show = subprocess.run([sys.executable, "-m", "dreamlake.cli", "show", "ws/up", "--root", str(root)], capture_output=True, text=True, check=True)
    assert "lr = 0.1" in show.stdout and "m2" in show.stdout and "3 rows" in show.stdout

    with Session(prefix="ws/up", root=str(root)) as s:
        page = s.track("loss").read(0, 10)
        assert [(p["index"], p["data"]["value"]) for p in page["data"]] == [(0, 1.0), (1, 1.0), (2, 2.0)]
        assert s.params.get() == {"lr": 0.1, "model.arch": "mlp"}
        assert [(f["id"], f["filename"]) for f in s.files.list()] == [("f1", "model.pt")]
        s.files.download("f1", str(tmp_path / "got.pt"))
        assert [e["data"]["message"] for e in s.logs()["data"]] == ["m0", "m1", "m2"]
        s.track("loss").append(value=3.0)
        s.log("ours")
        s.params.set(lr=0.2)
    assert (tmp_path / "got.pt").read_bytes() == b"up-weights"
    assert [r["value"] for r in disk_rows(sdir, "loss")] == [1.0, 1.0, 2.0, 3.0]
    assert [e["message"] for e in disk_logs(sdir)] == ["m0", "m1", "m2", "ours"]
    assert strict_loads((sdir / "parameters.json").read_text())["version"] == 3


def test_a_store_of_the_earlier_format_is_read_and_moved_to_the_current_layout(tmp_path):
    root = tmp_path / "store"
    sdir = root / "ws" / "old"
    (sdir / "tracks" / "t").mkdir(parents=True)
    (sdir / "files").mkdir()
    (sdir / "session.json").write_text(json.dumps({"name": "old", "workspace": "ws", "status": "completed"}))
    (sdir / "tracks" / "t" / "data.jsonl").write_text("".join(json.dumps({"_ts": 10.0 + i, "x": i}) + "\n" for i in range(3)))
    (sdir / "logs.jsonl").write_text(json.dumps({"_ts": 5.0, "level": "info", "message": "old", "seq": 0, "timestamp": "1970-01-01T00:00:05Z"}) + "\n")
    (sdir / "parameters.json").write_text(json.dumps({"lr": 0.5}))
    (sdir / "files" / ".files_metadata.json").write_text("[]")

    with Session(prefix="ws/old", root=str(root)) as s:
        assert [p["data"] for p in s.track("t").read()["data"]] == [{"_ts": 10.0 + i, "x": i} for i in range(3)]
        assert [(e["data"]["sequenceNumber"], e["data"]["message"]) for e in s.logs()["data"]] == [(0, "old")]
        assert s.params.get() == {"lr": 0.5}
        assert s.files.list() == []
        s.track("t").append(x=3, _ts=13.0)
        s.log("new")
        s.params.set(bs=8)
    text = (sdir / "tracks" / "t" / "data.jsonl").read_text().splitlines()
    assert json.loads(text[-1]) == {"index": 3, "data": {"x": 3, "_ts": 13.0}}
    assert os.path.samefile(sdir / "logs.jsonl", sdir / "logs" / "logs.jsonl")
    assert [json.loads(line)["message"] for line in (sdir / "logs.jsonl").read_text().splitlines()] == ["old", "new"]
    assert disk_params(sdir) == {"lr": 0.5, "bs": 8}
