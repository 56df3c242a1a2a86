"""A batch split because the server refused it as too large (413) keeps its
piece boundaries on disk: whatever resends it later (the same process after an
outage, the next process, ``dreamlake sync``), and whatever the server's limit
is by then, every row is applied exactly once; a row refused for good is kept
in rejected.zst and counted once; ``dreamlake sync`` splits a spooled batch the
server refuses as too large instead of failing."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from dreamlake import Session
from dreamlake.cli import main
from dreamlake.sinks.remote.encoder import rows_in_body
from dreamlake.sinks.remote.spool import Spool
from remote_helpers import FaultProxy, free_port, server_rows, start_server
from server_process import make_key

LIMIT = ("--max-batch-mb", "0.04")  # refuses batches over 40 kB decompressed

CHILD = textwrap.dedent(
    """
    import secrets, sys, time
    from dreamlake import Session
    url, key, n, big = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    session = Session(prefix="ws/split", url=url, api_key=key)
    session.open()
    track = session.track("t")
    for i in range(n):
        track.append(i=i, blob=secrets.token_hex(40_000 if i == big else 40))
    session.flush()   # the server is unreachable: returns once every batch is spooled
    h = session.health()
    print(h["spooled_batches"], h["memory_batches"], flush=True)
    time.sleep(120)
    """
)


class _Gate:
    """A FaultProxy plan: unreachable (503) until opened, then forwards
    ``allow`` requests and holds the next one (``held`` is set) until closed."""

    def __init__(self) -> None:
        self.open_at: int | None = None
        self.allow = 0
        self.held = threading.Event()
        self.release = threading.Event()

    def __call__(self, n: int):
        if self.open_at is None:
            return (503, {})
        if n - self.open_at <= self.allow:
            return None
        self.held.set()
        self.release.wait(60)
        return (503, {})


def _spool_in_child(tmp_path: Path, proxy_url: str, key: str, rows: int, big: int = -1) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, proxy_url, key, str(rows), str(big)],
                            cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    spooled, memory = map(int, proc.stdout.readline().split())
    assert spooled >= 1 and memory == 0
    return proc


def _server_root(tmp_path: Path) -> tuple[Path, str]:
    """A server root (started later, with different limits) and a key for ``ws``."""
    root = tmp_path / "server"
    root.mkdir()
    return root, make_key(root, workspaces=("ws",))


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()


def _sync(tmp_path: Path, url: str, key: str) -> int:
    return main(["sync", str(tmp_path / ".dreamlake"), "--url", url, "--api-key", key, "-q"])


def _rejected(tmp_path: Path) -> list[int]:
    """Rows of every frame kept in rejected.zst."""
    kept = list((tmp_path / ".dreamlake" / "ws" / "split" / ".remote").glob("*/rejected.zst"))
    rows = []
    for path in kept:
        copy = path.with_name("read-back.zst")  # popping the last frame empties the file
        shutil.copy(path, copy)
        spool = Spool(str(copy), budget=1 << 62)
        while (head := spool.peek()) is not None:
            rows.append(rows_in_body(head[1]))
            spool.pop()
        copy.unlink()
    return rows


@pytest.mark.parametrize("resend", ["sync", "next process"])
def test_a_split_interrupted_by_kill9_is_resent_with_its_pieces_after_the_limit_was_raised(tmp_path, monkeypatch, resend):
    root, key = _server_root(tmp_path)
    small = start_server(root, free_port(), *LIMIT)
    gate = _Gate()
    try:
        with FaultProxy(small.url, gate) as proxy:
            proc = _spool_in_child(tmp_path, proxy.url, key, 3000)
            try:
                gate.allow, gate.open_at = 8, proxy.count  # the upsert, the whole batch (413), pieces
                assert gate.held.wait(30)
                applied = len(server_rows(root, "ws", "split", "t"))
                assert 0 < applied < 3000  # some pieces were applied, not all
            finally:
                _kill(proc)
                gate.release.set()
    finally:
        small.stop()
    large = start_server(root, free_port())  # the limit is gone: the whole batch would now fit
    try:
        if resend == "sync":
            assert _sync(tmp_path, large.url, key) == 0
        else:  # the next process of the session adopts the dead one's slot and sends its spool first
            monkeypatch.chdir(tmp_path)
            with Session(prefix="ws/split", url=large.url, api_key=key) as session:
                session.track("t").append(i=3000, blob="")
                session.flush()
            assert server_rows(root, "ws", "split", "t")[-1]["i"] == 3000
        assert [r["i"] for r in server_rows(root, "ws", "split", "t")][:3000] == list(range(3000))
    finally:
        large.stop()


def test_sync_splits_a_spooled_batch_refused_as_too_large_and_keeps_one_huge_row_once(tmp_path):
    root, key = _server_root(tmp_path)
    gate = _Gate()
    with FaultProxy("http://127.0.0.1:9", gate) as proxy:  # never opened: unreachable
        proc = _spool_in_child(tmp_path, proxy.url, key, 600, big=300)
        _kill(proc)
    slots = tmp_path / ".dreamlake" / "ws" / "split" / ".remote"
    before = tmp_path / "before-sync"
    shutil.copytree(slots, before)
    small = start_server(root, free_port(), *LIMIT)
    try:
        assert _sync(tmp_path, small.url, key) == 0
        assert [r["i"] for r in server_rows(root, "ws", "split", "t")] == [i for i in range(600) if i != 300]
        assert _rejected(tmp_path) == [1]
        # a crash before the acknowledged position was saved leaves the spool as
        # it was: the next sync resends it, and the refused row is not kept twice
        for name in ("spool.zst", "state.json"):
            for copy in before.glob(f"*/{name}"):
                shutil.copy(copy, slots / copy.parent.name / name)
        assert _sync(tmp_path, small.url, key) == 0
        assert [r["i"] for r in server_rows(root, "ws", "split", "t")] == [i for i in range(600) if i != 300]
        assert _rejected(tmp_path) == [1]
    finally:
        small.stop()
