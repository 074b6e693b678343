"""Real-browser checks (Playwright driving the Debian Chromium, never a downloaded browser):
the built email as a reader sees it at 375 px and 600 px, and the editor's live preview page.

Without /usr/bin/chromium these tests are skipped, unless MAILER_REQUIRE_BROWSER=1 (CI) where
they fail. Screenshots land in test-artifacts/ for a human to look at.
"""

from __future__ import annotations

import contextlib
import html
import re
from pathlib import Path

import pytest

from mailer.content import i18n, markup
from mailer.web.preview import SAMPLE_NAME, build_issue, create_preview_app, sample_recipient
from mailer.content.render import first_name_of
from tests.browser_support import (ELEMENTS_HOLDING_TEXT_JS, LAYOUT_JS, LINKS_JS, ThreadedServer, distinctive_words,
                                   launched_chromium, opened_page, visible_blocks)
from tests.conftest import ARTIFACTS, EXAMPLE_ISSUE, write_issue

pytestmark = pytest.mark.browser

WIDTHS = (375, 600)
MIN_FONT_PX = 14      # body text smaller than this is hard to read on a phone
MIN_MARGIN_PX = 12    # text glued to the screen edge reads badly


@pytest.fixture(scope="module")
def browser():
    """One Chromium for this module's tests. Module scope, not session: another module's own
    sync_playwright() (tests/test_web_browser.py) cannot start while this one is alive."""
    with launched_chromium() as chromium:
        yield chromium


@pytest.fixture
def new_page(browser):
    with contextlib.ExitStack() as pages:
        yield lambda width, height=900: pages.enter_context(
            opened_page(browser, viewport={"width": width, "height": height}, device_scale_factor=1))


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def assert_fits(page, width: int, what: str) -> dict:
    layout = page.evaluate(LAYOUT_JS)
    assert layout["innerWidth"] == width
    assert layout["scrollWidth"] <= layout["innerWidth"], (
        f"{what}: horizontal scroll at {width} px (content is {layout['scrollWidth']} px wide)")
    return layout


def assert_shown(frame, words: list[str], width: int, what: str, *, min_font: float = MIN_FONT_PX) -> dict:
    """Some visible block shows every word, inside the viewport, with side margins, readable size."""
    blocks = visible_blocks(frame, words)
    assert blocks, f"{what}: no visible element shows {words!r} at {width} px"
    block = blocks[0]
    assert block["left"] >= MIN_MARGIN_PX and block["right"] <= width - MIN_MARGIN_PX, (
        f"{what}: text runs to the edge or off screen at {width} px: {block}")
    assert block["fontSize"] >= min_font, f"{what}: text is {block['fontSize']} px at {width} px"
    return block


def html_to_text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", fragment))


def brief_word_sets(briefs) -> list[tuple[str, list[str]]]:
    """(label, words) for each brief's body and title, from the brief's own rendered text."""
    sets = []
    for brief in briefs:
        sets.append((f"brief {brief.path.name}:{brief.line}", distinctive_words(html_to_text(markup.to_html(brief.body, "fr")))))
        if brief.title:
            sets.append((f"title of {brief.path.name}:{brief.line}", [" ".join(markup.plain_inline(brief.title, "fr").split()).lower()]))
    for label, words in sets:
        assert words and sum(map(len, words)) >= 12, f"{label}: too little distinctive text to check: {words}"
    return sets


def test_email_reads_well_at_phone_and_desktop_widths(project, settings, new_page, artifacts, tmp_path):
    result = build_issue(settings, EXAMPLE_ISSUE, tmp_path / "build")
    email = result.out_dir / "email.html"
    strings = i18n.strings(settings.language)
    unsubscribe_url = sample_recipient(settings).unsubscribe_url
    web_url = result.rendered.web_url
    preheader = result.rendered.issue.preheader
    assert preheader and len(result.briefs) >= 5

    for width in WIDTHS:
        page = new_page(width)
        page.goto(email.as_uri())
        page.screenshot(path=str(artifacts / f"email-{width}.png"), full_page=True)
        layout = assert_fits(page, width, "example issue")

        body_sizes = {}
        for label, words in brief_word_sets(result.briefs):
            body_sizes[label] = assert_shown(page, words, width, label)["fontSize"]
        body_sizes["intro"] = assert_shown(page, distinctive_words(result.rendered.issue.intro), width, "intro")["fontSize"]
        body_sizes["greeting"] = assert_shown(page, [strings["hello"].format(name=first_name_of(SAMPLE_NAME)).lower()], width,
                                              "greeting")["fontSize"]
        titles = {label: size for label, size in body_sizes.items() if label.startswith("title of")}
        texts = {label: size for label, size in body_sizes.items() if label not in titles}
        assert titles, "the example issue should have a titled brief"
        assert len(set(texts.values())) == 1, f"body text sizes differ at {width} px: {texts}"
        assert min(titles.values()) > max(texts.values()), f"titles do not stand out at {width} px: {body_sizes}"

        unsubscribe = [link for link in page.evaluate(LINKS_JS, unsubscribe_url) if link["visible"]]
        assert unsubscribe, f"no visible link to {unsubscribe_url} at {width} px"
        assert unsubscribe[0]["text"] == strings["unsubscribe"]
        assert unsubscribe[0]["width"] > 20 and unsubscribe[0]["height"] >= 10
        assert unsubscribe[0]["right"] <= width
        assert unsubscribe_url.startswith(f"{settings.base_url}/u/")

        web_links = [link for link in page.evaluate(LINKS_JS, web_url) if link["visible"] and link["width"] > 0]
        assert web_links and web_links[0]["text"] == strings["view_online"], f"web-version link at {width} px"

        assert_shown(page, [settings.postal_address.lower()], width, "postal address", min_font=11)

        holders = page.evaluate(ELEMENTS_HOLDING_TEXT_JS, preheader)
        assert holders, "the preheader is not in the DOM"
        assert not any(h["visible"] and h["width"] > 0 and h["height"] > 0 for h in holders), (
            f"the preheader is visible at {width} px: {holders}")
        assert preheader not in layout["bodyText"]


def test_long_url_and_long_word_do_not_scroll_sideways_on_a_phone(project, settings, new_page, artifacts, tmp_path):
    long_url = "https://example.org/rapports/" + "-".join(["donnees"] * 4) + "/" + "x" * 140 + "?source=lettre&id=" + "9" * 40
    long_word = "Anticonstitutionnellement" * 5
    write_issue(project, "2026-12-03-longs", {
        "briefs.txt": (
            f"--> Le rapport complet est en ligne : {long_url} — bonne lecture.\n"
            f"--> Un mot sans fin pour finir : {long_word} et voilà.\n"
            f"--> Et un [lien Markdown]({long_url}) suivi de {long_url[:60]}{'z' * 120} puis rien.\n"
        ),
    })
    result = build_issue(settings, "2026-12-03-longs", tmp_path / "build")
    page = new_page(375)
    page.goto((result.out_dir / "email.html").as_uri())
    page.screenshot(path=str(artifacts / "email-long-words-375.png"), full_page=True)
    assert_fits(page, 375, "issue with a long URL and a long word")
    for label, words in brief_word_sets(result.briefs):
        assert_shown(page, words, 375, label)
    link = [item for item in page.evaluate(LINKS_JS, long_url) if item["visible"]]
    assert link and link[0]["right"] <= 375, "the long URL is not a visible link within the screen"


FRAME_SHOWS_ALL_JS = """
(id) => {
  const frame = document.getElementById(id);
  const doc = frame && frame.contentDocument;
  return !!doc && doc.readyState === 'complete' && doc.body.childElementCount > 0
    && doc.documentElement.scrollHeight <= frame.clientHeight + 1;
}
"""


def _wait_for_reload(page, timeout_ms: int = 5_000) -> None:
    """The page reloads by itself: a marker set on the old document disappears."""
    page.wait_for_function("() => window.__before_change === undefined && document.readyState === 'complete'",
                           timeout=timeout_ms)


def _mark(page) -> None:
    page.evaluate("() => { window.__before_change = true; }")


def test_preview_shows_both_widths_text_headers_and_follows_edits(project, settings, new_page, artifacts):
    from playwright.sync_api import expect

    expected = build_issue(settings, EXAMPLE_ISSUE, write=False)
    unsubscribe_url = sample_recipient(settings).unsubscribe_url
    greeting = i18n.strings(settings.language)["hello"].format(name=first_name_of(SAMPLE_NAME))
    briefs_file = project / "issues" / EXAMPLE_ISSUE / "briefs.txt"

    with ThreadedServer(create_preview_app(settings, EXAMPLE_ISSUE)) as server:
        page = new_page(1320, 1000)
        page.goto(server.url + "/")

        for frame_id, width in (("desktop", 600), ("mobile", 375)):
            iframe = page.locator(f"iframe#{frame_id}")
            expect(iframe).to_be_visible()
            assert iframe.evaluate("el => el.clientWidth") == width
            frame = iframe.element_handle().content_frame()
            frame.wait_for_load_state("load")
            assert_fits(frame, width, f"{frame_id} preview")
            for label, words in brief_word_sets(expected.briefs):
                assert_shown(frame, words, width, f"{frame_id} preview, {label}")
            # The whole email, footer included, shows without scrolling inside the frame.
            page.wait_for_function(FRAME_SHOWS_ALL_JS, arg=frame_id, timeout=3_000)
            assert [link for link in frame.evaluate(LINKS_JS, unsubscribe_url) if link["visible"]]

        text = page.locator("pre#text")
        expect(text).to_be_visible()
        expect(text).to_contain_text(greeting)
        expect(text).to_contain_text(unsubscribe_url)

        headers = dict(zip(page.locator("#headers th").all_inner_texts(),
                           page.locator("#headers td").all_inner_texts()))
        for name in ("List-Unsubscribe", "List-Unsubscribe-Post", "Message-ID"):
            assert name in headers, f"header {name} missing from the preview: {sorted(headers)}"
        assert unsubscribe_url in headers["List-Unsubscribe"]
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert headers["Message-ID"].startswith("<") and headers["Message-ID"].endswith(f"@{settings.sender_domain}>")

        # The editor adds a brief: the page reloads by itself and shows it, in HTML and text.
        original = briefs_file.read_text(encoding="utf-8")
        _mark(page)
        briefs_file.write_text(original.rstrip("\n") + "\n--> Une brève ajoutée pendant l'aperçu.\n", encoding="utf-8")
        _wait_for_reload(page)
        added = "Une brève ajoutée pendant"
        expect(page.frame_locator("iframe#desktop").get_by_text(added)).to_be_visible(timeout=5_000)
        expect(page.frame_locator("iframe#mobile").get_by_text(added)).to_be_visible(timeout=5_000)
        expect(page.locator("pre#text")).to_contain_text(added)
        page.screenshot(path=str(artifacts / "preview.png"), full_page=True)

        # The editor leaves an empty brief: the page says which file and line, instead of an email.
        broken = briefs_file.read_text(encoding="utf-8") + "-->\n"
        broken_line = broken.count("\n")
        _mark(page)
        briefs_file.write_text(broken, encoding="utf-8")
        _wait_for_reload(page)
        error = page.locator("#error")
        expect(error).to_be_visible(timeout=5_000)
        expect(error).to_contain_text(f"briefs.txt:{broken_line}")
        expect(error).to_contain_text("empty brief")
        assert page.locator("iframe").count() == 0
        page.screenshot(path=str(artifacts / "preview-error.png"), full_page=True)

        # Fixed again: the preview comes back without a manual reload.
        _mark(page)
        briefs_file.write_text(original, encoding="utf-8")
        _wait_for_reload(page)
        expect(page.locator("iframe#desktop")).to_be_visible(timeout=5_000)
        expect(page.locator("#error")).to_have_count(0)
