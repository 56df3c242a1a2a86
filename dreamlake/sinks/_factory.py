"""One place that builds a session's sink, for the session and the agent.

Modes (``Session(mode=...)`` or ``$DREAMLAKE_MODE``):

* ``local`` — the local store only (no URL given: the default);
* ``remote`` — a URL given: the remote sink; the session directory keeps only
  the client slots and spool (``.remote/``). With an explicit local root
  (``root=``/``local_path=``/``session_dir=``) as well, a fan-out writes both;
* ``offline`` — the local store, with the URL recorded in ``session.json``;
  ``dreamlake sync`` uploads it later.

Agent mode (``agent=``): the session goes to the agent, which builds the
same sink for it with :func:`own_sink` (so the agent owns the remote slots,
spools and connections of every process on the machine); if no agent can be
reached, or it is lost, the process builds that sink itself.
"""

from __future__ import annotations

from .._config import SessionConfig
from .._local_sink import LocalSink
from ._fanout import FanOutSink
from ._interfaces import Sink
from .remote import RemoteSink, RemoteTarget

__all__ = ["make_sink", "own_sink", "OfflineSink", "MODES"]

MODES = ("local", "remote", "offline")


class OfflineSink(LocalSink):
    """The local store, remembering where ``dreamlake sync`` should upload."""

    def __init__(self, directory: str, url: str | None) -> None:
        super().__init__(directory)
        self.url = url

    def open(self, info: dict) -> dict:
        return super().open({**info, "mode": "offline", "url": self.url})


def remote_target(config: SessionConfig) -> RemoteTarget:
    return RemoteTarget(config.url, config.workspace, config.name, config.api_key, config.user_name)


def make_sink(config: SessionConfig) -> Sink:
    """The sink for ``config``: through the agent when it names one and one
    can be reached (the agent then builds the session's sink with
    :func:`own_sink`, whatever the mode), else this process's own."""
    if config.agent:
        from .._agent_link import agent_sink

        sink = agent_sink(config)
        if sink is not None:
            return sink
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
