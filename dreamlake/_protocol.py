"""The agent wire protocol: one copy, imported by the client link and the agent.

A connection is a byte stream of *frames*::

    frame   = length payload
    length  = uint32, big-endian: the number of payload bytes, 1 .. MAX_FRAME
    payload = one MessagePack value: an array whose first item is the message tag

Messages are msgspec ``array_like`` structs with a string tag, so each one is a
plain MessagePack array ``[tag, field1, field2, ...]`` (see ``docs/protocol.md``
for the full grammar a C++ or Julia client needs). Decoding is typed: a frame
that is not valid MessagePack, or does not match one of the messages below,
is a :class:`ProtocolError` and closes that one connection.

This module is sans-I/O: :class:`FrameEncoder` turns messages into frame bytes,
:class:`FrameReader` turns received bytes into messages. The sockets live in
``dreamlake._agent_link`` (client, blocking) and ``agent._server`` (anyio).
"""

from __future__ import annotations

import os
import struct
from typing import Any, Union

import msgspec

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_FRAME",
    "HEADER",
    "Hello",
    "Welcome",
    "Open",
    "Join",
    "Rows",
    "Params",
    "Call",
    "Close",
    "Status",
    "Ok",
    "Err",
    "ClientMessage",
    "AgentMessage",
    "CALL_OPS",
    "REMOTE_KEYS",
    "STOPPING",
    "ProtocolError",
    "FrameEncoder",
    "FrameReader",
    "default_socket_path",
    "parse_address",
    "ENV_SOCKET",
]

PROTOCOL_VERSION = 1
#: Largest payload either side accepts (bytes). A length above it closes the connection.
MAX_FRAME = 256 << 20
#: Rows per ``rows`` frame the Python client sends at most (it splits larger writes).
MAX_ROWS_PER_FRAME = 4096
HEADER = struct.Struct(">I")
#: Keys of the ``remote`` map of ``open``/``join``: the session's server
#: (``url``, ``apiKey``, ``userName``), ``mode`` (remote | offline), its
#: ``workspace`` and ``name`` there, and ``localRoot`` (also keep a local copy).
REMOTE_KEYS = frozenset(("url", "apiKey", "userName", "mode", "workspace", "name", "localRoot"))
#: At most this many loss reasons in a ``close`` frame, each name at most ``MAX_REASON`` characters.
MAX_LOSS_REASONS, MAX_REASON = 32, 64
#: Overrides the default socket path for ``agent="auto"`` and the ``dreamlake-agent`` CLI.
ENV_SOCKET = "DREAMLAKE_AGENT_SOCKET"


class ProtocolError(Exception):
    """A peer sent something that is not a valid frame or message."""


# -- client -> agent ------------------------------------------------------------
class Hello(msgspec.Struct, tag="hello", array_like=True):
    """First frame on a connection. ``info``: ``{"pid": int, "client": str}``."""

    version: int
    info: dict[str, Any] = {}


class Open(msgspec.Struct, tag="open", array_like=True):
    """Attach to a session as an owner and mark it running (a barrier).
    ``remote``: where the agent forwards the session (:data:`REMOTE_KEYS`);
    empty for a local session. Never written to ``session.json``."""

    seq: int
    directory: str
    info: dict[str, Any] = {}
    remote: dict[str, Any] = {}


class Join(msgspec.Struct, tag="join", array_like=True):
    """Attach to a session without opening it (a forked child of an owner);
    ``remote`` as for :class:`Open`, used if the agent does not serve the session yet."""

    seq: int
    directory: str
    remote: dict[str, Any] = {}


class Rows(msgspec.Struct, tag="rows", array_like=True):
    """Rows of one stream; each row is a map holding a finite number ``"_ts"``."""

    stream: str
    log: bool
    rows: list[dict[str, Any]]


class Params(msgspec.Struct, tag="params", array_like=True):
    values: dict[str, Any]


class Call(msgspec.Struct, tag="call", array_like=True):
    """A barrier: run ``op(*args)`` after everything sent before it is written."""

    seq: int
    op: str
    args: list[Any] = []


class Close(msgspec.Struct, tag="close", array_like=True):
    """Detach from the session; the last client to leave closes it with ``status``.
    ``lost``: rows this client lost before they reached the agent, by reason
    (``dropped_for_budget``, ``sink_failing``, ...); the agent adds them to the
    session's ``lost`` totals at close, once."""

    seq: int
    status: str
    error: Union[str, None] = None
    lost: dict[str, int] = {}


class Status(msgspec.Struct, tag="status", array_like=True):
    """Ask the agent what it serves (no session needed)."""

    seq: int


# -- agent -> client ------------------------------------------------------------
class Welcome(msgspec.Struct, tag="welcome", array_like=True):
    version: int
    info: dict[str, Any] = {}


class Ok(msgspec.Struct, tag="ok", array_like=True):
    seq: int
    result: Any = None


class Err(msgspec.Struct, tag="err", array_like=True):
    """``kind``: ValueError, TypeError, KeyError, FileNotFoundError, SessionStateError,
    FlushTimeout, SinkError or ProtocolError; ``message`` is for humans. With seq 0
    and kind :data:`STOPPING` it is a notice, not a reply (see there)."""

    seq: int
    kind: str
    message: str


#: ``Err(0, STOPPING, ...)``: the agent is shutting down cleanly and has read and
#: queued everything this connection sent; it writes all of it before it exits.
#: Sent just before the agent closes the connection.
STOPPING = "AgentStopping"

ClientMessage = Union[Hello, Open, Join, Rows, Params, Call, Close, Status]
AgentMessage = Union[Welcome, Ok, Err]

#: Barrier operations a ``call`` may name (the sink methods of the local store).
CALL_OPS = frozenset(
    {
        "flush",
        "read",
        "read_range",
        "stats",
        "list_tracks",
        "params_get",
        "files_upload",
        "files_list",
        "files_download",
        "files_delete",
        "files_update",
    }
)


def _no_ext(code: int, data: memoryview) -> Any:
    raise ValueError(f"MessagePack extension types are not accepted (code {code})")


class FrameEncoder:
    """One reusable msgspec encoder and buffer; ``encode(msg)`` returns a whole frame."""

    __slots__ = ("_encoder", "_buffer")

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._buffer = bytearray()

    def encode(self, message: Any) -> bytearray:
        """The frame for ``message``. The returned buffer is reused by the next call."""
        buffer = self._buffer
        buffer.clear()
        buffer.extend(b"\0\0\0\0")
        self._encoder.encode_into(message, buffer, 4)
        size = len(buffer) - 4
        if size > MAX_FRAME:
            raise ValueError(f"message of {size} bytes is larger than the {MAX_FRAME}-byte frame limit")
        HEADER.pack_into(buffer, 0, size)
        return buffer


class FrameReader:
    """Bytes in, messages out. ``feed(data)`` returns the messages completed by
    ``data``; a bad frame raises :class:`ProtocolError` (after the good frames
    before it were returned by earlier calls, see ``pending_error``)."""

    __slots__ = ("_buffer", "_decoder", "_max", "_need")

    def __init__(self, message_type: Any, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._decoder = msgspec.msgpack.Decoder(message_type, ext_hook=_no_ext)
        self._max = max_frame
        self._need = 0  # payload size of the frame being assembled, 0 = reading a header

    @property
    def partial(self) -> int:
        """Bytes of an incomplete frame held (non-zero at EOF means a truncated frame)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> tuple[list, ProtocolError | None]:
        """Append ``data``; return ``(messages, error)``. Messages decoded before a
        bad frame are returned together with the error, so they are not lost."""
        buffer = self._buffer
        buffer += data
        messages: list = []
        position = 0
        end = len(buffer)
        decode = self._decoder.decode
        error: ProtocolError | None = None
        while True:
            if end - position < 4:
                break
            (size,) = HEADER.unpack_from(buffer, position)
            if size == 0 or size > self._max:
                error = ProtocolError(f"frame length {size} is outside 1..{self._max}")
                break
            if end - position - 4 < size:
                break
            start = position + 4
            try:
                with memoryview(buffer) as view:
                    messages.append(decode(view[start : start + size]))
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                error = ProtocolError(f"bad message: {exc}")
                break
            position = start + size
        if position:
            del buffer[:position]
        return messages, error


# -- where the socket lives -------------------------------------------------------
def default_socket_path() -> str:
    """``$DREAMLAKE_AGENT_SOCKET``, else ``$XDG_RUNTIME_DIR/dreamlake/agent.sock``,
    else ``/tmp/dreamlake-$UID/agent.sock``."""
    explicit = os.environ.get(ENV_SOCKET)
    if explicit:
        return os.path.abspath(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "dreamlake", "agent.sock")
    return os.path.join("/tmp", f"dreamlake-{os.getuid()}", "agent.sock")


def parse_address(address: str) -> tuple[str, bool]:
    """``(socket path, start an agent if none runs)`` for an ``agent=`` value:

    * ``"auto"`` — the default socket, started on demand;
    * ``"unix:///path/agent.sock"`` (or a bare absolute path) — that socket, never started;
    * ``"auto+unix:///path/agent.sock"`` — that socket, started on demand.
    """
    if not isinstance(address, str) or not address:
        raise ValueError(f"agent must be 'auto' or 'unix:///path/to/socket', got {address!r}")
    auto = False
    if address == "auto":
        return default_socket_path(), True
    if address.startswith("auto+"):
        auto, address = True, address[len("auto+") :]
    if address.startswith("unix://"):
        path = address[len("unix://") :]
    elif address.startswith("/"):
        path = address
    else:
        raise ValueError(f"agent must be 'auto' or 'unix:///path/to/socket', got {address!r}")
    if not path.startswith("/"):
        raise ValueError(f"the agent socket path must be absolute, got {path!r}")
    return os.path.normpath(path), auto
