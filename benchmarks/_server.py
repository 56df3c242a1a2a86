"""A local ``dreamlake-server`` for the remote-mode benchmarks (the main run's
``dreamlake[remote]`` column and ``benchmarks/remote.py``).

It stands for another machine: on a machine with two or more CPUs it is
pinned to the last one (the benchmark processes may still use every CPU), and
it runs with ``--no-fsync`` so the numbers are the pipeline's, not the disk's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

__all__ = ["LocalServer", "ENV_URL"]

#: how the main runner tells its children where the server is (the key goes in $DREAMLAKE_API_KEY)
ENV_URL = "DREAMLAKE_BENCH_URL"


class LocalServer:
    def __init__(self, root: Path, port: int = 0, pin: bool = True, key: str | None = None) -> None:
        from dreamlake.server._auth import create_key
        from dreamlake.server._settings import Settings

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.key = key or create_key(Settings(root=self.root).state_dir, "bench", [])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dreamlake.server", "--root", str(self.root), "--port", str(port),
             "--log-level", "warning", "--no-fsync", "--no-ui"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.proc.wait(10)
            raise RuntimeError(f"dreamlake-server did not start (exit {self.proc.returncode})")
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("dreamlake-server never became healthy")
            time.sleep(0.05)
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if pin and len(cpus) >= 2:
            os.sched_setaffinity(self.proc.pid, {cpus[-1]})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
