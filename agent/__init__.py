"""``dreamlake-agent``: one process that writes sessions for many client processes.

This folder is installed as the package ``dreamlake_agent`` (``pyproject.toml``
maps it), never as ``agent``: that name would collide with a user's own
``agent`` package. Run it as ``dreamlake-agent`` or ``python -m dreamlake_agent``.

Clients opt in with ``Session(agent="auto" | "unix:///path/agent.sock")`` or
``DREAMLAKE_AGENT``. The agent runs the same pipeline as the writer thread of
a training process (``dreamlake._pipe`` → ``dreamlake._writer`` →
``dreamlake._local_sink``); only the source differs: frames from a Unix
socket (``docs/protocol.md``) instead of an in-memory queue.
"""

from ._server import AgentServer

__all__ = ["AgentServer"]
