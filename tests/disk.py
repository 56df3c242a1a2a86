"""Reading what DreamLake wrote, straight from disk, for the behaviour tests.

Every line is parsed strictly (NaN/Infinity literals refused), so a torn or
interleaved line, or an invalid JSON constant, fails the test that reads it."""

import json


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name!r} on disk")


def strict_loads(text):
    return json.loads(text, parse_constant=_reject_constant)


def disk_rows(sdir, track):
    """All rows of a track as written on disk ([] if the track has no file)."""
    path = sdir / "tracks" / track / "data.jsonl"
    if not path.exists():
        return []
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "data.jsonl does not end with a newline"
    return [strict_loads(line) for line in text.splitlines()]


def read_all(track):
    """Every row of a track through the read API, page by page."""
    out, start = [], 0
    while True:
        page = track.read(start_index=start, limit=1000)
        out.extend(page["data"])
        if not page["hasMore"] or not page["data"]:
            return out
        start = page["data"][-1]["index"] + 1
