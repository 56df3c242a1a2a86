"""File uploads into a local ``dreamlake-server``: one request against
resumable chunks of several sizes (how ``CHUNK_BYTES`` and
``CHUNKED_THRESHOLD`` in ``dreamlake/sinks/remote/uploads.py`` were chosen).

    python -m benchmarks.uploads [--sizes-mb 4 32 128] [--repeat 3]

Prints MB/s per (file size, mode), the median of ``--repeat`` runs, each a
fresh upload of a random file (so nothing is deduplicated anywhere).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[4, 32, 128])
    parser.add_argument("--chunks-mb", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    from benchmarks._server import LocalServer
    from dreamlake.sinks.remote import uploads
    from dreamlake.sinks.remote.config import RemoteTarget
    from dreamlake.sinks.remote.service import RemoteStore

    with tempfile.TemporaryDirectory() as tmp:
        server = LocalServer(Path(tmp) / "server", pin=False)
        key = server.key
        try:
            sid = httpx.post(f"{server.url}/workspaces/bench/sessions", json={"name": "files"},
                             headers={"Authorization": f"Bearer {key}"}).json()["session"]["id"]
            store = RemoteStore(RemoteTarget(server.url, "bench", "files", key), lambda: sid)
            modes = [("one request", None)] + [(f"chunks of {c} MiB", c << 20) for c in args.chunks_mb]
            print(f"{'file':>8}  " + "  ".join(f"{m:>16}" for m, _ in modes) + "   (MB/s, median)")
            for size_mb in args.sizes_mb:
                src = Path(tmp) / "payload.bin"
                rates = []
                for _, chunk in modes:
                    runs = []
                    for _ in range(args.repeat):
                        src.write_bytes(os.urandom(int(size_mb * (1 << 20))))
                        uploads.CHUNKED_THRESHOLD = 1 << 62 if chunk is None else 0
                        uploads.CHUNK_BYTES = chunk or uploads.CHUNK_BYTES
                        start = time.perf_counter()
                        store.files_upload(str(src), "", None, [], {})
                        runs.append(size_mb * (1 << 20) / 1e6 / (time.perf_counter() - start))
                    rates.append(statistics.median(runs))
                print(f"{size_mb:>5g} MB  " + "  ".join(f"{r:>16.0f}" for r in rates), flush=True)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
