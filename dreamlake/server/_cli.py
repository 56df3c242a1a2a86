"""``dreamlake-server``: run the server, or manage its API keys.

    dreamlake-server --root DIR [--host 127.0.0.1] [--port 3000] [--dev] [--no-fsync]
    dreamlake-server keys create --root DIR --user NAME [--workspace WS ...]
    dreamlake-server keys list --root DIR
    dreamlake-server keys revoke --root DIR KEY_ID

The first line on stdout is the URL the server listens on (with ``--port 0``
the port the OS picked), so scripts and tests can read it.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import tempfile
from pathlib import Path

from .._names import check_segment
from ._settings import Settings
from ._storage import Storage

log = logging.getLogger("dreamlake.server")

__all__ = ["main"]


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dreamlake-server", description="DreamLake ingest and query server")
    p.add_argument("--root", required=True, help="store directory (the local store format)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000, help="0 picks a free port")
    p.add_argument("--dev", action="store_true", help="development mode: accept requests without a key")
    p.add_argument("--no-ui", dest="ui", action="store_false", help="do not serve the web page at /ui")
    p.add_argument("--fsync", choices=("batches", "always", "never"), default="batches",
                   help="fsync before acknowledging: ingest batches (default), every write, or never "
                        "(acknowledged data survives a server crash in every mode; fsync adds power loss)")
    p.add_argument("--no-fsync", dest="fsync", action="store_const", const="never", help="same as --fsync never")
    p.add_argument("--max-body-mb", type=float, default=32, help="largest request body on the wire (413 above)")
    p.add_argument("--max-batch-mb", type=float, default=128, help="largest decompressed ingest batch (413 above)")
    p.add_argument("--body-timeout", type=float, default=30, help="seconds a request body may take to arrive (408)")
    p.add_argument("--header-timeout", type=float, default=Settings.header_timeout,
                   help="seconds a request's line and headers may take to arrive (from the connection's start or "
                        "the previous response); then the connection is closed (uvicorn has no such limit)")
    p.add_argument("--keep-alive-timeout", type=float, default=Settings.keep_alive_timeout,
                   help="seconds an idle keep-alive connection stays open after a response")
    p.add_argument("--limit-concurrency", type=int, default=1024,
                   help="connections + requests served at once; more get 503 (bounds slow clients)")
    p.add_argument("--max-live-sessions", type=int, default=Settings.max_live_sessions,
                   help="sessions whose state is kept in memory (local store); the least recently used "
                        "idle one beyond this is flushed and dropped, and reopened from disk on demand")
    p.add_argument("--session-idle", type=float, default=Settings.session_idle_seconds,
                   help="seconds after which an unused session's state is dropped the same way")
    p.add_argument("--log-level", default="info")
    # scale-out (DESIGN §9)
    p.add_argument("--store", help="postgresql://… to run as one of N replicas on PostgreSQL (default: the local store)")
    p.add_argument("--objects", help="object storage URL for files with --store (file:///dir, s3://bucket/prefix)")
    return p


def _keys_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dreamlake-server keys")
    sub = p.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="make a key; it is printed once and stored hashed")
    create.add_argument("--root", required=True)
    create.add_argument("--user", required=True)
    create.add_argument("--workspace", action="append", default=[], help="repeatable; none = all workspaces")
    lister = sub.add_parser("list", help="list keys (never the keys themselves)")
    lister.add_argument("--root", required=True)
    revoke = sub.add_parser("revoke", help="remove a key by its id (see list)")
    revoke.add_argument("--root", required=True)
    revoke.add_argument("key_id")
    return p


def _keys(argv: list[str]) -> int:
    import json

    from ._auth import create_key, revoke_key

    args = _keys_parser().parse_args(argv)
    state_dir = Settings(root=Path(args.root)).state_dir
    if args.action == "create":
        try:
            check_segment(args.user, "user")
            for workspace in args.workspace:
                check_segment(workspace, "workspace")
        except (TypeError, ValueError) as exc:
            print(f"dreamlake-server: {exc}", file=sys.stderr)
            return 2
        key = create_key(state_dir, args.user, args.workspace)
        print(key)
        print("(shown once: store it now; the server keeps only its hash)", file=sys.stderr)
        return 0
    if args.action == "revoke":
        if revoke_key(state_dir, args.key_id):
            print(f"revoked {args.key_id}")
            return 0
        print(f"dreamlake-server: no key with id {args.key_id!r}", file=sys.stderr)
        return 1
    try:
        entries = json.loads((state_dir / "keys.json").read_text())["keys"]
    except FileNotFoundError:
        entries = []
    for entry in entries:
        print(f"{entry['id']}  {entry['user']:<16} {','.join(entry['workspaces']):<30} {entry['createdAt']}")
    return 0


def _page_mounts(settings: Settings, storage: Storage, enabled: bool) -> dict:
    """The web page at ``/ui``, over the server's store, behind its keys: the
    local store is read as ``dreamlake ui`` reads it; any other backend
    through its storage (:class:`._page_source.StorageSource`)."""
    if not enabled:
        return {}
    from ..ui import LocalStoreSource, create_app as create_page
    from ._auth import KeyStore
    from ._page import KeyGate
    from ._page_source import StorageSource

    source = LocalStoreSource(settings.root) if settings.store is None else StorageSource(storage)
    return {"/ui": KeyGate(create_page(source), KeyStore(settings.state_dir, settings.dev))}


def _serve(argv: list[str]) -> int:
    import uvicorn

    from ._app import DEV_MODE_WARNING, create_app
    from ._backends import open_storage
    from ._protocol import header_deadline_protocol

    args = _serve_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings(
        root=Path(args.root).absolute(),
        host=args.host,
        port=args.port,
        dev=args.dev,
        fsync=args.fsync,
        max_body_bytes=int(args.max_body_mb * (1 << 20)),
        max_batch_bytes=int(args.max_batch_mb * (1 << 20)),
        body_timeout=args.body_timeout,
        header_timeout=args.header_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        store=args.store,
        objects=args.objects,
        max_live_sessions=args.max_live_sessions,
        session_idle_seconds=args.session_idle,
    )
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only
    # for sockets that say so; without it every response waits ~40 ms (Nagle + delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    host = f"[{settings.host}]" if family == socket.AF_INET6 else settings.host
    if settings.dev:
        banner = "!" * 78
        print(f"{banner}\n!! {DEV_MODE_WARNING}\n{banner}", file=sys.stderr, flush=True)
    # multipart parsing spools big uploads to temp files: keep them under --root too
    spool = settings.state_dir / "tmp"
    spool.mkdir(parents=True, exist_ok=True, mode=0o700)
    tempfile.tempdir = str(spool)
    storage = open_storage(settings)
    app = create_app(settings, storage, mounts=_page_mounts(settings, storage, args.ui))
    config = uvicorn.Config(
        app,
        http=header_deadline_protocol(settings.header_timeout),  # h11, with a deadline for request heads
        log_level=args.log_level.lower(),
        access_log=False,
        lifespan="on",
        timeout_keep_alive=settings.keep_alive_timeout,  # type: ignore[arg-type] (used as call_later's delay)
        timeout_graceful_shutdown=int(settings.graceful_timeout),
        h11_max_incomplete_event_size=64 << 10,
        server_header=False,
        limit_concurrency=args.limit_concurrency,
    )
    server = uvicorn.Server(config)
    print(f"http://{host}:{port}", flush=True)
    server.run(sockets=[sock])
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "keys":
        return _keys(argv[1:])
    return _serve(argv)
