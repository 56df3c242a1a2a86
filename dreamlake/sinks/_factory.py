"""One place that builds a session's sink, for the session and the agent.

Modes (``Session(mode=...)`` or ``$DREAMLAKE_MODE``):

* ``local`` — the local store only (no URL given: the default);
* ``remote`` — a URL given: the remote sink; the session directory keeps only
  the client slots and spool (``.remote/``). With an explicit local root
  (``root=``/``local_path=``/``session_dir=``) as well, a fan-out writes both;
* ``offline`` — the local store, with the URL recorded in ``session.json``;
  ``dreamlake sync`` uploads it later.
"""

from __future__ import annotations

from typing import Any

from .._local_sink import LocalSink
from ._fanout import FanOutSink
from .remote import RemoteSink, RemoteTarget

__all__ = ["make_sink", "OfflineSink", "MODES"]

MODES = ("local", "remote", "offline")


class OfflineSink(LocalSink):
    """The local store, remembering where ``dreamlake sync`` should upload."""

    def __init__(self, directory: str, url: str | None) -> None:
        super().__init__(directory)
        self.url = url

    def open(self, info: dict) -> dict:
        return super().open({**info, "mode": "offline", "url": self.url})


def remote_target(config: Any) -> RemoteTarget:
    return RemoteTarget(config.url, config.workspace, config.name, config.api_key, config.user_name)


def make_sink(config: Any) -> Any:
    """The sink for ``config`` (a :class:`dreamlake._config.SessionConfig`)."""
    mode = getattr(config, "mode", None) or ("remote" if config.url else "local")
    directory = str(config.directory)
    if config.agent and mode != "offline":
        from .._agent_link import agent_sink

        sink = agent_sink(config)
        if sink is not None:
            return sink
    if mode == "offline":
        return OfflineSink(directory, config.url)
    if mode == "remote":
        if not config.url:
            raise ValueError("mode='remote' needs url= (or remote=)")
        remote = RemoteSink(remote_target(config), directory)
        if getattr(config, "local_root", False):
            return FanOutSink(LocalSink(directory), remote)
        return remote
    return LocalSink(directory)
