"""Every example and cheat-sheet line of seeds/003 (Project & Session) runs as
written, with the import changed from ``pycaddy.project`` to ``dreamlake.project``.

The example code is copied verbatim into each test (the doc lives outside the
repo). Only what the doc leaves undefined is stubbed: ``save_model``,
``train_model`` and ``sweep.generate()``. DreamLake itself is never stubbed.
Each example runs with ``tmp_path`` as the working directory, and each test then
checks what landed on disk and in the ledger.
"""

import json
from pathlib import Path

import pytest

from disk import disk_params


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def save_model(path):
    Path(path).write_text("weights")


def train_model(config, checkpoint):
    Path(checkpoint).write_text(json.dumps(config))


class sweep:  # noqa: N801 -- the doc's name
    @staticmethod
    def generate():
        for lr in (0.1, 0.01):
            for depth in (18, 50):
                yield {"lr": lr, "depth": depth}


def ledger(root):
    return json.loads((Path(root) / "ledger.json").read_text())


def test_quick_start():
    from dreamlake.project import Project

    # Create a project
    proj = Project(root="results").ensure_folder()

    # Start a new run
    run = proj.session("train", params={"lr": 1e-3})
    run.start()

    # Save your model
    save_model(run.path("model.pt"))

    # Mark as done
    run.done()

    assert Path("results/train/0001/model.pt").absolute().read_text() == "weights"
    rec = ledger("results")["projects"]["."]["train"]["0001"]
    assert rec["status"] == "done" and rec["params"] == {"lr": 1e-3}
    # the run was a DreamLake session too: params recorded, session completed
    assert disk_params(Path("results/train/0001").absolute()) == {"lr": 1e-3}
    assert json.loads(Path("results/train/0001/session.json").absolute().read_text())["status"] == "completed"


def test_storage_mode_trees():
    from dreamlake.project import Project, StorageMode

    for mode in (StorageMode.SUBFOLDER, StorageMode.PREFIX):
        project = Project(f"{mode.value}/results")
        first, second = project.session("train", {"n": 1}, storage_mode=mode), project.session("train", {"n": 2}, storage_mode=mode)
        first.path("model.pt").write_text("m")
        first.path("log.txt").write_text("l")
        second.path("model.pt").write_text("m")
    assert sorted(str(p) for p in Path("subfolder/results/train").rglob("*") if p.is_file()) == [
        "subfolder/results/train/0001/log.txt",
        "subfolder/results/train/0001/model.pt",
        "subfolder/results/train/0002/model.pt",
    ]
    assert sorted(p.name for p in Path("prefix/results/train").iterdir()) == [
        "0001_log.txt",
        "0001_model.pt",
        "0002_model.pt",
    ]


@pytest.mark.parametrize(
    "mode, expected",
    [("subfolder", "results/train/0001/model.pt"), ("prefix", "results/train/0001_model.pt")],
)
def test_api_reference_snippets(mode, expected):
    from dreamlake.project import Project

    root = Project("results")
    imagenet = root.sub("imagenet")  # results/imagenet/
    assert imagenet.folder == Path("results/imagenet").absolute()  # resolved at construction

    session = Project("results", storage_mode=mode).session("train", params={})
    model_path = session.path("model.pt")
    # results/train/0001/model.pt (SUBFOLDER mode)
    # results/train/0001_model.pt (PREFIX mode)
    assert model_path == Path(expected).absolute()

    session.attach_files({
        "checkpoint": session.path("ckpt.pt"),
        "logs": session.path("train.log")
    })
    assert session.files["logs"] == session.path("train.log")
    assert session.files["checkpoint"] == Path(expected.replace("model.pt", "ckpt.pt")).absolute()


def test_grid_search_with_auto_resume(capsys):
    from dreamlake.project import Project, ExistingRun, StorageMode

    def grid_search():
        project = Project("results/grid", storage_mode=StorageMode.PREFIX)

        for config in sweep.generate():
            session = project.session(
                "train",
                params=config,
                existing_run_strategy=ExistingRun.RESUME
            )

            if session.is_done():
                print(f"Skipping completed: {config}")
                continue

            session.start()
            train_model(config, checkpoint=session.path("ckpt.pt"))
            session.done()

    grid_search()
    assert "Skipping" not in capsys.readouterr().out
    grid = Path("results/grid/train").absolute()
    assert sorted(p.name for p in grid.glob("*_ckpt.pt")) == ["0001_ckpt.pt", "0002_ckpt.pt", "0003_ckpt.pt", "0004_ckpt.pt"]
    assert json.loads((grid / "0003_ckpt.pt").read_text()) == {"lr": 0.01, "depth": 18}

    grid_search()  # the second pass resumes: every config is skipped, nothing is re-trained
    out = capsys.readouterr().out
    assert out.count("Skipping completed:") == 4 and "{'lr': 0.01, 'depth': 50}" in out
    runs = ledger("results/grid")["projects"]["."]["train"]
    assert sorted(runs) == ["0001", "0002", "0003", "0004"]
    assert all(r["status"] == "done" and r["storageMode"] == "prefix" for r in runs.values())
    # each PREFIX run kept its own DreamLake session beside its files
    assert sorted(p.name for p in grid.glob("*_dreamlake")) == [f"000{i}_dreamlake" for i in range(1, 5)]


def test_nested_namespaces():
    from dreamlake.project import Project

    root = Project("results")
    imagenet = root.sub("imagenet")           # results/imagenet/
    randaug = imagenet.sub("randaug")         # results/imagenet/randaug/

    session = randaug.session("train", params={"aug_level": 5})
    session.start()
    # ... training ...
    session.done()

    assert randaug.folder == Path("results/imagenet/randaug").absolute()
    assert session.folder == Path("results/imagenet/randaug/train/0001").absolute() and session.folder.is_dir()
    rec = ledger("results")["projects"]["imagenet/randaug"]["train"]["0001"]
    assert rec["status"] == "done" and rec["params"] == {"aug_level": 5}


def test_logging_extra_files(capsys):
    from dreamlake.project import Project

    project = Project("experiments").ensure_folder()
    session = project.session("train", params={"lr": 0.001})
    session.start()

    # Attach files
    session.attach_files({
        "log": session.path("train.log", include_identifier=False),
        "config": session.path("config.yaml"),
        "tensorboard": session.path("events.out")
    })

    session.done()

    # Later, retrieve files
    print(session.files["log"])  # Path to log file

    assert capsys.readouterr().out == f"{Path.cwd()}/experiments/train/0001/train.log\n"  # absolute since construction
    assert session.files == {
        "log": Path("experiments/train/0001/train.log").absolute(),
        "config": Path("experiments/train/0001/config.yaml").absolute(),
        "tensorboard": Path("experiments/train/0001/events.out").absolute(),
    }


def test_cheat_sheet(capsys):
    from dreamlake.project import Project, ExistingRun, StorageMode

    # Create project
    p = Project("results")
    p.ensure_folder()

    # Create sub-project
    sub = p.sub("experiment_name")

    # Create session
    s = p.session(
        "train",
        params={"lr": 0.001},
        existing_run_strategy=ExistingRun.RESUME,  # optional
        storage_mode=StorageMode.SUBFOLDER          # optional
    )

    # Session lifecycle
    s.start()
    s.done()
    s.error()

    # Check status
    if s.is_done():
        print("Already completed!")

    # File paths
    model_path = s.path("model.pt")
    log_path = s.path("log.txt", include_identifier=False)

    # Attach files
    s.attach_files({
        "checkpoint": s.path("ckpt.pt"),
        "metrics": s.path("metrics.json")
    })

    # Access files
    print(s.files)  # dict[str, Path]

    # Access folder
    print(s.folder)  # Path to run directory

    out = capsys.readouterr().out.splitlines()
    assert "Already completed!" not in out  # error() came last
    here = Path.cwd()
    assert out == [
        f"{{'checkpoint': PosixPath('{here}/results/train/0001/ckpt.pt'), 'metrics': PosixPath('{here}/results/train/0001/metrics.json')}}",
        f"{here}/results/train/0001",
    ]
    assert sub.folder == Path("results/experiment_name").absolute()
    assert model_path == Path("results/train/0001/model.pt").absolute() and log_path == Path("results/train/0001/log.txt").absolute()
    assert ledger("results")["projects"]["."]["train"]["0001"]["status"] == "error"
    assert json.loads(Path("results/train/0001/session.json").absolute().read_text())["status"] == "completed"

    # run again: the cheat sheet's RESUME finds no DONE run (the last one ended in error)
    s2 = p.session("train", params={"lr": 0.001}, existing_run_strategy=ExistingRun.RESUME)
    assert s2.uid == "0002"
    s2.start().done()
    assert p.session("train", params={"lr": 0.001}, existing_run_strategy=ExistingRun.RESUME).uid == "0002"
