"""Remote mode, end to end, against a real ``dreamlake-server`` on loopback.

    python -m benchmarks.remote [--rows 200000] [--quick]

Prints one table:

* **zstd level**: bytes of a W1-like batch (msgpack+zstd) against the same
  rows as JSON lines, and compression speed, per level (how ZSTD_LEVEL was chosen);
* **hot path**: per-call ``track.append`` latency (p50/p99, ns) in local mode
  and in remote mode — the training loop must not see the difference;
* **end to end**: rows/s from the first append until the server acknowledged
  the last row (``close()`` returned), and bytes on the wire per JSON byte;
* **spool replay**: rows/s delivered from the spool after an outage;
* **where the time goes**: CPU seconds of this process and of the server
  during the end-to-end run, and the server's ingest path per row by stage
  (decompress, decode, validate + ``_ts`` merge, store), timed in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import zstandard

from benchmarks._server import LocalServer
from dreamlake import Session


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def w1_rows(n: int, t0: float = 1.7e9) -> list[dict]:
    return [{"_ts": t0 + i * 1e-3, "loss": 1.0 / (i + 1), "acc": (i % 1000) / 1000, "step": i} for i in range(n)]


def zstd_levels(rows: list[dict]) -> list[dict]:
    json_bytes = sum(len(json.dumps(r)) + 1 for r in rows)
    raw = msgspec.msgpack.encode({"client": "c", "seq": 1, "streams": [{"name": "train", "rows": rows, "kind": "track"}]})
    out = []
    for level in (1, 3, 6, 9):
        compressor = zstandard.ZstdCompressor(level=level)
        t = time.perf_counter()
        for _ in range(5):
            body = compressor.compress(raw)
        seconds = (time.perf_counter() - t) / 5
        out.append({"level": level, "wire/json": len(body) / json_bytes, "MB/s": len(raw) / seconds / 1e6})
    return out


def hot_path(n: int, **session_kwargs) -> tuple[float, float]:
    session = Session(**session_kwargs)
    session.open()
    track = session.track("train")
    samples = []
    clock = time.perf_counter_ns
    for i in range(n):
        t = clock()
        track.append(loss=1.0 / (i + 1), acc=0.5, step=i)
        samples.append(clock() - t)
    session.close()
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def end_to_end(url: str, key: str, n: int, name: str, server_pid: int | None = None) -> dict:
    session = Session(prefix=f"bench/{name}", url=url, api_key=key)
    session.open()
    track = session.track("train")
    server_cpu = _cpu_seconds(server_pid) if server_pid else 0.0
    mine = os.times()
    t = time.perf_counter()
    for i in range(n):
        track.append(loss=1.0 / (i + 1), acc=(i % 1000) / 1000, step=i)
    looped = time.perf_counter()
    session.close()
    seconds = time.perf_counter() - t
    after = os.times()
    health = session.health()
    return {"rows/s": n / seconds, "bytes_sent": health["bytes_sent"], "rows_acked": health["rows_acked"],
            "loop_s": looped - t, "close_s": seconds - (looped - t),
            "client_cpu_s": (after.user - mine.user) + (after.system - mine.system),
            "server_cpu_s": (_cpu_seconds(server_pid) - server_cpu) if server_pid else None}


def server_stages(batches: int = 10, rows: int = 10_000) -> dict[str, float]:
    """ns per row of each step of the server's ingest path for W1 batches, in-process."""
    from dreamlake.server._body import decode_batch, decompress_bounded
    from dreamlake.server._local_storage import LocalStorage
    from dreamlake.server._prepare import SessionClock, prepare_batch
    from dreamlake.server._settings import Settings
    from dreamlake.sinks.remote.batch import SealedBatch
    from dreamlake.sinks.remote.encoder import encode

    root = Path(tempfile.mkdtemp(prefix="dreamlake-bench-stages-"))
    try:
        storage = LocalStorage(Settings(root=root, fsync="never"))
        ref = storage.get_session(storage.upsert_session("bench", "stages", {})["id"])
        bodies = [encode(SealedBatch(b + 1, {("train", False): w1_rows(rows, 1.7e9 + b * rows * 1e-3)}), "c")[0]
                  for b in range(batches)]
        clock = SessionClock()
        spent = dict.fromkeys(("decompress", "decode", "validate+merge", "store"), 0.0)
        for body in bodies:
            t0 = time.perf_counter()
            raw = decompress_bounded(body, 1 << 30)
            t1 = time.perf_counter()
            batch = decode_batch(raw)
            t2 = time.perf_counter()
            prepared = prepare_batch(batch, clock)
            t3 = time.perf_counter()
            storage.ingest(ref, prepared)
            t4 = time.perf_counter()
            for k, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                spent[k] += dt
        storage.close()
        return {k: v / (batches * rows) * 1e9 for k, v in spent.items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n = 20_000 if args.quick else args.rows
    work = Path(tempfile.mkdtemp(prefix="dreamlake-bench-remote-"))
    os.chdir(work)
    root = work / "server"
    port = _free_port()
    server = LocalServer(root, port)  # pinned to the last CPU: it stands for another machine
    key = server.key
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:  # and this process keeps off that CPU
        os.sched_setaffinity(0, set(cpus[:-1]))
    try:
        print("zstd level (W1 rows, one 20k-row batch):")
        for row in zstd_levels(w1_rows(20_000)):
            print(f"  level {row['level']}: wire/JSON {row['wire/json']:.3f}  compress {row['MB/s']:.0f} MB/s")
        # alternate the modes (3 rounds, medians): the machine's noise hits both alike.
        # The server runs pinned to its own CPU (it stands for another machine).
        local, remote = [], []
        for r in range(3):
            local.append(hot_path(n, prefix=f"bench/local{r}", root=str(work / "local")))
            remote.append(hot_path(n, prefix=f"bench/hot{r}", url=server.url, api_key=key))
        med = lambda pairs, k: sorted(p[k] for p in pairs)[1]  # noqa: E731
        print(f"hot path append (ns, median of 3)  local p50 {med(local, 0):.0f} p99 {med(local, 1):.0f}   "
              f"remote p50 {med(remote, 0):.0f} p99 {med(remote, 1):.0f}")
        runs = sorted((end_to_end(server.url, key, n, f"e2e{r}", server.proc.pid) for r in range(3)),
                      key=lambda run: run["rows/s"])
        e2e = runs[1]  # the median of 3 runs
        json_bytes = sum(len(json.dumps(r)) + 1 for r in w1_rows(n))
        each = ", ".join(f"{run['rows/s']:,.0f}" for run in runs)
        print(f"end to end (median of 3): {e2e['rows/s']:,.0f} rows/s acknowledged (runs {each}); wire {e2e['bytes_sent']:,} B vs JSON rows "
              f"{json_bytes:,} B = {e2e['bytes_sent'] / json_bytes:.3f}")
        print(f"  where the time goes: appends {e2e['loop_s']:.3f}s, then close() waits {e2e['close_s']:.3f}s for the "
              f"server; CPU: this process {e2e['client_cpu_s']:.2f}s, server {e2e['server_cpu_s']:.2f}s "
              f"({e2e['server_cpu_s'] / n * 1e9:,.0f} ns/row)")
        stages = server_stages()
        print("  server ingest path, in-process (ns/row): "
              + ", ".join(f"{k} {v:.0f}" for k, v in stages.items()) + f"; total {sum(stages.values()):.0f}")
        # outage: log while the server is down, then measure the replay
        server.stop()
        session = Session(prefix="bench/outage", url=f"http://127.0.0.1:{port}", api_key=key)
        session.open()
        track = session.track("train")
        for i in range(n):
            track.append(loss=1.0 / (i + 1), acc=0.5, step=i)
        session.flush()  # everything safe in the spool
        spooled = session.health()["spooled_batches"]
        server = LocalServer(root, port, key=key)
        back = time.perf_counter()
        deadline = back + 300
        while not session.health()["batches_replayed"] and time.perf_counter() < deadline:
            time.sleep(0.002)
        first = time.perf_counter()
        while session.health()["spooled_batches"] and time.perf_counter() < deadline:
            time.sleep(0.002)
        done = time.perf_counter()
        replayed = session.health()["rows_acked"]
        session.close()
        print(f"spool replay: {spooled} batches; first delivery {first - back:.2f}s after the server was back "
              f"(the sender's backoff), then {replayed / max(done - first, 1e-9):,.0f} rows/s")
    finally:
        server.stop()
        os.chdir("/")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
