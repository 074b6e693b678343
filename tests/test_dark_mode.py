"""Dark mode in a real Chromium (Playwright, `color_scheme` emulation): the emails (issue, confirm,
welcome; both languages' templates are the same) and every kind of public page (archive, web edition,
subscribe form and its answers, unsubscribe, confirm, errors) in the light and the dark scheme, plus
the email under Outlook.com's `[data-ogsc]`/`[data-ogsb]` marks. For each, every visible text is
measured (`browser_support.CONTRAST_JS`: computed colours) against WCAG AA, and the dark rendering must
really be dark. Screenshots: test-artifacts/dark-mode/NAME-SCHEME.png.
"""

from __future__ import annotations

import re

import pytest

from mailer import tokens
from mailer.config import secret_key_for
from mailer.content.render import Recipient
from mailer.sending.dispatch import send_issue
from mailer.sending.notices import Notifier
from mailer.subscribers import add_subscriber
from mailer.web.preview import build_issue
from tests.browser_support import contrast_failures, launched_chromium, opened_page, served_web_app
from tests.conftest import ARTIFACTS, EXAMPLE_ISSUE, write_issue

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SHOTS = ARTIFACTS / "dark-mode"
OUTLOOK_MARKS = "document.documentElement.setAttribute('data-ogsc', ''); document.documentElement.setAttribute('data-ogsb', '')"
BODY_BACKGROUND_JS = "() => getComputedStyle(document.body).backgroundColor"


@pytest.fixture(scope="module")
def browser():
    with launched_chromium() as chromium:
        yield chromium


@pytest.fixture
def pages(browser):
    """One page per scheme (a phone's width: where most newsletters are read)."""
    with opened_page(browser, viewport={"width": 400, "height": 900}, color_scheme="light") as light, \
            opened_page(browser, viewport={"width": 400, "height": 900}, color_scheme="dark") as dark:
        yield {"light": light, "dark": dark}


def _luminance(css: str) -> float:
    r, g, b = (int(v) / 255 for v in re.findall(r"\d+(?:\.\d+)?", css)[:3])
    lin = [v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def check(page, name: str, scheme: str, problems: list[str], *, outlook: bool = False) -> int:
    """Measure every text of the page as it stands; record what fails; screenshot. Returns texts measured."""
    label = f"{name}-{scheme}{'-outlook' if outlook else ''}"
    if outlook:
        page.evaluate(OUTLOOK_MARKS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{label}.png"), full_page=True)
    texts, failing = contrast_failures(page)
    problems.extend(f"{label}: {t['tag']} {t['text']!r} {t['fg']} on {t['bg']} = {t['ratio']:.2f}:1" for t in failing)
    if scheme == "dark" or outlook:
        # the text sits on dark backgrounds (the card, not only the page around it)
        light_behind = [t for t in texts if t["bgLuminance"] > 0.2]
        problems.extend(f"{label}: light background behind {t['tag']} {t['text']!r} ({t['bg']})" for t in light_behind)
    else:
        assert _luminance(page.evaluate(BODY_BACKGROUND_JS)) > 0.5, f"{label}: not light"
    return len(texts)


def test_emails_are_readable_in_light_dark_and_outlook_dark(project, make_settings, pages):
    settings = make_settings()
    write_issue(project, "2026-12-03-images", {
        "briefs.txt": "Intro avec [un lien](https://example.org/intro).\n\n"
                      "--> **Titre lié** [à lire](https://example.org/a) : *emphase*, `code`, « guillemets ».\n\n"
                      "![Carte](https://img.example.org/carte.png)\n\n"
                      "--> Une autre brève avec https://example.org/b et une liste :\n\n- un\n- deux\n"},
        'subject = "Images et liens"\ndate = 2026-12-03\npreheader = "Aperçu"\n')
    emails = {"issue": build_issue(settings, EXAMPLE_ISSUE, write=False).html_bytes.decode(),
              "generated": build_issue(settings, "2026-12-03-images", write=False).html_bytes.decode()}
    notifier = Notifier(settings)
    for kind in ("confirm", "welcome"):
        notice, recipient = notifier.build(kind, 5, "camille@example.org", "Camille")
        emails[kind] = notice.personalise(recipient)[0]
    problems: list[str] = []
    measured = 0
    for name, html in emails.items():
        assert 'name="color-scheme" content="light dark"' in html and 'name="supported-color-schemes"' in html
        assert "@media (prefers-color-scheme: dark)" in html and "[data-ogsc]" in html and "[data-ogsb]" in html
        for scheme, page in pages.items():
            page.set_content(html, wait_until="domcontentloaded")
            measured += check(page, f"email-{name}", scheme, problems)
        page = pages["light"]
        page.set_content(html, wait_until="domcontentloaded")
        measured += check(page, f"email-{name}", "light", problems, outlook=True)
    assert measured > 120
    assert not problems, "\n".join(problems)


@pytest.fixture
def site(make_settings, sqlite_store):
    with served_web_app(make_settings, sqlite_store) as served:
        yield served


def test_public_pages_follow_the_readers_scheme_and_stay_readable(site, pages):
    server, settings, store = site
    reader, _ = add_subscriber(store, "reader@example.org", name="Reader")
    pending, _ = add_subscriber(store, "new@example.org", status="pending")
    send_issue(settings, store, EXAMPLE_ISSUE)
    key = secret_key_for(settings)
    unsubscribe = f"{server.url}/u/{tokens.make_token(key, 'unsubscribe', reader)}"
    confirm = f"{server.url}/confirm/{tokens.make_token(key, 'confirm', pending)}"
    problems: list[str] = []
    measured = 0
    for scheme, page in pages.items():
        visits = {
            "archive": f"{server.url}/archive",
            "issue": f"{server.url}/issues/{EXAMPLE_ISSUE}",
            "subscribe": f"{server.url}/subscribe",
            "confirm": confirm,
            "not-found": f"{server.url}/nope",
            "invalid-link": f"{server.url}/u/not-a-token",
        }
        for name, url in visits.items():
            page.goto(url)
            measured += check(page, name, scheme, problems)
        page.goto(f"{server.url}/subscribe")  # the form's error state: the browser's own check turned off
        page.evaluate("document.querySelector('form').noValidate = true")
        page.fill("#email", "pas une adresse")
        page.click("#subscribe")
        page.locator("#email-error").wait_for()
        measured += check(page, "subscribe-invalid", scheme, problems)
        page.fill("#email", f"{scheme}@example.org")
        page.click("#subscribe")
        page.locator('main[data-state="check-inbox"]').wait_for()
        measured += check(page, "check-inbox", scheme, problems)
        page.goto(unsubscribe)
        measured += check(page, "unsubscribe", scheme, problems)
        page.click("#unsubscribe")
        page.locator('main[data-state="unsubscribed"]').wait_for()
        measured += check(page, "unsubscribed", scheme, problems)  # with its secondary (resubscribe) button
        page.click("#resubscribe")
        page.locator('main[data-state="resubscribed"]').wait_for()
        if scheme == "dark":
            assert _luminance(page.evaluate(BODY_BACKGROUND_JS)) < 0.05, "the dark scheme left the page light"
    assert measured > 150
    assert not problems, "\n".join(problems)
