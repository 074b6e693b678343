"""The public web app (Starlette): routes and pages only — unsubscribe, subscribe + confirm,
provider webhooks, archive. The rules are `subscribers.signup` (the person's own choices) and
`subscribers.feedback` (providers' events); the paths are `links`'; all SQL is the store's.

Routes
  GET  /                       307 to /archive
  GET  /u/TOKEN                page naming the newsletter with an "Unsubscribe me" button (a form);
                               a GET never changes anything, so link scanners unsubscribe no one
  POST /u/TOKEN                unsubscribes at once (RFC 8058 `List-Unsubscribe=One-Click` or the
                               page's form), 200, idempotent
  POST /u/TOKEN/resubscribe    the person's own choice: active again (even after a bounce or a
                               complaint — a human click on a POST-only button is consent)
  GET  /subscribe              form (no JavaScript), honeypot, per-IP rate limit on POST
  POST /subscribe              pending + confirmation email; the same answer whatever the address's state
  GET  /confirm/TOKEN          a page with a "confirm" button; a GET (or HEAD) confirms no one, since
                               mail scanners (Outlook SafeLinks, corporate gateways) follow links
  POST /confirm/TOKEN          pending → active (+ welcome email), idempotent
  POST /webhooks/PROVIDER      the body (size-checked here) goes to the provider's `Webhook`
                               (`providers`), its events to `subscribers.feedback`; for
                               /webhooks/sendgrid: signed events → provider_events (idempotent) →
                               suppressions; refused (403, with the reason) while
                               MAILER_SENDGRID_WEBHOOK_PUBLIC_KEY is unset; unknown provider: 404
  GET  /archive, /issues/SLUG  public sent issues and their web editions; a private issue's web
                               edition only with its key (`?k=`, in the email's "view online" link)
  GET  /feed.xml               the archive as an Atom feed (`feed.py`), with ETag/Last-Modified (304)
  GET  /c/TOKEN                a tracked link (content/tracking.py): 302 to the URL of the edition's link
                               table the signed token names, the click recorded (not on HEAD); any
                               other token 404 and no redirect (never an open redirect)
  GET  /o/TOKEN                the open pixel (MAILER_TRACK_OPENS): a 1×1 GIF, the open recorded

Tokens are opaque (`tokens.py`: encrypted and authenticated, no id or address readable). A malformed
or tampered token gets 400, a well-formed one naming nobody 404, and nothing changes. Subscriber id
`links.TEST_SUBSCRIBER_ID` (0) is the one test sends and previews use: its links lead to a "this was
a test message" page.

Pages are Jinja templates in `templates/web/` (autoescape on), in MAILER_LANGUAGE, without
JavaScript, under a strict Content-Security-Policy and `Referrer-Policy: no-referrer` (a token in the
address bar never leaks to another site). Database work runs in worker threads (anyio's pool; on
SQLite two threads and an in-process lock, since SQLite has one writer anyway); one `Store` per app;
every query is a `Store` method; reading SendGrid's events is `providers/sendgrid_events.py`.

Decisions (see also the templates' comments):
* one-click and the page's button are both a POST; any POST to /u/TOKEN unsubscribes (the token is
  the capability), the event's source says "one-click" for the RFC 8058 body and "web" otherwise;
* the subscribe form never reveals whether an address is known: same page, same status, email sent
  after the answer (a background task); nothing at all for an active address; a suppressed person
  gets a confirmation email and comes back only by pressing its button (their own choice:
  `subscribers.signup`);
* until an address is confirmed nothing its submitter typed is shown or sent: the confirmation email
  is neutral (`notices`), the unsubscribe page of a pending person greets no one;
* confirmation emails: at most one a minute and five a day per address, whoever asks (`signup`);
* SendGrid webhook: only with a verification key (ECDSA over the raw body, timestamp at most
  MAILER_WEBHOOK_MAX_AGE seconds away); an event acts only on the subscriber it names whose address
  is the event's own (an id alone, or an id with another address, changes nobody); events about an
  erased person are stored anonymised; the body must be a JSON array of objects (deep nesting and
  NaN are refused with 400, NUL and lone surrogates neutralised: never a 500).

Longer than ~400 lines because every route shares one state (`WebApp`: store, throttle, keys,
templates) and the HTTP guards (body limits, one-click detection) belong with the routes.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from contextlib import asynccontextmanager, contextmanager, nullcontext
from datetime import date, datetime
from email.utils import format_datetime, parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import parse_qsl

import anyio.to_thread
import jinja2
from anyio import CapacityLimiter
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from .. import links, tokens
from ..addresses import parse_address
from ..config import Settings, require_secret_key, secret_key_for
from ..content import i18n, templating
from ..content.render import edition_summary
from ..errors import InvalidAddress
from ..providers import WebhookRefused, make_webhooks
from ..sending.scanners import is_scanner
from ..sending.notices import Notifier
from ..statuses import TOMBSTONE_PREFIX
from ..store import Connection, IntegrityError, Row, Store, as_utc, open_store, utcnow
from ..subscribers import feedback, signup
from ..subscribers.importer.values import clean_text
from . import feed
from .throttle import ClientThrottle

log = logging.getLogger("mailer.web")

SUBSCRIBE_RATE = 5            # POST /subscribe per client address…
SUBSCRIBE_WINDOW = 60.0       # …per this many seconds
FORM_MAX_BYTES = 16 * 1024
UNSUBSCRIBE_MAX_BYTES = 16 * 1024
WEBHOOK_MAX_BYTES = 8 * 1024 * 1024               # SendGrid posts batches of up to ~1000 events
HONEYPOT_FIELD = "website"
SQLITE_THREADS = 2             # worker threads for blocking work on SQLite (one writer anyway)

_ONE_CLICK_MULTIPART = re.compile(rb'name="?List-Unsubscribe"?\r?\n(?:[^\r\n]+\r?\n)*\r?\nOne-Click\r?\n', re.IGNORECASE)

PAGE_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")
# Web versions of issues: the email's own images and styles from anywhere, never a script.
ISSUE_CSP = ("default-src 'none'; img-src * data:; style-src 'unsafe-inline' *; font-src * data:; "
             "frame-ancestors 'self'; base-uri 'none'; form-action 'none'")
COMMON_HEADERS = {"Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}


# ----- small pieces ---------------------------------------------------------------------------------
class _Page(Exception):
    """Raised inside handlers to answer with a page (errors mostly)."""

    def __init__(self, status: int, template: str, **context: Any) -> None:
        super().__init__(template)
        self.status = status
        self.template = template
        self.context = context


# ----- the application state -------------------------------------------------------------------------
class WebApp:
    """Everything the handlers share; the `do_*` methods are synchronous (run in the threadpool)."""

    def __init__(self, settings: Settings, store: Store, notifier: Notifier, *, subscribe_rate: int,
                 subscribe_window: float) -> None:
        self.settings = settings
        self.store = store
        self.notifier = notifier
        self.key = secret_key_for(settings)
        self.strings = i18n.strings(settings.language, settings.name)
        self.limiter = ClientThrottle(subscribe_rate, subscribe_window)
        self.webhooks = make_webhooks(settings)
        # SQLite has one writer: queue this process's write transactions on a lock rather than in
        # SQLite's busy handler, whose growing sleeps (up to 100 ms each) would make the latency tail.
        self._write_lock = threading.Lock() if store.is_sqlite else None
        self._threads = CapacityLimiter(SQLITE_THREADS) if store.is_sqlite else None  # None: anyio's default (40)
        self._summaries: dict[int, str] = {}  # issue id -> feed summary (a sent issue's web edition never changes)
        web_dir = settings.templates_dir / "web"
        fallback = Path(__file__).resolve().parent.parent / "templates" / "web"
        self.jinja = templating.Environment(
            loader=jinja2.FileSystemLoader([str(web_dir), str(fallback)]),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.jinja.globals.update(t=self.strings, name=settings.name, language=settings.language,
                                  postal_address=settings.postal_address)
        for template in ("unsubscribe.html.j2", "subscribe.html.j2", "subscribed.html.j2", "confirm.html.j2",
                         "archive.html.j2", "message.html.j2"):
            self.jinja.get_template(template)  # fail at start-up, not on the first visitor
        notifier.template("confirm")  # the subscribe form is useless without its email: check it now

    async def in_thread(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run blocking work (database, templates) in a worker thread. On SQLite, whose transactions
        are serialised anyway, a few threads suffice: more would only queue on the write lock."""
        return await anyio.to_thread.run_sync(partial(func, *args, **kwargs), limiter=self._threads)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A transaction, serialised in-process on SQLite (where every transaction is BEGIN IMMEDIATE)."""
        with self._write_lock or nullcontext(), self.store.begin() as conn:
            yield conn

    # ----- responses ----------------------------------------------------------------------------
    def page(self, template: str, status: int = 200, *, root: str = "", cache: str = "no-store",
             background: BackgroundTask | None = None, headers: dict[str, str] | None = None,
             **context: Any) -> HTMLResponse:
        body = self.jinja.get_template(template).render(root=root, urls=links.Site(root), **context)
        all_headers = {**COMMON_HEADERS, "Content-Security-Policy": PAGE_CSP, "X-Frame-Options": "DENY",
                       "Cache-Control": cache, **(headers or {})}
        return HTMLResponse(body, status_code=status, headers=all_headers, background=background)

    def message(self, status: int, key: str, *, root: str = "", **fmt: str) -> HTMLResponse:
        """A page with a title and one paragraph, both from i18n (`web_<key>_title`, `web_<key>_body`)."""
        strings = self.strings
        return self.page("message.html.j2", status, root=root, state=key,
                         title=strings[f"web_{key}_title"], body=strings[f"web_{key}_body"].format(**fmt))

    def read_token(self, purpose: str, token: str) -> tokens.TokenData:
        try:
            return tokens.read_token(self.key, purpose, token)
        except tokens.InvalidToken:
            raise _Page(400, "message", key="invalid_link") from None

    def _person(self, conn: Connection, subscriber_id: int, *, lock: bool = False) -> Row:
        """The person a token names (404 when gone or erased)."""
        row = self.store.person_for_link(conn, subscriber_id, lock=lock)
        if row is None or row.email.startswith(TOMBSTONE_PREFIX):
            raise _Page(404, "message", key="unknown_link")
        return row

    # ----- click and open tracking (content/tracking.py) -------------------------------------------
    def do_click(self, token: str, *, record: bool, user_agent: str | None = None) -> str | None:
        """The URL a click token's link leads to (recording the click unless `record` is False: a
        HEAD), or None for a token that is not ours, altered, or names no link: the caller answers
        404 and redirects nowhere. Only URLs of the issue's own link table are ever answered. A
        `user_agent` of a known scanner or bot (`scanners.is_scanner`) is recorded as a scanner hit,
        not a click; it is redirected all the same."""
        try:
            data = tokens.read_click_token(self.key, token)
        except tokens.InvalidToken:
            return None
        if data.position == 0:
            return None
        with self.transaction() as conn:
            url = self.store.link_url(conn, data.edition_id, data.position)
            if url is not None and record and not links.is_test_subscriber(data.subscriber_id):
                self.store.record_click(conn, data.edition_id, data.subscriber_id, data.position, utcnow(),
                                        scanner=is_scanner(user_agent))
        return url

    def do_open(self, token: str, *, record: bool) -> bool:
        """Record an open (the pixel's position 0); False for a token that is not a valid open token."""
        try:
            data = tokens.read_click_token(self.key, token)
        except tokens.InvalidToken:
            return False
        if data.position != 0:
            return False
        if record and not links.is_test_subscriber(data.subscriber_id):
            with self.transaction() as conn:
                self.store.record_click(conn, data.edition_id, data.subscriber_id, 0, utcnow())
        return True

    # ----- unsubscribe ----------------------------------------------------------------------------
    def do_unsubscribe_page(self, token: str, root: str) -> Response:
        data = self.read_token("unsubscribe", token)
        if links.is_test_subscriber(data.subscriber_id):
            return self.message(200, "test", root=root)
        with self.transaction() as conn:
            row = self._person(conn, data.subscriber_id)
        state = "ask" if row.status in ("active", "pending") else row.status
        return self._unsubscribe_view(row, state, token, root)

    def do_unsubscribe(self, token: str, source: str, root: str) -> Response:
        data = self.read_token("unsubscribe", token)
        if links.is_test_subscriber(data.subscriber_id):
            return self.message(200, "test", root=root)
        reason = "one-click unsubscribe (RFC 8058)" if source == "one-click" else "unsubscribe page"
        if data.issue_id is not None:
            reason += f", issue {data.issue_id}"
        with self.transaction() as conn:
            row = self._person(conn, data.subscriber_id)
            state = signup.unsubscribe(self.store, conn, row, source=source, reason=reason,
                                       issue_id=data.issue_id)
        return self._unsubscribe_view(row, state, token, root)

    def do_resubscribe(self, token: str, root: str) -> Response:
        data = self.read_token("unsubscribe", token)
        if links.is_test_subscriber(data.subscriber_id):
            return self.message(200, "test", root=root)
        with self.transaction() as conn:
            row = self._person(conn, data.subscriber_id, lock=True)
            signup.resubscribe(self.store, conn, row)
        return self._unsubscribe_view(row, "resubscribed", token, root)

    def _unsubscribe_view(self, row: Row, state: str, token: str, root: str) -> Response:
        # a pending person's name was typed by whoever filled the form: never shown back
        person = "" if row.status == "pending" else row.name
        return self.page("unsubscribe.html.j2", root=root, state=state, token=token, email=row.email_given,
                         person=person)

    # ----- subscribe and confirm --------------------------------------------------------------------
    def do_subscribe(self, email: str, person: str, honeypot: str, root: str) -> Response:
        if honeypot.strip():
            log.info("subscribe form: honeypot filled, pretending success")
            return self.page("subscribed.html.j2", root=root, email=email.strip()[:320])
        try:
            address = parse_address(email)
        except InvalidAddress:
            return self.page("subscribe.html.j2", 400, root=root, error=True, email=email[:320],
                             person=person[:200])
        send: tuple[int, str] | None = None
        try:
            with self.transaction() as conn:
                send = signup.request_subscription(self.store, conn, address.key, address.given, clean_text(person))
        except IntegrityError:
            send = None  # the same address arrived twice at once: the other request sends the email
        background = BackgroundTask(self.notifier.send_quietly, "confirm", *send) if send else None
        return self.page("subscribed.html.j2", root=root, email=address.given, background=background)

    def do_confirm(self, token: str, *, pressed: bool, root: str) -> Response:
        """GET (`pressed` False) shows the button and changes nothing; POST confirms, once."""
        data = self.read_token("confirm", token)
        if links.is_test_subscriber(data.subscriber_id):
            raise _Page(404, "message", key="unknown_link")
        with self.transaction() as conn:
            row = self._person(conn, data.subscriber_id, lock=pressed)
            state, welcome = signup.confirm(self.store, conn, row, pressed=pressed)
        background = None
        if welcome and self.notifier.has("welcome"):
            background = BackgroundTask(self.notifier.send_quietly, "welcome", row.id, row.email_given, row.name)
        return self.page("confirm.html.j2", root=root, state=state, token=token, email=row.email_given,
                         background=background)

    # ----- archive ----------------------------------------------------------------------------------
    def do_archive(self, root: str) -> Response:
        with self.transaction() as conn:
            rows = self.store.published_issues(conn)
        entries = []
        for row in rows:
            try:
                when = i18n.long_date(date.fromisoformat(row.issue_date), self.settings.language) if row.issue_date else ""
            except ValueError:
                when = row.issue_date
            entries.append({"slug": row.slug, "subject": row.subject, "date": when, "iso": row.issue_date or ""})
        return self.page("archive.html.j2", root=root, entries=entries, cache="public, max-age=300")

    def do_feed(self, if_none_match: str | None, if_modified_since: str | None) -> Response:
        """/feed.xml: the issues `do_archive` lists (the same query), as Atom; 304 when the client's
        copy is current (If-None-Match first, else If-Modified-Since, RFC 9110 §13.2.2)."""
        with self.transaction() as conn:
            rows = self.store.published_issues(conn)
            missing = [row.id for row in rows if row.id not in self._summaries]
            if missing:
                for issue_id, web_html in self.store.web_html_by_id(conn, missing).items():
                    self._summaries[issue_id] = edition_summary(web_html)
        entries = [feed.FeedEntry(row.slug, row.subject, row.issue_date, as_utc(row.published_at),
                                  self._summaries.get(row.id, "")) for row in rows]
        body, updated = feed.atom_feed(self.settings, entries)
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers = {**COMMON_HEADERS, "ETag": etag, "Last-Modified": format_datetime(updated, usegmt=True),
                   "Cache-Control": "public, max-age=300"}
        if _not_modified(etag, updated, if_none_match, if_modified_since):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=feed.CONTENT_TYPE, headers=headers)

    def do_issue(self, slug: str, key: str | None) -> Response:
        """A sent issue's web edition: public ones for anyone, private ones (list-only, segment-only,
        `archive = false`) only with the key their emails link with; otherwise 404, as for an unknown slug."""
        with self.transaction() as conn:
            row = self.store.web_edition(conn, slug)
        if row is None or not (row.public or (key and tokens.check_web_edition_key(self.key, slug, key))):
            raise _Page(404, "message", key="not_found")
        headers = {**COMMON_HEADERS, "Content-Security-Policy": ISSUE_CSP,
                   "Cache-Control": "public, max-age=300" if row.public else "private, max-age=300"}
        if not row.public:
            headers["X-Robots-Tag"] = "noindex, nofollow"
        return HTMLResponse(row.web_html, headers=headers)

    # ----- provider webhooks ------------------------------------------------------------------------
    def do_webhook(self, provider: str, body: bytes, headers: Mapping[str, str]) -> dict[str, int]:
        """The provider's webhook reads the body (WebhookRefused: its status and reason); the
        subscriber rules act on the events it found. `headers`: case-insensitive (Starlette's)."""
        webhook = self.webhooks.get(provider)
        if webhook is None:
            raise _Page(404, "message", key="not_found")
        events = webhook.receive(body, headers)
        return feedback.record_provider_events(self.store, events, transaction=self.transaction)


# ----- HTTP layer -------------------------------------------------------------------------------------
class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes (kept on the request so `form()` can parse it)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # noqa: SLF001 - Starlette's own cache of the body, read by form()
    return body


def _not_modified(etag: str, updated: datetime, if_none_match: str | None, if_modified_since: str | None) -> bool:
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or etag in tags
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
        return since.tzinfo is not None and updated <= since
    return False


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


def _is_one_click(body: bytes, content_type: str) -> bool:
    if content_type.startswith("multipart/form-data"):
        return _ONE_CLICK_MULTIPART.search(body) is not None
    try:
        pairs = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    except ValueError:
        return False
    return ("List-Unsubscribe", "One-Click") in pairs


# a transparent 1×1 GIF (43 bytes), the open pixel's answer
PIXEL_GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")


def create_app(settings: Settings, store: Store | None = None, *, notifier: Notifier | None = None,
               subscribe_rate: int = SUBSCRIBE_RATE, subscribe_window: float = SUBSCRIBE_WINDOW) -> Starlette:
    """The ASGI app. Without `store`, opens one on settings.database_url and closes it on shutdown."""
    own_store = store is None
    store = store or open_store(settings.database_url)
    web = WebApp(settings, store, notifier or Notifier(settings), subscribe_rate=subscribe_rate,
                 subscribe_window=subscribe_window)

    def guarded(handler: Callable) -> Callable:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except _Page as answer:
                return _answer(answer, _root(request))
            except _TooLarge:
                return JSONResponse({"error": "request body too large"}, status_code=413, headers=COMMON_HEADERS)
        return endpoint

    def _answer(answer: _Page, root: str) -> Response:
        if answer.template == "message":
            return web.message(answer.status, answer.context["key"], root=root)
        return web.page(answer.template, answer.status, root=root, **answer.context)

    async def unsubscribe_page(request: Request) -> Response:
        return await web.in_thread(web.do_unsubscribe_page, request.path_params["token"], _root(request))

    async def unsubscribe(request: Request) -> Response:
        body = await _read_body(request, UNSUBSCRIBE_MAX_BYTES)
        source = "one-click" if _is_one_click(body, request.headers.get("content-type", "")) else "web"
        return await web.in_thread(web.do_unsubscribe, request.path_params["token"], source, _root(request))

    async def resubscribe(request: Request) -> Response:
        await _read_body(request, UNSUBSCRIBE_MAX_BYTES)
        return await web.in_thread(web.do_resubscribe, request.path_params["token"], _root(request))

    async def subscribe_form(request: Request) -> Response:
        return web.page("subscribe.html.j2", root=_root(request), error=False, email="", person="",
                        cache="public, max-age=300")

    async def subscribe(request: Request) -> Response:
        client = request.client.host if request.client else "unknown"
        wait = web.limiter.hit(client)
        if wait:
            retry = str(int(wait) + 1)
            return web.page("message.html.j2", 429, root=_root(request), state="rate_limited",
                            title=web.strings["web_rate_limited_title"], body=web.strings["web_rate_limited_body"],
                            headers={"Retry-After": retry})
        await _read_body(request, FORM_MAX_BYTES)
        form = await request.form()

        def field(name: str) -> str:
            value = form.get(name)
            return value if isinstance(value, str) else ""

        return await web.in_thread(web.do_subscribe, field("email"), field("name"), field(HONEYPOT_FIELD),
                                       _root(request))

    async def confirm_page(request: Request) -> Response:  # GET and HEAD: a page, never a change
        return await web.in_thread(web.do_confirm, request.path_params["token"], pressed=False, root=_root(request))

    async def confirm(request: Request) -> Response:
        await _read_body(request, FORM_MAX_BYTES)
        return await web.in_thread(web.do_confirm, request.path_params["token"], pressed=True, root=_root(request))

    async def archive(request: Request) -> Response:
        return await web.in_thread(web.do_archive, _root(request))

    async def atom(request: Request) -> Response:
        return await web.in_thread(web.do_feed, request.headers.get("if-none-match"),
                                   request.headers.get("if-modified-since"))

    async def issue_page(request: Request) -> Response:
        return await web.in_thread(web.do_issue, request.path_params["slug"], request.query_params.get("k"))

    async def home(request: Request) -> Response:
        return RedirectResponse(links.archive_url(_root(request)), status_code=307, headers=COMMON_HEADERS)

    async def webhook(request: Request) -> Response:  # only the size is checked here: the provider reads the rest
        body = await _read_body(request, WEBHOOK_MAX_BYTES)
        try:
            result = await web.in_thread(web.do_webhook, request.path_params["provider"], body, request.headers)
        except WebhookRefused as refused:
            return JSONResponse({"error": refused.message}, status_code=refused.status, headers=COMMON_HEADERS)
        return JSONResponse(result, headers=COMMON_HEADERS)

    async def click(request: Request) -> Response:
        url = await web.in_thread(web.do_click, request.path_params["token"], record=request.method == "GET",
                                  user_agent=request.headers.get("user-agent"))
        if url is None:
            return web.message(404, "unknown_link", root=_root(request))
        return RedirectResponse(url, status_code=302, headers={**COMMON_HEADERS, "Cache-Control": "no-store",
                                                               "Referrer-Policy": "no-referrer"})

    async def open_pixel(request: Request) -> Response:
        if not await web.in_thread(web.do_open, request.path_params["token"], record=request.method == "GET"):
            return web.message(404, "unknown_link", root=_root(request))
        return Response(PIXEL_GIF, media_type="image/gif", headers={**COMMON_HEADERS, "Cache-Control": "no-store"})

    async def http_error(request: Request, exc: HTTPException) -> Response:
        key = {404: "not_found"}.get(exc.status_code, "error")
        response = web.message(exc.status_code, key, root=_root(request))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("error on %s %s", request.method, request.url.path, exc_info=exc)
        return web.message(500, "error", root=_root(request))

    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        if own_store:
            store.close()

    routes = [
        Route(links.HOME, guarded(home), methods=["GET"]),
        Route(links.UNSUBSCRIBE, guarded(unsubscribe_page), methods=["GET"]),
        Route(links.UNSUBSCRIBE, guarded(unsubscribe), methods=["POST"]),
        Route(links.RESUBSCRIBE, guarded(resubscribe), methods=["POST"]),
        Route(links.SUBSCRIBE, guarded(subscribe_form), methods=["GET"]),
        Route(links.SUBSCRIBE, guarded(subscribe), methods=["POST"]),
        Route(links.CONFIRM, guarded(confirm_page), methods=["GET"]),
        Route(links.CONFIRM, guarded(confirm), methods=["POST"]),
        Route(links.WEBHOOK, guarded(webhook), methods=["POST"]),  # /webhooks/sendgrid as documented
        Route(links.ARCHIVE, guarded(archive), methods=["GET"]),
        Route(links.FEED, guarded(atom), methods=["GET"]),
        Route(links.WEB_EDITION, guarded(issue_page), methods=["GET"]),
        Route(links.CLICK, guarded(click), methods=["GET"]),
        Route(links.OPEN, guarded(open_pixel), methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.web = web
    return app


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """`mailer serve`: uvicorn in front of the app; raises ConfigError unless MAILER_SECRET_KEY is set and strong
    (whatever the backend: `subscribers/.secret_key` is for local outbox demos only). Behind a reverse proxy on the same machine, the
    client address (rate limit) comes from X-Forwarded-For (uvicorn trusts 127.0.0.1 by default;
    FORWARDED_ALLOW_IPS widens that)."""
    import uvicorn

    require_secret_key(settings)  # a demo key file would sign links no real email carries
    app = create_app(settings)
    log.info("serving %s on http://%s:%d (public URL %s)", settings.name, host, port, settings.base_url)
    uvicorn.run(app, host=host, port=port, proxy_headers=True, server_header=False, log_level="info")
