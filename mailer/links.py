"""The one URL builder: every address of the public web app that an email or a page links to.
The web app's routes are declared from the same path templates (`web.app`), so a path changes in
one place.

`TEST_SUBSCRIBER_ID` (0) is the subscriber id of test sends and previews: their links carry a
valid token that names nobody, and the web app answers them with a "this was a test message" page.
"""

from __future__ import annotations

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


def confirm_url(base_url: str, key: bytes, subscriber_id: int) -> str:
    """`BASE/confirm/TOKEN`: the double opt-in link of the confirmation email."""
    return base_url + CONFIRM.format(token=tokens.make_token(key, "confirm", subscriber_id))


def web_edition_url(base_url: str, key: bytes, slug: str, *, public: bool) -> str:
    """`BASE/issues/SLUG` for a public issue; for a private one (sent to a list or a segment, or
    `archive = false`) the same address with a key only its recipients have (`?k=`,
    `tokens.web_edition_key`), so the email's "view online" link works while the archive hides it."""
    url = base_url + WEB_EDITION.format(slug=slug)
    return url if public else f"{url}?k={tokens.web_edition_key(key, slug)}"


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
