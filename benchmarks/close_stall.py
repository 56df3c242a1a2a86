"""How long closing a remote session whose server never answers holds
another session of the same process (thread mode: one writer serves both).

    python -m benchmarks.close_stall [--rounds 3]

The server is a socket that listens but never accepts or answers (a host
whose replies are dropped). Per round: the other session's ``flush()`` of
1,000 rows with nothing else going on (the floor), then the same while the
stuck session's ``close()`` runs on another thread. Prints medians, in ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from dreamlake import Session


def _silent_server() -> socket.socket:
    """A listening socket that never accepts: the kernel completes the
    connection, takes the request into its buffer, and nothing ever answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener


def _flush_ms(session: Session, base: int) -> float:
    track = session.track("x")
    t = time.perf_counter()
    for i in range(1000):
        track.append(i=base + i)
    session.flush()
    return (time.perf_counter() - t) * 1e3


def one_round(work: Path, r: int) -> tuple[float, float, float]:
    hole = _silent_server()
    url = f"http://127.0.0.1:{hole.getsockname()[1]}"
    os.environ["DREAMLAKE_ROOT"] = str(work / f"client{r}")
    stuck = Session(prefix=f"bench/stuck{r}", url=url, api_key="k", timeout=60).open()
    other = Session(prefix=f"bench/other{r}", root=str(work / "local"), timeout=120).open()
    for i in range(1000):
        stuck.track("t").append(i=i)
    while not stuck.health()["memory_batches"]:  # sealed by age; the sender takes it at once
        time.sleep(0.01)
    time.sleep(0.2)  # its request is on the wire now, waiting for an answer
    idle = _flush_ms(other, 0)
    closing = threading.Thread(target=stuck.close)
    start = time.perf_counter()
    closing.start()
    while not (stuck._state == "closing" and not stuck._pipe.queue):
        time.sleep(0.001)
    during = _flush_ms(other, 1000)
    closing.join()
    close_s = time.perf_counter() - start
    other.close()
    hole.close()
    return idle, during, close_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dreamlake-bench-close-"))
    try:
        rounds = [one_round(work, r) for r in range(args.rounds)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = lambda k: sorted(row[k] for row in rounds)[len(rounds) // 2]  # noqa: E731
    print(f"other session's flush of 1,000 rows (median of {len(rounds)}): idle {med(0):.1f} ms, "
          f"while a session to a silent server closes {med(1):.1f} ms ({med(1) / med(0):.1f}x); "
          f"that close took {med(2):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
