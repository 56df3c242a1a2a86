"""The agent's socket server: many client connections feeding the same pipeline
the writer thread runs in a training process.

For each session directory there is one :class:`~dreamlake._pipe.SessionPipe`
with the sink :func:`dreamlake.sinks.make_sink` builds (as a session writing
itself would), registered with this
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

Everything a client sends is checked first (``_checks``: the API's own
validators); a bad ``rows``/``params`` frame is refused whole, counted by
reason, and closes only its connection; a bad ``call``/``open`` gets an ``err``
reply. File operations run in a worker thread, never on the writer that serves
every session, and an upload reads regular files only. One client can never
stop another's rows.

The socket is bound in a private directory beside its final path and renamed
into place, so it is 0600 from its first instant whatever the directory's mode.
With ``idle_exit`` > 0 the server stops by itself after that long with no
client and no session.

Shutdown (:meth:`AgentServer.stop`, SIGTERM/SIGINT in ``__main__``): stop
accepting, shut the read side of every connection (a client's next send then
fails and that client writes locally from there on), read and process what is
already buffered, write everything, leave each session's status to its
clients, and return.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import anyio
import anyio.to_thread
from anyio.abc import SocketAttribute, SocketStream

from dreamlake._agent_socket import peer_credentials
from dreamlake._config import SessionConfig
from dreamlake._events import Waiter
from dreamlake._files_api import MAX_FILE_BYTES
from dreamlake._pipe import DEFAULT_MEMORY_BUDGET, SessionPipe
from dreamlake._protocol import (
    CALL_OPS,
    STOPPING,
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
from dreamlake.sinks import ClosesLater, DeliversLater, HasHealth, Sink, Store, call_store, make_sink
from dreamlake.sinks.remote.config import CLOSE_WAIT

from ._checks import (
    FILE_OPS,
    Refused,
    check_call,
    check_lost,
    check_open_info,
    check_params,
    check_remote,
    check_rows,
    check_session_dir,
    check_stream_name,
)

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
#: Counters of a session's pipe (``SessionPipe.health()``) that are losses.
_PIPE_LOSSES = ("dropped", "quarantined")


class _Client:
    """One connection."""

    __slots__ = ("stream", "pid", "uid", "entry", "owner", "streams", "hello", "raw")

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
        self.pid, self.uid = peer_credentials(self.raw)
        self.entry: _Session | None = None
        self.owner = False
        self.streams: dict[tuple[str, bool], Any] = {}
        self.hello = False

    def __repr__(self) -> str:
        return f"client(pid={self.pid})"


class _Session:
    """One session directory the agent writes, and who is attached to it."""

    def __init__(self, directory: str, pipe: SessionPipe, sink: Sink, destination: tuple) -> None:
        self.directory = directory
        self.destination = destination  # (mode, url): every opener must agree
        self.pipe = pipe
        self.sink = sink  # file operations use its store directly, off the writer thread
        self.clients: set[_Client] = set()
        self.status = "completed"
        self.error: str | None = None
        #: losses its clients counted before rows reached the agent (sent with ``close``)
        self.client_lost: collections.Counter[str] = collections.Counter()
        self.closing: anyio.Event | None = None

    def report(self, status: str, error: str | None) -> None:
        if _STATUS_RANK.get(status, 2) > _STATUS_RANK.get(self.status, 2) or (
            status == self.status and self.error is None
        ):
            self.status, self.error = status, error


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
        idle_exit: float = 0.0,
    ) -> None:
        self.socket_path = socket_path
        self.root = os.path.abspath(root)
        self.merge_window = merge_window
        self.memory_budget = memory_budget
        self.grace = grace
        self.idle_exit = idle_exit
        self.losses: collections.Counter[str] = collections.Counter()  # by reason, closed sessions included
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
        listener = await self._listen()
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, 256)
        log.info("listening on %s (pid %d)", self.socket_path, os.getpid())
        try:
            async with anyio.create_task_group() as handlers:
                async with anyio.create_task_group() as front:
                    front.start_soon(self._accept, listener, handlers)
                    if self.idle_exit > 0:
                        front.start_soon(self._exit_when_idle)
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

    async def _listen(self) -> Any:
        """Bind in a fresh 0700 directory beside the socket, then rename into place:
        the socket is never reachable with a wider mode, whatever its directory's."""
        directory = os.path.dirname(self.socket_path)
        try:
            if not stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                raise FileExistsError(f"{self.socket_path} exists and is not a socket; not replacing it")
        except FileNotFoundError:
            pass
        staging = tempfile.mkdtemp(prefix=".dl", dir=directory)
        try:
            temporary = os.path.join(staging, "s")
            listener = await anyio.create_unix_listener(temporary, mode=0o600)
            try:
                os.rename(temporary, self.socket_path)
            except BaseException:
                await listener.aclose()
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return listener

    async def _exit_when_idle(self) -> None:
        idle_since = time.monotonic()
        while True:
            await anyio.sleep(min(1.0, self.idle_exit / 4))
            if self.clients or self.sessions:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= self.idle_exit:
                log.info("no clients for %g s; exiting", self.idle_exit)
                self.stop()
                return

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
                    if isinstance(entry.sink, DeliversLater):  # delivered, or safe in the spool
                        await self._delivered(entry, "flush", ([],))
                    else:
                        await self._barrier(entry, "flush", ([],))
            except Exception as exc:
                log.error("could not flush %s on shutdown: %r", entry.directory, exc)
            self.writer.unregister(entry.pipe)
            entry.pipe.mark_closed()
            self._count_pipe_losses(entry)
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
            if isinstance(exc, Refused):
                self.losses[exc.reason] += exc.rows or 1
            elif "ended inside a frame" in str(exc):
                self.losses["frames_truncated"] += 1
            else:
                self.losses["frames_refused"] += 1
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
                if self.stopping:  # all it sent was read and queued: the client need not count it lost
                    with anyio.move_on_after(1):
                        try:
                            await self._send(client, Err(0, STOPPING, "the agent is stopping; it writes all it received"))
                        except Exception:
                            pass
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
    async def _attach(self, client: _Client, message: Open | Join, owner: bool) -> None:
        if client.entry is not None:
            raise ProtocolError("this connection is already attached to a session")
        try:
            directory = check_session_dir(message.directory, self.root)
            info = check_open_info(message.info) if owner else None
            remote = check_remote(message.remote)
        except (ValueError, TypeError) as exc:
            await self._send(client, _error_reply(message.seq, exc))
            return
        entry = self.sessions.get(directory)
        while entry is not None and entry.closing is not None:
            await entry.closing.wait()
            entry = self.sessions.get(directory)
        destination = (remote.get("mode") or "remote", remote["url"]) if remote else ("local", None)
        created = entry is None
        if entry is None:
            try:
                sink = make_sink(session_config(directory, remote))
            except (ValueError, TypeError) as exc:
                await self._send(client, _error_reply(message.seq, exc))
                return
            pipe = SessionPipe(sink, self.memory_budget, "block")
            pipe.row_max_age = self.merge_window
            entry = self.sessions[directory] = _Session(directory, pipe, sink, destination)
            self.writer.register(pipe)
        elif owner and destination != entry.destination:
            what = "locally" if entry.destination[0] == "local" else f"{entry.destination[0]} to {entry.destination[1]}"
            await self._send(client, Err(message.seq, "ValueError", f"{directory} is already open here, {what}"))
            return
        entry.clients.add(client)
        client.entry = entry
        client.owner = owner
        if owner:
            self.opens += 1
        elif created and isinstance(entry.sink, DeliversLater):
            # a joiner of a remote session this agent did not serve yet (it restarted):
            # the sending side needs opening; the session's status stays its owner's
            info = {"name": remote["name"], "workspace": remote["workspace"]}
        else:
            await self._send(client, Ok(message.seq, None))
            return
        try:
            result = await self._barrier(entry, "open", (info,))
        except Exception as exc:  # could not open (permissions, ...): detach, close nothing
            client.entry = None
            entry.clients.discard(client)
            if not entry.clients and self.sessions.get(directory) is entry:
                del self.sessions[directory]
                entry.pipe.mark_closed()
                self.writer.unregister(entry.pipe)
                self._count_pipe_losses(entry)
            await self._send(client, _error_reply(message.seq, exc))
            return
        await self._send(client, Ok(message.seq, result if owner else None))

    async def _close(self, client: _Client, message: Close) -> None:
        self._attached(client, "close")
        if message.status not in _STATUS_RANK:
            await self._send(client, Err(message.seq, "ValueError", f"unknown status {message.status!r}"))
            return
        try:
            lost = check_lost(message.lost)
        except ValueError as exc:
            await self._send(client, _error_reply(message.seq, exc))
            return
        try:
            await self._leave(client, message.status, message.error, lost)
        except Exception as exc:
            await self._send(client, _error_reply(message.seq, exc))
            return
        await self._send(client, Ok(message.seq, None))

    async def _leave(self, client: _Client, status: str | None, error: str | None, lost: dict | None = None) -> None:
        """Detach ``client``; ``status`` None means it went away without closing.
        ``lost``: what the client lost on its side, kept for the session's close."""
        entry = client.entry
        if entry is None:
            return
        client.entry = None
        entry.clients.discard(client)
        entry.client_lost.update(lost or {})
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
            sealed = await self._barrier(entry, "close", (entry.status, entry.error, dict(entry.client_lost)))
            if isinstance(entry.sink, ClosesLater):  # the wait for the server: a worker, never the writer
                try:
                    await anyio.to_thread.run_sync(entry.sink.finish_close, sealed, CLOSE_WAIT, abandon_on_cancel=True)
                except Exception as exc:
                    log.error("closing %s: %r", entry.directory, exc)
        finally:
            entry.pipe.mark_closed()
            if self.sessions.get(entry.directory) is entry:
                del self.sessions[entry.directory]
                self._count_pipe_losses(entry)
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

    async def _delivered(self, entry: _Session, op: str, args: tuple) -> Any:
        """A flush or read of a session that delivers later (remote): the writer
        only takes a mark; waiting for the server and asking it run in a worker
        thread, never on the writer that serves every session."""
        sink = entry.sink
        assert isinstance(sink, DeliversLater)
        mark = await self._barrier(entry, "mark", ())
        if op == "flush":  # durable: delivered, or safe in the spool
            return await anyio.to_thread.run_sync(sink.wait_and_report, mark, args[0] if args else None, None,
                                                  abandon_on_cancel=True)
        await anyio.to_thread.run_sync(sink.wait_delivered, mark, None, abandon_on_cancel=True)
        return await anyio.to_thread.run_sync(call_store, sink.store, op, args, abandon_on_cancel=True)

    def _stream(self, client: _Client, entry: _Session, name: str, is_log: bool, count: int) -> Any:
        """The pipe's stream for a frame; its name is checked once per connection."""
        key = (name, is_log)
        ref = client.streams.get(key)
        if ref is None or ref.pipe is not entry.pipe:
            if is_log:
                ref = entry.pipe.stream(LOG_STREAM, is_log=True)
            else:
                ref = entry.pipe.stream(check_stream_name(name, is_log, count))
            client.streams[key] = ref
        return ref

    async def _rows(self, client: _Client, message: Rows) -> None:
        entry = self._attached(client, "rows")
        rows = message.rows
        if not rows:
            return
        stream = self._stream(client, entry, message.stream, message.log, len(rows))
        stamps = check_rows(message.log, rows)  # the whole frame, before any of it is queued
        pipe = entry.pipe
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
        flat = check_params(message.values)
        if flat:
            entry.pipe.push_params(flat)

    async def _call(self, client: _Client, message: Call) -> None:
        entry = self._attached(client, "call")
        try:
            if message.op not in CALL_OPS:
                raise ValueError(f"unknown operation {message.op!r}")
            args = check_call(message.op, list(message.args))
            if message.op in FILE_OPS:  # not a barrier: off the writer that serves every session
                result = await anyio.to_thread.run_sync(_file_op, entry.sink.store, message.op, args)
            elif isinstance(entry.sink, DeliversLater):
                result = await self._delivered(entry, message.op, args)
            else:
                result = await self._barrier(entry, message.op, args)
        except Exception as exc:
            await self._send(client, _error_reply(message.seq, exc))
            return
        await self._send(client, Ok(message.seq, result))

    # -- introspection ------------------------------------------------------------
    def _count_pipe_losses(self, entry: _Session) -> None:
        """A session leaves the agent: keep what its pipe lost in the agent's totals."""
        self.losses.update(_pipe_losses(entry.pipe.health()))

    def _losses(self) -> dict[str, int]:
        """Everything dropped or refused since start, by reason (open sessions included)."""
        total = collections.Counter(self.losses)
        for entry in self.sessions.values():
            total.update(_pipe_losses(entry.pipe.health()))
        return {reason: count for reason, count in sorted(total.items()) if count}

    def status(self) -> dict:
        return {
            "pid": os.getpid(),
            "socket": self.socket_path,
            "root": self.root,
            "startedAt": self.started,
            "mergeWindow": self.merge_window,
            "protocolErrors": self.protocol_errors,
            "losses": self._losses(),
            "opens": self.opens,
            "connections": len(self.clients),
            "sessions": [
                {
                    "directory": entry.directory,
                    "clients": sorted(c.pid for c in entry.clients if c.pid is not None),
                    **entry.pipe.health(),
                    "sink": _sink_health(entry.sink),
                }
                for entry in self.sessions.values()
            ],
        }


def _pipe_losses(health: dict) -> dict[str, int]:
    """The loss counters of ``SessionPipe.health()``: plain counts, and any
    ``{reason: count}`` map the pipe keeps (``dropped_by_reason`` ...)."""
    found: dict[str, int] = {}
    for key, value in health.items():
        if key in _PIPE_LOSSES and type(value) is int:
            found[key] = found.get(key, 0) + value
        elif isinstance(value, dict) and (key.endswith("_by_reason") or key == "losses"):
            for reason, count in value.items():
                if type(count) is int:
                    found[str(reason)] = found.get(str(reason), 0) + count
    return found


def session_config(directory: str, remote: dict) -> SessionConfig:
    """The configuration of a session the agent serves in ``directory``
    (checked by ``check_session_dir``), forwarded as ``remote`` (checked by
    ``check_remote``) says: the same the client's own factory would get."""
    path = Path(directory)
    if not remote:
        return SessionConfig(workspace=path.parent.name, name=path.name, root=path.parent.parent, directory=path,
                             url=None, user_name=None)
    return SessionConfig(
        workspace=remote["workspace"],
        name=remote["name"],
        root=path.parent.parent,
        directory=path,
        url=remote["url"],
        user_name=remote["userName"],
        api_key=remote["apiKey"],
        mode=remote["mode"],
        local_root=remote["localRoot"],
    )


def _sink_health(sink: Sink) -> dict:
    try:
        return sink.health() if isinstance(sink, HasHealth) else {}
    except Exception as exc:  # a sink not open yet, or closing
        return {"sink_error": f"{type(exc).__name__}: {exc}"}


def _file_op(store: Store, op: str, args: tuple) -> Any:
    """Run a files operation in a worker thread (checked arguments)."""
    if op == "files_upload":
        with _regular_file(args[0]) as source:
            return store.files_upload(source, *args[1:])
    if op == "files_download":
        _check_download_target(args[1])
    return call_store(store, op, args)


@contextmanager
def _regular_file(path: str) -> Iterator[str]:
    """A path to the regular file ``path`` names *now*: opened without blocking
    (a FIFO or device would block a plain open), checked with ``fstat``, and
    handed on as a link to that open file, so it cannot be swapped afterwards."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    staging = None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IsADirectoryError(f"not a regular file: {path!r}")
        if info.st_size > MAX_FILE_BYTES:
            raise ValueError(f"{path!r} is {info.st_size} bytes; the limit is {MAX_FILE_BYTES}")
        pinned = f"/proc/self/fd/{fd}"
        if not os.path.exists(pinned):  # no procfs: the fstat check above is what we have
            yield path
            return
        staging = tempfile.mkdtemp(prefix="dreamlake-upload-")
        link = os.path.join(staging, os.path.basename(path))
        os.symlink(pinned, link)
        yield link
    finally:
        os.close(fd)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _check_download_target(dest: str) -> None:
    """A download writes a regular file (or into a directory); never into a FIFO
    or device, whose open would block."""
    try:
        info = os.stat(dest)
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise ValueError(f"download destination {dest!r} is not a regular file or directory")
