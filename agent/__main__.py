"""The ``dreamlake-agent`` command (see ``dreamlake-agent --help``).

    dreamlake-agent [run] [--socket PATH] [--root DIR] [--idle-exit S] ...
    dreamlake-agent status [--socket PATH] [--json]
    dreamlake-agent stop [--socket PATH] [--timeout S]

``run`` (the default) serves in the foreground until SIGTERM or SIGINT (or
``--idle-exit`` seconds without clients), then writes everything it received
and exits 0. One agent per socket: the agent holds an exclusive ``flock`` on
``<socket>.lock`` (which also holds its pid) for its whole life, so a second
agent started on the same socket finds the first, says so and exits 0 at once.
A client that auto-starts an agent takes that lock itself and hands it over
(``--lock-fd``), so racing clients start exactly one. The socket is created
0600 (bound in a private directory, then renamed into place) in any directory
the user may write; connections from other users are refused (``SO_PEERCRED``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

from dreamlake._agent_socket import check_socket_dir, lock_path, open_lock, running_pid, try_lock
from dreamlake._protocol import ENV_SOCKET, Status, default_socket_path

__all__ = ["main", "acquire_lock", "running_pid", "DEFAULT_AUTO_IDLE_EXIT"]

log = logging.getLogger("dreamlake.agent")

#: How long a starting agent retries a lock that is only being probed (seconds).
LOCK_RETRY = 0.5
#: Idle time after which an agent started by ``agent="auto"`` exits (seconds).
DEFAULT_AUTO_IDLE_EXIT = 300.0


def acquire_lock(socket_path: str) -> int | None:
    """The lock fd (pid written in it) if we are the agent for this socket, else None."""
    fd = open_lock(socket_path)
    deadline = time.monotonic() + LOCK_RETRY
    while not try_lock(fd):
        if running_pid(socket_path) is not None or time.monotonic() >= deadline:
            os.close(fd)
            return None
        time.sleep(0.01)  # a status probe holds it for an instant
    return fd


def _adopt_lock(fd: int) -> int:
    """The lock a starting client took for us (``--lock-fd``): the same open file,
    so taking it again succeeds at once; anything else is a usage error."""
    os.set_inheritable(fd, False)
    if not try_lock(fd):
        raise PermissionError(f"--lock-fd {fd} does not hold the agent lock")
    return fd


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


async def _serve(server) -> None:
    import anyio

    async def watch_signals(*, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                log.info("received %s; writing everything and stopping", signal.Signals(signum).name)
                server.stop()
                return

    async with anyio.create_task_group() as group:
        await group.start(watch_signals)
        await server.serve()
        group.cancel_scope.cancel()


def cmd_run(args: argparse.Namespace) -> int:
    import anyio

    from ._server import AgentServer

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s dreamlake-agent[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request the agent forwards
    socket_path = args.socket
    check_socket_dir(os.path.dirname(socket_path))
    lock = _adopt_lock(args.lock_fd) if args.lock_fd is not None else acquire_lock(socket_path)
    if lock is None:
        print(f"dreamlake-agent already running (pid {running_pid(socket_path)}) on {socket_path}", flush=True)
        return 0
    _write_pid(lock)
    server = AgentServer(
        socket_path,
        args.root,
        merge_window=args.merge_window,
        memory_budget=args.memory_budget,
        idle_exit=args.idle_exit,
    )
    print(f"dreamlake-agent {os.getpid()} serving {socket_path} (root {server.root})", flush=True)
    try:
        anyio.run(_serve, server)
    finally:
        os.close(lock)
    return 0


def _request_status(socket_path: str) -> dict:
    from dreamlake._agent_link import connect

    connection, _ = connect(socket_path)
    try:
        return connection.request(lambda seq: Status(seq))
    finally:
        connection.close()


def cmd_status(args: argparse.Namespace) -> int:
    pid = running_pid(args.socket)
    if pid is None:
        print(f"dreamlake-agent: not running on {args.socket}")
        return 1
    try:
        status = _request_status(args.socket)
    except Exception as exc:
        print(f"dreamlake-agent: pid {pid} holds {lock_path(args.socket)} but does not answer: {exc}")
        return 2
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0
    print(f"dreamlake-agent pid {status['pid']} on {status['socket']} (root {status['root']})")
    print(f"  connections: {status['connections']}, protocol errors: {status['protocolErrors']}")
    losses = status.get("losses") or {}
    if losses:
        print("  losses: " + ", ".join(f"{reason} {count}" for reason, count in sorted(losses.items())))
    else:
        print("  losses: none")
    for session in status["sessions"]:
        written = session.get("rows_written", session.get("rowsWritten"))
        errors = session.get("write_errors", session.get("writeErrors"))
        sink = session.get("sink") or {}
        remote = ""
        if sink.get("remote"):
            remote = (f", to {sink['remote']}: {sink.get('delivery')}, {sink.get('spooled_batches', 0)} batches spooled"
                      + (f" ({sink['remote_error']})" if sink.get("remote_error") else ""))
        print(
            f"  {session['directory']}: clients {session['clients']}, queued {session.get('queued')}, "
            f"rows written {written}, write errors {errors}{remote}"
        )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    pid = running_pid(args.socket)
    if pid is None:
        print(f"dreamlake-agent: not running on {args.socket}")
        return 0
    if pid <= 0:
        print(f"dreamlake-agent: {lock_path(args.socket)} is locked but holds no pid")
        return 1
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while running_pid(args.socket) is not None:
        if time.monotonic() >= deadline:
            print(f"dreamlake-agent: pid {pid} did not stop within {args.timeout}s")
            return 1
        time.sleep(0.02)
    print(f"dreamlake-agent: stopped pid {pid}")
    return 0


def _budget(text: str) -> int:
    return int(text, 0)


def build_parser() -> argparse.ArgumentParser:
    from dreamlake._config import DEFAULT_ROOT, ENV_ROOT
    from dreamlake._pipe import DEFAULT_MEMORY_BUDGET
    from dreamlake._writer import ROW_MAX_AGE

    parser = argparse.ArgumentParser(
        prog="dreamlake-agent",
        description="Write DreamLake sessions for many processes over a private Unix socket.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""commands:
  run     serve in the foreground (the default) until SIGTERM/SIGINT or --idle-exit;
          one agent per socket: a second one finds the first and exits 0
  status  print the running agent's pid, sessions, clients and losses by reason
          (--json for all of it); exit 1 if none runs
  stop    SIGTERM the running agent and wait (--timeout) until it wrote everything

Sessions reach it with Session(agent="auto") (starts one on demand, which exits
after %d s without clients) or agent="unix:///path/agent.sock".""" % DEFAULT_AUTO_IDLE_EXIT,
    )
    parser.add_argument("command", nargs="?", default="run", choices=("run", "status", "stop"), help="see below")
    parser.add_argument(
        "--socket",
        default=None,
        help=f"socket path (default: ${ENV_SOCKET}, $XDG_RUNTIME_DIR/dreamlake/agent.sock or /tmp/dreamlake-$UID/agent.sock)",
    )
    parser.add_argument(
        "--root",
        default=os.environ.get(ENV_ROOT) or DEFAULT_ROOT,
        help="storage root for clients that send a relative workspace/name (default: $DREAMLAKE_ROOT or ./.dreamlake)",
    )
    parser.add_argument(
        "--merge-window",
        type=float,
        default=ROW_MAX_AGE,
        help="seconds a track's newest row stays open for equal-_ts rows from other processes (default %(default)s)",
    )
    parser.add_argument(
        "--memory-budget",
        type=_budget,
        default=DEFAULT_MEMORY_BUDGET,
        help="bytes each session may hold in the agent before clients are slowed down (default %(default)s)",
    )
    parser.add_argument(
        "--idle-exit",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="run: exit after this long with no clients and nothing pending; 0 = never (default %(default)s; "
        f"agents started by agent='auto' use {DEFAULT_AUTO_IDLE_EXIT:g})",
    )
    parser.add_argument("--lock-fd", type=int, default=None, help=argparse.SUPPRESS)  # from a starting client
    parser.add_argument("--timeout", type=float, default=30.0, help="stop: seconds to wait for the agent to exit")
    parser.add_argument("--json", action="store_true", help="status: print JSON")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.socket = os.path.abspath(args.socket) if args.socket else default_socket_path()
    try:
        if args.command == "status":
            return cmd_status(args)
        if args.command == "stop":
            return cmd_stop(args)
        return cmd_run(args)
    except PermissionError as exc:
        print(f"dreamlake-agent: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
