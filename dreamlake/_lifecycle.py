"""Process-level lifecycle: flush at interpreter exit, drain on SIGTERM, fork.

* ``atexit``: every session this process opened and never closed is closed
  (``completed``, or ``failed`` when the interpreter is exiting on an uncaught
  exception), bounded by ``EXIT_TIMEOUT``.
* SIGTERM: if the process still has the default SIGTERM action when its first
  session opens, a handler closes every open session as ``interrupted`` and
  then terminates the process with SIGTERM as before (so exit status and
  supervisors see the same thing).
* fork: a child inherits open sessions; events queued before the fork are the
  parent's to write. The child gets its own writer thread (see ``_writer``) and
  flushes — without closing the parent's session — when it exits, including
  through ``multiprocessing``'s ``os._exit`` path.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ._session import Session

__all__ = ["track_open", "track_closed", "open_sessions", "EXIT_TIMEOUT"]

log = logging.getLogger("dreamlake")

#: How long exit and SIGTERM handling wait for the writer (seconds).
EXIT_TIMEOUT = 30.0

_open: dict[int, "Session"] = {}
_lock = threading.Lock()
_sigterm_installed = False


def open_sessions() -> list["Session"]:
    with _lock:
        return list(_open.values())


def track_open(session: "Session") -> None:
    with _lock:
        _open[id(session)] = session
    _install_sigterm()
    _hook_multiprocessing()


def track_closed(session: "Session") -> None:
    with _lock:
        _open.pop(id(session), None)


def _finish_all(status: str, error: str | None = None) -> None:
    for session in open_sessions():
        try:
            if session._owner_pid == os.getpid():
                session._finish(status, error, timeout=EXIT_TIMEOUT)
            else:  # a forked child: write what it logged, leave the session to its owner
                session._flush_quietly(timeout=EXIT_TIMEOUT)
        except Exception as exc:  # exit must go on
            log.error("dreamlake: could not finish session %s at exit: %s", session.prefix, exc)


def _at_exit() -> None:
    failed = getattr(sys, "last_value", None)
    if failed is not None and not isinstance(failed, (SystemExit, KeyboardInterrupt)):
        _finish_all("failed", f"{type(failed).__name__}: {failed}")
    elif isinstance(failed, KeyboardInterrupt):
        _finish_all("interrupted", "KeyboardInterrupt")
    else:
        _finish_all("completed")


atexit.register(_at_exit)


def _on_sigterm(signum, frame) -> None:
    _finish_all("interrupted", "SIGTERM")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm() -> None:
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main interpreter, or signals unavailable
        return
    _sigterm_installed = True


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Token:
    """A weak-referenceable key for multiprocessing's after-fork registry."""


_mp_token = _Token()
_mp_hooked = False


def _register_exit_flush() -> None:
    """In a multiprocessing child: it leaves through ``os._exit``, skipping atexit,
    but runs its finalizers first. (``Process._bootstrap`` clears the finalizer
    registry after ``os.register_at_fork`` hooks run, so this is registered from
    multiprocessing's own after-fork callbacks, which run after the clear.)"""
    import multiprocessing.util as mp_util

    if _open:
        mp_util.Finalize(None, _finish_all, args=("completed",), exitpriority=100)


def _hook_multiprocessing() -> None:
    global _mp_hooked
    if _mp_hooked:
        return
    _mp_hooked = True
    import multiprocessing.util as mp_util

    mp_util.register_after_fork(_mp_token, lambda token: _register_exit_flush())
