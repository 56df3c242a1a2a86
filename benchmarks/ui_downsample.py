"""How fast the web page opens a huge track (DESIGN.md §10: 10 M rows in under a second).

    python benchmarks/ui_downsample.py                    # 10,000,000 rows in a temp dir
    python benchmarks/ui_downsample.py --rows 1000000 --root /tmp/big --keep --browser
    python benchmarks/ui_downsample.py --pg postgresql://postgres@127.0.0.1/test   # the server's PG backend

Writes one track through ``dreamlake.Session`` (``append_batch``), then times,
over HTTP against a real uvicorn serving :func:`dreamlake.ui.create_app`, what
the page asks for when a track opens: ``api/track`` (info + field names),
``api/series`` for a 1000- and a 2000-pixel chart, a zoomed view, the newest
table rows, and ``api/stats`` (compare's last/min/max). Each request runs
``--repeat`` times after one warm-up; the table shows median and max.
Standalone: not part of ``python -m benchmarks`` or the tests.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time

import httpx
import uvicorn

from dreamlake import Session
from dreamlake.ui import LocalStoreSource, create_app

BUDGET_S = 1.0
BATCH = 100_000


def write_track(root: str, rows: int) -> str:
    prefix = "bench/big"
    with Session(prefix=prefix, root=root) as session:
        track = session.track("signal")
        t0 = 1_700_000_000.0
        started = time.perf_counter()
        for base in range(0, rows, BATCH):
            n = min(BATCH, rows - base)
            track.append_batch(
                [{"loss": math.sin(i / 1e4) + (5.0 if i % 1_000_003 == 0 else 0.0), "step": i, "_ts": t0 + i * 1e-3} for i in range(base, base + n)]
            )
            if base // BATCH % 10 == 0:
                print(f"  wrote {base + n:,} rows ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return prefix


def pg_source(url: str, root: str, rows: int):
    """The page's source over the server's PostgreSQL backend (``--pg``), the
    track written there through the storage (as the server's ingest does)."""
    from pathlib import Path

    from dreamlake.server._objects import open_objects
    from dreamlake.server._page_source import StorageSource
    from dreamlake.server._settings import Settings
    from dreamlake.server._storage import StreamRows
    from dreamlake.server.postgres import PostgresStorage

    storage = PostgresStorage(url, open_objects(os.path.join(root, "objects")), Settings(root=Path(root) / "server"))
    workspace, name = "bench", f"big-{rows}"
    ref = storage.find_session(workspace, name)
    if ref is None or storage.track_stats(ref, "signal")["totalDataPoints"] != rows:
        ref = storage.get_session(storage.upsert_session(workspace, f"{name}-{time.time_ns()}", {})["id"])
        name = ref.name
        print(f"writing {rows:,} rows into PostgreSQL ...", file=sys.stderr)
        t0 = 1_700_000_000.0
        for base in range(0, rows, BATCH):
            batch = [{"loss": math.sin(i / 1e4) + (5.0 if i % 1_000_003 == 0 else 0.0), "step": i, "_ts": t0 + i * 1e-3}
                     for i in range(base, min(rows, base + BATCH))]
            storage.append_rows(ref, StreamRows("track", "signal", batch, [r["_ts"] for r in batch]))
    return StorageSource(storage), f"{workspace}/{name}"


def serve(app) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}/"


def time_in_browser(url: str, prefix: str, repeat: int) -> float:
    """Navigation start -> the 'loss' chart holds its points, in headless chromium."""
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    times = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        for run in range(repeat + 1):
            page.goto("about:blank")
            started = time.perf_counter()
            page.goto(f"{url}#/s/{prefix.replace('/', '%2F')}?track=signal")
            page.wait_for_function("() => window.dl.charts.loss && window.dl.charts.loss.data[0].length > 0", timeout=30_000)
            if run:
                times.append(time.perf_counter() - started)
        points = page.evaluate("() => window.dl.charts.loss.data[0].length")
        browser.close()
    print(f"| browser: page load -> loss chart drawn | {statistics.median(times) * 1e3:.1f} | {max(times) * 1e3:.1f} | {points} | - |")
    return max(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--root", default=None, help="store root (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the store (reuse it with the same --root)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--browser", action="store_true", help="also time the page in headless chromium (Playwright)")
    parser.add_argument("--pg", metavar="URL", help="read through the server's PostgreSQL backend in this database")
    args = parser.parse_args()
    root = args.root or tempfile.mkdtemp(prefix="dreamlake-ui-bench-")
    source = LocalStoreSource(root)
    try:
        prefix = "bench/big"
        if args.pg:
            source, prefix = pg_source(args.pg, root, args.rows)
        existing = source.track_info(prefix, "signal")["totalDataPoints"] if args.pg or os.path.exists(os.path.join(root, prefix)) else 0
        if existing != args.rows:
            shutil.rmtree(os.path.join(root, "bench"), ignore_errors=True)
            print(f"writing {args.rows:,} rows under {root} ...", file=sys.stderr)
            write_track(root, args.rows)
        server, thread, url = serve(create_app(source))
        requests = [
            ("open: api/track (info + fields)", "track", {}),
            ("open: api/series, 1000 px, all rows", "series", {"fields": "loss,step", "points": 1000}),
            ("open: api/series, 2000 px, x=step", "series", {"fields": "loss", "x": "step", "points": 2000}),
            ("zoom: api/series 3,000 rows mid-track", "series", {"fields": "loss", "lo": args.rows // 2, "hi": args.rows // 2 + 3000, "points": 1000}),
            ("table: api/rows newest 50", "rows", {"limit": 50}),
            ("compare: api/stats loss", "stats", {"fields": "loss"}),
        ]
        print(f"\n{args.rows:,}-row track ({'PostgreSQL' if args.pg else 'local store'}), {args.repeat} runs each after a warm-up; budget {BUDGET_S:.1f} s to open\n")
        print("| request | median ms | max ms | points | rows read |\n|---|---:|---:|---:|---:|")
        worst_open = 0.0
        with httpx.Client(base_url=url, timeout=60) as http:
            for label, path, params in requests:
                params = {"prefix": prefix, "track": "signal", **params}
                body = http.get(f"api/{path}", params=params).json()  # warm-up
                times = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    # a fresh connection each time, as a browser opening the page;
                    # reusing one with httpx adds a ~40 ms delayed-ACK stall per request
                    response = http.get(f"api/{path}", params=params, headers={"Connection": "close"})
                    times.append(time.perf_counter() - started)
                    response.raise_for_status()
                body = response.json()
                points = len(body.get("xs", [])) or "-"
                read = body.get("sampled", "-")
                print(f"| {label} | {statistics.median(times) * 1e3:.1f} | {max(times) * 1e3:.1f} | {points} | {read} |")
                if label.startswith("open"):
                    worst_open = max(worst_open, max(times))
        if args.browser:
            worst_open = max(worst_open, time_in_browser(url, prefix, args.repeat))
        server.should_exit = True
        thread.join(timeout=10)
        print(f"\nslowest 'open' request: {worst_open * 1e3:.0f} ms (budget {BUDGET_S * 1e3:.0f} ms): {'OK' if worst_open < BUDGET_S else 'OVER BUDGET'}")
        return 0 if worst_open < BUDGET_S else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
