"""A local HTTP server speaking SendGrid's v3 `POST /v3/mail/send` contract, for tests and benchmarks.

It enforces the documented limits a real request must respect (so a test failing here would have
failed against SendGrid):

* `Authorization: Bearer <key>` → 401 when missing or wrong, 403 for keys without Mail Send;
* a JSON body (400 otherwise), at most 30 MB (413);
* 1 to 1000 personalizations, at most 1000 recipients across to + cc + bcc, each address once;
* every `to` has a plausible `email`; names without `,` `;` or line breaks;
* no reserved header (x-sg-id, x-sg-eid, received, dkim-signature, Content-Type,
  Content-Transfer-Encoding, To, From, Subject, Reply-To, CC, BCC) at the top level or per
  personalization; header values are strings;
* custom_args and substitutions are objects of strings; together at most 10,000 bytes per
  personalization;
* content: at least one part, non-empty values, text/plain first when there are several;
* from.email and a subject (top level or in every personalization); ≤ 10 categories of ≤ 255 chars.

On success: 202 with an `X-Message-Id` (200 without one in sandbox mode) and the request is recorded,
so tests can count messages per recipient and rebuild what each person would receive
(`delivered_to`, applying that personalization's substitutions).

Fault injection: `script()` queues responses consumed one per request (429 with rate-limit headers,
5xx, hang, reset, close without response, optionally *after* accepting the request), and
`reject_addresses()` adds a rule answering 400 with an `errors` array naming each matching
`personalizations.N.to.0.email`.

Connections: kept alive between requests (HTTP/1.1, as SendGrid's API does) unless `keep_alive=False`
(then every answer says `Connection: close`); `handshake` seconds make each new connection wait before
its first request is read (a real HTTPS connection's TCP and TLS handshakes, two round trips, which a
loopback connection does not cost); `silent_close_after=N` closes a connection after its Nth answer
without saying so (a server's idle timer firing: the client finds it closed when it reuses it).
`connections` counts the connections opened.

Run standalone (used by the benchmark, in its own process):
    python tests/sendgrid_server.py [--port N] [--cheap] [--api-key KEY] [--latency S] [--handshake S]
prints `PORT <n>` on stdout once listening; `--cheap` only parses the JSON and counts.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import secrets
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
MAX_ARGS_BYTES = 10_000
MAX_BODY_BYTES = 30 * 1024 * 1024
MAX_CATEGORIES = 10
RESERVED_HEADERS = frozenset(h.lower() for h in (
    "x-sg-id", "x-sg-eid", "received", "dkim-signature", "Content-Type", "Content-Transfer-Encoding",
    "To", "From", "Subject", "Reply-To", "CC", "BCC"))
HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
_EMAIL = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")
INVALID_ADDRESS = "Does not contain a valid address."


@dataclass
class Fault:
    """One scripted response. kind: status | hang | trickle | reset | close | ok (handled normally: lets
    the requests before a fault through). `trickle` starts a 202 answer and then sends one header byte
    every `interval` seconds for `seconds` (each read succeeds: only a total deadline stops it).

    `after_accept`: the request is validated and recorded as accepted first, then the fault hits (the
    response is lost: the ambiguous window of a real provider call).
    """

    kind: str = "status"
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    seconds: float = 30.0
    after_accept: bool = False
    interval: float = 0.5


@dataclass
class Accepted:
    """A request SendGrid would have queued."""

    message_id: str
    body: dict
    headers: dict[str, str]
    size: int
    at: float
    sandbox: bool = False

    @property
    def personalizations(self) -> list[dict]:
        return self.body["personalizations"]


@dataclass
class Delivered:
    """What one recipient would receive: substitutions applied to subject and content."""

    email: str
    name: str | None
    subject: str
    text: str | None
    html: str | None
    headers: dict[str, str]
    custom_args: dict[str, str]
    categories: list[str]
    message_id: str
    request: Accepted


@dataclass
class LogEntry:
    at: float
    status: int | str
    personalizations: int
    recipients: tuple[str, ...] = ()


def substitute(text: str, substitutions: dict[str, str]) -> str:
    """Apply substitutions in one pass (a value is never substituted again)."""
    if not substitutions or text is None:
        return text
    keys = sorted(substitutions, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(k) for k in keys))
    return pattern.sub(lambda m: substitutions[m.group(0)], text)


def _error(message: str, field_name: str | None) -> dict:
    return {"message": message, "field": field_name, "help": HELP if field_name else None}


def validate(body: Any) -> list[dict]:
    """Every documented limit a request breaks, as SendGrid's `errors` entries (empty when valid)."""
    if not isinstance(body, dict):
        return [_error("Bad Request", None)]
    errors: list[dict] = []
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        return [_error("The personalizations field is required and must have at least one personalization.",
                       "personalizations")]
    if len(personalizations) > MAX_PERSONALIZATIONS:
        errors.append(_error(f"The personalization block is limited to {MAX_PERSONALIZATIONS} personalizations per "
                             f"API request. You have provided {len(personalizations)} personalizations. Please "
                             f"consider splitting this into multiple requests and resending your request.",
                             "personalizations"))
    total = 0
    seen: set[str] = set()
    all_have_subject = True
    for n, p in enumerate(personalizations):
        if not isinstance(p, dict):
            errors.append(_error("Invalid type. Expected: object.", f"personalizations.{n}"))
            continue
        if not p.get("subject"):
            all_have_subject = False
        if not isinstance(p.get("to"), list) or not p["to"]:
            errors.append(_error("The to parameter is required for all personalization objects, and must have at "
                                 "least one email object with a valid email address.", f"personalizations.{n}.to"))
        for kind in ("to", "cc", "bcc"):
            people = p.get(kind) or []
            if not isinstance(people, list):
                errors.append(_error("Invalid type. Expected: array.", f"personalizations.{n}.{kind}"))
                continue
            for m, person in enumerate(people):
                total += 1
                address = person.get("email") if isinstance(person, dict) else None
                if not isinstance(address, str) or not _EMAIL.match(address) or not address.isascii():
                    errors.append(_error(INVALID_ADDRESS, f"personalizations.{n}.{kind}.{m}.email"))
                    continue
                if address.lower() in seen:
                    errors.append(_error(f"Each unique email address in the personalizations array should only be "
                                         f"included once. You have included {address} more than once.",
                                         f"personalizations.{n}.{kind}.{m}.email"))
                seen.add(address.lower())
                name = person.get("name")
                if name is not None and (not isinstance(name, str) or re.search(r"[,;\r\n]", name)):
                    errors.append(_error("The to.name, cc.name and bcc.name cannot include ';' or ','.",
                                         f"personalizations.{n}.{kind}.{m}.name"))
        errors.extend(_check_headers(p.get("headers"), f"personalizations.{n}.headers"))
        size = 0
        for part in ("substitutions", "custom_args"):
            values = p.get(part)
            if values is None:
                continue
            if not isinstance(values, dict):
                errors.append(_error("Invalid type. Expected: object.", f"personalizations.{n}.{part}"))
                continue
            for key, value in values.items():
                if not isinstance(value, str):
                    errors.append(_error(f"Invalid type. Expected: string, given: {type(value).__name__}.",
                                         f"personalizations.{n}.{part}.{key}"))
                    continue
                size += len(key.encode("utf-8")) + len(value.encode("utf-8"))
        if size > MAX_ARGS_BYTES:
            errors.append(_error(f"The total size of custom arguments and substitutions may not exceed "
                                 f"{MAX_ARGS_BYTES} bytes per personalization.", f"personalizations.{n}.custom_args"))
    if total > MAX_RECIPIENTS:
        errors.append(_error(f"There is a limit of {MAX_RECIPIENTS} total recipients (to + cc + bcc) per request.",
                             "personalizations"))
    sender = body.get("from")
    if not isinstance(sender, dict) or not isinstance(sender.get("email"), str) or not _EMAIL.match(sender["email"]):
        errors.append(_error("The from object must be provided for every email send. It is an object that requires "
                             "the email parameter, but may also contain a name parameter.", "from.email"))
    if not body.get("subject") and not all_have_subject:
        errors.append(_error("The subject is required. You can get around this requirement if you use a template "
                             "with a subject defined or if every personalization has a subject defined.", "subject"))
    errors.extend(_check_headers(body.get("headers"), "headers"))
    custom_args = body.get("custom_args")
    if custom_args is not None:
        if not isinstance(custom_args, dict) or any(not isinstance(v, str) for v in custom_args.values()):
            errors.append(_error("Invalid type. Expected: object of strings.", "custom_args"))
    content = body.get("content")
    if not isinstance(content, list) or not content:
        errors.append(_error("Unless a valid template_id is provided, the content parameter is required. There must "
                             "be at least one defined content block.", "content"))
    else:
        types = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str) \
                    or not isinstance(part.get("value"), str) or not part["value"]:
                errors.append(_error("The content value must be a string at least one character in length.",
                                     f"content.{i}.value"))
                continue
            types.append(part["type"])
        if "text/plain" in types and types[0] != "text/plain":
            errors.append(_error("If present, text/plain must be first, followed by text/html, followed by any other "
                                 "content.", "content"))
        if "text/html" in types and "text/plain" in types and types.index("text/html") != 1:
            errors.append(_error("If present, text/plain must be first, followed by text/html, followed by any other "
                                 "content.", "content"))
    categories = body.get("categories")
    if categories is not None:
        if not isinstance(categories, list) or len(categories) > MAX_CATEGORIES or any(
                not isinstance(c, str) or not c or len(c) > 255 for c in categories):
            errors.append(_error("You may not have more than 10 categories per request, each at most 255 characters.",
                                 "categories"))
    return errors


def _check_headers(headers: Any, where: str) -> list[dict]:
    if headers is None:
        return []
    if not isinstance(headers, dict):
        return [_error("Invalid type. Expected: object.", where)]
    errors = []
    for key, value in headers.items():
        if key.lower() in RESERVED_HEADERS:
            errors.append(_error(f"The following header is reserved and cannot be set: {key}", f"{where}.{key}"))
        elif not isinstance(value, str):
            errors.append(_error("Invalid type. Expected: string.", f"{where}.{key}"))
        elif "\r" in value or "\n" in value:
            errors.append(_error("Header values cannot contain line breaks.", f"{where}.{key}"))
    return errors


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_HTTPServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def setup(self) -> None:
        super().setup()
        owner = self.server.owner
        self._answered = 0
        with owner._lock:
            owner.connections += 1
        if owner.handshake:
            owner._stop.wait(owner.handshake)

    def do_POST(self) -> None:  # noqa: N802
        owner = self.server.owner
        if self.path.rstrip("/") != "/v3/mail/send":
            self._reply(404, {"errors": [_error("not found", None)]})
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self._read(length)
        recipients = raw.count(b'"to":')  # cheap: one `to` per personalization in what mailer sends
        owner._enter(recipients)
        self._in_flight = recipients
        try:
            owner._handle(self, raw)
        finally:
            self._leave_once()

    def _leave_once(self) -> None:
        """The request stops counting as in flight once its answer is about to be written (before the
        client can read it and send its next request), or when it ends without an answer."""
        recipients, self._in_flight = getattr(self, "_in_flight", None), None
        if recipients is not None:
            self.server.owner._leave(recipients)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/_stats":  # not SendGrid's: lets a benchmark in another process check the count
            owner = self.server.owner
            with owner._lock:
                stats = {"requests": owner.accepted_count, "recipients": owner.accepted_recipients,
                         "max_in_flight_requests": owner.max_in_flight_requests,
                         "max_in_flight_recipients": owner.max_in_flight_recipients,
                         "connections": owner.connections}
            self._reply(200, stats)
            return
        self._reply(405, {"errors": [_error("method not allowed", None)]})

    def _read(self, length: int) -> bytes:
        chunks, remaining = [], length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode("utf-8"))
        self._leave_once()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        owner = self.server.owner
        if not owner.keep_alive:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if data:
            self.wfile.write(data)
        self._answered = getattr(self, "_answered", 0) + 1
        if owner.silent_close_after and self._answered >= owner.silent_close_after:
            self.close_connection = True  # no header: the client learns it when it reuses the connection

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), no response."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True

    def _drop(self) -> None:
        """Close the connection cleanly without a response."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    owner: "SendGridServer"


class SendGridServer:
    """The fake SendGrid: `start()` it (or use it as a context manager), point the backend at `.url`."""

    def __init__(self, api_key: str = "SG.test", *, host: str = "127.0.0.1", port: int = 0, cheap: bool = False,
                 max_body_bytes: int = MAX_BODY_BYTES, latency: float = 0.0, handshake: float = 0.0,
                 keep_alive: bool = True, silent_close_after: int | None = None) -> None:
        self.api_key = api_key
        self.handshake = handshake  # seconds each new connection waits before its first request is read
        self.keep_alive = keep_alive
        self.silent_close_after = silent_close_after
        self.connections = 0  # connections opened by clients
        # seconds between accepting a request and answering it (a real API's latency): the window in
        # which a crash of the client leaves an accepted request unrecorded
        self.latency = latency
        self.forbidden_keys: set[str] = set()  # keys without the Mail Send permission → 403
        self.cheap = cheap
        self.max_body_bytes = max_body_bytes
        self.faults: collections.deque[Fault] = collections.deque()
        self.address_rules: list[tuple[Callable[[str], bool], str]] = []
        self.accepted: list[Accepted] = []
        self.log: list[LogEntry] = []
        self.accepted_count = 0
        self.accepted_recipients = 0
        # requests (and their recipients) being handled at once, from the body read to the answer: what
        # a client has in flight; the highest seen tells whether it kept its in-flight bound
        self.in_flight_requests = self.in_flight_recipients = 0
        self.max_in_flight_requests = self.max_in_flight_recipients = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    # ----- lifecycle ------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "SendGridServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="sendgrid-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes hanging handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(5)

    def __enter__(self) -> "SendGridServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- scripting ------------------------------------------------------------------------------
    def script(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def fail_next(self, status: int = 500, times: int = 1, headers: dict[str, str] | None = None,
                  body: Any = None) -> None:
        default = {"errors": [_error({500: "Internal server error", 502: "Bad gateway",
                                      503: "Service unavailable"}.get(status, "error"), None)]}
        self.script(*(Fault("status", status, dict(headers or {}), body if body is not None else default)
                      for _ in range(times)))

    def rate_limit_next(self, retry_after: float | None = 1, times: int = 1, reset_in: float | None = None,
                        limit: int = 600) -> None:
        """429 as SendGrid sends it: X-RateLimit-Limit/Remaining/Reset (epoch seconds), plus Retry-After
        when `retry_after` is given. `reset_in` sets Reset relative to the moment of the response."""
        for _ in range(times):
            headers = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0"}
            if retry_after is not None:
                headers["Retry-After"] = str(retry_after)
            self.script(Fault("status", 429, headers, {"errors": [_error("too many requests", None)]},
                              seconds=reset_in if reset_in is not None else (retry_after or 1)))

    def hang_next(self, seconds: float = 30.0, after_accept: bool = False) -> None:
        self.script(Fault("hang", seconds=seconds, after_accept=after_accept))

    def trickle_next(self, seconds: float = 60.0, interval: float = 0.5, after_accept: bool = False) -> None:
        self.script(Fault("trickle", seconds=seconds, interval=interval, after_accept=after_accept))

    def reset_next(self, after_accept: bool = False) -> None:
        self.script(Fault("reset", after_accept=after_accept))

    def close_next(self, after_accept: bool = False) -> None:
        self.script(Fault("close", after_accept=after_accept))

    def reject_addresses(self, contains: str | Callable[[str], bool], message: str = INVALID_ADDRESS) -> None:
        """Any recipient whose address matches → 400 naming `personalizations.N.to.M.email`."""
        matcher = contains if callable(contains) else (lambda address, needle=contains: needle in address)
        self.address_rules.append((matcher, message))

    # ----- what was accepted ----------------------------------------------------------------------
    def recipients(self) -> list[str]:
        """Every accepted `to` address, once per accepted message (repeats = duplicates)."""
        with self._lock:
            return [person["email"] for request in self.accepted for p in request.personalizations
                    for person in p.get("to", [])]

    def count_by_recipient(self) -> collections.Counter:
        return collections.Counter(self.recipients())

    def delivered_to(self, address: str) -> list[Delivered]:
        """What `address` would receive, one entry per accepted message to them."""
        out = []
        with self._lock:
            requests = list(self.accepted)
        for request in requests:
            body = request.body
            for p in request.personalizations:
                for person in p.get("to", []):
                    if person.get("email") != address:
                        continue
                    subs = p.get("substitutions") or {}
                    content = {part["type"]: substitute(part["value"], subs) for part in body.get("content", [])}
                    out.append(Delivered(
                        email=address, name=person.get("name"),
                        subject=substitute(p.get("subject") or body.get("subject", ""), subs),
                        text=content.get("text/plain"), html=content.get("text/html"),
                        headers={**(body.get("headers") or {}), **(p.get("headers") or {})},
                        custom_args={**(body.get("custom_args") or {}), **(p.get("custom_args") or {})},
                        categories=list(body.get("categories") or []), message_id=request.message_id,
                        request=request))
        return out

    def statuses(self) -> list[int | str]:
        with self._lock:
            return [entry.status for entry in self.log]

    def clear(self) -> None:
        with self._lock:
            self.accepted.clear()
            self.log.clear()
            self.faults.clear()
            self.address_rules.clear()
            self.accepted_count = self.accepted_recipients = 0
            self.max_in_flight_requests = self.max_in_flight_recipients = 0

    # ----- the endpoint ---------------------------------------------------------------------------
    def _enter(self, recipients: int) -> None:
        with self._lock:
            self.in_flight_requests += 1
            self.in_flight_recipients += recipients
            self.max_in_flight_requests = max(self.max_in_flight_requests, self.in_flight_requests)
            self.max_in_flight_recipients = max(self.max_in_flight_recipients, self.in_flight_recipients)

    def _leave(self, recipients: int) -> None:
        with self._lock:
            self.in_flight_requests -= 1
            self.in_flight_recipients -= recipients

    def _record_log(self, status: int | str, body: Any) -> None:
        personalizations = body.get("personalizations") if isinstance(body, dict) else None
        count = len(personalizations) if isinstance(personalizations, list) else 0
        recipients: tuple[str, ...] = ()
        if not self.cheap and isinstance(personalizations, list):
            recipients = tuple(person.get("email", "") for p in personalizations if isinstance(p, dict)
                               for person in (p.get("to") or []) if isinstance(person, dict))
        with self._lock:
            self.log.append(LogEntry(time.time(), status, count, recipients))

    def _handle(self, handler: _Handler, raw: bytes) -> None:
        auth = handler.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] != self.api_key:
            self._record_log(401, None)
            handler._reply(401, {"errors": [_error("The provided authorization grant is invalid, expired, or revoked",
                                                   None)]})
            return
        if auth[7:] in self.forbidden_keys:
            self._record_log(403, None)
            handler._reply(403, {"errors": [_error("access forbidden", None)]})
            return
        media_type = (handler.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if media_type != "application/json":  # SendGrid answers 415 to anything but JSON
            self._record_log(415, None)
            handler._reply(415, {"errors": [_error("Content-Type should be application/json", None)]})
            return
        if len(raw) > self.max_body_bytes:
            self._record_log(413, None)
            handler._reply(413, {"errors": [_error("Payload Too Large", None)]})
            return
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self._record_log(400, None)
            handler._reply(400, {"errors": [_error("Bad Request: the body is not valid JSON", None)]})
            return
        with self._lock:
            fault = self.faults.popleft() if self.faults else None
        if fault is not None and fault.kind == "ok":  # a placeholder: this request is handled normally
            fault = None
        if fault is not None and not fault.after_accept:
            self._apply_fault(handler, fault, body)
            return
        if self.cheap:
            personalizations = body.get("personalizations") if isinstance(body, dict) else None
            if not isinstance(personalizations, list) or not 1 <= len(personalizations) <= MAX_PERSONALIZATIONS:
                self._record_log(400, body)
                handler._reply(400, {"errors": [_error("bad personalizations", "personalizations")]})
                return
            errors = []
        else:
            errors = validate(body)
            errors.extend(self._address_rule_errors(body))
        if errors:
            self._record_log(400, body)
            handler._reply(400, {"errors": errors})
            return
        sandbox = bool(((body.get("mail_settings") or {}).get("sandbox_mode") or {}).get("enable"))
        message_id = secrets.token_urlsafe(16)
        with self._lock:
            self.accepted_count += 1
            self.accepted_recipients += len(body["personalizations"])
            if not self.cheap:
                self.accepted.append(Accepted(message_id, body, dict(handler.headers.items()), len(raw), time.time(),
                                              sandbox))
        self._record_log(200 if sandbox else 202, body)
        if self.latency:
            self._stop.wait(self.latency)
        if fault is not None:  # accepted, then the response is lost
            self._apply_fault(handler, fault, body, logged=True)
            return
        if sandbox:
            handler._reply(200)
        else:
            handler._reply(202, headers={"X-Message-Id": message_id})

    def _address_rule_errors(self, body: dict) -> list[dict]:
        if not self.address_rules:
            return []
        errors = []
        for n, p in enumerate(body["personalizations"]):
            for kind in ("to", "cc", "bcc"):
                for m, person in enumerate(p.get(kind) or []):
                    address = person.get("email", "")
                    for matcher, message in self.address_rules:
                        if matcher(address):
                            errors.append(_error(message, f"personalizations.{n}.{kind}.{m}.email"))
                            break
        return errors

    def _apply_fault(self, handler: _Handler, fault: Fault, body: Any, logged: bool = False) -> None:
        if not logged:
            self._record_log(fault.status if fault.kind == "status" else fault.kind, body)
        if fault.kind == "status":
            headers = dict(fault.headers)
            if fault.status == 429:
                headers.setdefault("X-RateLimit-Reset", str(int(time.time() + fault.seconds)))
            handler._reply(fault.status, fault.body, headers)
        elif fault.kind == "hang":
            self._stop.wait(fault.seconds)
            handler._drop()
        elif fault.kind == "trickle":
            try:
                handler.wfile.write(b"HTTP/1.1 202 Accepted\r\nX-Still-Thinking: ")
                handler.wfile.flush()
                deadline = time.monotonic() + fault.seconds
                while time.monotonic() < deadline and not self._stop.wait(fault.interval):
                    handler.wfile.write(b".")
                    handler.wfile.flush()
            except OSError:
                pass
            handler._drop()
        elif fault.kind == "reset":
            handler._reset()
        elif fault.kind == "close":
            handler._drop()
        else:  # pragma: no cover
            raise ValueError(fault.kind)


try:  # a ready-made fixture for any test module: `from .sendgrid_server import sendgrid_server`
    import pytest

    @pytest.fixture
    def sendgrid_server():
        """A started SendGridServer (API key "SG.test"), stopped after the test."""
        with SendGridServer() as server:
            yield server
except ImportError:  # pragma: no cover - standalone use without pytest
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="SG.test")
    parser.add_argument("--cheap", action="store_true", help="only parse the JSON and count (benchmarks)")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds between accepting a request and answering it (a real API's round trip)")
    parser.add_argument("--handshake", type=float, default=0.0,
                        help="seconds each new connection waits before its first request (TCP + TLS handshakes)")
    args = parser.parse_args(argv)
    server = SendGridServer(args.api_key, port=args.port, cheap=args.cheap, latency=args.latency,
                            handshake=args.handshake)
    print(f"PORT {server.port}", flush=True)
    try:
        server._httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        with server._lock:
            print(f"ACCEPTED {server.accepted_count} requests, {server.accepted_recipients} recipients",
                  file=sys.stderr, flush=True)
        server._httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
