"""Remote sink settings: the named limits of batching, retrying and spooling,
and where a session's remote target is (URL, workspace, name, credentials)."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field

__all__ = [
    "RemoteTarget",
    "BATCH_MAX_ROWS",
    "BATCH_MAX_BYTES",
    "BATCH_MAX_AGE",
    "ZSTD_LEVEL",
    "MEMORY_MAX_BATCHES",
    "MEMORY_MAX_BYTES",
    "SPOOL_BUDGET",
    "RETRY_MIN",
    "RETRY_MAX",
    "FLUSH_WAIT",
    "CLOSE_WAIT",
    "CONNECT_TIMEOUT",
    "REQUEST_TIMEOUT",
    "SEQ_BLOCK",
    "SEQ_STRIDE",
    "ENV_SPOOL_BUDGET",
    "ENV_API_KEY",
    "spool_budget",
]

#: A batch is sealed when it holds this many rows (all streams together) ...
#: (msgpack-encoding a batch holds the GIL: 10k W1 rows ~2 ms; 20k doubled the
#: hot path p99, 5k halved end-to-end rows/s: see benchmarks/remote.py)
BATCH_MAX_ROWS = 10_000
#: ... or this many bytes of msgpack (estimated before encoding) ...
BATCH_MAX_BYTES = 4 << 20
#: ... or its first row is this old (seconds). Bounds what a ``kill -9`` loses.
BATCH_MAX_AGE = 0.25
#: zstd level of a batch body. Measured (``benchmarks/remote.py``, 20k-row W1
#: batch, wire bytes / JSON rows, compress time per row): level 1 -> 0.137 at
#: ~55 ns/row, level 3 -> 0.126 at ~150 ns/row, 6/9 -> 0.125 and slower still;
#: W2 rows: 0.06-0.10 at level 1. Level 3's 8 % fewer bytes cost three times
#: the CPU, which the sender takes from the training process (the client
#: shares its cores with the loop that logs), so level 1.
ZSTD_LEVEL = 1
#: Sealed batches waiting in memory before the sender moves them to the spool.
MEMORY_MAX_BATCHES = 16
#: Raw bytes of sealed batches in memory beyond which ``write_rows`` refuses
#: (the writer then keeps the rows within the session's memory budget).
MEMORY_MAX_BYTES = 64 << 20
#: Disk budget of one client's spool (bytes); ``$DREAMLAKE_SPOOL_BUDGET`` overrides.
SPOOL_BUDGET = 1 << 30
ENV_SPOOL_BUDGET = "DREAMLAKE_SPOOL_BUDGET"
#: The API key when none is passed (read by the process that builds the request,
#: or by the agent client, which hands it to the agent).
ENV_API_KEY = "DREAMLAKE_API_KEY"
#: Backoff between delivery attempts: exponential with full jitter, seconds.
RETRY_MIN, RETRY_MAX = 0.1, 10.0
#: ``flush()`` waits at most this long for the server's acknowledgements.
FLUSH_WAIT = 30.0
#: ``close()`` waits at most this long; what is unacknowledged stays spooled.
CLOSE_WAIT = 10.0
CONNECT_TIMEOUT = 5.0
#: A request (ingest, read, file) that gets no answer in this long is retried.
REQUEST_TIMEOUT = 20.0
#: Sequence numbers are reserved on disk this many at a time, so a restarted
#: client never reuses one without a disk write per batch.
SEQ_BLOCK = 1000
#: A slot's sequence numbers are this far apart, so the pieces of a batch the
#: server refuses as too large get numbers of their own between it and its
#: predecessor (see split.py); a batch of more rows than this is not split.
SEQ_STRIDE = 1 << 24


def spool_budget() -> int:
    raw = os.environ.get(ENV_SPOOL_BUDGET)
    if raw:
        try:
            return max(0, int(raw))
        except ValueError:
            raise ValueError(f"{ENV_SPOOL_BUDGET} must be a number of bytes, got {raw!r}") from None
    return SPOOL_BUDGET


def dev_token(user_name: str) -> str:
    """Upstream's unsigned development token for ``user_name=`` (accepted only
    by a server started with ``--dev``)."""

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'userName': user_name})}.dev"


@dataclass(frozen=True)
class RemoteTarget:
    """One remote session: ``url`` + ``workspace``/``name``, with a key
    (``api_key=`` or ``$DREAMLAKE_API_KEY``) or a dev ``user_name``."""

    url: str
    workspace: str
    name: str
    api_key: str | None = field(default=None, repr=False)
    user_name: str | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"remote url must start with http:// or https://, got {self.url!r}")
        object.__setattr__(self, "url", self.url.rstrip("/"))

    def headers(self) -> dict[str, str]:
        key = self.api_key or os.environ.get(ENV_API_KEY)
        if key:
            return {"Authorization": f"Bearer {key}"}
        if self.user_name:
            return {"Authorization": f"Bearer {dev_token(self.user_name)}"}
        return {}

    @property
    def ingest_url(self) -> str:
        return f"{self.url}/ingest/{self.workspace}/{self.name}"
