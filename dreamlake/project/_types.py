"""The three small vocabularies of the project API.

All are ``str`` enums: they compare equal to their value (``Status.DONE ==
"done"``), are stored as that value in the ledger, and the API accepts either
the member or its name/value in any case (``"resume"``, ``"PREFIX"``).
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Status", "StorageMode", "ExistingRun"]


class _StrEnum(str, Enum):
    def __str__(self) -> str:
        return self.value

    @classmethod
    def _missing_(cls, value: object) -> "_StrEnum | None":
        if isinstance(value, str):
            wanted = value.strip().lower()
            for member in cls:
                if member.value == wanted:
                    return member
        return None


class Status(_StrEnum):
    """Lifecycle of a run: PENDING → RUNNING → DONE | ERROR."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"


class StorageMode(_StrEnum):
    """Where a run's files go.

    ``SUBFOLDER``: ``<project>/<identifier>/<uid>/<file>``.
    ``PREFIX``: ``<project>/<identifier>/<uid>_<file>``.
    """

    SUBFOLDER = "subfolder"
    PREFIX = "prefix"


class ExistingRun(_StrEnum):
    """What ``Project.session`` does when runs with the same params exist.

    ``RESUME``: return the newest DONE run whose params are identical (else a new run).
    ``NEW``: always allocate a new run.
    """

    RESUME = "resume"
    NEW = "new"
