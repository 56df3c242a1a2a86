"""Where the agent socket lives, and who may serve it: shared by the client link
(``dreamlake._agent_link``) and the agent (``dreamlake_agent``).

One agent per socket. ``<socket>.lock`` beside the socket holds an exclusive
``flock`` for the whole life of the agent that serves it (and the agent's pid as
text). A client that wants to start an agent takes that lock first and hands
the locked descriptor to the agent it spawns, so racing clients start exactly
one agent; the others see the lock taken and wait for its socket.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import struct

__all__ = ["check_socket_dir", "lock_path", "open_lock", "try_lock", "running_pid", "peer_credentials"]


def check_socket_dir(directory: str) -> None:
    """Make sure the agent socket may live in ``directory``: created 0700 when
    missing; an existing one must be a directory this user can write, owned by
    this user or root, and, if others may write in it, sticky (like ``/tmp``) so
    no one else can replace our socket. The socket itself is always 0600."""
    try:
        os.makedirs(directory, mode=0o700)
    except FileExistsError:
        pass
    info = os.stat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"{directory} is not a directory")
    if info.st_uid not in (os.getuid(), 0):
        raise PermissionError(f"{directory} belongs to uid {info.st_uid}, not to this user (or root)")
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise PermissionError(
            f"{directory} is writable by other users and not sticky (mode {stat.S_IMODE(info.st_mode):o}): "
            f"they could replace the agent socket"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"{directory} is not writable by this user")


def lock_path(socket_path: str) -> str:
    return socket_path + ".lock"


def open_lock(socket_path: str) -> int:
    """A descriptor on ``<socket>.lock`` (created 0600; never through a symlink)."""
    return os.open(lock_path(socket_path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


def try_lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` without waiting; False if someone holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def running_pid(socket_path: str) -> int | None:
    """The pid of the agent holding the lock for ``socket_path`` (-1 while it is
    starting and has not written it yet), or None when nobody holds it."""
    try:
        fd = os.open(lock_path(socket_path), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except (FileNotFoundError, OSError):
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


def peer_credentials(sock: socket.socket) -> tuple[int | None, int | None]:
    """``(pid, uid)`` of the process at the other end of a Unix socket
    (``SO_PEERCRED``), or ``(None, None)`` where the platform cannot say."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None, None
    try:
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
    except OSError:
        return None, None
    return pid, uid
