"""The page needs only the DataSource interface: the same reads give the same
answers over the local store and over a plain in-memory source. A server
storage adapter can join the ``source`` parametrisation to prove itself."""

from __future__ import annotations

import os

import pytest
from ui_server import STEPS, loss_at, write_store

from dreamlake.ui import DataSource, LocalStoreSource, NotFound
from dreamlake.ui._reads import field_stats, filter_logs, read_series, track_fields


class MemorySource:
    """Every read answered from lists: the smallest DataSource there is."""

    def __init__(self, sessions: dict[str, dict]) -> None:
        self._sessions = sessions

    def _get(self, prefix: str) -> dict:
        try:
            return self._sessions[prefix]
        except KeyError:
            raise NotFound(f"no session {prefix!r}") from None

    def _rows(self, prefix: str, track: str) -> list:
        tracks = self._get(prefix)["tracks"]
        if track not in tracks:
            raise NotFound(f"no track {track!r}")
        return tracks[track]

    def list_sessions(self) -> list[dict]:
        return [s["summary"] for s in self._sessions.values()]

    def session(self, prefix: str) -> dict:
        return self._get(prefix)["summary"]

    def params(self, prefix: str) -> dict:
        return dict(self._get(prefix)["params"])

    def track_names(self, prefix: str) -> list[str]:
        return sorted(self._get(prefix)["tracks"])

    def track_info(self, prefix: str, track: str) -> dict:
        rows = self._rows(prefix, track)
        return {"totalDataPoints": len(rows), "firstTs": rows[0][1] if rows else None, "lastTs": rows[-1][1] if rows else None}

    def read_rows(self, prefix: str, track: str, start: int, limit: int) -> list:
        return self._rows(prefix, track)[max(0, start) : max(0, start) + limit]

    def read_rows_at(self, prefix: str, track: str, indices) -> list:
        rows = self._rows(prefix, track)
        return [rows[i] for i in indices if 0 <= i < len(rows)]

    def log_count(self, prefix: str) -> int:
        return len(self._get(prefix)["logs"])

    def read_logs(self, prefix: str, start: int, limit: int) -> list:
        return self._get(prefix)["logs"][max(0, start) : max(0, start) + limit]

    def list_files(self, prefix: str) -> list[dict]:
        return []

    def download_file(self, prefix: str, file_id: str, dest_dir: str) -> str:
        raise NotFound(f"no file {file_id!r}")


def _copy_into_memory(local: LocalStoreSource) -> MemorySource:
    sessions = {}
    for summary in local.list_sessions():
        p = summary["prefix"]
        tracks = {t: local.read_rows(p, t, 0, 10**9) for t in local.track_names(p)}
        logs = local.read_logs(p, 0, 10**9)
        sessions[p] = {"summary": summary, "params": local.params(p), "tracks": tracks, "logs": logs}
    return MemorySource(sessions)


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> LocalStoreSource:
    root = str(tmp_path_factory.mktemp("store"))
    write_store(root)
    return LocalStoreSource(root)


@pytest.fixture(scope="module", params=["local", "memory", "server-storage"])
def source(request, local) -> DataSource:
    if request.param == "server-storage":  # the server's adapter, over its local-store backend on the same root
        from dreamlake.server._local_storage import LocalStorage
        from dreamlake.server._page_source import StorageSource
        from dreamlake.server._settings import Settings

        return StorageSource(LocalStorage(Settings(root=local.root, fsync="never")))
    return local if request.param == "local" else _copy_into_memory(local)


def test_the_server_adapter_reads_what_the_local_source_reads(local):
    from dreamlake.server._local_storage import LocalStorage
    from dreamlake.server._page_source import StorageSource
    from dreamlake.server._settings import Settings

    adapter = StorageSource(LocalStorage(Settings(root=local.root, fsync="never")))
    keys = ("prefix", "workspace", "name", "status", "tags", "description", "createdAt")
    assert [{k: s[k] for k in keys} for s in adapter.list_sessions()] == [{k: s[k] for k in keys} for s in local.list_sessions()]
    for prefix in ("ws/run0", "ws/run1"):
        assert adapter.params(prefix) == local.params(prefix)
        assert adapter.track_names(prefix) == local.track_names(prefix)
        assert adapter.read_rows_at(prefix, "train", [0, 7, 299]) == local.read_rows_at(prefix, "train", [0, 7, 299])
        assert adapter.read_logs(prefix, 0, 10) == local.read_logs(prefix, 0, 10) and adapter.log_count(prefix) == 3
        assert [f["id"] for f in adapter.list_files(prefix)] == [f["id"] for f in local.list_files(prefix)]


def test_both_sources_satisfy_the_protocol(source):
    assert isinstance(source, DataSource)


def test_series_fields_stats_and_logs_over_any_source(source):
    assert track_fields(source, "ws/run1", "train") == ["loss", "step"]
    series = read_series(source, "ws/run1", "train", ["loss"], x="step", points=50)
    assert not series["exact"] and series["sampled"] == 200 and series["index"][0] == 0 and series["index"][-1] == STEPS - 1
    assert len(series["xs"]) <= 52
    assert dict(zip(series["index"], series["columns"]["loss"]))[0] == pytest.approx(loss_at(1, 0))
    stats = field_stats(source, "ws/run1", "train", ["loss"])
    assert stats["fields"]["loss"]["last"] == pytest.approx(loss_at(1, STEPS - 1))
    logs = filter_logs(source, "ws/run0", {"error"}, None, limit=10)
    assert [e["message"] for e in logs["entries"]] == ["disk almost full"]


def test_unknown_names_raise_not_found(source):
    with pytest.raises(NotFound):
        source.session("ws/none")
    with pytest.raises(NotFound):
        read_series(source, "ws/run0", "nope", ["x"])


def test_local_source_refuses_paths_outside_the_store(local):
    outside = os.path.dirname(str(local.root))
    for prefix in ("..", "../..", "/etc/passwd", "ws/../ws/run0", ".hidden/x", "ws/run0/extra"):
        with pytest.raises(NotFound):
            local.session(prefix)
    with pytest.raises(NotFound):
        local.read_rows("ws/run0", "../../" + os.path.basename(outside), 0, 1)
