"""The agent's socket server: many client connections feeding the same pipeline
the writer thread runs in a training process.

For each session directory there is one :class:`~dreamlake._pipe.SessionPipe`
with a :class:`~dreamlake._local_sink.LocalSink`, registered with this
process's own writer (:func:`dreamlake._writer.get_writer`). A connection
handler only decodes frames and pushes the same items a ``Session`` pushes
(through ``SessionPipe.push_batch``, ``push_params``, ``push_barrier``); for a
barrier it waits for the :class:`~dreamlake._events.Waiter` in a worker thread
and sends the result back. All clients of one session share its pipe, so rows
get consecutive indices and equal-``_ts`` rows from different processes merge.

Clients are counted per session. When the last one leaves, the session is
closed with the worst status its owners reported (completed < interrupted <
failed), or ``interrupted`` if an owner went away without a ``close`` frame
(``kill -9``): everything it sent before is written first.

A bad frame closes only its connection, with an error in the log.

Shutdown (:meth:`AgentServer.stop`, SIGTERM/SIGINT in ``__main__``): stop
accepting, shut the read side of every connection (a client's next send then
fails and that client writes locally from there on), read and process what is
already buffered, write everything, leave each session's status to its
clients, and return.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import struct
import time
from array import array
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import SocketAttribute, SocketStream

from dreamlake._events import Waiter
from dreamlake._local_sink import LocalSink
from dreamlake._names import check_file_folder, check_segment, check_track_name
from dreamlake._pipe import DEFAULT_MEMORY_BUDGET, SessionPipe
from dreamlake._protocol import (
    CALL_OPS,
    PROTOCOL_VERSION,
    Call,
    ClientMessage,
    Close,
    Err,
    FrameEncoder,
    FrameReader,
    Hello,
    Join,
    Ok,
    Open,
    Params,
    ProtocolError,
    Rows,
    Status,
    Welcome,
)
from dreamlake._writer import ROW_MAX_AGE, get_writer

__all__ = ["AgentServer", "SHUTDOWN_GRACE", "RECEIVE_CHUNK"]

log = logging.getLogger("dreamlake.agent")

#: Bytes asked of a connection per receive.
RECEIVE_CHUNK = 1 << 20
#: On shutdown, how long connections may take to hand over what they sent (seconds).
SHUTDOWN_GRACE = 10.0
#: Seconds a worker thread waits on a barrier before checking for cancellation.
WAIT_SLICE = 1.0
#: Key of the log stream in a session's pipe (cannot collide with a track name).
from dreamlake._pipe import LOG_STREAM  # noqa: E402  (one key for the log stream, both sides)
_STATUS_RANK = {"completed": 0, "interrupted": 1, "failed": 2}
_NUMBER = frozenset((float, int))


class _Client:
    """One connection."""

    __slots__ = ("stream", "pid", "uid", "entry", "owner", "streams", "hello", "raw")

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
        self.pid, self.uid = _peer(self.raw)
        self.entry: _Session | None = None
        self.owner = False
        self.streams: dict[tuple[str, bool], Any] = {}
        self.hello = False

    def __repr__(self) -> str:
        return f"client(pid={self.pid})"


class _Session:
    """One session directory the agent writes, and who is attached to it."""

    def __init__(self, directory: str, pipe: SessionPipe) -> None:
        self.directory = directory
        self.pipe = pipe
        self.clients: set[_Client] = set()
        self.status = "completed"
        self.error: str | None = None
        self.closing: anyio.Event | None = None

    def report(self, status: str, error: str | None) -> None:
        if _STATUS_RANK.get(status, 2) > _STATUS_RANK.get(self.status, 2) or (
            status == self.status and self.error is None
        ):
            self.status, self.error = status, error


def _peer(sock: socket.socket) -> tuple[int | None, int | None]:
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None, None
    try:
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
    except OSError:
        return None, None
    return pid, uid


def _error_reply(seq: int, exc: BaseException) -> Err:
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return Err(seq, type(exc).__name__, str(message))


class AgentServer:
    """Serves the agent socket until :meth:`stop`."""

    def __init__(
        self,
        socket_path: str,
        root: str,
        *,
        merge_window: float = ROW_MAX_AGE,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        grace: float = SHUTDOWN_GRACE,
    ) -> None:
        self.socket_path = socket_path
        self.root = os.path.abspath(root)
        self.merge_window = merge_window
        self.memory_budget = memory_budget
        self.grace = grace
        self.writer = get_writer()
        self.sessions: dict[str, _Session] = {}
        self.clients: set[_Client] = set()
        self.stopping = False
        self.started = time.time()
        self.protocol_errors = 0
        self.opens = 0  # sessions opened by clients since start
        self._stop: anyio.Event | None = None
        self._encoder = FrameEncoder()

    # -- running -------------------------------------------------------------
    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        self._stop = anyio.Event()
        if self.stopping:
            self._stop.set()
        listener = await anyio.create_unix_listener(self.socket_path, mode=0o600)
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, 256)
        log.info("listening on %s (pid %d)", self.socket_path, os.getpid())
        try:
            async with anyio.create_task_group() as handlers:
                async with anyio.create_task_group() as front:
                    front.start_soon(self._accept, listener, handlers)
                    task_status.started()
                    await self._stop.wait()
                    front.cancel_scope.cancel()
                await listener.aclose()
                self._unlink_socket()
                for client in list(self.clients):
                    try:
                        client.raw.shutdown(socket.SHUT_RD)
                    except OSError:
                        pass
                handlers.start_soon(self._deadline, handlers.cancel_scope)
                await self._wait_clients()
                handlers.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await self._flush_all()
        finally:
            self._unlink_socket()
        log.info("stopped")

    def stop(self) -> None:
        """Begin a clean shutdown (safe to call from the event loop thread)."""
        self.stopping = True
        if self._stop is not None:
            self._stop.set()

    async def _deadline(self, scope: anyio.CancelScope) -> None:
        await anyio.sleep(self.grace)
        if self.clients:
            log.error("%d connections did not finish within %.1fs; closing them", len(self.clients), self.grace)
        scope.cancel()

    async def _wait_clients(self) -> None:
        while self.clients:
            await anyio.sleep(0.01)

    def _unlink_socket(self) -> None:
        try:
            if os.path.exists(self.socket_path):
                os.unlink(self.socket_path)
        except OSError:
            pass

    async def _accept(self, listener: Any, handlers: anyio.abc.TaskGroup) -> None:
        async with listener:
            while True:
                stream = await listener.accept()
                handlers.start_soon(self._handle, stream)

    async def _flush_all(self) -> None:
        """Shutdown: write everything of the sessions still attached (their clients
        live on and write locally now, so their status is left to them)."""
        for entry in list(self.sessions.values()):
            try:
                with anyio.fail_after(self.grace):
                    await self._barrier(entry, "flush", ([],))
            except Exception as exc:
                log.error("could not flush %s on shutdown: %r", entry.directory, exc)
            self.writer.unregister(entry.pipe)
            entry.pipe.mark_closed()
        self.sessions.clear()

    # -- one connection ---------------------------------------------------------
    async def _handle(self, stream: SocketStream) -> None:
        client = _Client(stream)
        self.clients.add(client)
        reader = FrameReader(ClientMessage)
        try:
            if client.uid is not None and client.uid != os.getuid():
                raise ProtocolError(f"peer uid {client.uid} is not this user")
            while True:
                try:
                    data = await stream.receive(RECEIVE_CHUNK)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    if reader.partial:
                        raise ProtocolError(f"connection ended inside a frame ({reader.partial} bytes)") from None
                    break
                messages, error = reader.feed(data)
                for message in messages:
                    await self._dispatch(client, message)
                if error is not None:
                    raise error
        except ProtocolError as exc:
            self.protocol_errors += 1
            log.error("closing connection from %r: %s", client, exc)
            with anyio.move_on_after(1):
                try:
                    await self._send(client, Err(0, "ProtocolError", str(exc)))
                except Exception:
                    pass
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the client went away while we answered
        except Exception:  # pragma: no cover - a bug here must not take the agent down
            log.exception("connection from %r failed", client)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._leave(client, None, None)
                except Exception:  # pragma: no cover
                    log.exception("leaving session for %r failed", client)
                self.clients.discard(client)
                await stream.aclose()

    async def _send(self, client: _Client, message: Any) -> None:
        # one encoder for the whole agent: the frame is copied out before the await
        await client.stream.send(bytes(self._encoder.encode(message)))

    async def _dispatch(self, client: _Client, message: Any) -> None:
        kind = type(message)
        if kind is Rows:
            await self._rows(client, message)
        elif kind is Call:
            await self._call(client, message)
        elif kind is Params:
            self._params(client, message)
        elif kind is Hello:
            if client.hello:
                raise ProtocolError("second hello")
            if message.version != PROTOCOL_VERSION:
                log.error("%r speaks protocol %d; this agent speaks %d", client, message.version, PROTOCOL_VERSION)
            client.hello = True
            if isinstance(message.info.get("pid"), int) and client.pid is None:
                client.pid = message.info["pid"]
            await self._send(client, Welcome(PROTOCOL_VERSION, {"pid": os.getpid(), "socket": self.socket_path}))
        elif not client.hello:
            raise ProtocolError(f"{kind.__name__.lower()} before hello")
        elif kind is Open or kind is Join:
            await self._attach(client, message, owner=kind is Open)
        elif kind is Close:
            await self._close(client, message)
        elif kind is Status:
            await self._send(client, Ok(message.seq, self.status()))

    def _attached(self, client: _Client, what: str) -> _Session:
        if not client.hello:
            raise ProtocolError(f"{what} before hello")
        if client.entry is None:
            raise ProtocolError(f"{what} before open/join")
        return client.entry

    # -- sessions ------------------------------------------------------------------
    def _session_dir(self, requested: str) -> str:
        """An absolute, normalised directory, or a relative ``workspace/name`` under
        the agent's root; anything that could climb out (``..``) is refused."""
        if not requested or "\x00" in requested:
            raise ValueError(f"bad session directory {requested!r}")
        if requested.startswith("/"):
            parts = requested.strip("/").split("/")
            if any(part in ("", ".", "..") for part in parts):
                raise ValueError(f"session directory must be absolute and normalised, got {requested!r}")
            return "/" + "/".join(parts)
        parts = requested.split("/")
        for part in parts:
            check_segment(part, "session directory component")
        return os.path.join(self.root, *parts)

    async def _attach(self, client: _Client, message: Open | Join, owner: bool) -> None:
        if client.entry is not None:
            raise ProtocolError("this connection is already attached to a session")
        try:
            directory = self._session_dir(message.directory)
        except (ValueError, TypeError) as exc:
            await self._send(client, _error_reply(message.seq, exc))
            return
        entry = self.sessions.get(directory)
        while entry is not None and entry.closing is not None:
            await entry.closing.wait()
            entry = self.sessions.get(directory)
        if entry is None:
            pipe = SessionPipe(LocalSink(directory), self.memory_budget, "block")
            pipe.row_max_age = self.merge_window
            entry = self.sessions[directory] = _Session(directory, pipe)
            self.writer.register(pipe)
        entry.clients.add(client)
        client.entry = entry
        client.owner = owner
        if not owner:
            await self._send(client, Ok(message.seq, None))
            return
        self.opens += 1
        try:
            result = await self._barrier(entry, "open", (dict(message.info),))
        except Exception as exc:  # could not open (permissions, ...): detach, close nothing
            client.entry = None
            entry.clients.discard(client)
            if not entry.clients and self.sessions.get(directory) is entry:
                del self.sessions[directory]
                entry.pipe.mark_closed()
                self.writer.unregister(entry.pipe)
            await self._send(client, _error_reply(message.seq, exc))
            return
        await self._send(client, Ok(message.seq, result))

    async def _close(self, client: _Client, message: Close) -> None:
        self._attached(client, "close")
        if message.status not in _STATUS_RANK:
            await self._send(client, Err(message.seq, "ValueError", f"unknown status {message.status!r}"))
            return
        try:
            await self._leave(client, message.status, message.error)
        except Exception as exc:
            await self._send(client, _error_reply(message.seq, exc))
            return
        await self._send(client, Ok(message.seq, None))

    async def _leave(self, client: _Client, status: str | None, error: str | None) -> None:
        """Detach ``client``; ``status`` None means it went away without closing."""
        entry = client.entry
        if entry is None:
            return
        client.entry = None
        entry.clients.discard(client)
        if status is not None:
            if client.owner:
                entry.report(status, error)
        elif client.owner and not self.stopping:
            log.warning("%r left %s without closing it; marking it interrupted", client, entry.directory)
            entry.report("interrupted", f"a client process (pid {client.pid}) went away without closing the session")
        if entry.clients or self.stopping:
            return
        entry.closing = anyio.Event()
        try:
            await self._barrier(entry, "close", (entry.status, entry.error))
        finally:
            entry.pipe.mark_closed()
            if self.sessions.get(entry.directory) is entry:
                del self.sessions[entry.directory]
            entry.closing.set()

    # -- events ------------------------------------------------------------------
    async def _barrier(self, entry: _Session, op: str, args: tuple) -> Any:
        waiter = Waiter()
        entry.pipe.push_barrier(op, args, waiter)
        self.writer.wake()
        while not await anyio.to_thread.run_sync(waiter.wait, WAIT_SLICE, abandon_on_cancel=True):
            pass
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    def _stream(self, client: _Client, entry: _Session, name: str, is_log: bool) -> Any:
        key = (name, is_log)
        ref = client.streams.get(key)
        if ref is None or ref.pipe is not entry.pipe:
            if is_log:
                ref = entry.pipe.stream(LOG_STREAM, is_log=True)
            else:
                try:
                    check_track_name(name)
                except (ValueError, TypeError) as exc:
                    raise ProtocolError(str(exc)) from None
                ref = entry.pipe.stream(name)
            client.streams[key] = ref
        return ref

    async def _rows(self, client: _Client, message: Rows) -> None:
        entry = self._attached(client, "rows")
        rows = message.rows
        if not rows:
            return
        stream = self._stream(client, entry, message.stream, message.log)
        try:
            stamps = [row["_ts"] for row in rows]
        except KeyError:
            raise ProtocolError("every row needs a _ts") from None
        if not set(map(type, stamps)) <= _NUMBER:
            raise ProtocolError("_ts must be a number")
        ts = array("d", stamps)
        if not all(map(math.isfinite, ts)):
            raise ProtocolError("_ts must be finite")
        if not all(type(t) is float for t in stamps):
            for row, stamp in zip(rows, ts):
                row["_ts"] = stamp
        pipe = entry.pipe
        stamps = ts.tolist()
        step = max(1, min(1024, pipe.max_events // 2))
        wake = self.writer.wake
        for first in range(0, len(rows), step):
            chunk_ts, chunk = stamps[first : first + step], rows[first : first + step]
            if len(pipe.queue) + 3 * len(chunk) <= pipe.max_items:
                pipe.push_batch(stream, chunk_ts, chunk, len(chunk), wake)
            else:  # at budget: wait for the writer in a thread (backpressure reaches the client)
                await anyio.to_thread.run_sync(pipe.push_batch, stream, chunk_ts, chunk, len(chunk), wake)

    def _params(self, client: _Client, message: Params) -> None:
        entry = self._attached(client, "params")
        if not message.values:
            return
        if not all(isinstance(k, str) and k for k in message.values):
            raise ProtocolError("parameter names must be non-empty strings")
        entry.pipe.push_params(message.values)

    async def _call(self, client: _Client, message: Call) -> None:
        entry = self._attached(client, "call")
        try:
            if message.op not in CALL_OPS:
                raise ValueError(f"unknown operation {message.op!r}")
            args = _check_call(message.op, list(message.args))
            result = await self._barrier(entry, message.op, args)
        except Exception as exc:
            await self._send(client, _error_reply(message.seq, exc))
            return
        await self._send(client, Ok(message.seq, result))

    # -- introspection ------------------------------------------------------------
    def status(self) -> dict:
        return {
            "pid": os.getpid(),
            "socket": self.socket_path,
            "root": self.root,
            "startedAt": self.started,
            "mergeWindow": self.merge_window,
            "protocolErrors": self.protocol_errors,
            "opens": self.opens,
            "connections": len(self.clients),
            "sessions": [
                {
                    "directory": entry.directory,
                    "clients": sorted(c.pid for c in entry.clients if c.pid is not None),
                    **entry.pipe.health(),
                }
                for entry in self.sessions.values()
            ],
        }


def _check_call(op: str, args: list) -> tuple:
    """Validate what a ``call`` names before it reaches the sink: track names and
    file folders go through ``dreamlake._names`` so nothing escapes the session."""
    if op in ("read", "read_range") and args:
        if len(args) < 2 or not isinstance(args[0], str) or not isinstance(args[1], bool):
            raise TypeError(f"{op} takes (name, is_log, ...)")
        if not args[1]:
            check_track_name(args[0])
        for value in args[2:]:
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise TypeError(f"{op} bounds must be numbers")
        if op == "read" and any(isinstance(v, int) and v < 0 for v in args[2:]):
            raise ValueError("start_index and limit must be non-negative")
    elif op == "stats" and args:
        check_track_name(args[0])
    elif op == "flush":
        names = args[0] if args else None
        if names is not None:
            if not isinstance(names, list):
                raise TypeError("flush takes a list of track names or nil")
            for name in names:
                check_track_name(name)
        args = [names]
    elif op == "files_upload" and args:
        if not isinstance(args[0], str) or not os.path.isabs(args[0]):
            raise ValueError("files_upload needs an absolute source path")
        if len(args) > 1:
            args[1] = check_file_folder(args[1])
    elif op == "files_list" and args:
        if args[0] is not None:
            args[0] = check_file_folder(args[0])
    elif op == "files_download" and len(args) > 1:
        if not isinstance(args[1], str) or not os.path.isabs(args[1]):
            raise ValueError("files_download needs an absolute destination")
    return tuple(args)
