"""``dreamlake ui`` (serve the page for a local store) and ``dreamlake plot``
(a PNG/SVG/PDF of a track's curves, for papers and CI artifacts)."""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import webbrowser

__all__ = ["add_commands"]

PLOT_POINTS = 2000


def _root(args: argparse.Namespace):
    from .._config import storage_root

    return storage_root(args.root, None)


def cmd_ui(args: argparse.Namespace) -> int:
    import uvicorn

    from ._app import create_app
    from ._source import LocalStoreSource

    root = _root(args)
    if not root.is_dir():
        print(f"dreamlake ui: {root.absolute()} does not exist yet; sessions appear once something logs there", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"dreamlake ui: listening on {args.host}: anyone who can reach this port can read the sessions and files", flush=True)
    app = create_app(LocalStoreSource(root))
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        raise SystemExit(f"dreamlake ui: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    port = sock.getsockname()[1]
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    url = f"http://{shown_host}:{port}/"
    print(f"dreamlake ui: serving {root.absolute()} at {url}  (Ctrl-C stops)", flush=True)
    if not args.no_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("dreamlake plot needs matplotlib: pip install 'dreamlake[plot]'", file=sys.stderr)
        return 2
    from ._reads import read_series, track_fields
    from ._source import LocalStoreSource, NotFound

    source = LocalStoreSource(_root(args))
    try:
        fields = args.fields or track_fields(source, args.prefix, args.track)
        if args.x in fields:
            fields = [f for f in fields if f != args.x]
        if not fields:
            print(f"dreamlake plot: track {args.track!r} has no numeric fields to plot", file=sys.stderr)
            return 2
        data = read_series(source, args.prefix, args.track, fields, x=args.x, points=PLOT_POINTS)
    except NotFound as exc:
        print(f"dreamlake plot: {exc.args[0]}", file=sys.stderr)
        return 2
    unknown = [f for f in fields if all(v is None for v in data["columns"][f])]
    if unknown and data["xs"]:
        print(f"dreamlake plot: no numeric values for {', '.join(unknown)} in {args.track!r}", file=sys.stderr)
        return 2
    figure, axes = plt.subplots(figsize=(args.width, args.height), dpi=args.dpi)
    xs = data["xs"]
    if args.x == "_ts" and xs:
        xs = [x - xs[0] for x in xs]
    for name in fields:
        ys = [float("nan") if v is None else v for v in data["columns"][name]]
        axes.plot(xs, ys, label=name, linewidth=1)
    axes.set_xlabel("seconds since first row" if args.x == "_ts" else args.x)
    axes.set_title(args.title or f"{args.prefix} · {args.track}")
    axes.grid(True, alpha=0.3)
    if args.logy:
        axes.set_yscale("log")
    axes.legend()
    figure.tight_layout()
    figure.savefig(args.output)
    plt.close(figure)
    note = "" if data["exact"] else f" (downsampled from {data['hi'] - data['lo']:,} rows)"
    print(f"dreamlake plot: wrote {args.output}: {len(fields)} curve(s), {len(xs):,} points{note}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Adds ``ui`` and ``plot`` to the ``dreamlake`` command's subparsers."""
    root_help = "storage root (default: $DREAMLAKE_ROOT or ./.dreamlake)"
    ui = sub.add_parser("ui", help="serve a web page with the sessions of a local store")
    ui.add_argument("--root", default=None, help=root_help)
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    ui.add_argument("--no-browser", action="store_true", help="do not open a browser")
    ui.set_defaults(handler=cmd_ui)

    plot = sub.add_parser("plot", help="draw a track's curves into an image (needs the 'plot' extra)")
    plot.add_argument("prefix", help="workspace/name")
    plot.add_argument("track", help="track name, e.g. train or robot/pose")
    plot.add_argument("fields", nargs="*", help="numeric fields (default: all of them)")
    plot.add_argument("-o", "--output", required=True, help="image file (.png, .svg, .pdf)")
    plot.add_argument("--x", default="_ts", help="x axis: _ts (default), index, or a field such as step")
    plot.add_argument("--root", default=None, help=root_help)
    plot.add_argument("--title", default=None)
    plot.add_argument("--logy", action="store_true", help="log-scale y axis")
    plot.add_argument("--width", type=float, default=8.0, help="inches")
    plot.add_argument("--height", type=float, default=4.5, help="inches")
    plot.add_argument("--dpi", type=int, default=120)
    plot.set_defaults(handler=cmd_plot)
