"""Agent mode, client side: a sink that hands a session to ``dreamlake-agent``.

``agent_sink(config)`` connects to the agent socket (starting an agent first
for ``agent="auto"``) and returns an :class:`AgentSink`, or ``None`` when no
agent can be reached — the session then writes itself (thread mode) and the
process says so once.

The :class:`AgentSink` has the local sink's methods and, like it, runs only on
the process's writer thread, never on the caller's: the writer batches and
merges as usual and the sink sends each batch as one ``rows`` frame without
waiting. Only barrier-type calls (open, flush, read, stats, files) wait
for the agent's reply there. ``close`` is sent from the writer thread and its
reply awaited on the closing thread (:class:`~dreamlake.sinks.ClosesLater`):
the agent may wait for a remote server before it answers, and that must not
hold the process's other sessions. If the agent goes away, the sink switches the session
to the sink this process would write itself (:func:`dreamlake.sinks.own_sink`), warns
once, and carries on: nothing hangs and nothing raises into the training loop.
What the agent had received but not yet written when it was killed (-9) is
lost; a clean agent shutdown (SIGTERM) writes everything it received, and a
batch the agent refused to read is written here instead. ``AgentSink.health()``
says which way the session goes and how many rows may have gone with the agent.

Starting an agent (``agent="auto"``): the client takes the agent lock beside
the socket (``dreamlake._agent_socket``) and hands the locked descriptor to the
agent it spawns (``python -m dreamlake_agent --lock-fd N``), so of many racing
clients exactly one starts an agent; the others wait for its socket.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import warnings
from typing import Any, Callable

from ._agent_socket import check_socket_dir, open_lock, peer_credentials, try_lock
from ._config import SessionConfig
from .sinks.remote.config import ENV_API_KEY
from ._errors import FlushTimeout, SessionStateError, SinkError
from ._paced_pack import rows_in_steps
from ._protocol import (
    MAX_ROWS_PER_FRAME,
    PROTOCOL_VERSION,
    AgentMessage,
    Call,
    Close,
    Err,
    FrameEncoder,
    FrameReader,
    Hello,
    Join,
    Ok,
    Open,
    Params,
    Rows,
    STOPPING,
    Status,
    Welcome,
    parse_address,
)
from .sinks import ClosesLater, ForkAware, HasHealth, Joins, RecordsLosses, Sink, call_store

__all__ = ["agent_sink", "AgentSink", "connect", "start_agent", "AgentLost", "UnsendableRows", "AUTO_IDLE_EXIT"]

log = logging.getLogger("dreamlake")

#: Connecting and the hello exchange (seconds).
CONNECT_TIMEOUT = 5.0
#: How long ``agent="auto"`` waits for an agent it started (seconds).
START_TIMEOUT = 20.0
#: Waiting this long for a barrier's reply means the agent is gone (seconds); long,
#: because an upload or a read of a big track is a legitimate slow barrier.
IO_TIMEOUT = 120.0
#: A send blocked this long means the agent stopped reading (frozen, stuck disk):
#: the session falls back to writing itself rather than stall the training loop.
SEND_TIMEOUT = 5.0
#: Seconds an agent started by ``agent="auto"`` stays up without clients
#: (``$DREAMLAKE_AGENT_IDLE_EXIT`` overrides; 0 = never).
AUTO_IDLE_EXIT = 300.0
ENV_IDLE_EXIT = "DREAMLAKE_AGENT_IDLE_EXIT"
#: After the connection failed, how long to wait for the agent's stopping notice (seconds).
DRAIN_TIMEOUT = 0.5
#: Agents one ``connect`` may start when each one it starts dies at once.
MAX_STARTS = 3

_ERRORS: dict[str, type[BaseException]] = {
    "ValueError": ValueError,
    "TypeError": TypeError,
    "KeyError": KeyError,
    "FileNotFoundError": FileNotFoundError,
    "IsADirectoryError": IsADirectoryError,
    "NotADirectoryError": NotADirectoryError,
    "PermissionError": PermissionError,
    "SessionStateError": SessionStateError,
    "FlushTimeout": FlushTimeout,
    "SinkError": SinkError,
}

_warned = False
_warn_lock = threading.Lock()
_started: list[subprocess.Popen] = []


class AgentLost(ConnectionError):
    """The agent connection failed (closed, reset, timed out or spoke garbage)."""


class UnsendableRows(ValueError):
    """A batch cannot be put on the wire (a value outside what MessagePack carries);
    raised before any of the batch was sent, so the writer may retry or set rows aside."""


def _warn_once(message: str) -> None:
    global _warned
    with _warn_lock:
        if _warned:
            log.info(message)
            return
        _warned = True
    warnings.warn(message, RuntimeWarning, stacklevel=2)


def _remote_error(reply: Err) -> BaseException:
    kind = _ERRORS.get(reply.kind)
    if kind is None:
        return SinkError(f"agent: {reply.kind}: {reply.message}")
    return kind(reply.message)


# -- connecting --------------------------------------------------------------------
class _Connection:
    """A blocking socket speaking frames; used only by one thread at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.encoder = FrameEncoder()
        self.reader = FrameReader(AgentMessage)
        self.replies: list = []
        self.seq = 0
        self.agent_stopping = False  # the agent said it stops cleanly with all we sent

    def send(self, message: Any) -> None:
        self.send_frame(self.encoder.encode(message))

    def send_frame(self, frame: bytes | bytearray) -> None:
        try:
            self.sock.settimeout(SEND_TIMEOUT)
            self.sock.sendall(frame)
        except OSError as exc:  # socket.timeout included
            raise AgentLost(f"sending to the agent failed: {exc}") from exc

    def receive(self, timeout: float = IO_TIMEOUT) -> Any:
        while not self.replies:
            try:
                self.sock.settimeout(timeout)
                data = self.sock.recv(1 << 16)
            except OSError as exc:
                raise AgentLost(f"no reply from the agent: {exc}") from exc
            if not data:
                raise AgentLost("the agent closed the connection")
            messages, error = self.reader.feed(data)
            self._keep(messages)
            if error is not None and not self.replies:
                raise AgentLost(f"the agent sent a bad frame: {error}")
        return self.replies.pop(0)

    def _keep(self, messages: list) -> None:
        for message in messages:
            if isinstance(message, Err) and message.seq == 0 and message.kind == STOPPING:
                self.agent_stopping = True
            else:
                self.replies.append(message)

    def drain(self, timeout: float) -> None:
        """After a failure: read what the agent still sent (its stopping notice)
        until it closes, for at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        try:
            while not self.agent_stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.sock.settimeout(left)
                data = self.sock.recv(1 << 16)
                if not data:
                    return
                messages, error = self.reader.feed(data)
                self._keep(messages)
                if error is not None:
                    return
        except OSError:
            return

    def request(self, make: Callable[[int], Any]) -> Any:
        return self.reply_to(self.post(make))

    def post(self, make: Callable[[int], Any]) -> int:
        """Send a request without waiting for its reply; its seq."""
        self.seq += 1
        self.send(make(self.seq))
        return self.seq

    def reply_to(self, seq: int, timeout: float = IO_TIMEOUT) -> Any:
        """The result of request ``seq`` (its error raised)."""
        while True:
            reply = self.receive(timeout)
            if isinstance(reply, Ok) and reply.seq == seq:
                return reply.result
            if isinstance(reply, Err) and reply.seq in (seq, 0):
                raise _remote_error(reply)
            # anything else is stale or unsolicited: skip it

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def connect(path: str, timeout: float = CONNECT_TIMEOUT) -> tuple[_Connection, dict]:
    """Connect to the agent at ``path`` and exchange hellos; returns the connection
    and the agent's info. Refuses a socket that belongs to another user."""
    info = os.stat(path)
    if not stat.S_ISSOCK(info.st_mode):
        raise ConnectionRefusedError(f"{path} is not a socket")
    if info.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to uid {info.st_uid}, not to this user")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        _, peer_uid = peer_credentials(sock)
        if peer_uid is not None and peer_uid != os.getuid():
            raise PermissionError(f"the agent at {path} runs as uid {peer_uid}, not as this user")
        connection = _Connection(sock)
        from . import __version__

        connection.send(Hello(PROTOCOL_VERSION, {"pid": os.getpid(), "client": f"dreamlake-python/{__version__}"}))
        welcome = connection.receive()
        if not isinstance(welcome, Welcome):
            raise AgentLost(f"unexpected first reply from the agent: {type(welcome).__name__}")
        if welcome.version != PROTOCOL_VERSION:
            raise AgentLost(f"the agent speaks protocol {welcome.version}, this client {PROTOCOL_VERSION}")
        sock.settimeout(IO_TIMEOUT)
        return connection, welcome.info
    except BaseException:
        sock.close()
        raise


def _idle_exit() -> float:
    text = os.environ.get(ENV_IDLE_EXIT)
    try:
        return float(text) if text else AUTO_IDLE_EXIT
    except ValueError:
        return AUTO_IDLE_EXIT


def start_agent(path: str, root: str | None = None) -> subprocess.Popen | None:
    """Start a detached ``dreamlake-agent`` on ``path`` (its log next to the socket)
    unless one holds (or is taking) the lock; None when it does. The agent gets
    our locked descriptor, so from this moment until it exits no one else starts one."""
    check_socket_dir(os.path.dirname(path))
    for old in list(_started):  # reap agents that exited
        if old.poll() is not None:
            _started.remove(old)
    lock = open_lock(path)
    try:
        if not try_lock(lock):
            return None
        os.ftruncate(lock, 0)  # no stale pid while the new agent starts
        command = [sys.executable, "-m", "dreamlake_agent", "--socket", path, "--lock-fd", str(lock)]
        command += ["--idle-exit", repr(_idle_exit())]
        if root is not None:
            command += ["--root", root]
        env = {k: v for k, v in os.environ.items() if k != "DREAMLAKE_AGENT"}
        with open(path + ".log", "ab") as logfile:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                cwd="/",
                env=env,
                start_new_session=True,
                close_fds=True,
                pass_fds=(lock,),
            )
    finally:
        os.close(lock)  # the agent holds the lock on its copy now (or nobody does)
    _started.append(proc)
    return proc


def _connect_or_start(path: str, auto: bool, root: str) -> tuple[_Connection, dict]:
    try:
        return connect(path)
    except (OSError, AgentLost):
        if not auto:
            raise
    deadline = time.monotonic() + START_TIMEOUT
    delay = 0.005
    starts = 0
    while True:
        if starts < MAX_STARTS and start_agent(path, root) is not None:
            starts += 1
        time.sleep(delay)  # bounded poll for the agent that holds the lock
        delay = min(delay * 2, 0.1)
        try:
            return connect(path)
        except (OSError, AgentLost):
            if time.monotonic() >= deadline:
                raise


def agent_sink(config: Any) -> "AgentSink | None":
    """The sink for a session with ``agent=...``, or None (write locally) when no
    agent can be reached."""
    path, auto = parse_address(config.agent)
    try:
        connection, _ = _connect_or_start(path, auto, str(config.root))
    except (OSError, AgentLost) as exc:
        _warn_once(
            f"dreamlake: no dreamlake-agent at {path} ({exc}); session {config.prefix} is written "
            f"by this process instead"
        )
        return None
    # canonical: every client of a session names it alike, and the agent refuses '..'
    return AgentSink(path, connection, config)


def remote_map(config: SessionConfig) -> dict:
    """What ``open``/``join`` tell the agent about the session's server (empty
    for a local session). The API key goes to the agent only, over the
    private socket; neither side writes it to ``session.json`` or a log."""
    mode = config.mode or ("remote" if config.url else "local")
    if mode == "local":
        return {}
    return {
        "url": config.url, "apiKey": config.api_key or os.environ.get(ENV_API_KEY), "userName": config.user_name,
        "mode": mode,
        "workspace": config.workspace, "name": config.name, "localRoot": config.local_root,
    }


def _encode_rows(encoder: FrameEncoder, name: str, is_log: bool, rows: list) -> list[tuple[Any, int]]:
    """Every frame of a batch, encoded before any is sent: a value MessagePack
    cannot carry fails the whole batch here (``UnsendableRows``), never half-sent.
    A frame's rows are encoded in steps, the GIL handed over between them
    (:mod:`._paced_pack`); a frame stays whole, so an agent that stops reading
    holds no part of a batch the fallback writes again."""
    try:
        if len(rows) <= MAX_ROWS_PER_FRAME:  # the common case: one frame, the encoder's buffer
            return [(encoder.encode(Rows(name, is_log, rows_in_steps(rows))), len(rows))]
        frames = []
        for i in range(0, len(rows), MAX_ROWS_PER_FRAME):
            piece = rows[i : i + MAX_ROWS_PER_FRAME]
            frames.append((bytes(encoder.encode(Rows(name, is_log, rows_in_steps(piece)))), len(piece)))
        return frames
    except (TypeError, ValueError, OverflowError, UnicodeError) as exc:
        raise UnsendableRows(f"rows of {name!r} cannot be sent to the agent: {exc}") from exc


# -- the sink ----------------------------------------------------------------------
class AgentSink:
    """Forwards one session to the agent; falls back to a local sink if it is lost."""

    def __init__(self, path: str, connection: _Connection | None, config: SessionConfig) -> None:
        self.path = path
        self.config = config  # the fallback is built from it, by the same factory as thread mode
        self.directory = os.path.realpath(config.directory)
        self.store = self  # reads and files go over the same connection, on the writer thread
        self._remote = remote_map(config)
        self._conn = connection
        self._owner = True  # False in a forked child: it joins, never opens or closes
        self._rejoin = False  # set after fork: connect again (as a joiner) on first use
        self._closed = False
        self._info: dict | None = None
        self._opened = False
        self._local: Sink | None = None
        self._windows: dict[str, list] = {}  # flush windows once written locally
        self._unconfirmed = 0  # rows sent since the agent last confirmed a barrier
        self._lost_with_agent = 0
        self._lost: dict[str, int] = {}
        self._closing: tuple[str, str | None] = ("completed", None)
        self._fallback_reason: str | None = None

    @property
    def via_agent(self) -> bool:
        return self._local is None

    def health(self) -> dict:
        """Where this session's rows go: ``mode`` "agent" or "local-fallback";
        ``lost_with_agent``: rows sent to an agent that then went away without
        a clean stop, before a barrier (flush, read, ...) confirmed them written:
        at most that many are missing (after ``kill -9`` those it had not yet
        written are gone; a clean stop says so and writes them all, counting 0);
        ``unconfirmed_rows``: sent and not yet confirmed by a barrier;
        ``fallback_reason``: why the session writes itself, or None."""
        out = {
            "mode": "agent" if self._local is None else "local-fallback",
            "socket": self.path,
            "lost_with_agent": self._lost_with_agent,
            "unconfirmed_rows": self._unconfirmed if self._local is None else 0,
            "fallback_reason": self._fallback_reason,
        }
        local = self._local
        if isinstance(local, HasHealth):
            out.update(local.health())
        elif local is None and self._remote:
            out.update(self._agent_sink_health())
        return out

    def _agent_sink_health(self) -> dict:
        """The delivery state of the agent's sink for this session (remote:
        ``delivery``, ``auth_failed``, ``spooled_batches`` ...), asked on a
        connection of its own: the session's is the writer thread's."""
        connection = None
        try:
            connection, _ = connect(self.path)
            status = connection.request(lambda seq: Status(seq))
        except (OSError, AgentLost, SinkError) as exc:
            return {"remote_error": f"the agent's delivery state is unavailable: {exc}"}
        finally:
            if connection is not None:
                connection.close()
        for entry in status.get("sessions", []):
            if entry.get("directory") == self.directory:
                return dict(entry.get("sink") or {})
        return {}

    # -- plumbing -----------------------------------------------------------
    def _connection(self) -> _Connection | None:
        """The live connection, reconnecting (as a joiner) after a fork."""
        if self._local is not None:
            return None
        if self._closed:
            raise SessionStateError(f"the agent session for {self.directory} is closed")
        if self._conn is None and self._rejoin:
            self._rejoin = False
            connection = None
            try:
                connection, _ = connect(self.path)
                connection.request(lambda seq: Join(seq, self.directory, self._remote))
            except Exception as exc:  # unreachable, or it refused us
                if connection is not None:
                    connection.close()
                self._fall_back(exc)
                return None
            self._conn = connection
        if self._conn is None:
            self._fall_back(AgentLost("not connected"))
        return self._conn

    def _fall_back(self, why: BaseException) -> None:
        stopped_cleanly = False
        if self._conn is not None:
            self._conn.drain(DRAIN_TIMEOUT)
            stopped_cleanly = self._conn.agent_stopping
            self._conn.close()
            self._conn = None
        if self._local is not None:
            return
        from .sinks import own_sink

        self._fallback_reason = str(why) + (" (the agent stopped cleanly)" if stopped_cleanly else "")
        if not stopped_cleanly:
            self._lost_with_agent += self._unconfirmed
        self._unconfirmed = 0

        _warn_once(
            f"dreamlake: lost the dreamlake-agent at {self.path} ({why}); this process now writes "
            f"{self.directory} itself"
        )
        local = own_sink(self.config)
        if self._owner and self._opened and self._info is not None:
            local.open(self._info)
        elif not self._owner and isinstance(local, Joins):  # a forked child: send, but own nothing
            local.join({"name": self.config.name, "workspace": self.config.workspace})
        self._local = local

    def _request(self, make: Callable[[int], Any]) -> tuple[bool, Any]:
        """``(True, result)`` from the agent, or ``(False, None)`` after falling back."""
        connection = self._connection()
        if connection is None:
            return False, None
        try:
            result = connection.request(make)
        except AgentLost as exc:
            self._fall_back(exc)
            return False, None
        self._unconfirmed = 0  # a barrier: everything sent before it is written
        return True, result

    def _call(self, op: str, *args: Any) -> Any:
        done, result = self._request(lambda seq: Call(seq, op, list(args)))
        if done:
            return result
        return call_store(self._local.store, op, args)

    # -- lifecycle ----------------------------------------------------------
    def open(self, info: dict) -> dict:
        self._info = dict(info)
        done, result = self._request(lambda seq: Open(seq, self.directory, self._info, self._remote))
        self._opened = True
        if done:
            return result
        return self._local.open(info)

    def record_losses(self, lost: dict[str, int]) -> None:
        """This process's losses (rows that never reached the agent), sent
        with ``close`` so the session's ``lost`` totals include them, once."""
        self._lost = {reason: count for reason, count in lost.items() if count}

    def seal(self, status: str, error: str | None) -> tuple:
        """Writer thread: send ``close`` without waiting for the agent's reply
        (the agent may wait for a server first); :meth:`finish_close` waits for
        it on the closing thread. A forked child only flushes: the session is
        its owner's."""
        if not self._owner:
            self.flush()
            return ("done", None)
        self._closing = (status, error)
        connection = self._connection()
        if connection is not None:
            try:
                return ("sent", connection.post(lambda seq: Close(seq, status, error, self._lost)))
            except AgentLost as exc:
                self._fall_back(exc)
        return self._seal_local(status, error)

    def _seal_local(self, status: str, error: str | None) -> tuple:
        local = self._local
        if isinstance(local, RecordsLosses):  # the fallback records them itself
            local.record_losses(self._lost)
        if isinstance(local, ClosesLater):
            return ("local", local.seal(status, error))
        local.close(status, error)
        return ("done", None)

    def finish_close(self, sealed: tuple, timeout: float | None = None) -> bool:
        """Closing thread: the agent's reply to ``close`` (it has everything
        then; a remote session's rest is in its spool), or the fallback's
        close if the agent went away meanwhile. The writer no longer uses the
        connection: the session's pipe is closed."""
        how, value = sealed
        try:
            if how == "sent":
                try:
                    self._conn.reply_to(value)
                    self._unconfirmed = 0
                    return True
                except AgentLost as exc:
                    self._fall_back(exc)
                    how, value = self._seal_local(*self._closing)
            if how == "local":
                return bool(self._local.finish_close(value, timeout))
            return True
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._closed = self._local is None

    def close(self, status: str, error: str | None) -> None:
        self.finish_close(self.seal(status, error))

    def after_fork_in_child(self) -> None:
        """The parent's connection is the parent's: drop our copy of it (without
        a word to the agent) and join the session on a new one when needed."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._owner = False
        self._rejoin = True
        self._windows = {}
        self._unconfirmed = 0  # the parent's rows
        if isinstance(self._local, ForkAware):
            self._local.after_fork_in_child()

    # -- writing ------------------------------------------------------------
    def write_rows(self, name: str, is_log: bool, rows: list, ts: list) -> int:
        connection = self._connection()
        sent = 0
        if connection is not None:
            frames = _encode_rows(connection.encoder, name, is_log, rows)
            try:
                for frame, count in frames:
                    connection.send_frame(frame)
                    sent += count
                    self._unconfirmed += count
                return 0  # indices are the agent's; flush windows come from flush_report()
            except AgentLost as exc:
                self._fall_back(exc)
        start = self._local.write_rows(name, is_log, rows[sent:], ts[sent:])
        if not is_log:
            window = self._windows.get(name)
            if window is None:
                self._windows[name] = [start, start + len(rows) - sent - 1, len(rows) - sent]
            else:
                window[1] = start + len(rows) - sent - 1
                window[2] += len(rows) - sent
        return start

    def write_params(self, flat: dict) -> None:
        connection = self._connection()
        if connection is not None:
            try:
                connection.send(Params(flat))
                return
            except AgentLost as exc:
                self._fall_back(exc)
        self._local.write_params(flat)

    def flush(self) -> None:
        self.flush_report([])

    def flush_report(self, names: list[str]) -> list[dict]:
        """Flush, and what was written since the last flush for ``names``: the
        agent's windows (it assigns the indices), or ours once written locally."""
        done, result = self._request(lambda seq: Call(seq, "flush", [list(names)]))
        if done:
            return result
        self._local.flush()
        results = []
        for name in names:
            start, end, count = self._windows.pop(name, (None, None, 0))
            results.append({"trackId": name, "startIndex": start, "endIndex": end, "count": count})
        return results

    # -- barriers -----------------------------------------------------------
    def read(self, name: str, is_log: bool, start_index: int, limit: int) -> dict:
        return self._call("read", name, is_log, start_index, limit)

    def read_range(self, name: str, is_log: bool, start_ts: Any, end_ts: Any, limit: int) -> dict:
        return self._call("read_range", name, is_log, start_ts, end_ts, limit)

    def stats(self, name: str) -> dict:
        return self._call("stats", name)

    def list_tracks(self) -> list[dict]:
        return self._call("list_tracks")

    def params_get(self) -> dict:
        return self._call("params_get")

    def files_upload(self, src: str, folder: str, description: Any, tags: list, metadata: dict) -> dict:
        return self._call("files_upload", src, folder, description, tags, metadata)

    def files_list(self, folder: str | None, tags: list | None) -> list[dict]:
        return self._call("files_list", folder, tags)

    def files_download(self, file_id: str, dest: str) -> str:
        return self._call("files_download", file_id, dest)

    def files_delete(self, file_id: str) -> dict:
        return self._call("files_delete", file_id)

    def files_update(self, file_id: str, changes: dict) -> dict:
        return self._call("files_update", file_id, changes)
