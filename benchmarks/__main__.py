"""``python -m benchmarks``: the same workloads for DreamLake and its peers, one table.

Every (system, workload) pair runs in its own subprocess, so imports, threads
and peak RSS never mix; each prints one ``BENCH-RESULT {json}`` line. This
process collects them, prints one markdown table on stdout (progress goes to
stderr) and writes the JSON (default ``benchmarks/results/latest.json``).

    python -m benchmarks                     # everything, ~10 min on 2 cores
    python -m benchmarks --quick --no-peers  # CI smoke, < 20 s
    python -m benchmarks --only W1,W4 --rows-read 10000000
    python -m benchmarks --modes thread,remote --only W1,W2,W3   # remote: a local dreamlake-server

For the ``remote`` mode this process starts a ``dreamlake-server`` on loopback
(``benchmarks/_server.py``: local store, no fsync, pinned to the last CPU) and
stops it at the end.

Exit status: 0, or 1 when a DreamLake column could not run or a DreamLake
workload errored (a peer's failure only shows in the table).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._report import render
from benchmarks._server import ENV_URL, LocalServer
from benchmarks.peers import PEERS
from benchmarks.workloads import MODES, RESULT_MARKER, WORKLOADS

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_JSON = HERE / "results" / "latest.json"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a CI smoke run (< 20 s without peers)")
    ap.add_argument("--rows-read", type=int, default=None, metavar="N", help="W5 track size (default 1,000,000)")
    ap.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                    help="also run W&B, MLflow, tensorboardX and Rerun (default: yes)")
    ap.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads, e.g. W1,W2")
    ap.add_argument("--modes", default=",".join(MODES), help=f"DreamLake modes (known: {', '.join(MODES)})")
    ap.add_argument("--json", default=str(DEFAULT_JSON), metavar="PATH", help="where to write the results JSON")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per subprocess (default scales with sizes)")
    args = ap.parse_args(argv)
    canonical = {w.upper(): w for w in WORKLOADS}
    args.only = [canonical.get(w.strip().upper(), w.strip()) for w in args.only.split(",") if w.strip()]
    bad = [w for w in args.only if w not in WORKLOADS]
    if bad:
        ap.error(f"unknown workload(s) {', '.join(bad)}; known: {', '.join(WORKLOADS)}")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        ap.error(f"unknown mode(s) {', '.join(bad)}; known: {', '.join(MODES)}")
    return args


def _systems(args: argparse.Namespace) -> list[tuple[str, str, list[str], str]]:
    """(column, module, extra argv, module to probe) per column, DreamLake modes first."""
    out = [(f"dreamlake[{m}]", "benchmarks.workloads", ["--mode", m], "dreamlake") for m in args.modes]
    out.append(("naive-jsonl", "benchmarks.naive", [], "json"))  # the baseline: always measured
    if args.peers:
        out += [(col, mod, extra, probe) for col, (mod, extra, probe) in PEERS.items()]
    return out


def _child_env(scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(
        TMPDIR=str(scratch),  # anything a library writes to "temp" lands here and is removed
        DO_NOT_TRACK="1",
        WANDB_MODE="offline",  # no network
        WANDB_SILENT="true",
        WANDB_CONFIG_DIR=str(scratch / "wandb-config"),
        WANDB_CACHE_DIR=str(scratch / "wandb-cache"),
        WANDB_DATA_DIR=str(scratch / "wandb-data"),
        WANDB_ARTIFACT_DIR=str(scratch / "wandb-artifacts"),
        # agent="auto" starts a private agent here; main() stops it at the end
        DREAMLAKE_AGENT_SOCKET=str(scratch / "agent.sock"),
        MLFLOW_ALLOW_FILE_STORE="true",
        MLFLOW_DISABLE_TELEMETRY="true",
        MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING="false",
    )
    return env


def _run_child(module: str, argv: list[str], env: dict, timeout: float) -> dict:
    """Run one runner subprocess; its result dict, or ``{"status": "error", ...}``."""
    cmd = [sys.executable, "-m", module, *argv]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and whatever it spawned (e.g. wandb-core)
        out, err = proc.communicate()
        return {"status": "error", "reason": f"timed out after {timeout:.0f} s", "stderr": err[-2000:]}
    lines = [ln for ln in out.splitlines() if ln.startswith(RESULT_MARKER)]
    if not lines:
        tail = (err or out).strip().splitlines()[-3:]
        return {"status": "error", "reason": f"exit {proc.returncode}, no result: {' / '.join(tail)}",
                "stderr": err[-4000:]}
    return json.loads(lines[-1][len(RESULT_MARKER):])


def _timeout(args: argparse.Namespace) -> float:
    if args.timeout:
        return args.timeout
    if args.quick:
        return 60.0
    return 300.0 + 30.0 * (args.rows_read or 1_000_000) / 1e6


def _git_commit() -> str | None:
    """Short HEAD, with ``+dirty`` when the measured code has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "dreamlake", "agent"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (head + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    systems = _systems(args)
    dl_columns = [s[0] for s in systems if s[3] == "dreamlake"]
    scratch = Path(tempfile.mkdtemp(prefix="dlbench-"))
    env = _child_env(scratch)
    timeout = _timeout(args)
    common = (["--quick"] if args.quick else []) + (["--rows-read", str(args.rows_read)] if args.rows_read else [])
    results: dict[str, dict] = {}
    load_start = _load()
    t_start = time.perf_counter()
    server = None
    try:
        if "remote" in args.modes:
            server = LocalServer(scratch / "server")
            env.update({ENV_URL: server.url, "DREAMLAKE_API_KEY": server.key})
            _progress(f"remote mode: dreamlake-server at {server.url}")
        for col, module, extra, probe in systems:
            if importlib.util.find_spec(probe) is None:
                results[col] = {"status": "skipped", "reason": f"`{probe}` is not installed (pip install .[bench])"}
                _progress(f"{col}: skipped (not installed)")
                continue
            res: dict = {"status": "ok", "workloads": {}}
            results[col] = res
            for w in args.only:
                t0 = time.perf_counter()
                child = _run_child(module, [*extra, *common, "--only", w, "--workdir", str(scratch)], env, timeout)
                if child.get("status") == "skipped":
                    results[col] = {"status": "skipped", "reason": child.get("reason", "")}
                    _progress(f"{col}: skipped ({child.get('reason', '')})")
                    break
                if child.get("status") == "error":  # the runner itself died
                    wres = {k: v for k, v in child.items() if k != "workloads"}
                else:
                    wres = child.get("workloads", {}).get(w, {"status": "error", "reason": "no result"})
                    res["version"] = child.get("version") or res.get("version")
                    res["sizes"] = child.get("sizes")
                res["workloads"][w] = wres
                _progress(f"{col} {w}: {wres.get('status')} ({time.perf_counter() - t0:.1f} s)"
                          + (f" — {wres.get('reason')}" if wres.get("status") != "ok" else ""))
    finally:
        _stop_agent(scratch / "agent.sock", env)
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    load_end = _load()
    title = (f"DreamLake benchmarks — {'quick' if args.quick else 'full'} run, "
             f"{_dt.datetime.now().astimezone().isoformat(timespec='seconds')}, "
             f"{os.cpu_count()} CPUs, Python {platform.python_version()}, commit {_git_commit() or '?'}, "
             f"load avg {load_start} at start / {load_end} at end (other work on the machine adds noise)")
    table = render(results, dl_columns, title)
    print(table)
    doc = {
        "meta": {
            "time": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "argv": sys.argv[1:] if argv is None else argv,
            "quick": args.quick,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "commit": _git_commit(),
            "wall_s": round(time.perf_counter() - t_start, 1),
            "loadavg_1m": [load_start, load_end],
        },
        "systems": results,
        "table": table,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    _progress(f"wrote {path} ({doc['meta']['wall_s']} s)")

    failed = [c for c in dl_columns if results[c].get("status") != "ok"
              or any(r.get("status") == "error" for r in results[c].get("workloads", {}).values())]
    return 1 if failed else 0


def _stop_agent(sock: Path, env: dict) -> None:
    """Stop the agent a DreamLake agent-mode run started on our private socket."""
    if not sock.exists():
        return
    try:
        subprocess.run([sys.executable, "-m", "dreamlake_agent", "stop", "--socket", str(sock), "--timeout", "10"],
                       cwd=REPO, env=env, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        _progress(f"could not stop the benchmark's agent at {sock}: {e}")


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
