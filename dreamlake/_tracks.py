"""Track and Tracks: the hot path.

``Track.append`` validates cheaply, stamps ``_ts``, captures values and hands
the row on; it never touches a file, a socket or a lock held across I/O.

With the C hot path (:mod:`._hotpath`), ``append`` is a C method of
``Track``'s base class: it takes the common rows (numbers, bools, None, ASCII
strings, flat lists/tuples of numbers, numpy scalars and 1-D arrays) and copies
them into the session's ring (a crash journal, or private memory for remote
sessions) in one call. Anything else — and every row of a session without a
ring (the journal switched off or not allocated, a forked child) — goes to
:meth:`Track._append_py`, the same rules in Python, which is ``append`` itself
when the extension is not built or ``DREAMLAKE_PURE_PYTHON=1``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from itertools import chain, repeat
from operator import methodcaller, setitem
from numbers import Real
from typing import TYPE_CHECKING, Any

from ._errors import SessionStateError
from ._pipe import EVENT_COST, HOTPATH, _hotpath
from ._values import MAX_INT, MIN_INT, PLAIN_SCALARS, approx_bytes, capture_fields, check_ints

if TYPE_CHECKING:  # pragma: no cover
    from ._session import Session

__all__ = ["Track", "Tracks", "check_ts"]

_time = time.time
_STR_ONLY = frozenset((str,))
_DICT_ONLY = frozenset((dict,))
_NUMBER_ONLY = frozenset((int, float))
#: Values the hot path keeps as they are without a look (ints are range-checked inline).
_AS_IS = frozenset((float, bool, type(None)))
_get_ts = methodcaller("get", "_ts")


def check_ts(value: Any) -> float:
    """Validate an explicit ``_ts`` (not None, not -1): a finite real number."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"_ts must be None, -1 or a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"_ts must be finite, got {value!r}")
    return value


def _positional_row(row: Any, fields: dict) -> dict:
    """``append({"loss": 1})``: the dict is the row (keywords are added to it)."""
    if type(row) is not dict:
        if isinstance(row, Real):
            raise TypeError(
                f"append() got the number {row!r} as a positional argument; _ts and fields are "
                "keywords: append(loss=0.5, step=3) or append(loss=0.5, _ts=t)"
            )
        if not isinstance(row, dict):
            raise TypeError(f"append() takes a dict row or keyword fields, got {type(row).__name__}")
    for key in row:
        if type(key) is not str:
            raise TypeError(f"field names must be str, got {type(key).__name__}")
    return {**row, **fields}


_Base: Any = _hotpath.TrackBase if HOTPATH else object


class Track(_Base):
    """One time series of a session; get it with ``session.track(name)``."""

    __slots__ = ("_session", "_pipe", "_stream", "_sid", "name")

    def __new__(cls, session: "Session", name: str) -> "Track":
        if HOTPATH and cls is Track and session._require_pipe().ring is None:
            cls = _PyTrack  # no journal: the Python path directly, without a C detour
        return _Base.__new__(cls)

    def __init__(self, session: "Session", name: str) -> None:
        self._session = session
        self._pipe = session._require_pipe()
        self._stream = self._pipe.stream(name)
        self._sid = self._stream.sid
        self.name = name
        if HOTPATH:
            self._hot_bind(self._pipe.ring, self._pipe.clock, self._sid)

    def _stamp(self, _ts: Any) -> float:
        clock = self._pipe.clock
        if _ts is None:
            return clock.auto()
        if _ts == -1 and (type(_ts) is int or type(_ts) is float):
            last = clock.last
            return clock.auto() if last == 0.0 else last
        t = check_ts(_ts)
        clock.last = t
        return t

    def _append_py(self, row: Any = None, /, _ts: Any = None, **fields: Any) -> "Track":
        """Append one row and return the track (so appends chain). ``_ts``: None →
        now, -1 → the last ``_ts`` this thread used in this session, a number →
        used as is. Rows with equal ``_ts`` merge (see DESIGN §4). A dict passed
        positionally is the row (``append({"loss": 0.1})``), keywords add to it.

        The hot path: stamp, capture (plain scalars are immutable and kept as
        they are; anything else is copied and checked), push. Anything invalid
        raises here, never in the writer."""
        if row is not None:
            fields = _positional_row(row, fields)
            if "_ts" in fields:
                _ts = fields.pop("_ts")
        pipe = self._pipe
        plain = True  # no containers, strings, numpy, ... or ints beyond 64 bits (those are captured or refused)
        for value in fields.values():
            if type(value) not in _AS_IS and not (type(value) is int and MIN_INT <= value <= MAX_INT):
                plain = False
                break
        if _ts is None and plain and fields and not HOTPATH and pipe.ring is None and len(pipe.queue) < pipe.max_items:
            # the common row: stamp and queue under the clock's lock, so that rows of
            # one stream stamped by several threads are queued in the order of their _ts
            clock = pipe.clock
            clock.acquire()  # PyClock.auto, inlined: a call costs ~60 ns here
            try:
                t = _time()
                if t <= clock.last_auto:
                    t = clock.last_auto + 1e-6
                clock.last_auto = clock.local.last = t
                fields["_ts"] = t
                pipe.push((self._sid, t, fields))  # raises once the session is closed
            finally:
                clock.release()
            return self
        t = self._stamp(_ts)
        if not fields:
            raise ValueError("append() needs at least one field")
        if not plain:
            fields = capture_fields(fields)
            fields["_ts"] = t
            size = approx_bytes(fields)
            if size > EVENT_COST and pipe.ring is None:  # a large row takes budget in proportion
                pipe.push_batch(self._stream, [t], [fields], size // EVENT_COST, self._session._writer.wake)
                return self
        fields["_ts"] = t  # fields is this call's own dict (or our copy)
        if pipe.ring is not None:  # journaled: a row the C path left to us, or a full ring
            if pipe.closed:
                raise SessionStateError("the session is closed")
            pipe.put_row(self._sid, t, fields, self._session._writer.wake)
            return self
        if len(pipe.queue) < pipe.max_items:
            pipe.push((self._sid, t, fields))
        else:
            pipe.on_full((self._sid, t, fields), self._session._writer.wake)
        return self

    if HOTPATH:
        log = _hotpath.TrackBase.append  # upstream 0.3's spelling
    else:
        append = log = _append_py

    def append_batch(self, rows: list[dict]) -> dict:
        """Append many rows at once; each may carry its own ``_ts`` (same rules
        as :meth:`append`). Validated and captured as a whole: one bad row
        raises and nothing of the batch is queued. Returns ``{"trackId",
        "count"}`` at once (indices are assigned when the rows are written:
        ``flush()`` reports them)."""
        if not isinstance(rows, (list, tuple)):
            raise TypeError(f"append_batch() takes a list of dicts, got {type(rows).__name__}")
        result = {"trackId": self.name, "count": len(rows)}
        if HOTPATH and type(rows) is list:
            got = self._put_batch(rows)  # the common batch: checked, stamped and journaled in C
            if got:
                if type(got) is tuple:  # the ring filled up: the rest waits for room (or the policy)
                    first, stamps = got
                    rest = list(map(dict, rows[first:]))
                    deque(map(setitem, rest, repeat("_ts", len(rest)), stamps), maxlen=0)
                    self._pipe.put_batch(self._sid, stamps, rest, self._session._writer.wake)
                return result
        if rows and self._append_plain_batch(rows):
            return result
        pipe = self._pipe
        stream = self._stream
        captured: list[dict] = []
        stamps: list[float] = []
        weights = []  # running total of budget slots, per row
        weight = 0
        for row in rows:  # checked and captured first: one bad row raises, nothing is stamped
            if type(row) is not dict:
                raise TypeError(f"append_batch() rows must be dicts, got {type(row).__name__}")
            fields = dict(row)
            ts = fields.pop("_ts", None)
            if ts is not None and not (ts == -1 and type(ts) in (int, float)):
                check_ts(ts)
            if not fields:
                raise ValueError("append_batch() rows need at least one field besides _ts")
            if not _STR_ONLY.issuperset(map(type, fields)):
                raise TypeError("field names must be str")
            if not PLAIN_SCALARS.issuperset(map(type, fields.values())):
                fields = capture_fields(fields)
                weight += approx_bytes(fields) // EVENT_COST
            else:
                check_ints(fields.values())
                weight += 1
            fields["_ts"] = ts
            stamps.append(ts)
            captured.append(fields)
            weights.append(weight)
        stamp = self._stamp  # the one clock: auto stamps strictly increase, -1 borrows the last
        for i, fields in enumerate(captured):
            stamps[i] = fields["_ts"] = stamp(stamps[i])
        wake = self._session._writer.wake
        first, taken = 0, 0
        while first < len(captured):  # chunks that each fit the writer's share
            last = first + 1
            while last < len(captured) and weights[last] - taken <= pipe.batch_rows:
                last += 1
            chunk_weight = max(1, weights[last - 1] - taken)
            pipe.push_batch(stream, stamps[first:last], captured[first:last], chunk_weight, wake)
            first, taken = last, weights[last - 1]
        return result

    def _append_plain_batch(self, rows: list | tuple) -> bool:
        """The common batch — dicts of plain scalars, with no ``_ts`` or with a
        finite number as ``_ts`` in every row — checked and copied with C-level
        passes over the whole batch. Returns False (nothing queued) for any other
        batch (``_ts=-1`` or None in some rows, strings, containers), which then
        takes the row-by-row path."""
        if not _DICT_ONLY.issuperset(map(type, rows)):
            return False
        keys = set().union(*rows)
        if not keys or not _STR_ONLY.issuperset(map(type, keys)):
            return False
        values = list(chain.from_iterable(map(dict.values, rows)))
        if not PLAIN_SCALARS.issuperset(map(type, values)):
            return False
        check_ints(values)
        explicit = "_ts" in keys
        if explicit:
            given = list(map(_get_ts, rows))
            if not _NUMBER_ONLY.issuperset(map(type, given)) or -1 in given or not all(map(math.isfinite, given)):
                return False  # None, -1, bool or non-finite somewhere: row by row
            if min(map(len, rows)) < 2:  # every row holds _ts: it needs one more field
                raise ValueError("append_batch() rows need at least one field besides _ts")
        elif not all(rows):
            raise ValueError("append_batch() rows need at least one field besides _ts")
        copies = list(map(dict, rows))
        pipe = self._pipe
        n = len(copies)
        if explicit:
            stamps = list(map(float, given))
            pipe.clock.last = stamps[-1]
        else:  # the batch's auto _ts: consecutive, 1 µs apart, after any earlier
            base = pipe.clock.reserve(n)
            stamps = [base + i * 1e-6 for i in range(n)]
        deque(map(setitem, copies, repeat("_ts", n), stamps), maxlen=0)
        wake = self._session._writer.wake
        step = pipe.batch_rows
        for first in range(0, n, step):
            last = first + step
            pipe.push_batch(self._stream, stamps[first:last], copies[first:last], len(copies[first:last]), wake)
        return True

    def flush(self) -> dict:
        """Write this track's queued rows; returns what this flush window wrote:
        ``{trackId, startIndex, endIndex, count}``."""
        return self._session._call("flush", [self.name])[0]

    def read(
        self,
        start_index: int = 0,
        limit: int = 1000,
        *,
        start_ts: float | None = None,
        end_ts: float | None = None,
    ) -> dict:
        """Rows by index (O(limit)), or by ``_ts`` in ``[start_ts, end_ts)``.
        Sees everything appended before the call."""
        for label, value in (("start_index", start_index), ("limit", limit)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{label} must be a non-negative int, got {value!r}")
        if start_ts is None and end_ts is None:
            return self._session._call("read", self.name, False, start_index, limit)
        bounds = [None if v is None else check_ts(v) for v in (start_ts, end_ts)]
        return self._session._call("read_range", self.name, False, bounds[0], bounds[1], limit)

    def stats(self) -> dict:
        return self._session._call("stats", self.name)

    def to_pandas(self, ts: str = "float") -> Any:
        """Every row so far as a ``pandas.DataFrame`` (``ts="datetime"``: ``_ts`` as UTC
        datetimes); needs ``pip install 'dreamlake[export]'``. See :mod:`._export`."""
        from ._export import frame

        return frame(self.read, ts)

    def __repr__(self) -> str:
        return f"Track({self.name!r})"


class _PyTrack(Track):
    """A track of a session without a ring (journal switched off or not
    allocated, a forked child) while the C hot path is built: its rows take the
    Python path directly."""

    __slots__ = ()
    append = log = Track._append_py


class Tracks:
    """``session.tracks``: operations over all tracks of a session."""

    def __init__(self, session: "Session") -> None:
        self._session = session

    def flush(self) -> list[dict]:
        return self._session._call("flush", None)

    def list(self) -> list[dict]:
        return self._session._call("list_tracks")

    list_all = list  # upstream 0.3: session.track().list_all()

    def __call__(self) -> "Tracks":
        return self
