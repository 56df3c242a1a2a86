"""The ``dreamlake sync`` command (hooked into ``dreamlake.cli`` by ``add_commands``)."""

from __future__ import annotations

import argparse
import os
import sys

from ._config import storage_root

__all__ = ["add_commands", "cmd_sync"]


def cmd_sync(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ._sync import SyncError, find_sessions, sync_session

    path = args.path or str(storage_root(args.root, None))
    if not os.path.exists(path):
        print(f"dreamlake sync: {path} does not exist", file=sys.stderr)
        return 2
    sessions = find_sessions(path)
    if not sessions:
        print(f"dreamlake sync: no sessions under {os.path.abspath(path)}")
        return 0
    api_key = args.api_key or os.environ.get("DREAMLAKE_API_KEY")
    progress = None if args.quiet else (lambda **kw: tqdm(leave=False, file=sys.stderr, **kw))
    failed = 0
    for directory in sessions:
        try:
            report = sync_session(directory, args.url, api_key, progress)
        except SyncError as exc:
            failed += 1
            print(f"dreamlake sync: {directory}: {exc}", file=sys.stderr)
            continue
        label = os.path.relpath(directory, os.path.abspath(path)) if directory != os.path.abspath(path) else directory
        if report.skipped and not report.spooled_batches:
            print(f"{label}: skipped ({report.skipped})")
        elif report.batches or report.spooled_batches or report.files:
            print(
                f"{label}: {report.rows} rows in {report.batches + report.spooled_batches} batches"
                f"{f' ({report.duplicates} already on the server)' if report.duplicates else ''}, {report.files} files"
            )
        else:
            print(f"{label}: up to date")
        for note in report.notes:
            print(f"  {note}", file=sys.stderr)
    return 1 if failed else 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    sync = sub.add_parser("sync", help="upload offline sessions and leftover spools to a dreamlake-server, exactly once")
    sync.add_argument("path", nargs="?", help="a session directory or a storage root (default: $DREAMLAKE_ROOT or ./.dreamlake)")
    sync.add_argument("--root", default=None, help=argparse.SUPPRESS)
    sync.add_argument("--url", default=None, help="server URL (default: the one recorded by the session)")
    sync.add_argument("--api-key", default=None, help="API key (default: $DREAMLAKE_API_KEY)")
    sync.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sync.set_defaults(handler=cmd_sync)
