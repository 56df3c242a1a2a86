"""A full disk must not freeze the training loop (a real 2 MB tmpfs, filled up).

``block`` stays backpressure while the store makes progress; once it has been
failing for ``SINK_STALL_LIMIT`` the caller goes on (rows that do not fit the
budget are dropped and counted by reason) and ``flush()`` raises ``SinkError``
instead of waiting out its timeout. When space comes back, what was kept is
written once and the session closes normally."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from disk import read_all
from dreamlake import Session
from dreamlake._errors import SinkError
from dreamlake._pipe import SINK_STALL_LIMIT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path):
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.timeout(90)
def test_block_gives_way_to_a_full_disk_and_flush_raises_within_the_bound(small_disk):
    s = Session(prefix="ws/full", root=str(small_disk), memory_budget=64 << 10).open()
    t = s.track("t")
    t.append(i=-1)
    s.flush()
    _fill(small_disk / "filler")

    n = 3000
    started = time.monotonic()
    for i in range(n):
        t.append(i=i, pad="x" * 100)
    took = time.monotonic() - started
    assert took < SINK_STALL_LIMIT + 5, f"the loop was held {took:.1f} s by a full disk"
    health = s.health()
    assert health["lost"]["sink_failing"] > 0
    assert health["dropped"] == sum(health["lost"].values())
    assert health["write_errors"] > 0 and "No space" in health["last_error"]

    asked = time.monotonic()
    with pytest.raises(SinkError, match="failing"):
        s.flush()
    assert time.monotonic() - asked < 2.0  # already past the bound: at once, not after the 60 s timeout

    os.unlink(small_disk / "filler")  # space comes back: the kept rows are written
    wait_until(lambda: s.health()["backlog_rows"] == 0, 30, "the kept rows to be written")
    lost = s.health()["dropped"]
    s.close()
    with Session(prefix="ws/full", root=str(small_disk)) as again:
        rows = [p["data"]["i"] for p in read_all(again.track("t"))]
    assert rows[0] == -1
    assert rows == sorted(set(rows)), "rows duplicated or out of order"
    assert len(rows) - 1 + lost == n  # every row written once, or counted as lost
