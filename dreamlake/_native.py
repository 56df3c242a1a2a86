"""The optional C extension (:mod:`._hotpath`), or ``None``.

``None`` when it was not built (no compiler at install) or is switched off
with ``DREAMLAKE_PURE_PYTHON=1``; every caller then takes its pure-Python path,
which does the same, slower.
"""

from __future__ import annotations

import os

try:
    if os.environ.get("DREAMLAKE_PURE_PYTHON", "").lower() in ("1", "true", "yes", "on"):
        raise ImportError("DREAMLAKE_PURE_PYTHON is set")
    from . import _hotpath
except ImportError:
    _hotpath = None  # type: ignore[assignment]

__all__ = ["_hotpath"]
