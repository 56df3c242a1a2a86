"""The page in a real headless Chromium against ``dreamlake-server --store
postgresql://…``: signed in with a key, the session list, a track's chart with
every logged point and a live update of a running session all appear.
Screenshots: ``test-artifacts/pg-sessions.png``, ``pg-track.png``."""

from __future__ import annotations

import pytest
from pg import fresh_schema
from server_process import ServerProcess, make_key
from test_server_page_pg import STEPS, T0, write_runs
from test_ui_browser import browser, page, shot  # noqa: F401 (fixtures)

from dreamlake import Session

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory):
    with fresh_schema() as database:
        root = tmp_path_factory.mktemp("pg-page") / "root"
        root.mkdir()
        server = ServerProcess(root, "--store", database, "--objects", (root.parent / "objects").as_uri())
        try:
            key = make_key(root)
            write_runs(server.url, key, root.parent)
            yield server, key
        finally:
            server.stop()


def test_the_page_over_postgres_lists_charts_and_follows_a_live_run(page, pg_server):  # noqa: F811
    server, key = pg_server
    page.goto(f"{server.url}/ui/?key={key}")  # signs in: the key goes into a cookie
    rows = page.locator("#sessions-body tr[data-prefix]")
    rows.first.wait_for()
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.prefix)")) == ["ws/run0", "ws/run1"]
    assert page.locator('tr[data-prefix="ws/run0"] .status').inner_text() == "completed"
    assert "lr=0.1" in page.locator('tr[data-prefix="ws/run0"]').inner_text()
    assert "key=" not in page.url
    shot(page, "pg-sessions")

    page.goto(f"{server.url}/ui/#/s/ws%2Frun1?track=train")
    page.wait_for_function("() => window.dl.charts.loss && window.dl.charts.loss.data[0].length > 0")
    xs, ys = page.evaluate("() => window.dl.charts.loss.data")
    assert xs[0] == T0 and xs[-1] == T0 + STEPS - 1  # sampled: first and last rows always drawn
    assert max(ys) == 50.0  # the spike survives the min/max downsampling
    shot(page, "pg-track")

    with Session(prefix="ws/live", url=server.url, api_key=key, tags=["live"]) as s:
        track = s.track("metrics")
        for step in range(10):
            track.append(reward=float(step), step=step)
        s.flush()
        page.goto(f"{server.url}/ui/#/s/ws%2Flive?track=metrics")
        page.wait_for_function("() => window.dl.charts.reward && window.dl.charts.reward.data[0].length === 10")
        assert page.locator("#session-status").inner_text() == "running"
        for step in range(10, 25):
            track.append(reward=float(step), step=step)
        s.flush()
        page.wait_for_function("() => window.dl.charts.reward.data[0].length === 25", timeout=15_000)
        shot(page, "pg-live")
