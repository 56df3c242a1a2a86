"""Prometheus metrics of one app (its own registry, so several apps — tests —
never collide). Rates (rows/s) are ``rate()`` over the counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rows = Counter("dreamlake_rows", "Rows stored, by kind (track, log)", ["kind"], registry=self.registry)
        self.bytes_in = Counter("dreamlake_bytes_in", "Request body bytes received (as on the wire)", registry=self.registry)
        self.batches = Counter("dreamlake_ingest_batches", "Ingest batches applied", registry=self.registry)
        self.duplicates = Counter(
            "dreamlake_ingest_duplicates", "Ingest batches acknowledged as duplicates (not applied again)",
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "dreamlake_upload_chunk_bytes", "Bytes of upload chunks received (repeats included)", registry=self.registry
        )
        self.upload_stored = Counter(
            "dreamlake_upload_stored_bytes", "Bytes of upload chunks staged (repeats excluded)", registry=self.registry
        )
        self.errors = Counter("dreamlake_errors", "Requests refused or failed, by kind", ["kind"], registry=self.registry)
        self.in_flight = Gauge("dreamlake_requests_in_flight", "Requests being handled now", registry=self.registry)
        self.held = Gauge(
            "dreamlake_sessions_held",
            "Per-session state held in memory: sessions (with state), open (holding file handles), clocks (_ts clocks), evicted (so far)",
            ["what"], registry=self.registry,
        )

    def set_held(self, held: dict[str, int]) -> None:
        for what, value in held.items():
            self.held.labels(what).set(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
