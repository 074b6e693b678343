"""Every URL `mailer/links.py` builds is answered by the app it points to, through real HTTP (uvicorn on
loopback): the public web app for the emails' and pages' links, the preview server for its own.
A builder added to links.py without a case here fails `test_every_builder_has_a_case`."""

from __future__ import annotations

import inspect

import httpx
import pytest
import sqlalchemy as sa

from mailer import links, tokens
from mailer.config import secret_key_for
from mailer.sending.dispatch import send_issue
from mailer.store import open_store
from mailer.store.schema import editions, issues
from mailer.store.schema import links as link_table
from mailer.subscribers import add_subscriber
from mailer.web.app import create_app
from mailer.web.preview import create_preview_app

from .browser_support import ThreadedServer
from .conftest import EXAMPLE_ISSUE

# (method, status) per builder: what the route answers a valid link with (a GET never changes anything;
# the sample unsubscribe URL carries no valid token, so its route answers "invalid link", 400)
WEB_CASES = {
    "unsubscribe_url": ("GET", 200), "unsubscribe_prefix": ("GET", 200), "sample_unsubscribe_url": ("GET", 400),
    "longest_slot_url": ("GET", 400),
    "confirm_url": ("GET", 200), "web_edition_url": ("GET", 200), "web_edition_url(private)": ("GET", 200),
    "edition_url": ("GET", 200),
    "archive_url": ("GET", 200), "subscribe_url": ("GET", 200), "feed_url": ("GET", 200),
    "public_issue_path": ("GET", 200), "public_issue_url": ("GET", 200),
    "click_prefix": ("GET", 302), "open_prefix": ("GET", 200),
    "Site.archive": ("GET", 200), "Site.subscribe": ("GET", 200), "Site.feed": ("GET", 200),
    "Site.issue": ("GET", 200), "Site.unsubscribe": ("GET", 200), "Site.confirm": ("GET", 200),
    "Site.resubscribe": ("POST", 200),
}
PREVIEW_CASES = ["PreviewSite.email_html", "PreviewSite.email_text", "PreviewSite.email_eml", "PreviewSite.version",
                 "PreviewSite.reports", "PreviewSite.report"]
NOT_URLS = {"is_test_subscriber"}


def _builders() -> set[str]:
    names = {name for name, func in inspect.getmembers(links, inspect.isfunction)
             if func.__module__ == links.__name__ and not name.startswith("_")} - NOT_URLS
    for cls in (links.Site, links.PreviewSite):
        names |= {f"{cls.__name__}.{name}" for name, _ in inspect.getmembers(cls, inspect.isfunction)
                  if not name.startswith("_")}
    return names


def test_every_builder_has_a_case():
    cases = {name.split("(")[0] for name in WEB_CASES} | set(PREVIEW_CASES)
    assert cases == _builders()


@pytest.fixture
def sent(make_settings):
    """An issue sent (click and open tracking on) to one person: ids for real tokens."""
    settings = make_settings(MAILER_TRACK_CLICKS="1", MAILER_TRACK_OPENS="1")
    store = open_store(settings.database_url)
    subscriber_id, _ = add_subscriber(store, "reader@example.org", name="Reader")
    send_issue(settings, store, EXAMPLE_ISSUE)
    with store.begin() as conn:
        issue_id, slug = conn.execute(sa.select(issues.c.id, issues.c.slug)).one()
        edition_id = conn.execute(sa.select(editions.c.id).where(editions.c.issue_id == issue_id)).scalar_one()
        position = conn.execute(sa.select(sa.func.min(link_table.c.position))
                                .where(link_table.c.edition_id == edition_id, link_table.c.position > 0)).scalar_one()
    assert position is not None  # the example issue has links: one is tracked
    yield settings, store, dict(subscriber=subscriber_id, issue=issue_id, slug=slug, edition=edition_id,
                                position=position)
    store.close()


def _web_urls(base: str, key: bytes, ids: dict) -> dict[str, str]:
    sid, slug = ids["subscriber"], ids["slug"]
    unsubscribe, confirm = tokens.make_token(key, "unsubscribe", sid), tokens.make_token(key, "confirm", sid)
    delivery = tokens.click_delivery(key, sid, ids["edition"])
    site = links.Site(base)
    return {
        "unsubscribe_url": links.unsubscribe_url(base, key, sid, ids["issue"]),
        "unsubscribe_prefix": links.unsubscribe_prefix(base) + unsubscribe,
        "sample_unsubscribe_url": links.sample_unsubscribe_url(base),
        "longest_slot_url": links.longest_slot_url(base),
        "confirm_url": links.confirm_url(base, key, sid),
        "web_edition_url": links.web_edition_url(base, key, slug, public=True),
        "web_edition_url(private)": links.web_edition_url(base, key, slug, public=False),
        "edition_url": links.edition_url(base, slug),
        "archive_url": links.archive_url(base), "subscribe_url": links.subscribe_url(base),
        "feed_url": links.feed_url(base),
        "public_issue_path": base + links.public_issue_path(slug), "public_issue_url": links.public_issue_url(base, slug),
        "click_prefix": links.click_prefix(base) + tokens.click_token(key, delivery, ids["position"]),
        "open_prefix": links.open_prefix(base) + tokens.click_token(key, delivery, 0),
        "Site.archive": site.archive(), "Site.subscribe": site.subscribe(), "Site.feed": site.feed(),
        "Site.issue": site.issue(slug), "Site.unsubscribe": site.unsubscribe(unsubscribe),
        "Site.confirm": site.confirm(confirm), "Site.resubscribe": site.resubscribe(unsubscribe),
    }


def test_every_url_links_builds_is_answered_by_the_web_app(sent):
    settings, store, ids = sent
    with ThreadedServer(create_app(settings, store)) as web, httpx.Client(timeout=30) as client:
        urls = _web_urls(web.url, secret_key_for(settings), ids)
        assert set(urls) == set(WEB_CASES)
        answers = {name: client.request(WEB_CASES[name][0], url, follow_redirects=False).status_code
                   for name, url in urls.items()}
        home = client.get(web.url + links.HOME, follow_redirects=False)
    assert answers == {name: status for name, (_, status) in WEB_CASES.items()}
    assert home.status_code == 307 and home.headers["location"] == links.archive_url("")


def test_every_url_of_the_preview_is_answered(sent):
    settings, store, ids = sent
    with ThreadedServer(create_preview_app(settings, EXAMPLE_ISSUE, store)) as preview, httpx.Client(timeout=60) as client:
        site = links.PreviewSite(preview.url)
        answers = {name: client.get(getattr(site, name.split(".")[1])(*((ids["slug"],) if name.endswith("report") else ())))
                   .status_code for name in PREVIEW_CASES}
        page = client.get(preview.url + links.PREVIEW)
    assert answers == dict.fromkeys(PREVIEW_CASES, 200)
    assert page.status_code == 200
    for href in (links.PreviewSite().email_html(), links.PreviewSite().email_eml(), links.PreviewSite().reports()):
        assert href in page.text  # the page links the routes through links.py


def test_every_path_template_is_routed():
    """Each path template of links.py is a route of the web app or of the preview server."""
    preview = {links.PREVIEW, links.PREVIEW_HTML, links.PREVIEW_TEXT, links.PREVIEW_EML, links.PREVIEW_VERSION,
               links.REPORTS, links.REPORT}
    templates = {value for name, value in vars(links).items()
                 if name.isupper() and isinstance(value, str) and value.startswith("/")}
    from mailer.web import app as web_app, preview as preview_app
    import ast
    declared = set()
    for module in (web_app, preview_app):
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Route":
                assert isinstance(node.args[0], ast.Attribute), f"{module.__name__}: a route path written by hand"
                declared.add(getattr(links, node.args[0].attr))
    assert templates == declared
    assert preview <= declared
