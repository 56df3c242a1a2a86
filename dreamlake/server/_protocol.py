"""uvicorn's h11 protocol plus a deadline for a request's headers.

uvicorn (0.54) closes a connection left idle after a response
(``timeout_keep_alive``), but sets no limit on how long a request's headers
may take: its keep-alive timer is armed only after a response, and any byte
received cancels it. A client that connects and sends nothing, or sends part
of a request and stops (slowloris), would hold a connection, and a slot of
``--limit-concurrency``, forever. Here every request has ``header_timeout``
seconds, counted from the connection's start or the end of the previous
response, to finish its headers; past that the connection is closed (with a
408 if part of a request came). A slow *body* has its own limit
(``--body-timeout``, enforced by the app with a 408).
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["header_deadline_protocol"]

log = logging.getLogger("dreamlake.server")

_TIMEOUT_REPLY = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class _HeaderDeadlineH11(H11Protocol):
    header_timeout = 10.0
    _header_deadline: asyncio.TimerHandle | None = None

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._header_deadline_passed)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # h11 parsed a whole request head
            self._cancel_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start the next (pipelined) request already
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        partial = bool(self.conn.trailing_data[0])
        log.debug("closing a connection whose request head took over %.1f s (partial: %s)", self.header_timeout, partial)
        if partial:
            self.transport.write(_TIMEOUT_REPLY)
        self.transport.close()


def header_deadline_protocol(header_timeout: float) -> type[H11Protocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)``."""
    return type("HeaderDeadlineH11", (_HeaderDeadlineH11,), {"header_timeout": float(header_timeout)})
