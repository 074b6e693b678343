"""The public pages in a real browser (Playwright driving the Debian Chromium) against the app served
by uvicorn on loopback: subscribe → confirmation email (read from the outbox) → confirm link → its
button → active;
unsubscribe page → button → unsubscribed → resubscribe; the archive lists a sent issue.

Skipped without /usr/bin/chromium unless MAILER_REQUIRE_BROWSER=1. Screenshots: test-artifacts/web-*.png.
"""

from __future__ import annotations

import re
import time
from email import message_from_bytes, policy
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailer.sending.dispatch import send_issue
from mailer.store.schema import subscribers
from tests.browser_support import LAYOUT_JS, launched_chromium, opened_page, served_web_app
from tests.conftest import ARTIFACTS, EXAMPLE_ISSUE

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    with launched_chromium() as chromium:
        yield chromium


@pytest.fixture
def site(make_settings, sqlite_store):
    """The app on a free loopback port, its public URL (MAILER_BASE_URL) being that address."""
    with served_web_app(make_settings, sqlite_store) as served:
        yield served


@pytest.fixture
def page(browser):
    with opened_page(browser, viewport={"width": 375, "height": 800}, device_scale_factor=1) as opened:
        yield opened


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"web-{name}.png"), full_page=True)


def wait_for_notice(outbox: Path, kind: str, email: str, timeout: float = 10.0) -> Path:
    """Notices are sent after the answer (a background task): give it a moment.
    They are filed as outbox/<kind>/<UTC time>-<address>.eml."""
    deadline = time.monotonic() + timeout
    while not (found := sorted((outbox / kind).glob(f"*-{email}.eml"))):
        assert time.monotonic() < deadline, f"no {kind} email to {email} in {outbox}"
        time.sleep(0.05)
    return found[-1]


def status_of(store, email: str) -> str:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(subscribers.c.status).where(subscribers.c.email == email)).scalar_one()


def assert_fits_phone(page, what: str) -> None:
    layout = page.evaluate(LAYOUT_JS)
    assert layout["scrollWidth"] <= layout["innerWidth"], f"{what}: horizontal scroll at 375 px"


def test_subscribe_confirm_unsubscribe_resubscribe_in_a_browser(site, page):
    server, settings, store = site
    page.goto(f"{server.url}/subscribe")
    assert_fits_phone(page, "subscribe form")
    honeypot = page.locator("#website").bounding_box()
    assert honeypot is None or honeypot["x"] + honeypot["width"] <= 0, "the honeypot field is visible"
    page.get_by_label("Adresse email").fill("Camille@example.org")
    page.get_by_label("Prénom ou nom (facultatif)").fill("Camille <Exemple>")
    shot(page, "subscribe")
    page.get_by_role("button", name="M’abonner").click()
    page.get_by_role("heading", name="Vérifiez votre boîte de réception").wait_for()
    shot(page, "check-inbox")
    assert status_of(store, "camille@example.org") == "pending"

    message = message_from_bytes(wait_for_notice(settings.outbox_dir, "confirm", "Camille@example.org")
                                 .read_bytes(), policy=policy.default)
    assert message["To"].addresses[0].display_name == ""  # not confirmed yet: nothing the form's sender typed
    assert "Camille <Exemple>" not in message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    link = re.search(r'href="(' + re.escape(server.url) + r'/confirm/[A-Za-z0-9_-]+)"', html).group(1)
    page.goto(link)  # opening the link (what a scanner does too) shows a button and changes nothing
    page.get_by_role("heading", name="Confirmer votre abonnement").wait_for()
    assert_fits_phone(page, "confirm page")
    shot(page, "confirm")
    assert status_of(store, "camille@example.org") == "pending"
    page.get_by_role("button", name="Confirmer mon abonnement").click()
    page.get_by_role("heading", name="Abonnement confirmé").wait_for()
    shot(page, "confirmed")
    assert status_of(store, "camille@example.org") == "active"

    welcome = message_from_bytes(wait_for_notice(settings.outbox_dir, "welcome", "Camille@example.org")
                                 .read_bytes(), policy=policy.default)
    unsubscribe_url = re.search(r"<(http[^>]+/u/[^>]+)>", str(welcome["List-Unsubscribe"])).group(1)
    page.goto(unsubscribe_url)
    assert page.locator("main").inner_text().count("Camille <Exemple>") == 1  # the name, shown as text
    assert status_of(store, "camille@example.org") == "active"  # opening the page changed nothing
    assert_fits_phone(page, "unsubscribe page")
    shot(page, "unsubscribe")
    page.get_by_role("button", name="Me désabonner").click()
    page.get_by_role("heading", name="Vous êtes désabonné·e").wait_for()
    shot(page, "unsubscribed")
    assert status_of(store, "camille@example.org") == "unsubscribed"
    page.get_by_role("button", name="Me réabonner").click()
    page.get_by_role("heading", name="Vous êtes de nouveau abonné·e").wait_for()
    shot(page, "resubscribed")
    assert status_of(store, "camille@example.org") == "active"


def test_archive_lists_a_sent_issue_and_opens_it(site, page):
    from mailer.subscribers import add_subscriber
    server, settings, store = site
    add_subscriber(store, "reader@example.org", name="Reader")
    send_issue(settings, store, EXAMPLE_ISSUE)
    page.goto(f"{server.url}/archive")
    assert_fits_phone(page, "archive")
    shot(page, "archive")
    links = page.locator(f'a[href="/issues/{EXAMPLE_ISSUE}"]')
    assert links.count() == 1
    subject = links.inner_text()
    links.click()
    page.wait_for_url(f"{server.url}/issues/{EXAMPLE_ISSUE}")
    assert page.title() == subject
    text = page.locator("body").inner_text()
    assert "reader@example.org" not in text and "Reader" not in text
    assert "Bonjour" not in text and "Se désabonner" not in text  # the web edition: no personal parts
    assert_fits_phone(page, "web edition")
    shot(page, "issue")
    page.goto(server.url)  # the site's root leads to the archive
    page.wait_for_url(f"{server.url}/archive")
