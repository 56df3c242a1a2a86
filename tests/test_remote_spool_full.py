"""A spool on a real, tiny tmpfs: when the disk is full the session keeps
running, batches stay in memory, and once the server is back every row
arrives exactly once."""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from dreamlake import Session
from remote_helpers import free_port, server_rows, start_server, wait_for
from server_process import make_key

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_spool_keeps_rows_in_memory_and_delivers_them_later(tmp_path, tiny_disk, monkeypatch):
    monkeypatch.chdir(tiny_disk)
    root = tmp_path / "server"
    root.mkdir()
    key = make_key(root, workspaces=("ws",))
    port = free_port()
    session = Session(prefix="ws/full", url=f"http://127.0.0.1:{port}", api_key=key)
    session.open()
    track = session.track("t")
    n = 100_000
    for i in range(n):
        track.append(i=i, blob=secrets.token_hex(32))  # ~2:1 compressible: ~4.5 MB of spool, batches of ~0.9 MB
    health = wait_for(lambda: (h := session.health())["spool_full"] and h["memory_batches"] and h)
    assert health["spooled_batches"] >= 1, health
    assert session.health()["dropped"] == 0
    srv = start_server(root, port)
    try:
        wait_for(lambda: (h := session.health())["memory_batches"] == 0 and h["spooled_batches"] == 0, timeout=40)
        session.close()
        assert [r["i"] for r in server_rows(root, "ws", "full", "t")] == list(range(n))
    finally:
        srv.stop()
