"""W7 server ingest: ``python -m benchmarks.server_ingest [--quick] [--fsync batches|always|never]``.

Starts a real ``dreamlake-server`` on a loopback port (fresh store in a temp
directory) and drives it from 1 and 4 client *processes* (so client-side
Python does not share the server's GIL), each logging into its own session:

* **batched** — ``POST /ingest/{ws}/{name}``, zstd msgpack batches of
  ``--batch`` rows (bodies encoded before the clock starts: this measures the
  server, the client's encoding runs on its writer thread anyway);
* **per-row** — upstream's ``POST /sessions/{id}/tracks/{name}/append``, one
  JSON row per request.

Rows are 3 fields plus ``_ts`` (step, loss, acc). Prints one markdown table:
rows/s, request p50/p99, bytes on the wire per row, and the ratio of wire bytes
to the same rows as plain JSON (``{"dataPoints": [...]}``); the DESIGN §7
floors are beside them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._stats import percentile

BATCH_TARGET = 500_000  # DESIGN §7: rows/s from one client into the server on loopback
WIRE_TARGET = 0.25  # DESIGN §7: bytes on the wire ≤ 1/4 of the JSON rows


def _rows(n: int, start: int) -> list[dict]:
    base = 1.7e9
    return [{"_ts": base + (start + i) * 1e-3, "step": start + i, "loss": 1.0 / (start + i + 1),
             "acc": ((start + i) % 1000) / 1000.0} for i in range(n)]


def start_server(root: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """A dreamlake-server on a free loopback port, once healthy; ``extra`` CLI arguments."""
    args = [sys.executable, "-m", "dreamlake.server", "--root", str(root), "--port", "0", "--log-level", "warning",
            "--max-body-mb", "64", *extra]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        raise SystemExit("dreamlake-server did not start")
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit("dreamlake-server never became healthy")


def _client(url: str, headers: dict):
    """httpx with TCP_NODELAY: without it a request sent as two writes (headers,
    then body) waits ~40 ms for the server's delayed ACK (Nagle)."""
    import socket

    import httpx

    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    return httpx.Client(base_url=url, headers=headers, timeout=120, transport=transport)


def _batched_client(url: str, key: str, client_no: int, batches: int, batch_rows: int, barrier, out) -> None:
    from dreamlake.server.wire import BATCH_CONTENT_TYPE, IngestBatch, StreamBatch, encode_batch

    bodies = [encode_batch(IngestBatch(f"bench-{client_no}", seq + 1,
                                       [StreamBatch("train", _rows(batch_rows, seq * batch_rows))]))
              for seq in range(batches)]
    headers = {"Authorization": f"Bearer {key}", "content-type": BATCH_CONTENT_TYPE, "content-encoding": "zstd"}
    latencies = []
    with _client(url, headers) as c:
        c.post(f"/ingest/bench/batched-{client_no}", content=bodies[0]).raise_for_status()  # warm-up + session
        barrier.wait()
        started = time.perf_counter()
        for body in bodies[1:]:
            t = time.perf_counter()
            c.post(f"/ingest/bench/batched-{client_no}", content=body).raise_for_status()
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - started
    out.put({"rows": (batches - 1) * batch_rows, "elapsed": elapsed, "latencies": latencies,
             "wire": sum(map(len, bodies[1:]))})


def _per_row_client(url: str, key: str, client_no: int, requests: int, barrier, out) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    rows = _rows(requests + 1, 0)
    bodies = [json.dumps({"data": row}).encode() for row in rows]
    latencies = []
    with _client(url, {**headers, "content-type": "application/json"}) as c:
        sid = c.post("/workspaces/bench/sessions", json={"name": f"per-row-{client_no}"}).json()["session"]["id"]
        path = f"/sessions/{sid}/tracks/train/append"
        c.post(path, content=bodies[0]).raise_for_status()
        barrier.wait()
        started = time.perf_counter()
        for body in bodies[1:]:
            t = time.perf_counter()
            c.post(path, content=body).raise_for_status()
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - started
    out.put({"rows": requests, "elapsed": elapsed, "latencies": latencies, "wire": sum(map(len, bodies[1:]))})


def _run(target, clients: int, *args) -> dict:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(clients + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args[:2], n, *args[2:], barrier, out)) for n in range(clients)]
    for p in procs:
        p.start()
    barrier.wait()
    started = time.perf_counter()
    results = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - started
    for p in procs:
        p.join()
    latencies = sorted(x for r in results for x in r["latencies"])
    rows = sum(r["rows"] for r in results)
    return {"rows_per_s": rows / wall, "p50_ms": percentile(latencies, 50) * 1e3,
            "p99_ms": percentile(latencies, 99) * 1e3, "wire_per_row": sum(r["wire"] for r in results) / rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server_ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    parser.add_argument("--fsync", choices=("batches", "always", "never"), default="batches",
                        help="the server's --fsync (default: batches, the server's default)")
    parser.add_argument("--batch", type=int, default=10_000, help="rows per ingest batch")
    args = parser.parse_args(argv)
    batches = 6 if args.quick else 31
    per_row = 200 if args.quick else 3000

    tmp = Path(tempfile.mkdtemp(prefix="dl-w7-"))
    try:
        from dreamlake.server._auth import create_key
        from dreamlake.server._settings import Settings

        key = create_key(Settings(root=tmp / "store").state_dir, "bench", [])
        proc, url = start_server(tmp / "store", "--fsync", args.fsync)
        try:
            results = []
            for clients in (1, 4):
                results.append(("batched zstd msgpack", clients,
                                _run(_batched_client, clients, url, key, batches, args.batch)))
            for clients in (1, 4):
                results.append(("per-row JSON append", clients, _run(_per_row_client, clients, url, key, per_row)))
        finally:
            proc.terminate()
            proc.wait(30)
        json_per_row = len(json.dumps({"dataPoints": _rows(args.batch, 10**6)})) / args.batch

        from dreamlake.server.wire import IngestBatch, StreamBatch, encode_batch

        zstd_per_row = len(encode_batch(IngestBatch("x", 1, [StreamBatch("t", _rows(args.batch, 10**6))]))) / args.batch
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"W7 server ingest — loopback, {os.cpu_count()} cores, --fsync {args.fsync}, "
          f"batch {args.batch} rows, rows of 3 fields + _ts\n")
    print("| workload | clients | rows/s | request p50 (ms) | request p99 (ms) | wire bytes/row | floor |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, clients, r in results:
        floor = f"≥ {BATCH_TARGET:,} rows/s (1 client)" if name.startswith("batched") and clients == 1 else ""
        print(f"| {name} | {clients} | {r['rows_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
              f"| {r['wire_per_row']:.1f} | {floor} |")
    print(f"\nwire bytes vs plain JSON rows: batched {zstd_per_row:.1f} B/row vs JSON {json_per_row:.1f} B/row "
          f"= {zstd_per_row / json_per_row:.3f} (floor ≤ {WIRE_TARGET})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
