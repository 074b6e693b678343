"""The preview's Reports pages in real Chromium: figures, two SVG charts with title/desc and a table
fallback, no script, nothing loaded from elsewhere; screenshots in test-artifacts/."""

from __future__ import annotations

import pytest

from mailer.web.preview import create_preview_app
from tests.browser_support import ThreadedServer, launched_chromium, opened_page
from tests.conftest import ARTIFACTS, EXAMPLE_ISSUE
from tests.test_reports import PEOPLE, send

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    with launched_chromium() as chromium:
        yield chromium


def test_reports_pages_show_figures_and_accessible_charts(browser, make_settings, sqlite_store, tmp_path):
    db_url = str(sqlite_store.engine.url)
    settings, _ = send(make_settings, db_url, sqlite_store, MAILER_TRACK_CLICKS="1")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with ThreadedServer(create_preview_app(settings, EXAMPLE_ISSUE)) as server:
        with opened_page(browser, viewport={"width": 1000, "height": 900}) as page:
            outside: list[str] = []
            page.on("request", lambda request: outside.append(request.url)
                    if not request.url.startswith(server.url) else None)
            page.goto(f"{server.url}/reports")
            assert page.locator(f"a[href='/reports/{EXAMPLE_ISSUE}']").count() == 1
            page.screenshot(path=str(ARTIFACTS / "reports-index.png"), full_page=True)
            page.click(f"a[href='/reports/{EXAMPLE_ISSUE}']")
            page.wait_for_url(f"**/reports/{EXAMPLE_ISSUE}")
            rows = {row.locator("th").inner_text(): row.locator("td").inner_text()
                    for row in page.locator("table").first.locator("tr").all()}
            assert rows["Recipients"] == str(len(PEOPLE)) and rows["Sent"] == str(len(PEOPLE))
            charts = page.locator("figure svg[role='img']")
            assert charts.count() == 2
            for index in range(2):
                chart = charts.nth(index)
                labelled = chart.get_attribute("aria-labelledby").split()
                assert all(page.locator(f"[id='{ident}']").count() == 1 for ident in labelled)
                box = chart.bounding_box()
                assert box["width"] > 300 and box["height"] > 100  # drawn, not an empty element
            assert page.locator("script").count() == 0
            assert page.locator("details table").count() == 2  # the charts' data as tables
            assert outside == []
            page.screenshot(path=str(ARTIFACTS / "reports-issue.png"), full_page=True)
