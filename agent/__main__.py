"""The ``dreamlake-agent`` command.

    dreamlake-agent [run] [--socket PATH] [--root DIR] [--merge-window S] [--memory-budget BYTES]
    dreamlake-agent status [--socket PATH]
    dreamlake-agent stop [--socket PATH] [--timeout S]

``run`` (the default) serves in the foreground until SIGTERM or SIGINT, then
writes everything it received and exits 0. One agent per socket: the agent
holds an exclusive ``flock`` on ``<socket>.lock`` (which also holds its pid)
for its whole life, so a second agent started on the same socket — by hand,
or by two clients racing to start one — finds the first, says so and exits 0.
The socket is created 0600 in a 0700 directory owned by the user.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import logging
import os
import signal
import sys
import time

import anyio

from dreamlake._protocol import ENV_SOCKET, Status, default_socket_path, ensure_private_dir

__all__ = ["main", "acquire_lock", "running_pid"]

log = logging.getLogger("dreamlake.agent")

#: How long a starting agent retries a lock that is only being probed (seconds).
LOCK_RETRY = 0.5


def lock_path(socket_path: str) -> str:
    return socket_path + ".lock"


def acquire_lock(socket_path: str) -> int | None:
    """The lock fd (pid written in it) if we are the agent for this socket, else None."""
    fd = os.open(lock_path(socket_path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + LOCK_RETRY
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise
            if running_pid(socket_path) is not None or time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.01)  # a status probe holds it for an instant
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def running_pid(socket_path: str) -> int | None:
    """The pid of the agent holding the lock for ``socket_path``, or None."""
    try:
        fd = os.open(lock_path(socket_path), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        return None  # nobody holds it
    finally:
        os.close(fd)


async def _serve(server) -> None:
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
    from ._server import AgentServer

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s dreamlake-agent[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    socket_path = args.socket
    ensure_private_dir(os.path.dirname(socket_path))
    lock = acquire_lock(socket_path)
    if lock is None:
        print(f"dreamlake-agent already running (pid {running_pid(socket_path)}) on {socket_path}", flush=True)
        return 0
    server = AgentServer(
        socket_path,
        args.root,
        merge_window=args.merge_window,
        memory_budget=args.memory_budget,
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
    for session in status["sessions"]:
        written = session.get("rows_written", session.get("rowsWritten"))
        errors = session.get("write_errors", session.get("writeErrors"))
        print(
            f"  {session['directory']}: clients {session['clients']}, queued {session.get('queued')}, "
            f"rows written {written}, write errors {errors}"
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
    )
    parser.add_argument("command", nargs="?", default="run", choices=("run", "status", "stop"))
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
