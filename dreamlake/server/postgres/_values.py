"""Python ↔ PostgreSQL value helpers shared by the backend's modules."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from ..._fsutil import now_iso
from ..._values import tag_nonfinite

__all__ = ["iso", "jsonb"]


def iso(moment: datetime | None) -> str | None:
    """A timestamptz as the store's ISO text (``…Z``, microseconds)."""
    return None if moment is None else now_iso(moment.timestamp())


def jsonb(value: Any) -> Jsonb | None:
    """jsonb cannot hold NaN/inf: they are tagged as the local store tags them
    (read back with ``untag_nonfinite``)."""
    return None if value is None else Jsonb(tag_nonfinite(value))
