"""The `smtp` backend: smtplib over persistent connections, STARTTLS or implicit TLS, AUTH, a small pool.

How messages go out:

- Each backend keeps its connections open across messages and batches (dispatch makes one backend
  per worker thread, `mailer send --workers N`). A connection lost in between (idle timeout, server
  restart, 421) is reopened on the next message.
- `ledger_step = 1`: dispatch hands over one message per `send_batch` call, and records accepted
  messages in bounded groups (group commit: at most MAILER_SMTP_COMMIT_EVERY = 10 messages, or
  MAILER_SMTP_COMMIT_MS = 20 ms, see dispatch `_process`), so a crash can duplicate at most one
  group per connection (the design's promise for SMTP) at one ledger transaction per group.
- `pool` lanes (MAILER_SMTP_POOL): a call with several messages (test sends, or a dispatch that hands
  over more per step) is spread over up to `pool` connections by a persistent thread pool, each lane
  taking the next unsent message, so a slow or dead lane never holds the others back; results come
  back in the batch's order. With one message per call, one connection does all the work.
- Each message is built from the issue's pre-serialised bytes just before it is sent, already
  dot-stuffed (`MessageFactory.smtp_data`: the static pieces stuffed once per issue) and handed to
  smtplib as a `DataPayload`: quoted-printable bodies keep every line ≤ 78 characters, so
  SMTP's 998-octet limit holds. `SMTPUTF8` is asked for only when an address needs it (and the server
  offers it; else an ASCII local part goes with an IDNA domain, anything else is refused for good).
- `EHLO` carries `local_hostname` (the sender's domain), so `socket.getfqdn()` — a DNS lookup that
  can take seconds — is never called per connection.

Outcomes, per message: 2xx → sent (provider id = the server's queue id when its reply names one,
else the Message-ID); 5xx → permanent (`hard_bounce` for a refused mailbox: 550/551/553 at RCPT or an
enhanced status 5.1.x / 5.2.1, never 5.7.x policy refusals); a 4xx about the recipient → transient,
a 4xx about the relay (`is_path_refusal`: 421, MAIL 4xx, 452, 4.3.x…) → deferred. A 421 or a dropped
connection reconnects once and resends that message; when that fails too, the lane stops and what
it had not sent comes back `deferred` (counted against nobody) — messages already accepted stay
`sent`, whatever happens afterwards.

Deadlines (deadline.py): each message, its reconnection included, and each connection attempt
(DNS, TCP, greeting, EHLO, STARTTLS, AUTH) must finish within `timeout` seconds in total
(MAILER_SMTP_TIMEOUT, 60 s), however slowly the server trickles its replies; `abort()` cuts every
connection at once (dispatch calls it a few seconds after a stop). A call in which nothing was accepted or refused because no connection could be had
raises `TransientError`; bad credentials (535), an untrusted certificate, a server without STARTTLS
(never a silent fall-back to clear text) or without AUTH raise `PermanentError` (from `open()`,
before dispatch claims anything). Refusals that are about the issue rather than the recipient (MAIL
or DATA 5xx, a message that cannot be built) pause the send at the third in a row, instead of
failing the whole list one subscriber at a time.

The one ambiguous moment is a connection lost after the message's final dot but before the
server's reply (or a crash between the reply and the ledger write): the message may have been
accepted, and it is sent again, with the same Message-ID, which receivers that deduplicate use.

`PROVIDER` declares it to the registry: its settings (MAILER_SMTP_HOST, _PORT, _USERNAME, _PASSWORD,
_TLS, _POOL, _TIMEOUT, MAILER_SPF_INCLUDE), that it sends our bytes (our DKIM signature, our envelope
sender), and what SPF must authorise: the include a hosted relay documents (`HOSTED_RELAYS`, by
MAILER_SMTP_HOST) or MAILER_SPF_INCLUDE, else the addresses of MAILER_SMTP_HOST.

Longer than ~400 lines because the connection pool, its lanes, deadlines and the classification
of SMTP replies form one state machine, and the smtplib client's overrides (PIPELINING, DATA sent
pre-stuffed) must raise exactly the errors that state machine classifies.
"""

from __future__ import annotations

import itertools
import logging
import re
import smtplib
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..config import Settings, positive_seconds
from ..errors import ConfigError, InvalidAddress
from ..registry import HostedRelay, Provider, Setting
from .base import Backend, Batch, OutgoingMessage, PermanentError, RecipientResult, TransientError
from .deadline import Guard, Watchdog
from .bounces.verp import Verp

log = logging.getLogger("mailer.smtp")

DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
DEFAULT_TIMEOUT = 60.0  # seconds: total per message (its reconnection included) and per connection attempt
CLOSE_TIMEOUT = 5.0     # seconds for QUIT when closing: a stalled server must not hold a stop
HARD_BOUNCE_CODES = frozenset({550, 551, 553})  # at RCPT: "no such user", "user not local", "bad mailbox name"
SYSTEMATIC_REFUSALS = 3  # MAIL/DATA refused (5xx) this many times with nothing accepted → the batch can't go
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_QUEUE_ID = re.compile(r"(?:queued as|\bid=|\bqueue id:?)\s*<?([A-Za-z0-9][A-Za-z0-9._@:-]{3,})", re.IGNORECASE)


_PLAIN_ADDRESS = re.compile(r"[^\s<>()\[\],;:\"\\@]+@[^\s<>()\[\],;:\"\\@]+\Z")


def _angle(address: str) -> str:
    """`<address>` for an envelope command; smtplib's own quoteaddr (email.utils.parseaddr) only when needed."""
    return f"<{address}>" if _PLAIN_ADDRESS.match(address) else smtplib.quoteaddr(address)


class DataPayload:
    """What DATA carries, ready as it is: a message dot-stuffed with its end-of-data line
    (`mime.stuffed_join`). `smtplib.SMTP.sendmail` takes it in place of the message bytes (it only
    measures it, for SIZE) and our `data` sends it without stuffing it again."""

    __slots__ = ("octets",)

    def __init__(self, octets: bytes) -> None:
        self.octets = octets

    def __len__(self) -> int:
        return len(self.octets)


class _ClientMixin:
    """smtplib.SMTP with cheaper per-message protocol work (measured in bench/bench_smtp.py).

    - `mail`/`rcpt`: smtplib quotes every address through `email.utils.parseaddr` (≈50 µs each);
      a plain addr-spec only needs angle brackets.
    - `sendmail`: PIPELINING (RFC 2920) when the server offers it, for one recipient (ours always):
      MAIL, RCPT and DATA in one write, two round trips per message instead of four.
    - `data`: a `DataPayload` (made by `MessageFactory.smtp_data`: dot-stuffed, with its end-of-data
      line, static pieces stuffed once per issue) goes out as it is; other bytes are dot-stuffed with
      `bytes.replace` instead of smtplib's multiline regex over the whole message (≈185 µs for 33 KB,
      `bytes.replace` ≈70 µs, the payload ≈2 µs). The reply to the final dot is kept: servers name
      their queue id there.
    Everything else (`sendmail` without PIPELINING, SMTPUTF8 checks, CR/LF refusal as `putcmd`'s,
    the errors raised for each reply) is smtplib's.
    """

    last_data_reply: tuple[int, bytes] | None = None
    guard: Guard | None = None  # set by the backend: the deadline and stop of the operation in progress

    def _get_socket(self, host, port, timeout):  # noqa: ANN001, ANN202 - smtplib's signature
        """Resolve and connect under the guard (DNS and a blackholed SYN obey the deadline and the stop);
        implicit TLS is negotiated on the guarded socket, against the configured host name."""
        if self.guard is None:
            return super()._get_socket(host, port, timeout)
        sock = self.guard.open_connection(host, port, timeout)
        if isinstance(self, smtplib.SMTP_SSL):
            sock = self.context.wrap_socket(sock, server_hostname=self._host)
        return sock

    def mail(self, sender, options=()):  # noqa: ANN001, ANN201 - smtplib's signature
        self.send(self._mail_line(sender, options))
        return self.getreply()

    def rcpt(self, recip, options=()):  # noqa: ANN001, ANN201
        self.send(self._rcpt_line(recip, options))
        return self.getreply()

    def _mail_line(self, sender: str, options) -> bytes:  # noqa: ANN001
        optionlist = ""
        if options and self.does_esmtp:
            if any(x.lower() == "smtputf8" for x in options):
                if self.has_extn("smtputf8"):
                    self.command_encoding = "utf-8"
                else:
                    raise smtplib.SMTPNotSupportedError("SMTPUTF8 not supported by server")
            optionlist = " " + " ".join(options)
        return self._line("mail", f"FROM:{_angle(sender)}{optionlist}")

    def _rcpt_line(self, recip: str, options) -> bytes:  # noqa: ANN001
        optionlist = " " + " ".join(options) if options and self.does_esmtp else ""
        return self._line("rcpt", f"TO:{_angle(recip)}{optionlist}")

    def _line(self, cmd: str, args: str = "") -> bytes:
        """A command line as smtplib's `putcmd` writes it (CR or LF in it refused the same way)."""
        line = f"{cmd} {args}" if args else cmd
        if "\r" in line or "\n" in line:
            line = line.replace("\n", "\\n").replace("\r", "\\r")
            raise ValueError(f"command and arguments contain prohibited newline characters: {line}")
        return (line + "\r\n").encode(self.command_encoding)

    def data(self, msg):  # noqa: ANN001, ANN201
        self.putcmd("data")
        code, reply = self.getreply()
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
        return self._payload(msg)

    def _payload(self, msg) -> tuple[int, bytes]:  # noqa: ANN001
        """After DATA's 354: the message (stuffed here unless it is a `DataPayload`), and the reply."""
        if isinstance(msg, DataPayload):
            self.send(msg.octets)
        else:
            if isinstance(msg, str):
                msg = smtplib._fix_eols(msg).encode("ascii")
            stuffed = msg.replace(b"\n.", b"\n..")  # RFC 5321 4.5.2 transparency
            if stuffed.startswith(b"."):
                stuffed = b"." + stuffed
            self.send(stuffed + (b".\r\n" if stuffed.endswith(b"\r\n") else b"\r\n.\r\n"))
        self.last_data_reply = self.getreply()
        return self.last_data_reply

    def sendmail(self, from_addr, to_addrs, msg, mail_options=(), rcpt_options=()):  # noqa: ANN001, ANN201
        """smtplib's `sendmail`; to one recipient through a server that offers PIPELINING (RFC 2920),
        MAIL, RCPT and DATA leave in one write and their three replies are read after it: two round
        trips per message instead of four. The same replies raise the same errors as smtplib's (after
        RSET, or closing on a 421): SMTPSenderRefused, SMTPRecipientsRefused, SMTPDataError. When RCPT
        was refused and the server still answers DATA with 354 (RFC 2920 §3.1), an empty message (a
        lone dot) ends that transaction before the RSET."""
        self.ehlo_or_helo_if_needed()
        if isinstance(to_addrs, str):
            to_addrs = [to_addrs]
        if len(to_addrs) != 1 or not self.does_esmtp or not self.has_extn("pipelining"):
            return super().sendmail(from_addr, to_addrs, msg, mail_options, rcpt_options)
        if isinstance(msg, str):
            msg = smtplib._fix_eols(msg).encode("ascii")
        options = [*(["size=%d" % len(msg)] if self.has_extn("size") else []), *mail_options]
        recipient = to_addrs[0]
        self.send(self._mail_line(from_addr, options) + self._rcpt_line(recipient, rcpt_options) + self._line("data"))
        code, resp = self.getreply()
        if code == 421:
            self.close()
            raise smtplib.SMTPSenderRefused(code, resp, from_addr)
        refusal: Exception | None = None
        if code != 250:
            refusal = smtplib.SMTPSenderRefused(code, resp, from_addr)
        code, resp = self.getreply()
        if code == 421:  # closing: no DATA reply will come
            self.close()
            raise refusal or smtplib.SMTPRecipientsRefused({recipient: (code, resp)})
        if refusal is None and code not in (250, 251):
            refusal = smtplib.SMTPRecipientsRefused({recipient: (code, resp)})
        code, resp = self.getreply()
        if refusal is not None:
            if code == 354:  # DATA accepted all the same: an empty message closes the transaction
                self.send(b".\r\n")
                self.getreply()
            self._rset()
            raise refusal
        if code != 354:  # as smtplib's `data()`: raised as it is
            raise smtplib.SMTPDataError(code, resp)
        code, resp = self._payload(msg)
        if code != 250:
            if code == 421:
                self.close()
            else:
                self._rset()
            raise smtplib.SMTPDataError(code, resp)
        return {}


class _Client(_ClientMixin, smtplib.SMTP):
    pass


class _SSLClient(_ClientMixin, smtplib.SMTP_SSL):
    pass


class _LaneDown(Exception):
    """A lane's connection is gone and one reconnection did not bring it back."""

    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


@dataclass
class _Lane:
    """One persistent connection."""

    index: int
    client: smtplib.SMTP | None = None
    connections: int = 0  # how many times this lane connected (for logs and tests)

    def drop(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                client.close()
            except OSError:
                pass


@dataclass
class _BatchState:
    """What the lanes of one batch share."""

    messages: tuple[OutgoingMessage, ...]
    results: list[RecipientResult | None]
    next_index: "itertools.count[int]" = field(default_factory=itertools.count)
    lock: threading.Lock = field(default_factory=threading.Lock)
    accepted: int = 0
    stop_reason: str | None = None
    permanent_reason: str | None = None
    down_reasons: list[str] = field(default_factory=list)

    def take(self) -> int | None:
        if self.stop_reason is not None:
            return None
        index = next(self.next_index)
        return index if index < len(self.messages) else None


def _text(resp: bytes | str) -> str:
    if isinstance(resp, bytes):
        resp = resp.decode("utf-8", "replace")
    return " ".join(resp.split())


def _reply(code: int, resp: bytes | str) -> str:
    return f"{code} {_text(resp)}".strip()


def is_hard_bounce(code: int, resp: bytes | str, stage: str) -> bool:
    """Does this 5xx say the address itself is bad (so the subscriber should be marked bounced)?"""
    if code < 500:
        return False
    enhanced = _ENHANCED.match(_text(resp))
    if enhanced:
        subject, detail = int(enhanced.group(2)), int(enhanced.group(3))
        # 5.1.x: bad mailbox/domain; 5.2.1: mailbox disabled. 5.7.x (policy, spam) is not the address.
        return subject == 1 or (subject == 2 and detail == 1)
    return stage == "RCPT" and code in HARD_BOUNCE_CODES


def is_path_refusal(code: int, resp: bytes | str, stage: str) -> bool:
    """Is this 4xx about the server or the session rather than the recipient (so it must not count
    against them)? RFC 5321 4.2 / RFC 3463: 421 anywhere (service closing); any 4xx to MAIL (about the
    sender); at RCPT 452 (insufficient storage, too many recipients) and enhanced 4.3.x (mail system)
    or 4.5.x (protocol); at DATA (one recipient per transaction here) anything but 4.2.x (mailbox) and
    4.7.x (greylisting, policy). Everything else at RCPT (450/451 greylisting, 4.2.x mailbox busy or
    full, 4.1.x, 4.4.x routing to that domain) is the recipient's."""
    if not 400 <= code < 500:
        return False
    if code == 421 or stage == "MAIL":
        return True
    enhanced = _ENHANCED.match(_text(resp))
    subject = int(enhanced.group(2)) if enhanced else None
    if stage == "DATA":
        return subject not in (2, 7)
    return code == 452 or subject in (3, 5)


def queue_id(resp: bytes | str) -> str | None:
    """The server's queue id, when its 250 reply to DATA names one (Postfix, Exim, SendGrid…)."""
    match = _QUEUE_ID.search(_text(resp))
    return match.group(1).rstrip(".") if match else None


def _ascii_hostname(name: str) -> str:
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return "localhost"


class SmtpBackend(Backend):
    name = "smtp"
    max_batch = 100   # rows claimed at a time (claims are cheap; a stopped worker hands the rest back)
    ledger_step: int | None = 1  # one message per send_batch call, recorded before the next
    cut = "cutting the connection; the message in flight stays queued"

    def __init__(self, host: str, port: int | None = None, *, tls: str = "starttls", username: str = "",
                 password: str = "", sender: str, local_hostname: str = "localhost", pool: int = 1,
                 timeout: float = DEFAULT_TIMEOUT, ssl_context: ssl.SSLContext | None = None, cafile: str | None = None,
                 max_batch: int | None = None, ledger_step: int | None = None, verp: "Verp | None" = None) -> None:
        if not host:
            raise ConfigError("MAILER_SMTP_HOST is missing for the smtp backend")
        if tls not in DEFAULT_PORTS:
            raise ConfigError(f"MAILER_SMTP_TLS must be one of {', '.join(DEFAULT_PORTS)}, not {tls!r}")
        if not sender or "@" not in sender:
            raise ConfigError("MAILER_FROM is missing or invalid: the smtp backend needs an envelope sender")
        if username and not password:
            raise ConfigError("MAILER_SMTP_PASSWORD is missing (MAILER_SMTP_USERNAME is set)")
        self.host = host
        self.port = port or DEFAULT_PORTS[tls]
        self.tls = tls
        self.username = username
        self.password = password
        self.sender = sender
        self.verp = verp  # envelope sender per delivery (providers/bounces/verp.py), else `sender`
        self.local_hostname = _ascii_hostname(local_hostname or "localhost")
        self.pool = max(1, int(pool))
        if not timeout or timeout <= 0:
            raise ConfigError(f"MAILER_SMTP_TIMEOUT must be a positive number of seconds, not {timeout!r}")
        self.timeout = float(timeout)  # total per message and per connection attempt (module docstring)
        self._watchdog = Watchdog("mailer-smtp-deadlines")
        if max_batch is not None:
            self.max_batch = max_batch
        if ledger_step is not None:
            self.ledger_step = ledger_step
        self.ssl_context: ssl.SSLContext | None = None
        if tls != "none":
            # Always a verifying context: smtplib's own default for starttls() checks nothing.
            self.ssl_context = ssl_context or ssl.create_default_context(cafile=cafile)
        self._lanes = [_Lane(i) for i in range(self.pool)]
        self._executor: ThreadPoolExecutor | None = None
        self._streak: list[str] = []  # MAIL/DATA refusals (5xx) since the last accepted message

    @staticmethod
    def settings_problems(settings: Settings) -> list[str]:
        """What this backend's own settings lack, one line each (a host)."""
        return [] if settings.smtp_host else ["MAILER_SMTP_HOST is missing for the smtp backend"]

    @classmethod
    def from_settings(cls, settings: Settings, **overrides) -> "SmtpBackend":  # noqa: ANN003
        """The backend the settings describe; `overrides` (e.g. `ssl_context`, `cafile`) win."""
        problems = cls.settings_problems(settings)
        if problems:
            raise ConfigError("; ".join(problems))
        options = dict(port=settings.smtp_port or None, tls=settings.smtp_tls, username=settings.smtp_username,
                       password=settings.smtp_password, sender=settings.sender_email,
                       local_hostname=settings.sender_domain, pool=settings.smtp_pool,
                       timeout=settings.smtp_timeout, verp=Verp.from_settings(settings))
        options.update(overrides)
        return cls(settings.smtp_host, **options)

    def envelope_sender(self, batch: Batch, message: OutgoingMessage) -> str:
        """MAIL FROM: the delivery's VERP address when MAILER_BOUNCE_ADDRESS is set, else the email's From
        address (a stored edition's frozen one, so envelope and header agree), else MAILER_FROM."""
        if self.verp is None:
            return batch.factory.settings.sender_email or self.sender
        return self.verp.sender(message.recipient.subscriber_id if message.delivery_id is not None else None,
                                batch.issue_id)

    @property
    def where(self) -> str:
        return f"SMTP server {self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """Connections opened so far by this backend (reconnections included)."""
        return sum(lane.connections for lane in self._lanes)

    # ----- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Connect the first lane: bad credentials or TLS stop the send before anything is claimed.

        Raises `PermanentError` (credentials, certificate, no STARTTLS/AUTH) or `TransientError`
        (unreachable, 4xx greeting), which dispatch retries with backoff before claiming anything.
        """
        with self._watchdog.guard(self.timeout) as guard:
            self._connect(self._lanes[0], guard)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for lane in self._lanes:
            client = lane.client
            if client is None:
                continue
            if not self._watchdog.aborted:
                with self._watchdog.guard(min(CLOSE_TIMEOUT, self.timeout)) as guard:
                    guard.attach(client.sock)
                    try:
                        client.quit()
                    except (smtplib.SMTPException, OSError):
                        pass
            lane.drop()
        self._watchdog.close()

    def abort(self) -> None:
        """Cut every connection now (from any thread): the message in flight comes back `deferred`
        (it stays queued), and nothing more is sent by this backend."""
        self._watchdog.abort()

    # ----- connecting --------------------------------------------------------------------------
    def _connect(self, lane: _Lane, guard: Guard) -> smtplib.SMTP:
        """Open (or return) the lane's connection: connect, EHLO, STARTTLS, AUTH, all within `guard`."""
        if lane.client is not None:
            return lane.client
        client: smtplib.SMTP | None = None
        try:
            guard.check()
            if self.tls == "ssl":
                client = _SSLClient(local_hostname=self.local_hostname, timeout=self.timeout, context=self.ssl_context)
            else:
                client = _Client(local_hostname=self.local_hostname, timeout=self.timeout)
            client._host = self.host  # what TLS verifies (smtplib sets it only when connecting in __init__)
            client.guard = guard
            code, greeting = client.connect(self.host, self.port)
            lane.connections += 1
            if code != 220:  # what smtplib.SMTP(host) checks when it connects in __init__
                raise smtplib.SMTPConnectError(code, greeting)
            if client.sock is not None:
                client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _ehlo(client)
            if self.tls == "starttls":
                if not client.has_extn("starttls"):
                    raise PermanentError(f"{self.where} does not offer STARTTLS; refusing to send in clear "
                                         f"(MAILER_SMTP_TLS=ssl for implicit TLS, or none for a trusted relay)")
                client.starttls(context=self.ssl_context)
                _ehlo(client)
            if self.username:
                client.login(self.username, self.password)
            guard.check()  # a reply cut short by the deadline or a stop is no session
        except PermanentError:
            _close_quietly(client)
            raise
        except (smtplib.SMTPException, OSError) as exc:
            _close_quietly(client)
            if guard.interrupted():  # cut by the deadline or a stop: whatever smtplib parsed is no answer
                raise TransientError(f"cannot connect to {self.where}: {guard.why()}") from None
            raise self._session_error(exc) from None
        lane.client = client
        return client

    def _session_error(self, exc: Exception) -> TransientError | PermanentError:
        """What a failure to open a session means: bad credentials, TLS or a 5xx are for a human to fix
        (permanent); the rest may pass (transient)."""
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            message = (f"{self.where} refused the login of {self.username!r}: {_reply(exc.smtp_code, exc.smtp_error)} "
                       f"(check MAILER_SMTP_USERNAME / MAILER_SMTP_PASSWORD)")
            return TransientError(message) if 400 <= exc.smtp_code < 500 else PermanentError(message)
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return PermanentError(f"{self.where}: {exc} (MAILER_SMTP_USERNAME is set, but the server offers "
                                  f"no AUTH on this connection; does it want TLS?)")
        if isinstance(exc, ssl.SSLCertVerificationError):
            return PermanentError(f"{self.where}: TLS certificate not trusted ({exc.verify_message or exc}); "
                                  f"install the CA or fix the host name")
        if isinstance(exc, smtplib.SMTPResponseException):  # SMTPConnectError, SMTPHeloError included
            message = f"{self.where} refused the session: {_reply(exc.smtp_code, exc.smtp_error)}"
            return PermanentError(message) if exc.smtp_code >= 500 else TransientError(message)
        return TransientError(f"cannot connect to {self.where}: {_os_reason(exc)}")

    # ----- sending -----------------------------------------------------------------------------
    def send_batch(self, batch: Batch) -> list[RecipientResult]:
        if not batch.messages:
            return []
        state = _BatchState(batch.messages, [None] * len(batch.messages))
        lanes = min(self.pool, len(batch.messages))
        if lanes == 1:
            self._run_lane(self._lanes[0], batch, state)
        else:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.pool, thread_name_prefix="mailer-smtp")
            futures = [self._executor.submit(self._run_lane, self._lanes[i], batch, state) for i in range(lanes)]
            for future in futures:
                future.result()
        return self._finish(state)

    def _finish(self, state: _BatchState) -> list[RecipientResult]:
        if state.accepted == 0:
            # Nothing accepted: a batch-level failure is reported as one, so dispatch pauses or retries
            # the whole batch instead of failing recipients for what is the server's or the setup's fault.
            if state.stop_reason:
                raise PermanentError(state.stop_reason)
            answered = any(r is not None and r.outcome != "deferred" for r in state.results)
            if not answered and state.permanent_reason:
                raise PermanentError(state.permanent_reason)
            if not answered:
                reasons = state.down_reasons + [r.error for r in state.results if r is not None and r.error]
                if reasons:
                    raise TransientError(reasons[0])
        reason = state.stop_reason or (state.down_reasons[0] if state.down_reasons else "not sent")
        return [r if r is not None else RecipientResult(m, "deferred", error=reason)
                for m, r in zip(state.messages, state.results)]

    def _run_lane(self, lane: _Lane, batch: Batch, state: _BatchState) -> None:
        while True:
            index = state.take()
            if index is None:
                return
            message = state.messages[index]
            try:
                result = self._deliver(lane, batch, message, state)
            except _LaneDown as exc:
                with state.lock:
                    state.down_reasons.append(exc.reason)
                    if exc.permanent and state.permanent_reason is None:
                        state.permanent_reason = exc.reason
                # the message it held stays unsent (transient); the other lanes take the rest
                return
            except Exception as exc:  # noqa: BLE001 - a bug must not lose what was already accepted
                log.exception("%s: unexpected error on lane %d", self.where, lane.index)
                lane.drop()
                with state.lock:
                    state.down_reasons.append(f"unexpected error: {exc!r}")
                return
            state.results[index] = result

    def _deliver(self, lane: _Lane, batch: Batch, message: OutgoingMessage, state: _BatchState) -> RecipientResult:
        """Send one message on the lane, reconnecting once if the connection is lost; the whole of it
        (reconnection included) within `timeout` seconds, and cut at once by `abort()`."""
        with self._watchdog.guard(self.timeout) as guard:
            return self._deliver_guarded(lane, batch, message, state, guard)

    def _deliver_guarded(self, lane: _Lane, batch: Batch, message: OutgoingMessage, state: _BatchState,
                         guard: Guard) -> RecipientResult:
        recipient = message.recipient.email
        options = self._mail_options(recipient, lane)
        data: DataPayload | None = None
        lost: str | None = None
        for attempt in (1, 2):
            try:
                client = self._connect(lane, guard)
            except (TransientError, PermanentError) as exc:
                raise _LaneDown(str(exc), permanent=isinstance(exc, PermanentError)) from None
            guard.attach(client.sock)
            if options is None:
                options = self._mail_options(recipient, lane)
            if isinstance(options, str):  # the address cannot be sent to through this server
                return RecipientResult(message, "permanent", error=options)
            if data is None:
                try:
                    data = DataPayload(batch.factory.smtp_data(message.recipient, message.message_id, batch.date))
                except Exception as exc:  # noqa: BLE001 - one recipient's bad data must not sink the batch
                    return self._unbuildable(message, exc, state)
            envelope_to = options[1]
            try:
                client.sendmail(self.envelope_sender(batch, message), [envelope_to], data, mail_options=options[0])
            except (smtplib.SMTPException, OSError) as exc:
                if guard.interrupted():  # cut mid-reply: whatever smtplib parsed is not the server's answer
                    lost = f"connection lost: {guard.why()}"
                else:
                    outcome = self._answer(lane, message, exc, state)
                    if isinstance(outcome, RecipientResult):
                        return outcome
                    lost = outcome
            else:
                reply = getattr(client, "last_data_reply", None)
                provider_id = (queue_id(reply[1]) if reply else None) or message.message_id
                with state.lock:
                    state.accepted += 1
                    self._streak.clear()
                return RecipientResult(message, "sent", provider_message_id=provider_id)
            lane.drop()
            if guard.interrupted():  # the deadline passed or a stop came: no second try within this message
                log.warning("%s: %s; lane %d stops for this batch", self.where, lost, lane.index)
                raise _LaneDown(f"{self.where}: {lost}")
            if attempt == 1:
                log.info("%s: %s; reconnecting (lane %d)", self.where, lost, lane.index)
        log.warning("%s: %s again after reconnecting; lane %d stops for this batch", self.where, lost, lane.index)
        raise _LaneDown(f"{self.where}: {lost}")

    def _answer(self, lane: _Lane, message: OutgoingMessage, exc: Exception,
                state: _BatchState) -> RecipientResult | str:
        """The server's refusal as this recipient's result, or (a str) why the connection is lost."""
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            code, resp = next(iter(exc.recipients.values()), (0, b""))
            if code != 421:
                return self._refused(message, code, resp, "RCPT", state)
            return f"RCPT {_reply(code, resp)}"
        if isinstance(exc, smtplib.SMTPSenderRefused):
            if exc.smtp_code != 421:
                return self._refused(message, exc.smtp_code, exc.smtp_error, "MAIL", state)
            return f"MAIL {_reply(exc.smtp_code, exc.smtp_error)}"
        if isinstance(exc, smtplib.SMTPDataError):
            if exc.smtp_code != 421:
                _reset(lane)
                return self._refused(message, exc.smtp_code, exc.smtp_error, "DATA", state)
            return f"DATA {_reply(exc.smtp_code, exc.smtp_error)}"
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return RecipientResult(message, "permanent", error=f"{self.where}: {exc}")
        return f"connection lost: {_os_reason(exc)}"

    def _mail_options(self, recipient: str, lane: _Lane) -> tuple[list[str], str] | str | None:
        """(MAIL options, envelope recipient), an error text, or None until connected (needs EHLO)."""
        if recipient.isascii() and self.sender.isascii():
            return [], recipient
        client = lane.client
        if client is None:
            return None
        if client.has_extn("smtputf8"):
            return ["SMTPUTF8"], recipient
        local, _, domain = recipient.rpartition("@")
        if local.isascii() and self.sender.isascii():
            try:
                return [], f"{local}@{domain.encode('idna').decode('ascii')}"
            except UnicodeError:
                pass
        return f"{self.where} does not support SMTPUTF8, needed for {recipient!r}"

    def _systematic(self, message: OutgoingMessage, error: str, state: _BatchState, what: str) -> RecipientResult:
        """A failure that is about the issue, not the recipient (MAIL/DATA 5xx, a message that cannot be built).

        Permanent for this message — unless it is the SYSTEMATIC_REFUSALS-th in a row with nothing accepted
        in between (across batches: dispatch hands over one message per call): then the send stops
        (PermanentError, or the rest of the batch transient) instead of failing every subscriber in turn.
        """
        with state.lock:
            self._streak.append(error)
            if len(self._streak) >= SYSTEMATIC_REFUSALS:
                if state.stop_reason is None:
                    state.stop_reason = (f"{len(self._streak)} messages in a row {what} (last: {error}); "
                                         f"check the sender address and the message")
                return RecipientResult(message, "deferred", error=error)
        return RecipientResult(message, "permanent", error=error)

    def _unbuildable(self, message: OutgoingMessage, exc: Exception, state: _BatchState) -> RecipientResult:
        error = f"cannot build the message: {exc}"
        log.warning("%s: %s", message.recipient.email, error)
        if isinstance(exc, InvalidAddress):  # about this recipient only
            return RecipientResult(message, "permanent", error=error)
        return self._systematic(message, error, state, "could not be built")

    def _refused(self, message: OutgoingMessage, code: int, resp: bytes | str, stage: str,
                 state: _BatchState) -> RecipientResult:
        error = f"{stage} {_reply(code, resp)}"
        if code < 500:
            return RecipientResult(message, "deferred" if is_path_refusal(code, resp, stage) else "transient",
                                   error=error)
        if stage in ("MAIL", "DATA"):
            result = self._systematic(message, error, state, f"were refused by {self.where} at {stage}")
            if result.outcome == "deferred":
                return result
        return RecipientResult(message, "permanent", error=error, hard_bounce=is_hard_bounce(code, resp, stage))


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _ehlo(client: smtplib.SMTP) -> None:
    """EHLO, insisting on a 2xx (smtplib returns any other code silently; a reply cut short by the
    deadline parses as one)."""
    code, reply = client.ehlo()
    if code >= 500:  # a server without ESMTP (RFC 5321 3.2): HELO
        code, reply = client.helo()
    if not 200 <= code < 300:
        raise smtplib.SMTPHeloError(code, reply)


def _close_quietly(client: smtplib.SMTP | None) -> None:
    if client is not None:
        try:
            client.close()
        except OSError:
            pass


def _reset(lane: _Lane) -> None:
    """After a refusal at DATA the transaction may still be open: RSET, or drop the connection."""
    client = lane.client
    if client is None or client.sock is None:
        lane.drop()
        return
    try:
        code, _ = client.rset()
        if code != 250:
            lane.drop()
    except (smtplib.SMTPException, OSError):
        lane.drop()


# Hosted relays: their submission host is not where their mail leaves from, so SPF must name the
# include their documentation gives, not the submission host's addresses (mailer doctor). Each line's
# source is the provider's own documentation of the SPF record to publish.
HOSTED_RELAYS = (
    # https://docs.aws.amazon.com/ses/latest/dg/send-email-authentication-spf.html
    HostedRelay("email-smtp.*.amazonaws.com", "amazonses.com", "Amazon SES"),
    # https://documentation.mailgun.com/docs/mailgun/user-manual/domains/domains-verify/
    HostedRelay("smtp.mailgun.org", "mailgun.org", "Mailgun"),
    HostedRelay("smtp.eu.mailgun.org", "mailgun.org", "Mailgun"),
    # https://postmarkapp.com/support/article/1092-how-do-i-set-up-spf-for-postmark
    HostedRelay("smtp.postmarkapp.com", "spf.mtasv.net", "Postmark"),
    HostedRelay("smtp-broadcasts.postmarkapp.com", "spf.mtasv.net", "Postmark"),
    # https://www.twilio.com/docs/sendgrid/ui/account-and-settings/spf-records
    HostedRelay("smtp.sendgrid.net", "sendgrid.net", "SendGrid"),
    # https://documentation.mailjet.com/hc/en-us/articles/360042412734-Authenticating-Domains-with-SPF-DKIM
    HostedRelay("in-v3.mailjet.com", "spf.mailjet.com", "Mailjet"),
    HostedRelay("in.mailjet.com", "spf.mailjet.com", "Mailjet"),
    # https://help.brevo.com/hc/en-us/articles/12163873383186-Authenticate-your-domain-with-Brevo-Brevo-code-DKIM-DMARC
    HostedRelay("smtp-relay.brevo.com", "spf.brevo.com", "Brevo"),
    HostedRelay("smtp-relay.sendinblue.com", "spf.brevo.com", "Brevo"),
    # https://support.sparkpost.com/docs/getting-started/getting-started-sparkpost#step-2-verify-your-domain
    HostedRelay("smtp.sparkpostmail.com", "sparkpostmail.com", "SparkPost"),
    # https://support.google.com/a/answer/10684623 (Google Workspace SMTP relay)
    HostedRelay("smtp-relay.gmail.com", "_spf.google.com", "Google Workspace"),
    # https://learn.microsoft.com/en-us/microsoft-365/security/office-365-security/email-authentication-spf-configure
    HostedRelay("smtp.office365.com", "spf.protection.outlook.com", "Microsoft 365"),
)


def _spf_include(value: str) -> str:
    """MAILER_SPF_INCLUDE: a domain name, written with or without `include:`."""
    name = str(value).strip().removeprefix("include:").strip().rstrip(".").lower()
    if name and not re.fullmatch(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}", name):
        raise ValueError("is not a domain name to include: (e.g. amazonses.com)")
    return name


PROVIDER = Provider(
    name="smtp",
    backend=SmtpBackend.from_settings,
    problems=SmtpBackend.settings_problems,
    settings=(
        Setting("smtp_host", "", "MAILER_SMTP_HOST"),
        Setting("smtp_port", 0, "MAILER_SMTP_PORT"),  # 0: the TLS mode's port (DEFAULT_PORTS)
        Setting("smtp_username", "", "MAILER_SMTP_USERNAME"),
        Setting("smtp_password", "", "MAILER_SMTP_PASSWORD"),
        Setting("smtp_tls", "starttls", "MAILER_SMTP_TLS", choices=tuple(DEFAULT_PORTS)),
        Setting("smtp_pool", 4, "MAILER_SMTP_POOL"),
        # seconds, in total, per message and per connection attempt
        Setting("smtp_timeout", DEFAULT_TIMEOUT, "MAILER_SMTP_TIMEOUT", check=positive_seconds),
        # what SPF must include for a relay whose outbound servers are not MAILER_SMTP_HOST (doctor)
        Setting("spf_include", "", "MAILER_SPF_INCLUDE", normalise=_spf_include),
    ),
    label="SMTP",
    relay_host_setting="smtp_host",
    hosted_relays=HOSTED_RELAYS,
    spf_include_setting="spf_include",
    path_name="the relay",
)
