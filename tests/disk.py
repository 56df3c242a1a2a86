"""Reading what DreamLake wrote, straight from disk, for the behaviour tests.

Every line is parsed strictly (NaN/Infinity literals refused), so a torn or
interleaved line, or an invalid JSON constant, fails the test that reads it."""

import json


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name!r} on disk")


def strict_loads(text):
    return json.loads(text, parse_constant=_reject_constant)


def disk_rows(sdir, track):
    """All rows of a track as written on disk ([] if the track has no file): each
    line must be ``{"index": i, "data": {...}}`` with i = 0, 1, 2, ...; returns the
    ``data`` of each line."""
    path = sdir / "tracks" / track / "data.jsonl"
    if not path.exists():
        return []
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "data.jsonl does not end with a newline"
    lines = [strict_loads(line) for line in text.splitlines()]
    for position, line in enumerate(lines):
        assert {"index", "data"} <= set(line) <= {"index", "data", "createdAt"}, f"line {position} is not an index/data line: {line}"
        assert line["index"] == position, f"line {position} carries index {line['index']}"
    return [line["data"] for line in lines]


def disk_logs(sdir):
    """Every log entry as written on disk, through both of its paths (one file)."""
    seeds_path, upstream_path = sdir / "logs.jsonl", sdir / "logs" / "logs.jsonl"
    assert seeds_path.resolve() == upstream_path.resolve(), "logs.jsonl is not a link to logs/logs.jsonl"
    entries = [strict_loads(line) for line in upstream_path.read_text().splitlines()]
    assert [e["sequenceNumber"] for e in entries] == list(range(len(entries)))
    return entries


def disk_params(sdir):
    """The flat params of parameters.json, checking its ``{"version", "data"}`` shape."""
    doc = strict_loads((sdir / "parameters.json").read_text())
    assert isinstance(doc["version"], int) and doc["version"] >= 1
    return doc["data"]


def read_all(track):
    """Every row of a track through the read API, page by page."""
    out, start = [], 0
    while True:
        page = track.read(start_index=start, limit=1000)
        out.extend(page["data"])
        if not page["hasMore"] or not page["data"]:
            return out
        start = page["data"][-1]["index"] + 1
