"""The agent's in-place check of decoded rows refuses exactly what ``capture``
(the API's rule at the call) refuses, and leaves what it accepts unchanged."""

from __future__ import annotations

import msgspec
import pytest

import dreamlake._values as values
import dreamlake_agent._checks as checks
from dreamlake._protocol import Rows
from dreamlake_agent._checks import Refused, check_decoded, check_rows


def _nested(levels: int):
    value = 1
    for _ in range(levels):
        value = [value]
    return value


CASES = [
    1, -(2**63), 2**64 - 1, 1.5, float("nan"), float("-inf"), None, True, "", "héllo ☃",
    [1, 2.0, None, True], [[1], {"a": 1}], {"a": [1, "b", {"c": None}]}, {},
    _nested(31), _nested(32), _nested(33), {"k": _nested(32)},
    b"bytes", [b"x"], {1: 2}, {"a": {2: 3}}, msgspec.msgpack.Ext(1, b"x"), [msgspec.msgpack.Ext(1, b"")],
    "x" * 40, ["y"] * 20,
]


def _outcome(check, value):
    try:
        check(value)
    except (TypeError, ValueError) as exc:
        return type(exc)
    return None


@pytest.mark.parametrize("value", CASES, ids=lambda v: repr(v)[:24])
def test_check_decoded_refuses_exactly_what_capture_refuses(value, monkeypatch):
    for module in (values, checks):  # small limits, so the size rules are exercised too
        monkeypatch.setattr(module, "MAX_STRING_LENGTH", 32)
        monkeypatch.setattr(module, "MAX_ELEMENTS", 16)
    assert _outcome(check_decoded, value) == _outcome(values.capture, value)
    if _outcome(check_decoded, value) is None:
        assert values.capture(value) == value or value != value  # nothing to convert (nan != nan)


def test_a_frame_off_the_wire_is_checked_in_place_not_copied():
    frame = msgspec.msgpack.encode(Rows("t", False, [{"_ts": 1.0, "q": [0.5, 1.5], "meta": {"w": 640, "s": "ok"}}]))
    rows = msgspec.msgpack.decode(frame, type=Rows).rows
    q, meta = rows[0]["q"], rows[0]["meta"]
    assert check_rows(False, rows) == [1.0]
    assert rows[0]["q"] is q and rows[0]["meta"] is meta
    rows[0]["meta"]["bad"] = b"\x00"
    with pytest.raises(Refused) as refused:
        check_rows(False, rows)
    assert refused.value.reason == "rows_refused_bad_value"
