"""The preview's Reports pages in real Chromium: figures, two SVG charts with title/desc and a table
fallback, no script, nothing loaded from elsewhere; every label in the page's language (the issue's
`language`, else MAILER_LANGUAGE), and the reader's light or dark scheme followed with every text,
chart labels included, measured against WCAG AA in both (as tests/test_dark_mode.py does for the
public pages); screenshots in test-artifacts/."""

from __future__ import annotations

import pytest

from mailer.content.i18n import STRINGS
from mailer.sending import dispatch
from mailer.web.preview import create_preview_app
from tests.browser_support import ThreadedServer, launched_chromium, opened_page
from tests.conftest import ARTIFACTS, EXAMPLE_ISSUE, write_issue
from tests.test_dark_mode import BODY_BACKGROUND_JS, _luminance, check
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
            fr = STRINGS["fr"]  # MAILER_LANGUAGE=fr, and the example issue forces no language
            assert rows[fr["reports_recipients"]] == str(len(PEOPLE)) and rows[fr["reports_sent"]] == str(len(PEOPLE))
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


# the Reports strings whose two languages differ: one of the other language's on a page is a label left untranslated
_REPORT_KEYS = [key for key in STRINGS["en"] if key.startswith(("reports_", "state_"))
                and STRINGS["en"][key] != STRINGS["fr"][key] and len(STRINGS["en"][key]) > 6]


def _untranslated(page, language: str) -> list[str]:
    """Strings of the other language visible on the page, in its text or its charts' title and desc."""
    other = STRINGS["en" if language == "fr" else "fr"]
    shown = page.evaluate("() => document.body.innerText + ' ' + Array.from(document.querySelectorAll("
                          "'svg title, svg desc')).map((e) => e.textContent).join(' ')")
    shown = " ".join(shown.split())
    fixed = [other[key].split("{")[0].strip() for key in _REPORT_KEYS]
    return [text for text in fixed if len(text) > 6 and text in shown]


def test_reports_pages_speak_the_issues_language_and_follow_the_readers_scheme(browser, make_settings, sqlite_store,
                                                                               project):
    """MAILER_LANGUAGE=fr: the overview in French; an issue whose issue.toml says language = "en" has
    its page in English; both in the light and the dark scheme, every text readable (WCAG AA)."""
    db_url = str(sqlite_store.engine.url)
    settings, _ = send(make_settings, db_url, sqlite_store, MAILER_TRACK_CLICKS="1")
    write_issue(project, "2026-12-03-english", {"briefs.txt": "--> A brief with [a link](https://example.org/a).\n"},
                'subject = "In English"\ndate = 2026-12-03\nlanguage = "en"\n')
    dispatch.send_issue(make_settings(database_url=db_url), sqlite_store, "2026-12-03-english")  # to the outbox
    problems: list[str] = []
    measured = 0
    with ThreadedServer(create_preview_app(settings, EXAMPLE_ISSUE)) as server:
        for scheme in ("light", "dark"):
            with opened_page(browser, viewport={"width": 1000, "height": 900}, color_scheme=scheme) as page:
                visits = {"reports-index": (f"{server.url}/reports", "fr"),
                          "reports-fr": (f"{server.url}/reports/{EXAMPLE_ISSUE}", "fr"),
                          "reports-en": (f"{server.url}/reports/2026-12-03-english", "en")}
                for name, (url, language) in visits.items():
                    page.goto(url)
                    assert page.locator("html").get_attribute("lang") == language, name
                    assert _untranslated(page, language) == [], name
                    for details in page.locator("details").all():
                        details.evaluate("(el) => el.open = true")  # the tables behind the charts, measured too
                    measured += check(page, name, scheme, problems)
                    chart_texts = page.evaluate("() => Array.from(document.querySelectorAll('figure svg text'))"
                                                ".filter((t) => t.textContent.trim()).length")
                    assert chart_texts > 5, name
                    if scheme == "dark":
                        assert _luminance(page.evaluate(BODY_BACKGROUND_JS)) < 0.05, f"{name}: the dark scheme left it light"
                page.goto(f"{server.url}/reports/2026-12-03-english")
                rows = {row.locator("th").inner_text(): row.locator("td").inner_text()
                        for row in page.locator("table").first.locator("tr").all()}
                assert rows[STRINGS["en"]["reports_recipients"]] == str(len(PEOPLE))
    assert measured > 100
    assert not problems, "\n".join(problems)


def test_the_preview_page_is_readable_in_both_schemes(browser, make_settings, sqlite_store, project):
    """`mailer preview`'s own page (headings, warnings, the text part, headers, a build error) with the
    public pages' palette: every text WCAG AA in the light and the dark scheme, dark when the editor's
    system is."""
    settings = make_settings(database_url=str(sqlite_store.engine.url))
    write_issue(project, "2026-12-04-avertie", {"briefs.txt": "--> Voir [ici](http://example.net/page).\n"},
                'subject = "Avertie"\ndate = 2026-12-04\n')
    write_issue(project, "2026-12-05-casse", {"briefs.txt": "--> \n"}, 'subject = "Cassée"\ndate = 2026-12-05\n')
    problems: list[str] = []
    measured = 0
    for slug, shows in ((EXAMPLE_ISSUE, "#text"), ("2026-12-04-avertie", ".warnings li"), ("2026-12-05-casse", "#error")):
        with ThreadedServer(create_preview_app(settings, slug, sqlite_store)) as server:
            for scheme in ("light", "dark"):
                with opened_page(browser, viewport={"width": 1100, "height": 900}, color_scheme=scheme) as page:
                    page.goto(f"{server.url}/")
                    assert page.locator(shows).count() >= 1, (slug, shows)
                    measured += check(page, f"preview-{slug}", scheme, problems)
                    if scheme == "dark":
                        assert _luminance(page.evaluate(BODY_BACKGROUND_JS)) < 0.05, f"{slug}: the dark scheme left it light"
    assert measured > 30
    assert not problems, "\n".join(problems)
