"""One place that builds a session's sink, for the session and the agent.

Modes (``Session(mode=...)`` or ``$DREAMLAKE_MODE``):

* ``local`` — the local store only (no URL given: the default);
* ``remote`` — a URL given: the remote sink; the session directory keeps only
  the client slots and spool (``.remote/``). With an explicit local root
  (``root=``/``local_path=``/``session_dir=``) as well, a fan-out writes both;
* ``offline`` — the local store, with the URL recorded in ``session.json``;
  ``dreamlake sync`` uploads it later.

Agent mode (``agent=``) serves local and offline sessions; a session with a
URL sends from its own process until the agent forwards to servers (issue 11
point 4), with a warning once.
"""

from __future__ import annotations

import logging
from typing import Any

from .._config import SessionConfig
from .._local_sink import LocalSink
from ._fanout import FanOutSink
from ._interfaces import Sink
from .remote import RemoteSink, RemoteTarget

__all__ = ["make_sink", "own_sink", "OfflineSink", "MODES"]

log = logging.getLogger("dreamlake")

MODES = ("local", "remote", "offline")


class OfflineSink(LocalSink):
    """The local store, remembering where ``dreamlake sync`` should upload."""

    def __init__(self, directory: str, url: str | None) -> None:
        super().__init__(directory)
        self.url = url

    def open(self, info: dict) -> dict:
        return super().open({**info, "mode": "offline", "url": self.url})


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("dreamlake: %s", message)


def remote_target(config: Any) -> RemoteTarget:
    return RemoteTarget(config.url, config.workspace, config.name, config.api_key, config.user_name)


def make_sink(config: SessionConfig) -> Sink:
    """The sink for ``config``: through the agent when it names one and one
    can be reached, else this process's own (:func:`own_sink`)."""
    if config.agent and _mode(config) != "remote":
        from .._agent_link import agent_sink

        sink = agent_sink(config)
        if sink is not None:
            return sink
    elif config.agent:
        _warn_once(
            "the agent does not forward to a server yet; this process sends to "
            f"{config.url} itself (its own spool in {config.directory})"
        )
    return own_sink(config)


def own_sink(config: SessionConfig) -> Sink:
    """The sink a process writes itself (thread mode, the agent's fallback,
    and every session the agent serves)."""
    mode = _mode(config)
    directory = str(config.directory)
    if mode == "offline":
        return OfflineSink(directory, config.url)
    if mode == "remote":
        if not config.url:
            raise ValueError("mode='remote' needs url= (or remote=)")
        remote = RemoteSink(remote_target(config), directory)
        if config.local_root:
            return FanOutSink(LocalSink(directory), remote)
        return remote
    return LocalSink(directory)


def _mode(config: SessionConfig) -> str:
    return config.mode or ("remote" if config.url else "local")
