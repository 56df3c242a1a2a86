"""The remote sink (DESIGN.md §8), split by role: ``config`` (limits, target),
``batch`` (open batch, sealed on rows/bytes/age), ``encoder`` (msgpack + zstd),
``service`` (httpx, error mapping, REST store), ``spool`` (client slot and
on-disk frames), ``delivery`` (the sender thread), ``sink`` (the pipeline)."""

from .config import RemoteTarget
from .service import RemoteStore
from .sink import RemoteSink

__all__ = ["RemoteSink", "RemoteStore", "RemoteTarget"]
