"""The ``dreamlake`` command: ``demo``, ``ls``, ``show``, ``tail``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ._config import storage_root
from ._fsutil import read_json
from ._local_sink import list_track_names, read_page, stream_files, track_stats

__all__ = ["main"]


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def session_status(meta: dict) -> str:
    """``running`` is only believed while its process lives on this host."""
    import socket

    status = meta.get("status", "unknown")
    if status == "running" and meta.get("hostname") == socket.gethostname() and not _pid_alive(meta.get("pid")):
        return "interrupted"
    return status


def _sessions(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/*/session.json"))


def _fmt(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def cmd_ls(args: argparse.Namespace) -> int:
    root = storage_root(args.root, None)
    sessions = _sessions(root)
    if not sessions:
        print(f"no sessions under {root.absolute()}")
        return 0
    print(f"{'SESSION':<40} {'STATUS':<12} {'TRACKS':>6} {'ROWS':>10}  UPDATED")
    for directory in sessions:
        meta = read_json(str(directory / "session.json"), default={}) or {}
        names = list_track_names(str(directory))
        rows = sum(stream_files(str(directory), n).count() for n in names)
        prefix = f"{directory.parent.name}/{directory.name}"
        print(f"{prefix:<40} {session_status(meta):<12} {len(names):>6} {rows:>10,}  {meta.get('updatedAt', '')}")
    return 0


def _session_dir(args: argparse.Namespace) -> Path:
    directory = storage_root(args.root, None) / args.prefix
    if not (directory / "session.json").exists():
        raise SystemExit(f"dreamlake: no session {args.prefix!r} under {storage_root(args.root, None).absolute()}")
    return directory


def cmd_show(args: argparse.Namespace) -> int:
    directory = _session_dir(args)
    meta = read_json(str(directory / "session.json"), default={}) or {}
    print(f"session {args.prefix}  [{session_status(meta)}]  {directory.absolute()}")
    for key in ("description", "tags", "folder", "createdAt", "closedAt", "error"):
        if meta.get(key):
            print(f"  {key}: {meta[key]}")
    params = read_json(str(directory / "parameters.json"), default={}) or {}
    print(f"params ({len(params)})")
    for key, value in sorted(params.items()):
        print(f"  {key} = {_fmt(value)}")
    names = list_track_names(str(directory))
    print(f"tracks ({len(names)})")
    for name in names:
        stats = track_stats(str(directory), name)
        total = stats["totalDataPoints"]
        last = read_page(stream_files(str(directory), name), max(0, total - 1), 1)["data"]
        last_row = {k: v for k, v in last[0]["data"].items() if k != "_ts"} if last else {}
        print(f"  {name:<24} {total:>9,} rows  last {_fmt(last_row)}")
    logs = stream_files(str(directory), "logs", is_log=True)
    total = logs.count()
    print(f"logs ({total}, last {min(args.logs, total)})")
    for entry in read_page(logs, max(0, total - args.logs), args.logs)["data"]:
        row = entry["data"]
        print(f"  {row.get('timestamp', '')} {row.get('level', ''):<5} {row.get('message', '')}")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    directory = _session_dir(args)
    files = stream_files(str(directory), args.track, is_log=False) if args.track else stream_files(str(directory), "logs", True)
    if args.track and args.track not in list_track_names(str(directory)):
        raise SystemExit(f"dreamlake: no track {args.track!r} in {args.prefix}")
    total = files.count()
    position = max(0, total - args.lines)
    while True:
        page = read_page(files, position, 1000)
        for entry in page["data"]:
            print(json.dumps({"index": entry["index"], **entry["data"]}, default=str))
            position = entry["index"] + 1
        sys.stdout.flush()
        if not args.follow:
            return 0
        if not page["hasMore"]:
            time.sleep(0.5)


def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import print_report, run_demo

    report = run_demo(root=args.root or ".dreamlake", seconds=args.seconds, steps=args.steps)
    print_report(report)
    return 1 if report["dropped"] or report["write_errors"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamlake", description="DreamLake: look at logged sessions, or run the demo.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--root", default=None, help="storage root (default: $DREAMLAKE_ROOT or ./.dreamlake)")
        p.set_defaults(handler=handler)
        return p

    demo = add("demo", cmd_demo, "run a realistic logging session on the local store and report")
    demo.add_argument("--seconds", type=float, default=3.0, help="how long the simulated robot runs")
    demo.add_argument("--steps", type=int, default=3000, help="training steps")
    add("ls", cmd_ls, "list sessions with status and track counts")
    show = add("show", cmd_show, "params, tracks and recent logs of a session")
    show.add_argument("prefix", help="workspace/name")
    show.add_argument("--logs", type=int, default=10, help="how many recent log entries")
    tail = add("tail", cmd_tail, "print the last rows of a track (or the logs)")
    tail.add_argument("prefix", help="workspace/name")
    tail.add_argument("track", nargs="?", help="track name (default: the session's logs)")
    tail.add_argument("-n", "--lines", type=int, default=10)
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new rows")
    from ._sync_cli import add_commands

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
