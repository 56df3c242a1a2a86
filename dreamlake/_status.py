"""What a session's status really is, from ``session.json``."""

from __future__ import annotations

import os
import socket

__all__ = ["session_status", "last_opening_end"]


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def session_status(meta: dict) -> str:
    """The status in ``session.json``; ``running`` is only believed while its process
    lives on this host (otherwise it was killed: ``interrupted``)."""
    status = meta.get("status", "unknown")
    if status == "running" and meta.get("hostname") == socket.gethostname() and not _pid_alive(meta.get("pid")):
        return "interrupted"
    return status


def last_opening_end(meta: dict) -> str | None:
    """How the session's last opening ended: its close status; ``interrupted`` when it
    never closed and its process is gone; None when there was none, or it is still open
    (its process lives, or runs on another host, where this cannot be told)."""
    if "status" not in meta:
        return None
    if meta.get("closedAt") is not None or "pid" not in meta:  # closed, or no process to ask (upstream)
        return meta["status"]
    if meta.get("hostname") == socket.gethostname() and not _pid_alive(meta.get("pid")):
        return "interrupted"
    return None
