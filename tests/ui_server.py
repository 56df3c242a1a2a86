"""Test helpers for the web page: a real store and a real ``dreamlake ui`` process."""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from typing import Iterator

from dreamlake import Session

STEPS = 300


def loss_at(run: int, step: int) -> float:
    return 1.0 / (step + 1) + 0.1 * run


def write_store(root: str, runs: int = 2) -> list[str]:
    """``ws/run<i>``: params, a ``train`` track (loss, step), a nested track,
    logs of several levels and one file. Returns the prefixes."""
    prefixes = []
    for run in range(runs):
        with Session(prefix=f"ws/run{run}", root=root, tags=["exp", f"r{run}"], description=f"run {run}") as s:
            s.params.set(lr=0.1 / (run + 1), batch=32, model={"arch": "mlp", "layers": 4})
            train = s.track("train")
            for step in range(STEPS):
                train.append(loss=loss_at(run, step), step=step)
            s.track("robot/arm/pose").append(q=[0.5, 1.5, 2.5])
            s.log("training started", level="info")
            s.log("loss is nan-ish", level="warn", metadata={"step": 7})
            s.log("disk almost full", level="error")
            ckpt = os.path.join(root, f"ckpt{run}.bin")
            with open(ckpt, "wb") as out:
                out.write(bytes(range(256)) * 4)
            s.files.upload(ckpt, path="checkpoints", tags=["final"])
        prefixes.append(s.prefix)
    return prefixes


@contextlib.contextmanager
def ui_server(root: str, timeout: float = 20.0) -> Iterator[str]:
    """Runs ``dreamlake ui --root ROOT --port 0 --no-browser``; yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamlake.cli", "ui", "--root", root, "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        seen = ""
        url = None
        while url is None:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError(f"dreamlake ui did not start: {seen!r}")
            if selector.select(left):
                line = proc.stdout.readline()
                seen += line
                match = re.search(r"at (http://\S+/)", line)
                url = match.group(1) if match else None
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
