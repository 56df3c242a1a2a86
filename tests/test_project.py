"""dreamlake.project: uids, statuses, layouts, RESUME/NEW, the ledger file, and
runs that are real DreamLake sessions. Everything is checked on disk or through
a fresh Project (what another process would see)."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import dreamlake.project as project_module
from dreamlake import SessionStateError
from dreamlake.project import ExistingRun, LedgerError, Project, Run, Status, StorageMode
from dreamlake.project._params import canonical_params, params_hash
from disk import disk_logs, disk_params, disk_rows


def ledger(root):
    return json.loads((Path(root) / "ledger.json").read_text())


def record(root, identifier, uid, relkey="."):
    return ledger(root)["projects"][relkey][identifier][uid]


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# -- public surface -------------------------------------------------------------


def test_public_names():
    for name in project_module.__all__:
        assert getattr(project_module, name) is not None
    from dreamlake.project import ExistingRun, Project, Status, StorageMode  # noqa: F401,F811

    assert {"Project", "ExistingRun", "StorageMode", "Status"} <= set(project_module.__all__)
    assert [s.name for s in Status] == ["PENDING", "RUNNING", "DONE", "ERROR"]


def test_enums_are_strings_and_accept_names_in_any_case():
    assert Status.DONE == "done" and str(Status.DONE) == "done"
    assert ExistingRun("RESUME") is ExistingRun.RESUME and StorageMode("Prefix") is StorageMode.PREFIX
    with pytest.raises(ValueError):
        StorageMode("flat")


# -- uids, folders and paths ---------------------------------------------------------


def test_uids_are_zero_padded_and_count_per_identifier_and_project_path(tmp_path):
    p = Project(tmp_path)
    assert [p.session("train", {}).uid for _ in range(3)] == ["0001", "0002", "0003"]
    assert p.session("eval", {}).uid == "0001"
    assert p.sub("imagenet").session("train", {}).uid == "0001"
    assert p.session("train", {"lr": 1}).uid == "0004"


def test_uids_grow_past_four_digits(tmp_path):
    p = Project(tmp_path)
    with p.ledger.transaction() as doc:
        doc["projects"]["."] = {"t": {"9999": {"status": "done", "params": {}, "storageMode": "subfolder"}}}
    assert p.session("t", {}).uid == "10000"


def test_new_run_is_pending_and_its_folder_exists(tmp_path):
    run = Project(tmp_path / "results").session("train", params={"lr": 1e-3})
    assert isinstance(run, Run)
    assert run.status is Status.PENDING and not run.is_done()
    assert run.folder == tmp_path / "results" / "train" / "0001" and run.folder.is_dir()
    assert record(tmp_path / "results", "train", "0001")["status"] == "pending"


@pytest.mark.parametrize("mode", [StorageMode.SUBFOLDER, StorageMode.PREFIX])
def test_path_layouts(tmp_path, mode):
    p = Project(tmp_path / "results", storage_mode=mode)
    first, second = p.session("train", {}), p.session("train", {})
    train = tmp_path / "results" / "train"
    if mode is StorageMode.SUBFOLDER:
        assert first.folder == train / "0001" and second.folder == train / "0002"
        assert first.path("model.pt") == train / "0001" / "model.pt"
        assert first.path("log.txt", include_identifier=False) == train / "0001" / "log.txt"
        assert second.path("ckpt/last.pt") == train / "0002" / "ckpt" / "last.pt"
    else:
        assert first.folder == second.folder == train
        assert first.path("model.pt") == train / "0001_model.pt"
        assert second.path("model.pt") == train / "0002_model.pt"
        assert first.path("log.txt", include_identifier=False) == train / "log.txt"
        assert second.path("ckpt/last.pt") == train / "ckpt" / "0002_last.pt"
    assert second.path("ckpt/last.pt").parent.is_dir()


def test_storage_mode_per_session_overrides_the_project(tmp_path):
    p = Project(tmp_path)
    run = p.session("train", {}, storage_mode=StorageMode.PREFIX)
    assert run.path("m.pt") == tmp_path / "train" / "0001_m.pt"
    assert p.session("train", {}).path("m.pt") == tmp_path / "train" / "0002" / "m.pt"


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../b", ""])
def test_path_stays_inside_the_run_folder(tmp_path, bad):
    run = Project(tmp_path).session("train", {})
    with pytest.raises(ValueError):
        run.path(bad)


def test_sub_projects_nest_and_share_one_ledger(tmp_path):
    root = Project(tmp_path / "results")
    randaug = root.sub("imagenet").sub("randaug")
    assert randaug.folder == tmp_path / "results" / "imagenet" / "randaug"
    assert root.sub("imagenet/randaug") == randaug
    run = randaug.session("train", params={"aug_level": 5})
    assert run.folder == tmp_path / "results" / "imagenet" / "randaug" / "train" / "0001"
    assert list((tmp_path / "results").rglob("ledger.json")) == [tmp_path / "results" / "ledger.json"]
    assert record(tmp_path / "results", "train", "0001", "imagenet/randaug")["params"] == {"aug_level": 5}


def test_ensure_folder_chains_and_nothing_is_created_before(tmp_path):
    p = Project(tmp_path / "results", relpath="a/b")
    assert not (tmp_path / "results").exists()
    assert p.ensure_folder() is p and (tmp_path / "results" / "a" / "b").is_dir()


@pytest.mark.parametrize("bad", ["", "a/b", "..", ".", " x", "a\\b"])
def test_bad_identifiers_are_refused(tmp_path, bad):
    with pytest.raises(ValueError):
        Project(tmp_path).session(bad, {})
    assert not (tmp_path / "ledger.json").exists()


@pytest.mark.parametrize("bad", ["../up", "/abs", "a/../.."])
def test_bad_relpaths_are_refused(tmp_path, bad):
    with pytest.raises(ValueError):
        Project(tmp_path, relpath=bad)
    with pytest.raises(ValueError):
        Project(tmp_path).sub(bad)


def test_uids_skip_folders_already_on_disk(tmp_path):
    """A lost ledger must not make new runs overwrite old results."""
    p = Project(tmp_path)
    p.session("train", {})
    p.session("train", {}, storage_mode="prefix").path("model.pt").write_text("old")
    (tmp_path / "ledger.json").unlink()
    assert p.session("train", {}).uid == "0003"


# -- status ----------------------------------------------------------------------------


def test_status_lifecycle_persists_in_the_ledger(tmp_path):
    run = Project(tmp_path).session("train", {"lr": 0.1})
    seen = lambda: Project(tmp_path).runs("train")[0].status  # noqa: E731  (a fresh view)
    assert run.start() is run and run.status is Status.RUNNING and seen() is Status.RUNNING
    assert run.done() is run and run.is_done() and seen() is Status.DONE
    rec = record(tmp_path, "train", "0001")
    assert rec["status"] == "done" and rec["startedAt"] <= rec["endedAt"]
    assert run.error() is run and run.status is Status.ERROR and not run.is_done() and seen() is Status.ERROR


def test_status_changes_made_elsewhere_are_seen(tmp_path):
    mine = Project(tmp_path).session("train", {})
    theirs = Project(tmp_path).runs("train")[0]
    theirs.done()
    assert mine.status is Status.DONE and mine.is_done()


def test_error_keeps_a_reason(tmp_path):
    run = Project(tmp_path).session("train", {}).error("diverged")
    assert record(tmp_path, "train", "0001")["error"] == "diverged"
    run.start()
    assert "error" not in record(tmp_path, "train", "0001")


def test_runs_lists_by_identifier_and_status(tmp_path):
    p = Project(tmp_path)
    p.session("a", {}).done()
    p.session("a", {}).error()
    p.session("b", {})
    assert [(r.identifier, r.uid) for r in p.runs()] == [("a", "0001"), ("a", "0002"), ("b", "0001")]
    assert [r.uid for r in p.runs("a", status="done")] == ["0001"]
    assert p.sub("x").runs() == []


# -- RESUME / NEW ---------------------------------------------------------------------------


def test_resume_returns_the_done_run_with_identical_params(tmp_path):
    p = Project(tmp_path)
    params = {"lr": 0.001, "model": {"depth": 50, "act": "relu"}, "seeds": [1, 2]}
    first = p.session("train", params, ExistingRun.RESUME)
    first.attach_files({"ckpt": first.path("ckpt.pt")})
    first.start().done()
    reordered = {"seeds": [1, 2], "model": {"act": "relu", "depth": 50}, "lr": 0.001}
    again = Project(tmp_path).session("train", params=reordered, existing_run_strategy=ExistingRun.RESUME)
    assert again.uid == first.uid and again.is_done() and again.folder == first.folder
    assert again.files["ckpt"] == first.path("ckpt.pt")
    assert again.config == params
    assert len(ledger(tmp_path)["projects"]["."]["train"]) == 1


@pytest.mark.parametrize("finish", [None, "start", "error"])
def test_resume_never_returns_an_unfinished_run(tmp_path, finish):
    p = Project(tmp_path)
    run = p.session("train", {"lr": 1})
    if finish:
        getattr(run, finish)()
    assert p.session("train", {"lr": 1}, ExistingRun.RESUME).uid == "0002"


def test_resume_needs_identical_params_and_identifier(tmp_path):
    p = Project(tmp_path)
    p.session("train", {"lr": 1}).done()
    assert p.session("train", {"lr": 2}, "resume").uid == "0002"
    assert p.session("train", {"lr": 1.0}, "resume").uid == "0003"  # 1 and 1.0 are different params
    assert p.session("train", {"lr": 1, "extra": None}, "resume").uid == "0004"
    assert p.session("eval", {"lr": 1}, "resume").uid == "0001"
    assert p.sub("other").session("train", {"lr": 1}, "resume").uid == "0001"
    assert p.session("train", {"lr": 1}, "resume").uid == "0001"


def test_resume_picks_the_newest_done_run_and_keeps_its_storage_mode(tmp_path):
    p = Project(tmp_path)
    p.session("train", {"a": 1}).done()
    p.session("train", {"a": 1}, ExistingRun.NEW, storage_mode="prefix").done()
    p.session("train", {"a": 1})  # pending, newer
    found = p.session("train", {"a": 1}, ExistingRun.RESUME, storage_mode=StorageMode.SUBFOLDER)
    assert found.uid == "0002" and found.storage_mode is StorageMode.PREFIX
    assert found.path("x") == tmp_path / "train" / "0002_x"


@pytest.mark.parametrize("strategy", [ExistingRun.NEW, None, "new"])
def test_new_and_default_always_allocate(tmp_path, strategy):
    p = Project(tmp_path)
    p.session("train", {"a": 1}).done()
    assert p.session("train", {"a": 1}, existing_run_strategy=strategy).uid == "0002"


def test_params_hash_is_stable_and_order_independent(tmp_path):
    import numpy as np

    a = canonical_params({"b": {"y": 2, "x": (1, 2)}, "a": Path("data/x"), "c": np.float64(0.5)})
    b = canonical_params({"a": "data/x", "c": 0.5, "b": {"x": [1, 2], "y": 2}})
    assert a == b and params_hash(a) == params_hash(b)
    # Pinned: the hash must never change between versions, processes or runs.
    assert params_hash(canonical_params({"lr": 0.001})) == "d368ce5a6807cfa3"
    assert params_hash({}) != params_hash({"lr": 0.001})
    run = Project(tmp_path).session("train", {"lr": 0.001})
    assert run.param_hash == record(tmp_path, "train", "0001")["paramsHash"] == "d368ce5a6807cfa3"


def test_non_finite_params_keep_the_ledger_strict_json(tmp_path):
    p = Project(tmp_path)
    p.session("train", {"clip": float("inf"), "x": float("nan")}).done()
    text = (tmp_path / "ledger.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in ledger"))
    resumed = p.session("train", {"x": float("nan"), "clip": float("inf")}, "resume")
    assert resumed.uid == "0001" and resumed.config["clip"] == float("inf")


@pytest.mark.parametrize(
    "params, error",
    [([("a", 1)], TypeError), ({1: "a"}, TypeError), ({"f": object()}, TypeError), ({"": 1}, ValueError)],
)
def test_bad_params_are_refused_at_the_call(tmp_path, params, error):
    with pytest.raises(error):
        Project(tmp_path).session("train", params)


def test_bad_strategy_or_mode_is_refused(tmp_path):
    with pytest.raises(ValueError):
        Project(tmp_path).session("train", {}, existing_run_strategy="reuse")
    with pytest.raises(ValueError):
        Project(tmp_path, storage_mode="flat")


# -- attached files --------------------------------------------------------------------------


def test_attach_files_persist_merge_and_read_back(tmp_path):
    p = Project(tmp_path / "results")
    run = p.session("train", {})
    assert run.attach_files({"log": run.path("train.log"), "cfg": str(run.path("c.yaml"))}) is run
    run.attach_files({"log": run.path("train2.log"), "outside": tmp_path / "elsewhere.txt"})
    expected = {
        "log": tmp_path / "results" / "train" / "0001" / "train2.log",
        "cfg": tmp_path / "results" / "train" / "0001" / "c.yaml",
        "outside": tmp_path / "elsewhere.txt",
    }
    assert type(run.files) is dict and run.files == expected  # seed 003: a plain dict[str, Path]
    assert "log" in run.files and len(run.files) == 3 and repr(run.files) == repr(expected)
    stored = record(tmp_path / "results", "train", "0001")["files"]
    assert stored["log"] == "train/0001/train2.log"  # root-relative: the folder can move
    assert stored["outside"] == str(tmp_path / "elsewhere.txt")
    assert Project(tmp_path / "results").runs()[0].files == expected


def test_attached_paths_follow_a_moved_results_folder(tmp_path):
    run = Project(tmp_path / "a").session("train", {})
    run.attach_files({"m": run.path("m.pt")})
    (tmp_path / "a").rename(tmp_path / "b")
    assert Project(tmp_path / "b").runs()[0].files["m"] == tmp_path / "b" / "train" / "0001" / "m.pt"


def test_attach_files_checks_its_input(tmp_path):
    run = Project(tmp_path).session("train", {})
    with pytest.raises(TypeError):
        run.attach_files([("a", "b")])
    with pytest.raises(TypeError):
        run.attach_files({"a": 3})


# -- the ledger file ----------------------------------------------------------------------------


def test_ledger_is_one_readable_json_file_per_root(tmp_path):
    p = Project(tmp_path)
    p.session("train", {"lr": 0.1}).start().done()
    p.sub("deep/er").session("eval", {})
    text = (tmp_path / "ledger.json").read_text()
    assert text.startswith("{\n  ") and text.endswith("\n")
    doc = json.loads(text)
    assert doc["format"] == "dreamlake.project.ledger" and doc["version"] == 1
    assert set(doc["projects"]) == {".", "deep/er"}
    rec = doc["projects"]["."]["train"]["0001"]
    assert rec["status"] == "done" and rec["params"] == {"lr": 0.1} and rec["storageMode"] == "subfolder"
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".ledger")] == [".ledger.json.lock"]


def test_unreadable_ledger_is_reported_and_never_overwritten(tmp_path):
    (tmp_path / "ledger.json").write_text('{"format": "dreamlake.project.ledger", "projects": {')
    with pytest.raises(LedgerError, match="not valid JSON"):
        Project(tmp_path).session("train", {})
    assert (tmp_path / "ledger.json").read_text().endswith("{")
    (tmp_path / "ledger.json").write_text("[]")
    with pytest.raises(LedgerError, match="not a DreamLake run ledger"):
        Project(tmp_path).session("train", {})


def test_failed_transaction_writes_nothing(tmp_path):
    p = Project(tmp_path)
    p.session("train", {})
    before = (tmp_path / "ledger.json").read_bytes()
    with pytest.raises(RuntimeError):
        with p.ledger.transaction() as doc:
            doc["projects"].clear()
            raise RuntimeError("crash in the middle")
    assert (tmp_path / "ledger.json").read_bytes() == before


def test_threads_get_distinct_uids(tmp_path):
    p = Project(tmp_path)
    barrier = threading.Barrier(8)
    uids, errors = [], []

    def worker(i):
        try:
            barrier.wait()
            for j in range(5):
                run = p.session("train", {"i": i, "j": j})
                run.done()
                uids.append(run.uid)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert sorted(uids) == [f"{n:04d}" for n in range(1, 41)]
    assert all(r["status"] == "done" for r in ledger(tmp_path)["projects"]["."]["train"].values())


# -- the run as a DreamLake session -----------------------------------------------------------


def test_run_is_a_dreamlake_session_in_subfolder_mode(tmp_path):
    p = Project(tmp_path / "results")
    artifact = tmp_path / "weights.bin"
    artifact.write_bytes(b"\x00\x01weights")
    with p.session("train", params={"lr": 0.001, "model": {"depth": 18}}) as run:
        assert run.status is Status.RUNNING and run.session.status == "running"
        run.log("epoch done", level="info", epoch=1)
        for step in range(3):
            run.track("loss").append(value=1.0 / (step + 1), step=step)
        run.params.set(batch_size=32)
        assert run.parameters().get() == {"lr": 0.001, "model.depth": 18, "batch_size": 32}
        entry = run.session.files.upload(artifact, path="/models")
        assert run.file(prefix="/models").list()[0]["id"] == entry["id"]
        assert run.track("loss").read()["total"] == 3
        assert run.tracks.list()[0]["name"] == "loss"
        assert run.name == "0001" and run.workspace == "train"  # delegated to the session
    folder = tmp_path / "results" / "train" / "0001"
    assert run.session_dir == folder and run.is_done()
    assert json.loads((folder / "session.json").read_text())["status"] == "completed"
    assert [r["value"] for r in disk_rows(folder, "loss")] == [1.0, 0.5, 1.0 / 3]
    assert disk_logs(folder)[0]["message"] == "epoch done"
    assert disk_params(folder)["lr"] == 0.001
    stored = folder / "files" / "models" / entry["id"] / "weights.bin"
    assert stored.read_bytes() == artifact.read_bytes()


def test_prefix_mode_runs_keep_separate_sessions(tmp_path):
    p = Project(tmp_path, storage_mode=StorageMode.PREFIX)
    for lr in (0.1, 0.2):
        with p.session("train", {"lr": lr}) as run:
            run.track("loss").append(value=lr)
            run.path("model.pt").write_text(str(lr))
    train = tmp_path / "train"
    assert sorted(x.name for x in train.iterdir()) == ["0001_dreamlake", "0001_model.pt", "0002_dreamlake", "0002_model.pt"]
    for uid, lr in (("0001", 0.1), ("0002", 0.2)):
        sdir = train / f"{uid}_dreamlake"
        assert [r["value"] for r in disk_rows(sdir, "loss")] == [lr]
        assert disk_params(sdir) == {"lr": lr}


def test_exception_in_with_marks_error_and_the_session_failed(tmp_path):
    p = Project(tmp_path)
    with pytest.raises(ZeroDivisionError):
        with p.session("train", {"lr": 1}) as run:
            run.track("loss").append(value=1)
            1 / 0
    assert run.status is Status.ERROR and not run.is_done()
    rec = record(tmp_path, "train", "0001")
    assert rec["status"] == "error" and "ZeroDivisionError" in rec["error"]
    meta = json.loads((run.session_dir / "session.json").read_text())
    assert meta["status"] == "failed"
    assert any("ZeroDivisionError" in e.get("metadata", {}).get("traceback", "") for e in disk_logs(run.session_dir))
    assert disk_rows(run.session_dir, "loss")[0]["value"] == 1


def test_keyboard_interrupt_in_with_marks_error(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with Project(tmp_path).session("train", {}) as run:
            raise KeyboardInterrupt
    assert run.status is Status.ERROR
    assert json.loads((run.session_dir / "session.json").read_text())["status"] == "interrupted"


def test_error_closes_the_session_as_failed(tmp_path):
    run = Project(tmp_path).session("train", {}).start()
    run.log("about to fail")
    run.error("nan loss")
    meta = json.loads((run.session_dir / "session.json").read_text())
    assert meta["status"] == "failed" and run.status is Status.ERROR
    assert [e["level"] for e in disk_logs(run.session_dir)] == ["info", "error"]


def test_paths_and_status_never_open_a_session(tmp_path):
    run = Project(tmp_path).session("train", {"lr": 1})
    run.path("model.pt").write_text("m")
    run.attach_files({"m": run.path("model.pt")})
    run.done()
    assert run.is_done() and run._session is None
    assert sorted(x.name for x in run.folder.iterdir()) == ["model.pt"]


def test_logging_needs_a_started_run(tmp_path):
    run = Project(tmp_path).session("train", {})
    with pytest.raises(SessionStateError):
        run.log("too early")
    with pytest.raises(SessionStateError):
        run.track("loss").append(value=1)


def test_restarting_a_resumed_run_continues_its_session(tmp_path):
    p = Project(tmp_path)
    with p.session("train", {"a": 1}) as run:
        run.track("loss").append(value=1)
    again = p.session("train", {"a": 1}, ExistingRun.RESUME)
    assert again.uid == run.uid
    with again:
        again.track("loss").append(value=2)
        assert [row["index"] for row in again.track("loss").read()["data"]] == [0, 1]
    assert again.is_done()


def test_project_path_is_its_absolute_root_and_ledger_lists_uid_records(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = Project("experiments")
    assert p.path == tmp_path / "experiments" == p.root and p.path.is_absolute()
    first = p.session("train", {"lr": 1})
    second = p.session("train", {"lr": 2})
    second.start().done()
    records = p.ledger.get_uid_record_dict("train")
    assert sorted(records) == [first.uid, second.uid] == ["0001", "0002"]
    assert records["0001"]["status"] == "pending" and records["0002"]["status"] == "done"
    assert records["0002"]["params"] == {"lr": 2}
    records["0001"]["status"] = "changed"  # a copy: the ledger is not touched
    assert p.ledger.get_uid_record_dict("train")["0001"]["status"] == "pending"
    assert p.ledger.get_uid_record_dict("missing") == {}
    deeper = p.sub("a/b").session("eval", {})
    assert list(p.ledger.get_uid_record_dict("eval", relpath="a/b")) == [deeper.uid]
    assert p.ledger.get_uid_record_dict("eval") == {}


def test_relative_root_survives_a_chdir_before_the_exit_hook(tmp_path):
    """The exit hook marks an unfinished run ERROR in the ledger the run was created
    in, not in a second ledger relative to the working directory at exit."""
    (tmp_path / "elsewhere").mkdir()
    script = (
        "import os\n"
        "from dreamlake.project import Project\n"
        "run = Project('experiments').session('train', {'lr': 1})\n"
        "run.start()\n"
        "os.chdir('elsewhere')\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, timeout=60)
    assert not (tmp_path / "elsewhere" / "experiments").exists()
    rec = record(tmp_path / "experiments", "train", "0001")
    assert rec["status"] == "error" and "exited before done" in rec["error"]
