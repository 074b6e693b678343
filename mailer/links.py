"""The one URL builder: every address of the public web app that an email or a page links to, and of
the editor's local preview. The apps' routes are declared from the same path templates (`web.app`,
`web.preview`), emails get their URLs from the functions below, and the web pages from `Site` (the
`urls` object of their templates), so a path changes in one place (`tests/test_owners.py` finds
hand-written ones; `tests/test_links.py` requests every URL built here).

`TEST_SUBSCRIBER_ID` (0) is the subscriber id of test sends and previews: their links carry a
valid token that names nobody, and the web app answers them with a "this was a test message" page.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from . import tokens

TEST_SUBSCRIBER_ID = 0

# Path templates (Starlette route syntax); the web app routes these, the functions below format them.
HOME = "/"
UNSUBSCRIBE = "/u/{token}"
RESUBSCRIBE = "/u/{token}/resubscribe"
SUBSCRIBE = "/subscribe"
CONFIRM = "/confirm/{token}"
ARCHIVE = "/archive"
WEB_EDITION = "/issues/{slug}"
FEED = "/feed.xml"
WEBHOOK = "/webhooks/{provider}"
CLICK = "/c/{token}"   # a tracked link (content/tracking.py)
OPEN = "/o/{token}"    # the open pixel (MAILER_TRACK_OPENS)

# The editor's preview server (`mailer preview`, `web.preview`), on its own port: its pages and Reports.
PREVIEW = "/"
PREVIEW_HTML = "/email.html"
PREVIEW_TEXT = "/email.txt"
PREVIEW_EML = "/email.eml"
PREVIEW_VERSION = "/version"
REPORTS = "/reports"
REPORT = "/reports/{slug}"

SAMPLE_TOKEN = "x" * 43  # as long as the longest real token: what size estimates use


def is_test_subscriber(subscriber_id: int) -> bool:
    return subscriber_id == TEST_SUBSCRIBER_ID


def unsubscribe_url(base_url: str, key: bytes, subscriber_id: int, issue_id: int | None = None) -> str:
    """`BASE/u/TOKEN`: the unsubscribe page and RFC 8058 one-click target (List-Unsubscribe); with
    `issue_id` the token names the issue it was sent with (`mailer report` attributes the unsubscribe)."""
    return base_url + UNSUBSCRIBE.format(token=tokens.make_token(key, "unsubscribe", subscriber_id, issue_id))


def unsubscribe_prefix(base_url: str) -> str:
    """`BASE/u/`: what every unsubscribe URL starts with (links never click-tracked)."""
    return base_url + UNSUBSCRIBE.format(token="")


def click_prefix(base_url: str) -> str:
    """`BASE/c/`: a tracked link is this plus its click token (`tokens.click_token`); the send's hot
    path appends each recipient's tokens to it."""
    return base_url + CLICK.format(token="")


def open_prefix(base_url: str) -> str:
    """`BASE/o/`: the open pixel's address is this plus its token (position 0)."""
    return base_url + OPEN.format(token="")


def sample_unsubscribe_url(base_url: str) -> str:
    """An unsubscribe URL of a real one's length, for size estimates (no valid token)."""
    return base_url + UNSUBSCRIBE.format(token=SAMPLE_TOKEN)


def longest_slot_url(base_url: str) -> str:
    """A URL as long as the longest a link slot holds (unsubscribe or confirm, a real token's length;
    no valid token): what text wrapping reserves for a slot."""
    return max((base_url + route.format(token=SAMPLE_TOKEN) for route in (UNSUBSCRIBE, CONFIRM)), key=len)


def confirm_url(base_url: str, key: bytes, subscriber_id: int) -> str:
    """`BASE/confirm/TOKEN`: the double opt-in link of the confirmation email."""
    return base_url + CONFIRM.format(token=tokens.make_token(key, "confirm", subscriber_id))


def web_edition_url(base_url: str, key: bytes, slug: str, *, public: bool) -> str:
    """`BASE/issues/SLUG` for a public issue; for a private one (sent to a list or a segment, or
    `archive = false`) the same address with a key only its recipients have (`?k=`,
    `tokens.web_edition_key`), so the email's "view online" link works while the archive hides it."""
    url = edition_url(base_url, slug)
    return url if public else f"{url}?k={tokens.web_edition_key(key, slug)}"


def edition_url(base_url: str, slug: str) -> str:
    """`BASE/issues/SLUG` with the slug as it is and no key: a public issue's `web_edition_url`."""
    return base_url + WEB_EDITION.format(slug=slug)


def archive_url(base_url: str) -> str:
    return base_url + ARCHIVE


def subscribe_url(base_url: str) -> str:
    return base_url + SUBSCRIBE


def public_issue_path(slug: str) -> str:
    """`/issues/SLUG` with the slug percent-encoded (RFC 3986): the path the Atom feed links to and
    names its entries by."""
    return WEB_EDITION.format(slug=quote(slug, safe=""))


def public_issue_url(base_url: str, slug: str) -> str:
    """`BASE/issues/SLUG` of a public issue (slug percent-encoded), as the archive's feed links it."""
    return base_url + public_issue_path(slug)


def feed_url(base_url: str) -> str:
    """`BASE/feed.xml`: the archive's Atom feed."""
    return base_url + FEED


@dataclass(frozen=True)
class Site:
    """The public web app's addresses under `base` (MAILER_BASE_URL, or a page's root path: "" when the
    app is mounted at the top), for code and templates that already hold a token or a slug. The web
    app hands one to every page template as `urls`."""

    base: str = ""

    def archive(self) -> str:
        return archive_url(self.base)

    def subscribe(self) -> str:
        return subscribe_url(self.base)

    def feed(self) -> str:
        return feed_url(self.base)

    def issue(self, slug: str) -> str:
        """A public issue's web edition (`public_issue_url`)."""
        return public_issue_url(self.base, slug)

    def unsubscribe(self, token: str) -> str:
        """The unsubscribe page (GET) and its form's target (POST) for an unsubscribe token."""
        return self.base + UNSUBSCRIBE.format(token=token)

    def resubscribe(self, token: str) -> str:
        return self.base + RESUBSCRIBE.format(token=token)

    def confirm(self, token: str) -> str:
        """The confirmation page (GET) and its button's target (POST) for a confirm token."""
        return self.base + CONFIRM.format(token=token)


@dataclass(frozen=True)
class PreviewSite:
    """The preview server's addresses (relative to its root), for `templates/preview.html.j2` and
    `reports.html.j2` (`urls` in their context)."""

    base: str = ""

    def email_html(self) -> str:
        return self.base + PREVIEW_HTML

    def email_text(self) -> str:
        return self.base + PREVIEW_TEXT

    def email_eml(self) -> str:
        return self.base + PREVIEW_EML

    def version(self) -> str:
        return self.base + PREVIEW_VERSION

    def reports(self) -> str:
        return self.base + REPORTS

    def report(self, slug: str) -> str:
        return self.base + REPORT.format(slug=quote(slug, safe=""))
