"""W8 scale-out: ``python -m benchmarks.server_pg [--quick] [--pg postgresql://…] [--rows-read N]``.

Real ``dreamlake-server`` processes on loopback, driven by client *processes*
sending the batched ingest (the W7 client of ``benchmarks.server_ingest``,
zstd msgpack batches of ``--batch`` rows of 3 fields + ``_ts``, one session
per client):

* the embedded server on the local store (the baseline);
* 1 replica on PostgreSQL (``--store``);
* 2 replicas on the same database, clients spread over them.

Then a ``--rows-read``-row track (default 10,000,000) is written into the
database through the backend's own write path in 100,000-row transactions
(no HTTP: generating it is not what is measured), and reads of 100 rows at
its end are timed: by index and by ``_ts``, over HTTP through a replica and
in-process. Each PostgreSQL run uses a fresh schema, dropped afterwards.
Prints one markdown table; the DESIGN §7 floors are beside the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks._stats import percentile
from benchmarks.server_ingest import _batched_client, _client, _run, start_server
from dreamlake.server._local_storage import session_id_for

INGEST_FLOOR = 500_000  # DESIGN §7: rows/s from one client into the server on loopback
READ_FLOOR_MS = 10.0  # DESIGN §7: 100 rows at the end of a 10,000,000-row track
_SCHEMA_OPTION = "options=-csearch_path%3D"


def _batched_on_replica(urls: list[str], key: str, client_no: int, *rest) -> None:
    """One W7 client, on replica ``client_no % len(urls)``."""
    _batched_client(urls[client_no % len(urls)], key, client_no, *rest)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(60)


def _fresh_schema(server: str) -> str:
    import psycopg

    name = f"dl_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{server}/test", autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    return f"{server}/test?{_SCHEMA_OPTION}{name}"


def _drop_schema(url: str) -> None:
    import psycopg

    server, name = url.split(f"/test?{_SCHEMA_OPTION}")
    with psycopg.connect(f"{server}/test", autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _ingest(root: Path, key: str, replicas: int, clients: int, batches: int, batch: int, *extra: str) -> dict:
    servers = [start_server(root, *extra) for _ in range(replicas)]
    try:
        return _run(_batched_on_replica, clients, [url for _, url in servers], key, batches, batch)
    finally:
        _stop([proc for proc, _ in servers])


def _fill_track(dsn: str, root: Path, rows: int) -> str:
    """A ``rows``-row track ``big`` in session bench/big, through the backend's
    write path (index upsert + binary COPY of chunks); → the session id."""
    from dreamlake.server._objects import open_objects
    from dreamlake.server._settings import Settings
    from dreamlake.server.postgres import PostgresStorage
    from dreamlake.server.postgres import _streams

    storage = PostgresStorage(dsn, open_objects(str(root / "objects")), Settings(root=root), pool_size=2)
    try:
        ref = storage.get_session(storage.upsert_session("bench", "big", {})["id"])
        step = 100_000
        base = 1.7e9
        for start in range(0, rows, step):
            n = min(step, rows - start)
            ts = [base + (start + i) * 1e-3 for i in range(n)]
            data = [{"_ts": t, "step": start + i, "loss": 1.0 / (start + i + 1), "acc": ((start + i) % 1000) / 1e3}
                    for i, t in enumerate(ts)]
            with storage._writer() as conn:
                _streams.append(conn, int(ref.id), "track", "big", data, ts)
        return ref.id
    finally:
        storage.close()


def _time_reads(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return percentile(times, 50) * 1e3, percentile(times, 99) * 1e3


def _http_reads(label: str, root: Path, key: str, sid: str, track: str, rows: int, repeats: int,
                *server_args: str) -> list[tuple[str, float, float]]:
    """A server's bare round trip (``/health``: the floor of any request on this
    machine), then 100 rows at the end of ``track`` by index and by ``_ts``."""
    start_ts = 1.7e9 + (rows - 100) * 1e-3
    proc, url = start_server(root, *server_args)
    try:
        with _client(url, {"Authorization": f"Bearer {key}"}) as c:
            def page(params: dict) -> None:
                reply = c.get(f"/sessions/{sid}/tracks/{track}/data", params={**params, "limit": 100})
                assert [r["index"] for r in reply.json()["data"]] == list(range(rows - 100, rows))

            return [
                (f"{label}: HTTP GET /health (round-trip floor)", *_time_reads(lambda: c.get("/health"), repeats)),
                (f"{label}: HTTP, by index", *_time_reads(lambda: page({"startIndex": rows - 100}), repeats)),
                (f"{label}: HTTP, by _ts", *_time_reads(lambda: page({"startTs": start_ts}), repeats)),
            ]
    finally:
        _stop([proc])


def _inprocess_reads(dsn: str, root: Path, sid: str, rows: int, repeats: int) -> list[tuple[str, float, float]]:
    from dreamlake.server._objects import open_objects
    from dreamlake.server._settings import Settings
    from dreamlake.server.postgres import PostgresStorage

    start_ts = 1.7e9 + (rows - 100) * 1e-3
    storage = PostgresStorage(dsn, open_objects(str(root / "objects")), Settings(root=root), pool_size=2)
    try:
        ref = storage.get_session(sid)
        return [
            ("PostgreSQL: in-process, by index",
             *_time_reads(lambda: storage.read_rows(ref, "big", rows - 100, 100), repeats)),
            ("PostgreSQL: in-process, by _ts",
             *_time_reads(lambda: storage.read_rows_by_ts(ref, "big", start_ts, None, 100), repeats)),
        ]
    finally:
        storage.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server_pg", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432",
                        help="PostgreSQL server (a fresh schema in its database 'test' is used and dropped)")
    parser.add_argument("--batch", type=int, default=10_000, help="rows per ingest batch")
    parser.add_argument("--rows-read", type=int, default=None, help="rows in the read track (default 10,000,000)")
    args = parser.parse_args(argv)
    batches = 6 if args.quick else 21
    rows_read = args.rows_read or (200_000 if args.quick else 10_000_000)

    from dreamlake.server._auth import create_key
    from dreamlake.server._settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="dl-w8-"))
    ingest: list[tuple[str, int, int, dict]] = []
    try:
        root = tmp / "root"
        key = create_key(Settings(root=root).state_dir, "bench", [])
        for clients in (1, 2):
            ingest.append(("local store", 1, clients, _ingest(root, key, 1, clients, batches, args.batch)))
        local_reads = _http_reads("local store", root, key, session_id_for("bench", "batched-0"), "train",
                                  batches * args.batch, 50 if args.quick else 300)
        dsn = _fresh_schema(args.pg)
        try:
            store = ("--store", dsn, "--objects", (tmp / "objects").as_uri())
            for replicas, clients in ((1, 1), (1, 2), (2, 2), (2, 4)):
                ingest.append(("PostgreSQL", replicas, clients,
                               _ingest(root, key, replicas, clients, batches, args.batch, *store)))
            started = time.perf_counter()
            sid = _fill_track(dsn, root, rows_read)
            fill_s = time.perf_counter() - started
            repeats = 50 if args.quick else 300
            reads = [*_http_reads("PostgreSQL", root, key, sid, "big", rows_read, repeats, "--store", dsn),
                     *_inprocess_reads(dsn, root, sid, rows_read, repeats)]
        finally:
            _drop_schema(dsn)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"W8 scale-out — loopback, {os.cpu_count()} cores shared by clients, replicas and PostgreSQL; "
          f"batch {args.batch} rows of 3 fields + _ts; server default --fsync batches (WAL flushed per batch)\n")
    print("| backend | replicas | clients | rows/s | request p50 (ms) | request p99 (ms) | floor |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for backend, replicas, clients, r in ingest:
        floor = f"≥ {INGEST_FLOOR:,} rows/s (1 client)" if clients == 1 else ""
        print(f"| {backend} | {replicas} | {clients} | {r['rows_per_s']:,.0f} | {r['p50_ms']:.2f} "
              f"| {r['p99_ms']:.2f} | {floor} |")
    print(f"\nRead of 100 rows at the end of a track: {rows_read:,} rows on PostgreSQL (written in {fill_s:.1f} s "
          f"through the backend, {rows_read / fill_s:,.0f} rows/s); the local store's ingest track "
          f"({batches * args.batch:,} rows; its reads are O(limit) too) as the HTTP baseline:\n")
    print("| read | p50 (ms) | p99 (ms) | floor |")
    print("|---|---:|---:|---|")
    for name, p50, p99 in [*local_reads, *reads]:
        floor = "" if "/health" in name else f"< {READ_FLOOR_MS:.0f} ms"
        print(f"| {name} | {p50:.2f} | {p99:.2f} | {floor} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
