"""Rows encoded a step at a time are the bytes of one encode, in one message."""

from __future__ import annotations

import msgspec
import pytest

from dreamlake._gil import BUSY_STEP_ROWS
from dreamlake._paced_pack import FULL_STEP_ROWS, rows_in_steps
from dreamlake._pipe import HOTPATH, _hotpath
from dreamlake._protocol import Rows

_encode = msgspec.msgpack.Encoder().encode


@pytest.mark.parametrize("count", [0, 1, 15, 16, FULL_STEP_ROWS, FULL_STEP_ROWS + 1, 65_536 + 3])
def test_a_message_of_rows_encoded_in_steps_is_byte_for_byte_one_encode(count):
    rows = [{"i": i, "q": [0.5, -1.0], "s": "é", "_ts": 1.7e9 + i} for i in range(count)]
    assert _encode(Rows("t", False, rows_in_steps(rows))) == _encode(Rows("t", False, rows))
    decoded = msgspec.msgpack.decode(_encode(Rows("t", False, rows_in_steps(rows))), type=Rows)
    assert decoded.rows == rows


@pytest.mark.skipif(not HOTPATH, reason="short steps follow the C ring's producers")
def test_steps_are_short_while_a_producer_runs_and_the_bytes_do_not_change():
    ring = _hotpath.Ring(bytearray(4096 + 8 * 65536 + (1 << 16)), 1 << 16)
    assert ring.put(0, 1.0, 2, _encode({"_ts": 1.0}), 1)  # a producer ran just now
    rows = [{"i": i, "_ts": float(i)} for i in range(BUSY_STEP_ROWS * 3 + 1)]
    raw = rows_in_steps(rows)
    assert isinstance(raw, msgspec.Raw)  # more than one step: encoded here, in steps
    assert _encode(Rows("t", True, raw)) == _encode(Rows("t", True, rows))


def test_a_value_msgpack_cannot_carry_raises_before_anything_is_sent():
    rows = [{"i": i, "_ts": float(i)} for i in range(FULL_STEP_ROWS * 2)]
    rows[FULL_STEP_ROWS + 5]["bad"] = object()
    with pytest.raises(TypeError):
        rows_in_steps(rows)
