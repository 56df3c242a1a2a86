"""DreamLake's exceptions.

Synchronous misuse raises the builtin that fits (``ValueError`` for a bad
``_ts``, level or name; ``TypeError`` for a value we cannot store;
``FileNotFoundError`` for a missing upload) so callers need nothing of ours
to catch it. Our own tree covers what only DreamLake can go wrong with::

    DreamLakeError
    ├── SessionStateError   operation on a session that is not open
    ├── FlushTimeout        a barrier (flush/read/close) did not complete in time
    └── SinkError           a background write failed; raised only from
                            explicit barriers, never into append()
"""

from __future__ import annotations

__all__ = ["DreamLakeError", "SessionStateError", "FlushTimeout", "SinkError"]


class DreamLakeError(Exception):
    """Base class of DreamLake's own exceptions."""


class SessionStateError(DreamLakeError, RuntimeError):
    """The session is not open (never opened, or already closed)."""


class FlushTimeout(DreamLakeError, TimeoutError):
    """A barrier did not complete within its timeout; data is still queued."""


class SinkError(DreamLakeError, OSError):
    """A sink could not perform a requested read or file operation."""
