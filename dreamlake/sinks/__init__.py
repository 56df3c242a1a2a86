"""Sinks: where a session's data goes. Small typed interfaces (:class:`Sink`,
:class:`Store` and the optional protocols), the factory, the fan-out, an
in-memory sink for tests and the remote sink.

The interfaces load at once (the writer needs them, and they import nothing
of the package); the sinks load on first use, so importing the interfaces
does not import the local store or httpx."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._interfaces import (
    FILE_OPS,
    STORE_OPS,
    ClosesLater,
    DeliversLater,
    ForkAware,
    HasHealth,
    Joins,
    Quarantines,
    RecordsLosses,
    ReportsFlush,
    Sink,
    Store,
    call_store,
)
from ._memory import MemorySink, MemoryStore

_LAZY = {
    "make_sink": "._factory", "own_sink": "._factory", "MODES": "._factory", "OfflineSink": "._factory",
    "FanOutSink": "._fanout", "FanOutStore": "._fanout",
    "RemoteSink": ".remote", "RemoteStore": ".remote", "RemoteTarget": ".remote",
}

__all__ = [
    "Sink", "Store", "STORE_OPS", "FILE_OPS", "call_store",
    "DeliversLater", "ClosesLater", "ReportsFlush", "RecordsLosses", "Quarantines", "Joins", "ForkAware", "HasHealth",
    "MemorySink", "MemoryStore", *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module, __name__), name)
