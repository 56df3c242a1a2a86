"""The page in a real headless Chromium (Debian's ``chromium``, driven by
Playwright), against a real ``dreamlake ui`` process and a store written by
``dreamlake.Session``. Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from ui_server import STEPS, loss_at, ui_server, write_store

from dreamlake import Session

CHROMIUM = os.environ.get("DREAMLAKE_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")
if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium; CI installs it)", allow_module_level=True)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("store"))
    write_store(root)
    return root


@pytest.fixture(scope="module")
def url(store):
    with ui_server(store) as address:
        yield address


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(10_000)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def test_session_list_shows_status_tags_params_and_filters(page, url):
    page.goto(url)
    rows = page.locator("#sessions-body tr[data-prefix]")
    rows.first.wait_for()
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.prefix)")) == ["ws/run0", "ws/run1"]
    row0 = page.locator('tr[data-prefix="ws/run0"]')
    assert row0.locator(".status").inner_text() == "completed"
    assert "r0" in row0.inner_text() and "lr=0.1" in row0.inner_text() and "model.arch=mlp" in row0.inner_text()
    shot(page, "sessions")
    page.select_option("select[name=tag]", "r1")
    page.wait_for_function("() => document.querySelectorAll('#sessions-body tr[data-prefix]').length === 1")
    assert page.locator("#sessions-body tr[data-prefix]").get_attribute("data-prefix") == "ws/run1"


def test_track_chart_holds_the_logged_points_and_the_table_the_rows(page, url):
    page.goto(url + "#/s/ws%2Frun0?track=train")
    page.wait_for_function("() => window.dl.charts.loss && window.dl.charts.loss.data[0].length > 0")
    xs, ys = page.evaluate("() => window.dl.charts.loss.data")
    assert len(xs) == STEPS  # 300 rows fit the chart width: every point drawn
    assert ys == pytest.approx([loss_at(0, s) for s in range(STEPS)])
    # x = step instead of _ts
    page.select_option("#x-axis", "step")
    page.wait_for_function("() => window.dl.charts.loss && window.dl.charts.loss.data[0][299] === 299")
    # the table shows the newest rows, exactly as logged
    last = page.locator('#rows tr[data-index="299"]')
    assert last.locator("td").nth(0).inner_text() == "299"
    assert f"{loss_at(0, 299):.6g}"[:6] in last.inner_text()
    # the tree nests robot/arm/pose
    assert page.locator('.tree a[data-track="robot/arm/pose"]').inner_text().startswith("pose")
    shot(page, "track")


def test_zoom_asks_the_server_for_the_chosen_rows(page, url):
    page.goto(url + "#/s/ws%2Frun0?track=train")
    page.wait_for_function("() => window.dl.charts.loss && window.dl.charts.loss.data[0].length === 300")
    box = page.locator('.chart[data-field="loss"] .u-over').bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.25, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.mouse.up()
    page.wait_for_function("() => window.dl.charts.loss.data[0].length < 150")
    assert "rows" in page.locator("#zoom-info").inner_text()
    page.click("#reset-zoom")
    page.wait_for_function("() => window.dl.charts.loss.data[0].length === 300")
    page.mouse.move(box["x"] + box["width"] * 0.5, y)
    page.mouse.wheel(0, -200)  # wheel up: half the rows, around the cursor
    page.wait_for_function("() => window.dl.charts.loss.data[0].length === 150")
    page.mouse.wheel(0, 200)
    page.wait_for_function("() => window.dl.charts.loss.data[0].length === 300")


def test_logs_filter_by_level_and_search_and_files_link(page, url):
    page.goto(url + "#/s/ws%2Frun0?tab=logs")
    page.locator("#logs .entry").nth(2).wait_for()
    assert page.locator("#logs .entry").count() == 3
    page.uncheck('input.lvl[value="info"]')
    page.wait_for_function("() => document.querySelectorAll('#logs .entry').length === 2")
    page.fill("#log-search", "disk")
    page.press("#log-search", "Enter")
    page.wait_for_function("() => document.querySelectorAll('#logs .entry').length === 1")
    assert "disk almost full" in page.locator("#logs .entry").inner_text()
    page.click('button[data-tab="files"]')
    link = page.locator("#files a").first
    link.wait_for()
    with page.expect_download() as got:
        link.click()
    assert Path(got.value.path()).read_bytes() == bytes(range(256)) * 4


def test_compare_highlights_param_differences_and_overlays_curves(page, url):
    page.goto(url)
    for prefix in ("ws/run0", "ws/run1"):
        page.check(f'tr[data-prefix="{prefix}"] input.pick')
    assert page.locator("#compare-link").inner_text() == "Compare (2)"
    page.click("#compare-btn")
    page.locator("#compare-params").wait_for()
    assert "differs" in page.locator('tr[data-key="lr"]').get_attribute("class")
    assert "differs" not in (page.locator('tr[data-key="batch"]').get_attribute("class") or "")
    page.wait_for_function("() => window.dl.compareChart && window.dl.compareChart.series.length === 3")
    page.select_option("#cmp-track", "train")
    page.wait_for_function("() => document.querySelector('#cmp-field option[value=loss]')")
    page.select_option("#cmp-field", "loss")
    page.select_option("#cmp-x", "step")
    page.wait_for_function(
        "() => window.dl.compareChart && window.dl.compareChart.data[0].length === 300 && window.dl.compareChart.series[1].label"
    )
    data = page.evaluate("() => window.dl.compareChart.data")
    assert data[1] == pytest.approx([loss_at(0, s) for s in range(STEPS)])
    assert data[2] == pytest.approx([loss_at(1, s) for s in range(STEPS)])
    last_cell = page.locator('#compare-stats tr[data-prefix="ws/run1"][data-field="loss"] td').nth(2)
    assert float(last_cell.inner_text()) == pytest.approx(loss_at(1, STEPS - 1), rel=1e-5)
    shot(page, "compare")


def test_running_session_updates_charts_and_logs_without_reload(page, store, url):
    with Session(prefix="ws/live", root=store, tags=["live"]) as s:
        track = s.track("metrics")
        for step in range(10):
            track.append(reward=float(step), step=step)
        s.log("first entry")
        s.flush()
        page.goto(url + "#/s/ws%2Flive?track=metrics")
        page.wait_for_function("() => window.dl.charts.reward && window.dl.charts.reward.data[0].length === 10")
        assert page.locator("#session-status").inner_text() == "running"
        marker = page.evaluate("() => { window.notReloaded = true; return 1 }")
        for step in range(10, 25):
            track.append(reward=float(step), step=step)
        s.flush()
        page.wait_for_function("() => window.dl.charts.reward.data[0].length === 25", timeout=15_000)
        assert page.evaluate("() => window.dl.charts.reward.data[1][24]") == 24.0
        assert page.evaluate("() => window.notReloaded") == marker
        page.locator('#rows tr[data-index="24"]').wait_for()  # the table follows too
        shot(page, "live")
        page.click('button[data-tab="logs"]')
        page.locator("#logs .entry").first.wait_for()
        s.log("second entry", level="warn")
        s.flush()
        page.wait_for_function("() => document.querySelectorAll('#logs .entry').length === 2", timeout=15_000)
        assert "second entry" in page.locator("#logs .entry").nth(1).inner_text()
    page.click('button[data-tab="tracks"]')
    page.wait_for_function("() => document.querySelector('#session-status').innerText === 'completed'", timeout=15_000)
