"""The storage seam: what the routes need from a backend, and nothing more.

A backend is synchronous (the app calls it from worker threads) and receives
input that is already validated and merged (:mod:`._prepare`), so a backend
only stores and reads. Two backends are planned: :class:`LocalStorage`
(``_local_storage.py``, the embedded default: the local store format under
``--root``) and PostgreSQL + object storage (scale-out). Both must pass
``tests/test_server_storage_contract.py``.

Contract highlights a backend must keep:

* Session ids are opaque strings (the local backend derives them from the
  prefix; a database may use its own keys). ``workspace`` on the reference is
  what authorisation checks.
* Every write to a write-protected session raises :class:`Forbidden`.
* Rows of one stream get consecutive indices from 0; concurrent writers to one
  session never collide.
* :meth:`ingest` is exactly-once per (session, client, seq): the applied seq
  is recorded atomically with the rows and survives restarts; a duplicate
  returns the original ranges with ``duplicate=True`` and changes nothing.
* Reads by index and by ``_ts`` range cost O(limit).
* Read replies are the dicts the Python API returns in local mode.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol, Sequence

from ._uploads import UploadSpec
from .wire import IngestAck

__all__ = ["SessionRef", "StreamRows", "PreparedBatch", "Storage"]


@dataclasses.dataclass(frozen=True)
class SessionRef:
    id: str
    workspace: str
    name: str
    write_protected: bool = False


@dataclasses.dataclass
class StreamRows:
    """One stream's rows, validated, ``_ts`` merged: ``ts[i]`` is ``rows[i]["_ts"]``."""

    kind: str  # "track" | "log"
    name: str  # track name; "" for the log stream
    rows: list[dict]
    ts: list[float]


@dataclasses.dataclass
class PreparedBatch:
    client: str
    seq: int
    streams: list[StreamRows]
    params: dict[str, Any] | None = None  # flat
    close: tuple[str, str | None] | None = None  # (status, error)


class Storage(Protocol):
    # -- sessions --------------------------------------------------------------
    def upsert_session(self, workspace: str, name: str, fields: dict[str, Any]) -> dict:
        """Create or continue a session; returns its record (``id`` included).
        ``fields``: description, tags, folder, metadata, writeProtected, status."""

    def get_session(self, session_id: str) -> SessionRef:
        """Raises NotFound."""

    def cached_session(self, session_id: str) -> SessionRef | None:
        """A session already in memory, without blocking (called on the event
        loop); None when unknown here — the caller then uses get_session."""

    def find_session(self, workspace: str, name: str) -> SessionRef | None: ...

    def session_record(self, ref: SessionRef) -> dict: ...

    def list_sessions(self) -> list[dict]:
        """Every session's record (as :meth:`session_record`), by workspace then name."""

    # -- writes ----------------------------------------------------------------
    def append_rows(self, ref: SessionRef, rows: StreamRows) -> dict:
        """→ ``{trackId, startIndex, endIndex, count}``"""

    def append_logs(self, ref: SessionRef, rows: StreamRows) -> tuple[int, int]:
        """→ (first sequence number, last)"""

    def set_params(self, ref: SessionRef, flat: dict[str, Any]) -> dict:
        """Merge; → ``{"data": all params (flat), "version": int | None}``"""

    def ingest(self, ref: SessionRef, batch: PreparedBatch) -> IngestAck: ...

    # -- reads -----------------------------------------------------------------
    def get_params(self, ref: SessionRef) -> dict: ...

    def read_rows(self, ref: SessionRef, track: str, start: int, limit: int) -> dict: ...

    def read_rows_at(self, ref: SessionRef, track: str, indices: Sequence[int]) -> list[tuple[int, float, dict]]:
        """``(index, _ts, row)`` at these ascending indices (those that exist):
        the web page's downsampling sample. Must cost O(len(indices)), never
        O(rows in the track). NotFound for a track that has no rows."""

    def read_rows_by_ts(
        self, ref: SessionRef, track: str, start_ts: float | None, end_ts: float | None, limit: int
    ) -> dict: ...

    def read_logs(self, ref: SessionRef, start: int, limit: int) -> dict: ...

    def track_stats(self, ref: SessionRef, track: str) -> dict:
        """Raises NotFound for a track that has no rows."""

    def list_tracks(self, ref: SessionRef) -> list[dict]: ...

    # -- files -----------------------------------------------------------------
    def upload_file(
        self, ref: SessionRef, staged: Path, folder: str, description: str | None, tags: list[str], metadata: dict
    ) -> dict:
        """``staged`` is a file named as the upload, owned by the caller."""

    def list_files(self, ref: SessionRef, folder: str | None, tags: list[str] | None) -> list[dict]: ...

    def get_file(self, ref: SessionRef, file_id: str) -> dict: ...

    def export_file(self, ref: SessionRef, file_id: str, dest_dir: Path) -> Path:
        """Copy the stored file into ``dest_dir`` (checksum verified); → its path."""

    def update_file(self, ref: SessionRef, file_id: str, changes: dict[str, Any]) -> dict: ...

    def delete_file(self, ref: SessionRef, file_id: str) -> dict: ...

    # -- chunked uploads (the rules: _uploads.py) ------------------------------------
    # Staged bytes live where every replica sees them. Replies are the status of
    # _uploads.status_reply; complete returns the file record upload_file would.
    def upload_create(self, ref: SessionRef, spec: UploadSpec) -> dict:
        """Forbidden for a write-protected session."""

    def upload_status(self, ref: SessionRef, upload_id: str) -> dict:
        """NotFound for an upload of another session, expired or never made."""

    def upload_chunk(self, ref: SessionRef, upload_id: str, offset: int, data: bytes) -> tuple[dict, int]:
        """Stage the bytes past ``received``; → (status, bytes newly stored).
        Conflict (with the offset) for a gap; BadRequest past the size."""

    def upload_complete(self, ref: SessionRef, upload_id: str) -> dict:
        """Size and sha256 checked, then stored once (a repeat → the same record).
        Conflict while bytes are missing; BadRequest (upload discarded) on a mismatch."""

    def upload_abort(self, ref: SessionRef, upload_id: str) -> dict:
        """Drop the upload and its staged bytes; → its last status."""

    # -- lifecycle -------------------------------------------------------------
    def held(self) -> dict[str, int]:
        """What is held in memory per session: ``sessions`` (sessions with state
        here), ``open`` (of those, holding file handles), ``evicted`` (dropped so
        far); bounded whatever the number of sessions (``/metrics`` shows it)."""

    def close(self) -> None:
        """Make everything durable and release handles (on shutdown)."""
