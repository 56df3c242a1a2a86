"""The downsampling functions on their own: sample spacing and min/max per bucket."""

from __future__ import annotations

import math
import random

import pytest

from dreamlake.ui._downsample import flatten_numeric, minmax_keep, sample_indices


def test_sample_indices_are_evenly_spread_and_keep_both_ends():
    assert sample_indices(0, 5, 10) == [0, 1, 2, 3, 4]
    got = sample_indices(100, 10_000_100, 1000)
    assert len(got) == 1000 and got[0] == 100 and got[-1] == 10_000_099
    gaps = {b - a for a, b in zip(got, got[1:])}
    stride = (10_000_000 - 1) / (1000 - 1)
    assert gaps <= {math.floor(stride), math.ceil(stride)}
    assert sample_indices(5, 5, 10) == [] and sample_indices(3, 9, 1) == [3]


def test_minmax_keep_keeps_every_bucket_extreme_of_every_column():
    rng = random.Random(7)
    n, buckets = 10_000, 50
    a = [rng.gauss(0, 1) for _ in range(n)]
    b = [rng.gauss(0, 1) if i % 3 else None for i in range(n)]
    keep = minmax_keep([a, b], n, buckets)
    assert keep[0] == 0 and keep[-1] == n - 1 and keep == sorted(set(keep))
    assert len(keep) <= 2 * buckets * 2 + 2
    kept = set(keep)
    size = n / buckets
    for k in range(buckets):
        lo, hi = int(k * size), int((k + 1) * size)
        for column in (a, b):
            values = [(v, i) for i, v in enumerate(column[lo:hi], lo) if v is not None]
            assert min(values)[1] in kept and max(values)[1] in kept
    assert a.index(max(a)) in kept and a.index(min(a)) in kept


def test_minmax_keep_skips_non_finite_and_keeps_all_when_small():
    assert minmax_keep([[1.0, 2.0, 3.0]], 3, 10) == [0, 1, 2]
    column = [0.0] * 100
    column[40] = math.inf
    column[41] = math.nan
    column[60] = 5.0
    keep = minmax_keep([column], 100, 2)
    assert 60 in keep and 40 not in keep and 41 not in keep
    assert minmax_keep([[]], 0, 4) == []


def test_flatten_numeric_takes_nested_and_short_list_numbers_only():
    row = {"_ts": 1.0, "loss": 0.5, "ok": True, "name": "x", "m": {"a": 1, "b": {"c": 2.5}}, "q": [1, 2.5, "z"], "big": list(range(100))}
    assert flatten_numeric(row) == {"loss": 0.5, "m.a": 1.0, "m.b.c": 2.5, "q[0]": 1.0, "q[1]": 2.5}


@pytest.mark.parametrize("points", [2, 3, 10])
def test_minmax_keep_count_bound(points):
    n = 1000
    column = [float(i % 17) for i in range(n)]
    assert len(minmax_keep([column], n, max(1, points // 2))) <= 2 * max(1, points // 2) + 2
