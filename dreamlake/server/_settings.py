"""Every knob of the server in one typed object (built by the CLI or by tests)."""

from __future__ import annotations

import dataclasses
from typing import Literal
from pathlib import Path

__all__ = ["Settings"]

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Settings:
    root: Path
    # -- scale-out (DESIGN §9; see _backends.py) --
    #: ``postgresql://…`` runs on PostgreSQL (replicas share it); None → the local store under ``root``
    store: str | None = None
    #: object storage URL for file bytes with ``store`` (``file:///…``, ``s3://…``); None → under ``root``
    objects: str | None = None
    host: str = "127.0.0.1"
    port: int = 3000
    #: accept requests without a key (and upstream's unsigned ``user_name`` tokens)
    dev: bool = False
    #: when to fsync before acknowledging: "batches" (default) — the batched
    #: ingest's journal and rows, so its exactly-once holds across power loss;
    #: "always" — every write, the REST routes too (one fsync per request: slow
    #: for upstream's row-by-row appends); "never" — the page cache only.
    #: Whatever is acknowledged survives a crash or kill of the server in every mode.
    fsync: Literal["batches", "always", "never"] = "batches"
    #: largest request body accepted on the wire (compressed size for ingest) → 413
    max_body_bytes: int = 32 * MiB
    #: largest decompressed ingest batch → 413, refused without allocating it
    max_batch_bytes: int = 128 * MiB
    #: largest file upload → 413
    max_upload_bytes: int = 1024 * MiB
    #: a chunked upload untouched this many seconds is removed with its staged bytes
    upload_ttl: float = 24 * 3600.0
    #: rows per page a read may ask for
    max_read_limit: int = 10_000
    #: a request body must arrive within this many seconds → 408
    body_timeout: float = 30.0
    #: idle keep-alive connections are closed after this many seconds
    keep_alive_timeout: float = 5.0
    #: a request's line and headers must arrive within this many seconds of the
    #: connection's start (or the previous response); else the connection is closed
    header_timeout: float = 10.0
    #: on SIGTERM, in-flight requests get this long to finish
    graceful_timeout: float = 30.0
    #: ingest journal is compacted into its snapshot past this size
    journal_compact_bytes: int = 64 * MiB
    #: sessions whose files stay open between writes (4 descriptors per stream);
    #: the least recently written beyond this close theirs (reopened on demand)
    max_open_sessions: int = 64
    #: sessions whose state (sink, ingest journal, counters) the local store keeps in
    #: memory; beyond this, or idle ``session_idle_seconds``, a session no request is
    #: using is evicted (flushed, fsynced, closed) and reopened from disk on demand
    max_live_sessions: int = 1024
    session_idle_seconds: float = 600.0

    @property
    def state_dir(self) -> Path:
        """Server-private state under the root (keys, temp uploads): a dot
        directory, so it can never be taken for a workspace."""
        return Path(self.root) / ".dreamlake-server"
