"""Projects and runs: a pycaddy-style run ledger whose runs are DreamLake sessions.

    from dreamlake.project import Project, ExistingRun, StorageMode

    project = Project("results").ensure_folder()
    run = project.session("train", params={"lr": 1e-3}, existing_run_strategy=ExistingRun.RESUME)
    if not run.is_done():
        with run:                                   # start() ... done(), or error() on an exception
            run.track("train").append(loss=0.5, step=1)
            save_model(run.path("model.pt"))        # results/train/0001/model.pt

Layout (``Project(root, relpath)``; ledger at ``<root>/ledger.json``)::

    SUBFOLDER (default)                      PREFIX
    <root>/<relpath>/<identifier>/0001/      <root>/<relpath>/<identifier>/0001_model.pt
        model.pt                             <root>/<relpath>/<identifier>/0001_dreamlake/
        session.json, logs.jsonl, ...            session.json, logs.jsonl, ...
"""

from ._ledger import Ledger, LedgerError
from ._project import Project
from ._run import Run
from ._types import ExistingRun, Status, StorageMode

__all__ = [
    "Project",
    "Run",
    "ExistingRun",
    "StorageMode",
    "Status",
    "Ledger",
    "LedgerError",
]
