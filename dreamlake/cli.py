"""The ``dreamlake`` command: ``demo``, ``ls``, ``show``, ``tail``, ``export``
(also ``python -m dreamlake``). Looking (``ls``, ``show``, ``tail``, ``export``)
never writes to the store: it reads through :mod:`._reader`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ._config import storage_root
from ._reader import SessionReader

__all__ = ["main"]


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
    print(f"{'SESSION':<40} {'STATUS':<12} {'TRACKS':>6} {'ROWS':>10}  {'SYNC':<24} UPDATED")
    for directory in sessions:
        prefix = f"{directory.parent.name}/{directory.name}"
        reader = SessionReader(directory, prefix)
        names = reader.tracks.names()
        rows = sum(reader.track(n).count() for n in names)
        sync = _sync_state(directory, reader.meta)
        print(f"{prefix:<40} {reader.status:<12} {len(names):>6} {rows:>10,}  {sync:<24} {reader.meta.get('updatedAt', '')}")
    return 0


def _sync_state(directory: Path, meta: dict) -> str:
    """``local`` (no server), ``synced``, or what ``dreamlake sync`` would still send."""
    from ._sync import unsynced_summary
    from .sinks.remote.spool import SLOTS

    if not meta.get("url") and not (directory / SLOTS).exists():
        return "local"  # decided without reading the session's files

    summary = unsynced_summary(str(directory))
    if not summary["url"] and not summary["spooled_batches"]:
        return "local"
    if summary["synced"]:
        return "synced"
    pending = [f"{summary['unsynced_rows']:,} rows"] if summary["unsynced_rows"] else []
    if summary["spooled_batches"]:
        pending.append(f"{summary['spooled_batches']} spooled")
    pending += [what for what in ("params", "files", "status") if summary[what]]
    return "unsynced: " + ", ".join(pending)


def _session_dir(args: argparse.Namespace) -> Path:
    directory = storage_root(args.root, None) / args.prefix
    if not (directory / "session.json").exists():
        raise SystemExit(f"dreamlake: no session {args.prefix!r} under {storage_root(args.root, None).absolute()}")
    return directory


def _reader(args: argparse.Namespace) -> SessionReader:
    return SessionReader(_session_dir(args), args.prefix)


def cmd_show(args: argparse.Namespace) -> int:
    reader = _reader(args)
    meta = reader.meta
    print(f"session {args.prefix}  [{reader.status}]  {reader.directory.absolute()}")
    for key in ("description", "tags", "folder", "createdAt", "closedAt", "error"):
        if meta.get(key):
            print(f"  {key}: {meta[key]}")
    lost = meta.get("lost") if isinstance(meta.get("lost"), dict) else {}
    if any(lost.values()):  # rows not written, by reason (see Session.health()["lost"])
        print("  lost rows: " + ", ".join(f"{reason} {count:,}" for reason, count in sorted(lost.items()) if count))
    for earlier in reader.history:  # how earlier openings ended (see LocalSink.open)
        if isinstance(earlier, dict):
            error = f"  ({earlier['error']})" if earlier.get("error") else ""
            print(f"  earlier: {earlier.get('status')} {earlier.get('openedAt') or ''} .. {earlier.get('closedAt') or ''}{error}")
    params = reader.params
    print(f"params ({len(params)})")
    for key, value in sorted(params.items()):
        print(f"  {key} = {_fmt(value)}")
    names = reader.tracks.names()
    print(f"tracks ({len(names)})")
    for name in names:
        track = reader.track(name)
        total = track.count()
        last = track.read(max(0, total - 1), 1)["data"]
        last_row = {k: v for k, v in last[0]["data"].items() if k != "_ts"} if last else {}
        print(f"  {name:<24} {total:>9,} rows  last {_fmt(last_row)}")
    total = reader.logs(0, 0)["total"]
    print(f"logs ({total}, last {min(args.logs, total)})")
    for entry in reader.logs(max(0, total - args.logs), args.logs)["data"]:
        row = entry["data"]
        print(f"  {row.get('timestamp', '')} {row.get('level', ''):<5} {row.get('message', '')}")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    reader = _reader(args)
    if args.track and args.track not in reader.tracks.names():
        raise SystemExit(f"dreamlake: no track {args.track!r} in {args.prefix}")
    read = reader.track(args.track).read if args.track else reader.logs
    position = max(0, read(0, 0)["total"] - args.lines)
    while True:
        page = read(position, 1000)
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

    report = run_demo(root=storage_root(args.root, None), seconds=args.seconds, steps=args.steps, burst_seconds=args.burst)
    print_report(report)
    return 1 if report["dropped"] or report["write_errors"] else 0


def _add_version(parser: argparse.ArgumentParser) -> None:
    from . import __version__

    parser.add_argument("--version", action="version", version=f"dreamlake {__version__}")


def cmd_export(args: argparse.Namespace) -> int:
    from ._export import write_table
    from ._reader import open_session

    try:
        reader = open_session(args.prefix, root=storage_root(args.root, None))
        names = [args.track] if args.track else reader.tracks.names()
        if args.track:
            reader.track(args.track)  # KeyError if missing
        if not names:
            raise SystemExit(f"dreamlake: session {args.prefix} has no tracks")
        suffix = "." + args.format
        if args.track:
            default = args.track.replace("/", "_") + suffix
            targets = {args.track: Path(args.output or default)}
        else:
            folder = Path(args.output or f"{reader.workspace}_{reader.name}")
            targets = {name: folder.joinpath(*name.split("/")[:-1], name.split("/")[-1] + suffix) for name in names}
        for name, target in targets.items():
            table = reader.track(name).to_pandas(ts=args.ts)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_table(table, target, args.format)
            print(f"{name}: {len(table):,} rows -> {target}")
    except (FileNotFoundError, KeyError, ImportError) as exc:
        raise SystemExit(f"dreamlake: {exc.args[0] if exc.args else exc}") from None
    return 0


def _add_export(add) -> None:
    export = add("export", cmd_export, "write a track (or every track) as CSV or Parquet")
    export.add_argument("prefix", help="workspace/name")
    export.add_argument("track", nargs="?", help="track name (default: every track, one file each)")
    export.add_argument("--format", choices=("csv", "parquet"), default="csv", help="default: csv")
    export.add_argument(
        "-o", "--output", default=None,
        help="file for one track (default: <track>.<format>); folder for all (default: <workspace>_<name>/)",
    )
    export.add_argument("--ts", choices=("float", "datetime"), default="float", help="_ts as epoch seconds or UTC datetimes")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamlake", description="DreamLake: look at logged sessions, or run the demo.")
    _add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--root", default=None, help="storage root (default: $DREAMLAKE_ROOT or ./.dreamlake)")
        p.set_defaults(handler=handler)
        return p

    demo = add("demo", cmd_demo, "run a realistic logging session on the local store and report")
    demo.add_argument(
        "--seconds", type=float, default=3.0,
        help="how long the training loop and 1 kHz robot run (default: 3); a 0.3 s burst, an upload and close follow",
    )
    demo.add_argument("--steps", type=int, default=3000, help="training steps within those seconds (default: 3000)")
    demo.add_argument("--burst", type=float, default=0.3, help="seconds of tight-loop appends after the loops (default: 0.3)")
    add("ls", cmd_ls, "list sessions with status and track counts")
    show = add("show", cmd_show, "params, tracks and recent logs of a session")
    show.add_argument("prefix", help="workspace/name")
    show.add_argument("--logs", type=int, default=10, help="how many recent log entries")
    tail = add("tail", cmd_tail, "print the last rows of a track (or the logs)")
    tail.add_argument("prefix", help="workspace/name")
    tail.add_argument("track", nargs="?", help="track name (default: the session's logs)")
    tail.add_argument("-n", "--lines", type=int, default=10)
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new rows")
    _add_export(add)
    from ._sync_cli import add_commands as add_sync_commands  # sync
    from .ui._cli import add_commands as add_ui_commands  # ui, plot

    add_ui_commands(sub)
    add_sync_commands(sub)
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
