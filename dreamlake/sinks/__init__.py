"""Sinks: where a session's data goes. Small typed interfaces (:class:`Sink`,
:class:`Store`), the factory, the fan-out, an in-memory sink for tests and the
remote sink."""

from ._factory import MODES, OfflineSink, make_sink
from ._fanout import FanOutSink
from ._interfaces import STORE_OPS, Sink, Store
from ._memory import MemorySink
from .remote import RemoteSink, RemoteStore, RemoteTarget

__all__ = [
    "Sink", "Store", "STORE_OPS", "make_sink", "MODES", "FanOutSink", "MemorySink",
    "OfflineSink", "RemoteSink", "RemoteStore", "RemoteTarget",
]
