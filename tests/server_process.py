"""A real ``dreamlake-server`` process on an ephemeral loopback port, for the server tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from dreamlake.server._auth import create_key
from dreamlake.server._settings import Settings

__all__ = ["ServerProcess", "make_key"]


def make_key(root: Path, user: str = "ada", workspaces: tuple[str, ...] = ()) -> str:
    return create_key(Settings(root=Path(root)).state_dir, user, list(workspaces))


class ServerProcess:
    def __init__(self, root: Path, *args: str, start_timeout: float = 20.0) -> None:
        self.root = Path(root)
        self.log_path = self.root.parent / f"server-{os.getpid()}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dreamlake.server", "--root", str(root), "--port", "0", "--log-level", "warning", *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        line = self.proc.stdout.readline().strip()  # the URL, or "" if it died
        if not line.startswith("http://"):
            self.proc.wait(5)
            raise RuntimeError(f"server did not start: {line!r}\n{self.stderr()}")
        self.url = line
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"server never became healthy\n{self.stderr()}")
            time.sleep(0.02)

    def stderr(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def client(self, key: str | None = None, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.proc.stdout.close()
            self._log.close()

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
