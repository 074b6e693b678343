"""The editor's preview page speaks the newsletter's language (MAILER_LANGUAGE), in both states."""

from __future__ import annotations

import html
import re

import pytest
from mailer.content import i18n
from mailer.web.preview import create_preview_app

from .conftest import EXAMPLE_ISSUE

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

# English words of the page's own interface; none may be left on the French page.
ENGLISH_UI = ("Preview", "Build warnings", "Text part", "Headers", "Download", "reloads when", "Cannot build",
              "Desktop", "briefs", "KB HTML")


def _page(settings) -> str:
    from starlette.testclient import TestClient

    with TestClient(create_preview_app(settings, EXAMPLE_ISSUE)) as client:
        response = client.get("/")
        assert response.status_code == 200
        return html.unescape(response.text)


def _visible(page: str) -> str:
    """The page's text as shown: no script, no tags."""
    page = re.sub(r"<script\b.*?</script>|<style\b.*?</style>", "", page, flags=re.S)
    return re.sub(r"<[^>]+>", " ", page)


def test_both_languages_have_the_same_strings():
    assert set(i18n.STRINGS["fr"]) == set(i18n.STRINGS["en"])


@pytest.mark.parametrize("language", ["fr", "en"])
def test_the_preview_page_is_in_the_newsletter_language(make_settings, language):
    settings = make_settings(MAILER_LANGUAGE=language)
    t = i18n.strings(language)
    page = _page(settings)
    assert f'<html lang="{language}">' in page
    for key in ("preview_title", "preview_warnings", "preview_desktop", "preview_mobile", "preview_text_part",
                "preview_headers", "preview_download_eml", "preview_reloads", "preview_preheader"):
        assert t[key] in page, key
    assert f'title="{t["preview_desktop_frame"]}"' in page and f'title="{t["preview_mobile_frame"]}"' in page
    assert t["preview_briefs_many"].format(count=6) in page
    size = re.search(r"(\d+[.,]\d) ?\u00a0?(Ko|KB)", page)
    assert size and ("," in size.group(1)) == (language == "fr")
    if language == "fr":
        visible = _visible(page)
        for english in ENGLISH_UI:
            assert english not in visible, english


@pytest.mark.parametrize("language", ["fr", "en"])
def test_the_error_state_is_in_the_newsletter_language_too(project, make_settings, language):
    settings = make_settings(MAILER_LANGUAGE=language)
    briefs = project / "issues" / EXAMPLE_ISSUE / "briefs.txt"
    briefs.write_text(briefs.read_text(encoding="utf-8") + "-->\n", encoding="utf-8")
    page = _page(settings)
    assert i18n.strings(language)["preview_cannot_build"] in page and "empty brief" in page
    if language == "fr":  # the page's own words; the error itself is the library's (as on the command line)
        visible = _visible(re.sub(r'(<div class="error" id="error"><strong>[^<]*</strong>).*?</div>', r"\1", page))
        assert [english for english in ENGLISH_UI if english in visible] == []


def test_every_preview_string_is_used_by_the_page(project):
    template = (project / "templates" / "preview.html.j2").read_text(encoding="utf-8")
    for key in i18n.STRINGS["fr"]:
        if key.startswith("preview_"):
            assert f"t.{key}" in template, key


def _engines_opened():  # noqa: ANN202
    """A counter of the connection pools that made their first connection (one per engine opened)."""
    import sqlalchemy as sa
    from sqlalchemy.pool import Pool

    opened = []

    def first(dbapi_connection, record) -> None:  # noqa: ANN001
        opened.append(record)
    sa.event.listen(Pool, "first_connect", first)
    return opened, lambda: sa.event.remove(Pool, "first_connect", first)


@pytest.mark.parametrize("given", [True, False], ids=["app-store", "own-store"])
def test_the_reports_pages_open_no_store_per_request(make_settings, db_url, store, given):
    """The Reports pages read the app's store (or one they open once, closed on shutdown): twenty
    requests open no engine each (an engine per request also ran the migration check each time)."""
    from starlette.testclient import TestClient

    from .test_reports import send

    settings, _ = send(make_settings, db_url, store)
    app = create_preview_app(settings, EXAMPLE_ISSUE, store if given else None)
    opened, stop_counting = _engines_opened()
    try:
        with TestClient(app) as client:
            for _ in range(10):
                assert client.get("/reports").status_code == 200
                assert client.get(f"/reports/{EXAMPLE_ISSUE}").status_code == 200
        assert len(opened) == (0 if given else 1)
    finally:
        stop_counting()
