"""The `sendgrid` backend: one v3 `/mail/send` request per batch of up to 1000 recipients.

The body is sent ONCE per request, as the raw templates with their slot markers
(`%%mailer:unsubscribe_url.html%%`…); each recipient is a personalization carrying:

* `to` (address and a display name that SendGrid accepts: no CR/LF, no `,` or `;`),
* `substitutions`: every slot marker → that recipient's value (HTML-escaped in `.html` slots),
* `headers`: their own List-Unsubscribe, List-Unsubscribe-Post and Message-ID. SendGrid's reference
  (Mail Send v3, `headers`: "key/value pairs of header names and the value to substitute for them
  … must be strings … You must ensure these are properly encoded") takes values as they are and says
  nothing of folding, so every value is ONE line that fits RFC 5322 §2.1.1's 998 octets as
  `Name: value` (List-Unsubscribe drops its mailto alternative past that: `mime.list_unsubscribe`;
  List-Id is unfolded by `list_id_header(fold=False)`), and no value holds a line break,
* `custom_args`: issue, subscriber and delivery ids (strings: SendGrid rejects anything else),
  which come back in every Event Webhook event for correlation.

Outcomes (the contract of `base.Backend`):

* 2xx → every recipient of the request "sent", provider id = the `X-Message-Id` response header
  (200 without an id in sandbox mode);
* 429 → `TransientError` with `retry_after` from `Retry-After` or `X-RateLimit-Reset` (epoch s);
* 5xx, timeouts, refused or reset connections → `TransientError` (nothing was accepted — except
  when the connection died after SendGrid accepted the request: the one ambiguous window, resent);
  each request must be answered within `timeout` seconds in total (MAILER_SENDGRID_TIMEOUT, 30 s:
  DNS, connection, upload and answer, see deadline.py), and `abort()` cuts it at once;
* 401/403 (bad key, missing Mail Send permission), 413, other 4xx → `PermanentError`: the send
  pauses, nobody is marked failed;
* 400 naming personalizations → those recipients "permanent" (`hard_bounce` when the address is
  invalid) and the others resent at once in a follow-up request; a 400 naming no recipient (or
  naming every personalization of a multi-recipient request: a bug of ours, not theirs) →
  `PermanentError`.

A batch is never raised on once part of it was accepted (which only happens when it must be split:
more than 1000 messages, or one address twice): the rest is reported per recipient instead, as
`deferred` (the failure was SendGrid's, not theirs), so nothing accepted is ever sent again.

The library is used the fast way: the request body is the static part, encoded once per issue,
followed by the request's personalizations as plain dicts (`_personalizations`: one loop per
request, one key at a time) encoded by orjson in one call (encoding ≈ 0.2 µs a personalization
against ≈ 7 µs with `json.dumps`; built and encoded, slot values and greeting included, ≈ 4 µs against
≈ 8.9 µs for the JSON text this module used to assemble piece by piece; CPU time, issue 12), and
posted through python_http_client's `Client` (its URL, headers, `_make_request` transport seam,
`Response` and `HTTPError` classes) by `_GuardedClient.post_json`, which is the library's
`http_request` for a ready body minus two things: `http_request` formats the whole payload for a
DEBUG log line even when logging is off (≈10 ms per 300 KB request, measured), and builds a urllib
opener per request (≈ 0.2 ms; ours is built once per client). The helper classes cost ≈51 ms per
1000 recipients. An accepted request's results are made in bulk (`RecipientResult.all_sent`).
Each sender thread keeps its HTTP connection alive between requests (`_GuardedClient`): urllib
opens one per request, and over a real network a new HTTPS connection costs two round trips of
handshakes before the request's own (measured with `bench_sendgrid.py`'s connection figure: 100 ms
answers and 200 ms of handshakes, 302 ms a request on new connections against 122 ms kept).

`PROVIDER` declares it to the registry: its settings (SENDGRID_API_KEY, MAILER_SENDGRID_API_URL,
_SANDBOX, _WEBHOOK_PUBLIC_KEY, _TIMEOUT, _IN_FLIGHT), its Event Webhook (`sendgrid_events`), and
what generic code asks: SendGrid signs DKIM itself and uses its own envelope sender, SPF includes
sendgrid.net, and requests overlap (MAILER_SENDGRID_IN_FLIGHT recipients, 1000 per request).

Longer than ~400 lines because the provider's whole send contract lives here: requests built
within SendGrid's documented limits, the guarded HTTP client with a total deadline, and the
classification of every answer.
"""

from __future__ import annotations

import email.utils
import functools
import http.client
import io
import json
import operator
import re
import select
import ssl
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Sequence

import orjson
import python_http_client
import sendgrid

from .. import links
from ..config import Settings, normalise_base_url, positive_seconds, within
from ..errors import ConfigError
from ..headers import clean_header_value
from ..mime import MessageFactory, list_id_header
from ..redact import quiet_http_loggers, strip_credentials
from ..registry import OwnDkim, Provider, Setting
from ..content.render import Recipient, slot
from .base import Backend, Batch, OutgoingMessage, PermanentError, RecipientResult, TransientError
from .deadline import Guard, Watchdog

quiet_http_loggers()  # python_http_client logs the Authorization header and whole payloads at DEBUG

KEEP_ALIVE_IDLE = 4.0          # seconds a kept connection may sit idle and still be reused (under Apache's 5 s default timer; _GuardedClient)
DEFAULT_TIMEOUT = 30.0          # seconds per request, in total (connection, upload, answer): see deadline.py
MAX_PERSONALIZATIONS = 1000     # per request (also the total of to + cc + bcc)
TRACKING_OFF = {"click_tracking": {"enable": False, "enable_text": False}, "open_tracking": {"enable": False},
                "subscription_tracking": {"enable": False}, "ganalytics": {"enable": False}}
MAX_ARGS_BYTES = 10_000         # custom_args + substitutions, per personalization
MAX_BAD_REQUEST_ROUNDS = 20     # follow-up requests after 400s naming recipients, per request
# Headers SendGrid refuses in `headers` (case-insensitive).
RESERVED_HEADERS = frozenset(h.lower() for h in (
    "x-sg-id", "x-sg-eid", "received", "dkim-signature", "Content-Type", "Content-Transfer-Encoding",
    "To", "From", "Subject", "Reply-To", "CC", "BCC"))

_PERSONALIZATION_FIELD = re.compile(r"^personalizations\.(\d+)(?:\.|$)")
_ADDRESS_FIELD = re.compile(r"^personalizations\.\d+\.(?:to|cc|bcc)\.\d+\.email$")
_INVALID_ADDRESS = re.compile(r"valid", re.IGNORECASE)
_NAME_FORBIDDEN = re.compile(r"[,;]")
_CATEGORY_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class _GuardedHTTPConnection(http.client.HTTPConnection):
    """Connects through the guard of the request being made (`owner.guard`, read when connecting), so
    the deadline and a stop cover DNS and connect too; `owner` is the `_GuardedClient`, or a
    `_FixedGuard` for a one-off connection."""

    def __init__(self, *args: Any, owner: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = lambda address, timeout, source=None: owner.guard.open_connection(
            address[0], address[1], timeout if isinstance(timeout, (int, float)) else None)


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    """The TLS socket is attached to the guard too: wrapping detaches the TCP socket the guard holds
    (the same descriptor, a new object), so without it the deadline and a stop could not cut the
    handshake nor a request on a new connection."""

    def __init__(self, *args: Any, owner: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner
        self._create_connection = lambda address, timeout, source=None: owner.guard.open_connection(
            address[0], address[1], timeout if isinstance(timeout, (int, float)) else None)

    def connect(self) -> None:  # http.client.HTTPSConnection.connect, with the handshake under the guard
        http.client.HTTPConnection.connect(self)  # TCP (and a proxy's CONNECT tunnel), through the guard
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._tunnel_host or self.host,
                                              do_handshake_on_connect=False)
        self._owner.guard.attach(self.sock)
        self.sock.do_handshake()


class _FixedGuard:
    __slots__ = ("guard",)

    def __init__(self, guard: Guard | None) -> None:
        self.guard = guard


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    """Opens through the guard of the request `client` is making (`_GuardedClient.guard`)."""

    def __init__(self, client: "_GuardedClient") -> None:
        super().__init__()
        self.client = client

    def http_open(self, req):  # noqa: ANN001, ANN201 - urllib's signature
        return self.do_open(_GuardedHTTPConnection, req, owner=_FixedGuard(self.client.guard))


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, client: "_GuardedClient", context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self.client = client

    def https_open(self, req):  # noqa: ANN001, ANN201
        return self.do_open(_GuardedHTTPSConnection, req, owner=_FixedGuard(self.client.guard), context=self._context)


@functools.lru_cache(maxsize=1)
def _default_ssl_context() -> ssl.SSLContext:
    """One verifying context for every client of the process (loading the system's CA certificates
    costs tens of ms of CPU; a context is safe to share between threads)."""
    return ssl.create_default_context()


class _Answer:
    """A complete answer read off a kept-alive connection, with the three calls python_http_client's
    `Response` makes of urllib's response object (`getcode`, `read`, `info`)."""

    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int, body: bytes, headers: http.client.HTTPMessage) -> None:
        self.status, self.body, self.headers = status, body, headers

    def getcode(self) -> int:
        return self.status

    def read(self) -> bytes:
        return self.body

    def info(self) -> http.client.HTTPMessage:
        return self.headers


def _dropped(sock: Any) -> bool:
    """Whether an idle kept-alive socket was closed by the server (or holds bytes nobody asked for):
    readable with nothing in flight means EOF or garbage, either way not to be reused (urllib3's
    `is_connection_dropped` test)."""
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _GuardedClient(python_http_client.Client):
    """The library's client for `/v3/mail/send`, whose requests go through guarded connections.

    `_make_request` is the library's documented seam for the transport ("separated into its own
    function"); the URL, headers, JSON encoding and the HTTPError subclasses stay the library's.

    **One connection kept alive** (HTTP/1.1 persistent connections, RFC 9112 §9.3) for the client's
    requests (one backend, so one client, per sender thread), where urllib opens and closes one per
    request: over a real network each new HTTPS connection costs a TCP and a TLS handshake, two round
    trips (RFC 9293 §3.5, RFC 8446 §2) before the request's own, so at 100 ms a request took ≈ 300 ms
    and the requests in flight carried a third of what they could. A kept connection is reused only
    while it is idle for less than KEEP_ALIVE_IDLE seconds and the server has not closed it (`_dropped`);
    the server's `Connection: close` or any failure closes it, and the next request opens a new one.
    A failure is never retried here (a POST is not idempotent, RFC 9110 §9.2.2): it reaches the send
    loop as before, whose rows go back to the queue. Through a proxy (`http_proxy`/`https_proxy`
    for the API's host, `urllib.request.getproxies`) requests keep urllib's path, one connection each.
    """

    guard: Guard | None = None
    ssl_context: ssl.SSLContext | None = None
    # built once per client (≈ 0.2 ms each, a request's worth of 0.2 µs a recipient): its handlers open
    # each request through the guard set for it (one backend, so one client, per thread)
    _guarded_opener: urllib.request.OpenerDirector | None = None
    _connection: http.client.HTTPConnection | None = None
    _idle_since = 0.0
    _proxied: bool | None = None

    def _make_request(self, opener, request, timeout=None):  # noqa: ANN001, ANN201 - the library's signature
        if self.guard is not None:
            if self._proxied is None:
                host = urllib.parse.urlsplit(request.full_url).hostname or ""
                proxies = urllib.request.getproxies()
                self._proxied = bool(proxies.get(request.type)) and not urllib.request.proxy_bypass(host)
            if not self._proxied:
                try:
                    return self._exchange(request, timeout or self.timeout)
                except urllib.error.HTTPError as err:
                    exc = python_http_client.exceptions.handle_error(err)
                    exc.__cause__ = None
                    raise exc
            opener = self._guarded_opener
            if opener is None:
                opener = self._guarded_opener = urllib.request.build_opener(
                    _GuardedHTTPHandler(self), _GuardedHTTPSHandler(self, self._tls_context()))
        return super()._make_request(opener, request, timeout)

    def _tls_context(self) -> ssl.SSLContext:
        """This client's TLS context: the one set on it, else the process's verifying one."""
        if self.ssl_context is None:
            self.ssl_context = _default_ssl_context()
        return self.ssl_context

    def _exchange(self, request: urllib.request.Request, timeout: float) -> _Answer:
        """One request on the kept connection (opened through the guard when there is none or it cannot
        be reused): the whole answer read, so the connection is ready for the next one. Raises
        urllib's `HTTPError` for a status outside 2xx (as urllib's opener does), or the network's
        `OSError` / `http.client.HTTPException` (the connection is then closed)."""
        guard = self.guard
        assert guard is not None
        connection = self._connection
        if connection is not None and (time.monotonic() - self._idle_since > KEEP_ALIVE_IDLE
                                       or _dropped(connection.sock)):
            connection.close()
            connection = self._connection = None
        if connection is None:
            if request.type == "https":
                connection = _GuardedHTTPSConnection(request.host, owner=self, timeout=timeout,
                                                     context=self._tls_context())
            else:
                connection = _GuardedHTTPConnection(request.host, owner=self, timeout=timeout)
            self._connection = connection
        else:
            guard.attach(connection.sock)  # the deadline and a stop cut this request on the kept socket
            connection.sock.settimeout(guard.timeout(timeout))
        try:
            connection.request(request.get_method(), request.selector, body=request.data,
                               headers={name.title(): value for name, value in request.header_items()})  # as urllib
            response = connection.getresponse()
            body = response.read()
        except BaseException:
            connection.close()
            self._connection = None
            raise
        if response.will_close:
            connection.close()
            self._connection = None
        else:
            self._idle_since = time.monotonic()
        if not 200 <= response.status < 300:
            raise urllib.error.HTTPError(request.full_url, response.status, response.reason, response.headers,
                                         io.BytesIO(body))
        return _Answer(response.status, body, response.headers)

    def close_connection(self) -> None:
        """Close the kept connection, if any (the backend's `close`)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def post_json(self, data: bytes) -> python_http_client.client.Response:
        """POST a ready JSON body (`Content-Type: application/json`) to this client's URL: the library's
        `http_request` without its DEBUG formatting of the whole payload (see the module docstring).
        Raises the library's `HTTPError` subclasses, as `post()` does."""
        request = urllib.request.Request(self._build_url(None), data=data, method="POST",
                                         headers={**self.request_headers, "Content-Type": "application/json"})
        # the opener is replaced by the guarded one in `_make_request` when a guard is set (always, from
        # `_post`): a default opener (≈ 20 handlers) is built only without one
        opener = None if self.guard is not None else urllib.request.build_opener()
        return python_http_client.client.Response(self._make_request(opener, request, timeout=self.timeout))


class _BadRequest(Exception):
    """A 400: the parsed `errors` array."""

    def __init__(self, errors: list[dict]) -> None:
        super().__init__(errors)
        self.errors = errors


def api_host(url: str) -> str:
    """`https://api.sendgrid.com` from whatever was configured (`…/`, `…/v3`)."""
    url = url.strip().rstrip("/")
    if url.endswith("/v3"):
        url = url[:-3]
    return url


def recipient_name(name: str) -> str:
    """A display name SendGrid accepts in `to.name`: one line, and no `,` or `;` (documented limit)."""
    if name.isprintable() and "  " not in name and name[:1] != " " and name[-1:] != " " \
            and "," not in name and ";" not in name:
        return name  # already what clean_header_value would give (fast path)
    cleaned = clean_header_value(name)
    if "," in cleaned or ";" in cleaned:
        cleaned = " ".join(_NAME_FORBIDDEN.sub(" ", cleaned).split())
    return cleaned


def category_for(slug: str) -> str:
    """A short ASCII category derived from the issue slug (SendGrid: ≤ 255 characters)."""
    ascii_slug = unicodedata.normalize("NFKD", slug).encode("ascii", "ignore").decode("ascii")
    return _CATEGORY_UNSAFE.sub("-", ascii_slug).strip("-")[:64] or "newsletter"


def retry_after_from(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or HTTP date) or `X-RateLimit-Reset` (epoch seconds)."""
    if headers is None:
        return None
    now = time.time() if now is None else now
    value = headers.get("Retry-After")
    if value:
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                return max(0.0, when.timestamp() - now)
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        try:
            return max(0.0, float(reset.strip()) - now)
        except ValueError:
            return None
    return None


def _error_lines(errors: Sequence[dict]) -> str:
    parts = []
    for error in errors[:5]:
        field = error.get("field")
        message = str(error.get("message") or "").strip() or "rejected"
        parts.append(f"{field}: {message}" if field else message)
    if len(errors) > 5:
        parts.append(f"and {len(errors) - 5} more")
    return "; ".join(parts)


def _parse_errors(body: bytes | str | None) -> list[dict]:
    if not body:
        return []
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
        return [{"message": text.strip()[:300]}]
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return [{"message": str(data)[:300]}]
    return [e if isinstance(e, dict) else {"message": str(e)} for e in errors]


class SendGridBackend(Backend):
    name = "sendgrid"
    max_batch = MAX_PERSONALIZATIONS
    cut = "cutting the requests in flight; their recipients stay queued"

    def __init__(self, api_key: str, *, settings: Settings, api_url: str | None = None,
                 sandbox: bool | None = None, timeout: float | None = None) -> None:
        if not api_key:
            raise ConfigError("SENDGRID_API_KEY is missing for the sendgrid backend")
        self.settings = settings
        self.api_key = api_key
        self.api_url = api_host(api_url or settings.sendgrid_api_url)
        self.shown_url = strip_credentials(self.api_url)  # what messages and the ledger may show
        self.sandbox = settings.sendgrid_sandbox if sandbox is None else sandbox
        self.timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
        if self.timeout <= 0:
            raise ConfigError(f"MAILER_SENDGRID_TIMEOUT must be a positive number of seconds, not {timeout!r}")
        self.requests_sent = 0
        self._client: sendgrid.SendGridAPIClient | None = None
        self._send: _GuardedClient | None = None
        self._watchdog = Watchdog("mailer-sendgrid-deadlines")
        self._static_for: MessageFactory | None = None
        self._static: dict[str, Any] = {}
        self._markers: tuple[str, ...] = ()  # the slot markers the templates use, sorted by slot name
        self._pick: Callable[[dict[str, str]], tuple[str, ...]] = lambda values: ()  # their values, in that order
        self._static_json = b""  # the body's static part as JSON, up to `"personalizations":`

    @staticmethod
    def settings_problems(settings: Settings) -> list[str]:
        """What this backend's own settings lack, one line each (an API key; an http(s) API URL
        without credentials in it)."""
        problems = []
        if not settings.sendgrid_api_key:
            problems.append("SENDGRID_API_KEY is missing for the sendgrid backend")
        if not settings.sendgrid_api_url.startswith(("http://", "https://")):
            problems.append(f"MAILER_SENDGRID_API_URL must start with http:// or https://, "
                            f"not {strip_credentials(settings.sendgrid_api_url)!r}")
        elif "@" in urllib.parse.urlsplit(settings.sendgrid_api_url).netloc:
            problems.append(f"MAILER_SENDGRID_API_URL must not carry credentials "
                            f"({strip_credentials(settings.sendgrid_api_url)}): SendGrid authenticates with "
                            f"SENDGRID_API_KEY")
        return problems

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> "SendGridBackend":
        """The backend the settings describe; ConfigError naming every problem of `settings_problems`."""
        problems = cls.settings_problems(settings)
        if problems:
            raise ConfigError("; ".join(problems))
        kwargs.setdefault("timeout", settings.sendgrid_timeout)  # MAILER_SENDGRID_TIMEOUT
        return cls(settings.sendgrid_api_key, settings=settings, **kwargs)

    # ----- lifecycle ------------------------------------------------------------------------------
    def open(self) -> None:
        if self._client is None:
            client = sendgrid.SendGridAPIClient(api_key=self.api_key, host=self.api_url)
            client.client.timeout = self.timeout  # per socket operation; the guard bounds the whole request
            base = client.client
            self._send = _GuardedClient(host=base.host, request_headers=base.request_headers, version=3,
                                        url_path=["mail", "send"], append_slash=base.append_slash,
                                        timeout=self.timeout)
            self._client = client

    def close(self) -> None:
        if self._send is not None:
            self._send.close_connection()
        self._client = None
        self._send = None
        self._static_for = None
        self._watchdog.close()

    def abort(self) -> None:
        """Cut the request in flight now (from any thread); it raises `TransientError` at once and its
        recipients stay queued. Later requests of this backend fail at once."""
        self._watchdog.abort()

    # ----- building -------------------------------------------------------------------------------
    def static_part(self, factory: MessageFactory, slug: str) -> dict[str, Any]:
        """Everything the same for every recipient of an issue; built once per factory."""
        if self._static_for is factory:
            return self._static
        # the fixed headers (From, Reply-To, List-Id) are the email's: a stored edition's frozen
        # settings (`Edition.settings`), never this process's live ones
        settings = factory.settings
        sender: dict[str, str] = {"email": settings.sender_email}
        sender_name = clean_header_value(settings.sender_name)
        if sender_name:
            sender["name"] = sender_name
        static: dict[str, Any] = {
            "from": sender,
            "subject": factory.subject,
            # text/plain first, then text/html (SendGrid's rule); bodies once, with their slot markers
            "content": [{"type": "text/plain", "value": factory.raw_text},
                        {"type": "text/html", "value": factory.raw_html}],
            "headers": {"List-Id": list_id_header(settings, fold=False)},
            "categories": [category_for(slug)],
            # SendGrid's own click and open tracking rewrites links and adds a pixel per its account
            # settings: always off, tracking is ours (MAILER_TRACK_CLICKS/OPENS, content/tracking.py)
            # and honours the issue's choice. Docs: Mail Send v3, `tracking_settings`.
            "tracking_settings": TRACKING_OFF,
        }
        reply_to = settings.reply_to_mailbox
        if reply_to:
            static["reply_to"] = {"email": reply_to.address,
                                  **({"name": clean_header_value(reply_to.display_name)} if reply_to.display_name else {})}
        if self.sandbox:
            static["mail_settings"] = {"sandbox_mode": {"enable": True}}
        self._prepare(factory)
        # the request body up to its personalizations, which `_send_request` appends, then "}"
        self._static_json = json.dumps(static)[:-1].encode("ascii") + b',"personalizations":'
        self._static_for, self._static = factory, static
        return static

    def _prepare(self, factory: MessageFactory) -> None:
        """Per factory: the slot markers the templates use; per-recipient headers must not be reserved."""
        names = sorted(factory.slot_names)
        self._markers = tuple(slot(name) for name in names)
        # the slot values in the markers' order, as a tuple whatever their number
        self._pick = (operator.itemgetter(*names) if len(names) > 1
                      else (lambda values: (values[names[0]],)) if names else (lambda values: ()))
        probe = Recipient(email="probe@invalid.example", unsubscribe_url=links.sample_unsubscribe_url("https://invalid.example"))
        for key in factory.recipient_headers(probe, "<probe@invalid.example>"):
            if key.lower() in RESERVED_HEADERS:
                raise PermanentError(f"header {key} is reserved by SendGrid and cannot be set per recipient")

    def personalization(self, factory: MessageFactory, message: OutgoingMessage,
                        issue_id: int | None) -> dict[str, Any]:
        """One recipient's personalization (the static part must have been built for `factory`)."""
        return self._personalizations(factory, (message,), None if issue_id is None else str(issue_id))[0]

    def _personalizations(self, factory: MessageFactory, messages: Sequence[OutgoingMessage],
                          issue: str | None) -> list[dict[str, Any]]:
        """Each message's personalization, in order: one loop with its names looked up once (a request
        builds 1000), the substitutions picked from the slot values in the markers' order."""
        slot_values, headers_of = factory.slot_values, factory.recipient_headers
        markers, pick = self._markers, self._pick
        built = []
        for message in messages:
            recipient = message.recipient
            to = {"email": recipient.email}
            name = recipient.name
            if name:
                name = recipient_name(name)
                if name:
                    to["name"] = name
            personalization: dict[str, Any] = {
                "to": [to],
                "substitutions": dict(zip(markers, pick(slot_values(recipient)))),
                "headers": headers_of(recipient, message.message_id),
            }
            subscriber_id, delivery_id = recipient.subscriber_id, message.delivery_id
            if issue is not None and subscriber_id is not None and delivery_id is not None:  # a send's: all three
                personalization["custom_args"] = {"mailer_issue": issue, "mailer_subscriber": str(subscriber_id),
                                                  "mailer_delivery": str(delivery_id)}
            else:
                custom_args = {}
                if issue is not None:
                    custom_args["mailer_issue"] = issue
                if subscriber_id is not None:
                    custom_args["mailer_subscriber"] = str(subscriber_id)
                if delivery_id is not None:
                    custom_args["mailer_delivery"] = str(delivery_id)
                if custom_args:
                    personalization["custom_args"] = custom_args
            built.append(personalization)
        return built

    @staticmethod
    def args_bytes(personalization: dict[str, Any]) -> int:
        """The size SendGrid limits to 10,000 bytes: keys and values of custom_args + substitutions."""
        total = 0
        for part in ("substitutions", "custom_args"):
            for key, value in personalization.get(part, {}).items():
                total += len(key.encode("utf-8")) + len(value.encode("utf-8"))
        return total

    # ----- sending --------------------------------------------------------------------------------
    def send_batch(self, batch: Batch) -> list[RecipientResult]:
        self.open()
        factory = batch.factory
        static = self.static_part(factory, batch.slug)
        results: dict[int, RecipientResult] = {}
        chunks: list[list[tuple[int, dict[str, Any]]]] = [[]]
        seen: list[set[str]] = [set()]
        issue = None if batch.issue_id is None else str(batch.issue_id)
        first, first_seen = chunks[0], seen[0]
        for index, (message, personalization) in enumerate(
                zip(batch.messages, self._personalizations(factory, batch.messages, issue))):
            # cheap upper bound first (≤ 4 UTF-8 bytes a character; keys and custom_args are short ASCII),
            # the exact count only near the limit
            if 4 * sum(map(len, personalization["substitutions"].values())) + 1000 > MAX_ARGS_BYTES and \
                    self.args_bytes(personalization) > MAX_ARGS_BYTES:
                results[index] = RecipientResult(
                    message, "permanent", error=f"personal values of {message.recipient.email} are over SendGrid's "
                                                f"{MAX_ARGS_BYTES:,}-byte substitutions + custom_args limit")
                continue
            key = message.recipient.email.lower()
            # each address once per request (SendGrid's rule), at most 1000 per request: the first request
            # takes every message it can (a claimed batch: all of them)
            if len(first) < MAX_PERSONALIZATIONS and key not in first_seen:
                first.append((index, personalization))
                first_seen.add(key)
                continue
            target: int | None = next(
                (i for i, c in enumerate(chunks) if len(c) < MAX_PERSONALIZATIONS and key not in seen[i]), None)
            if target is None:
                chunks.append([])
                seen.append(set())
                target = len(chunks) - 1
            chunks[target].append((index, personalization))
            seen[target].add(key)
        accepted_any = False
        failure: TransientError | PermanentError | None = None
        for chunk in (c for c in chunks if c):
            if failure is None:
                try:
                    chunk_results = self._send_request(batch, static, chunk)
                except (TransientError, PermanentError) as exc:
                    if not accepted_any:
                        raise
                    failure = exc
            if failure is not None:
                # part of the batch is already accepted: never raise (that would resend it); the rest is
                # reported per recipient, and not tried again in this call
                retry_after = failure.retry_after if isinstance(failure, TransientError) else None
                for index, _ in chunk:
                    results.setdefault(index, RecipientResult(batch.messages[index], "deferred", error=str(failure),
                                                              retry_after=retry_after))
                continue
            results.update(chunk_results)
            accepted_any = accepted_any or any(result.outcome == "sent" for result in chunk_results.values())
        return [results[i] for i in range(len(batch.messages))]

    def _send_request(self, batch: Batch, static: dict[str, Any],
                      chunk: list[tuple[int, dict[str, Any]]]) -> dict[int, RecipientResult]:
        """One request, plus follow-ups without the recipients a 400 named; results by batch index."""
        results: dict[int, RecipientResult] = {}
        pending = chunk
        for round_number in range(1, MAX_BAD_REQUEST_ROUNDS + 1):
            body = b"".join((self._static_json, orjson.dumps([p for _, p in pending]), b"}"))
            try:
                if batch.before_request is not None:
                    batch.before_request()
                response = self._post(body)
            except _BadRequest as bad:
                rejected = self._attribute(bad.errors, pending)
                if rejected is None:
                    error = PermanentError(f"SendGrid refused the request (400): {_error_lines(bad.errors)}")
                    if results:  # some recipients already settled: report the rest as transient
                        for index, _ in pending:
                            results[index] = RecipientResult(batch.messages[index], "deferred", error=str(error))
                        return results
                    raise error from None
                for position, (reason, hard) in rejected.items():
                    index = pending[position][0]
                    results[index] = RecipientResult(batch.messages[index], "permanent",
                                                     error=f"SendGrid refused {batch.messages[index].recipient.email}: "
                                                           f"{reason}", hard_bounce=hard)
                pending = [item for position, item in enumerate(pending) if position not in rejected]
                if not pending:
                    return results
                continue
            except TransientError as exc:
                if not results:
                    raise
                for index, _ in pending:  # a follow-up failed: the refused ones stay settled
                    results[index] = RecipientResult(batch.messages[index], "deferred", error=str(exc),
                                                     retry_after=exc.retry_after)
                return results
            provider_id = response.headers.get("X-Message-Id") if response.headers is not None else None
            indexes = [index for index, _ in pending]
            messages = batch.messages
            results.update(zip(indexes, RecipientResult.all_sent([messages[index] for index in indexes], provider_id)))
            return results
        for index, _ in pending:
            results[index] = RecipientResult(batch.messages[index], "transient",
                                             error=f"still refused after {MAX_BAD_REQUEST_ROUNDS} corrected requests")
        return results

    @staticmethod
    def _attribute(errors: list[dict], pending: Sequence[tuple[int, dict]]) -> dict[int, tuple[str, bool]] | None:
        """{position in the request: (reason, hard bounce)} when every error names a recipient; else None."""
        rejected: dict[int, tuple[str, bool]] = {}
        systemic = False
        for error in errors:
            field = str(error.get("field") or "")
            match = _PERSONALIZATION_FIELD.match(field)
            if not match or int(match.group(1)) >= len(pending):
                return None
            position = int(match.group(1))
            message = str(error.get("message") or "rejected").strip()
            is_address = bool(_ADDRESS_FIELD.match(field))
            hard = is_address and bool(_INVALID_ADDRESS.search(message))
            if not is_address:
                systemic = True
            reason = f"{field}: {message}"
            if position in rejected:
                previous, previous_hard = rejected[position]
                rejected[position] = (f"{previous}; {reason}", previous_hard or hard)
            else:
                rejected[position] = (reason, hard)
        if not rejected:
            return None
        if systemic and len(pending) > 1 and len(rejected) == len(pending):
            return None  # the same non-address error for everyone: our request is wrong, not the people
        return rejected

    def _post(self, body: bytes):
        assert self._send is not None
        with self._watchdog.guard(self.timeout) as guard:
            self._send.guard = guard
            try:
                guard.check()
                response = self._send.post_json(body)
                if guard.cut:  # an answer cut short (a trickle): its status line alone is no answer
                    raise http.client.IncompleteRead(b"")
            except python_http_client.exceptions.HTTPError as exc:
                self.requests_sent += 1
                raise self._translate(exc) from None
            except (OSError, http.client.HTTPException) as exc:
                # URLError (refused, DNS), TimeoutError, ConnectionResetError, RemoteDisconnected, IncompleteRead…
                self._send.close_connection()  # never reused after a failure
                self.requests_sent += 1
                if guard.interrupted():
                    raise TransientError(f"SendGrid at {self.shown_url}: {guard.why()}") from None
                # URLError's reason is the underlying error; an SSLError's `reason` is only its code
                # (CERTIFICATE_VERIFY_FAILED), not why (hostname mismatch, self-signed…): its text says that
                reason = (exc.reason if isinstance(exc, urllib.error.URLError) else None) or exc
                raise TransientError(strip_credentials(
                    f"SendGrid at {self.shown_url} unreachable: {type(exc).__name__}: {reason}")) from None
            finally:
                self._send.guard = None
        self.requests_sent += 1
        return response

    def _translate(self, exc: python_http_client.exceptions.HTTPError) -> Exception:
        status = getattr(exc, "status_code", None) or 0
        errors = _parse_errors(getattr(exc, "body", None))
        detail = _error_lines(errors) if errors else getattr(exc, "reason", "") or ""
        if status == 400:
            return _BadRequest(errors)
        if status == 429:
            retry_after = retry_after_from(getattr(exc, "headers", None))
            wait = f"; retry in {retry_after:.0f}s" if retry_after is not None else ""
            return TransientError(f"SendGrid rate limit (429){wait}", retry_after=retry_after)
        if status in (401, 403):
            return PermanentError(f"SendGrid refused the API key ({status}: {detail or 'unauthorized'}); check "
                                  f"SENDGRID_API_KEY and that the key has the Mail Send permission")
        if status == 413:
            return PermanentError(f"SendGrid refused the request as too large (413: {detail or 'payload too large'}); "
                                  f"a request must stay under 30 MB: shorten the issue or lower MAILER_BATCH_SIZE")
        if status == 408 or status >= 500:
            return TransientError(f"SendGrid error {status}" + (f": {detail}" if detail else ""),
                                  retry_after=retry_after_from(getattr(exc, "headers", None)))
        return PermanentError(f"SendGrid answered {status}" + (f": {detail}" if detail else "")
                              + f" (is MAILER_SENDGRID_API_URL={self.shown_url} right?)")


def _webhook(settings: Settings):  # noqa: ANN202 - a SendGridWebhook (its module needs `cryptography`)
    from .sendgrid_events import SendGridWebhook
    return SendGridWebhook(settings)


PROVIDER = Provider(
    name="sendgrid",
    backend=SendGridBackend.from_settings,
    problems=SendGridBackend.settings_problems,
    webhook=_webhook,
    settings=(
        Setting("sendgrid_api_key", "", "SENDGRID_API_KEY"),
        Setting("sendgrid_api_url", "https://api.sendgrid.com", "MAILER_SENDGRID_API_URL", normalise=normalise_base_url),
        Setting("sendgrid_sandbox", False, "MAILER_SENDGRID_SANDBOX"),
        Setting("sendgrid_webhook_public_key", "", "MAILER_SENDGRID_WEBHOOK_PUBLIC_KEY"),
        # seconds, in total, per request
        Setting("sendgrid_timeout", DEFAULT_TIMEOUT, "MAILER_SENDGRID_TIMEOUT", check=positive_seconds),
        # recipients handed over and not yet answered, at most (4 requests of 1000): what hides the API's
        # latency, and what a crash may repeat
        Setting("sendgrid_in_flight", 4000, "MAILER_SENDGRID_IN_FLIGHT",
                check=within(1, 100_000, "recipients in flight at once; 4000 = 4 requests of 1000")),
    ),
    label="SendGrid",
    own_dkim=OwnDkim(selector="s1", fallback_domain="sendgrid.net",
                     setup="set up domain authentication in SendGrid (Settings → Sender Authentication) "
                           "and publish its CNAMEs"),
    own_envelope=True,
    spf_include="sendgrid.net",
    in_flight=lambda settings: (settings.sendgrid_in_flight, MAX_PERSONALIZATIONS),
)
