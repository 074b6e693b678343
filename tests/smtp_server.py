"""Real SMTP servers on loopback for the smtp backend's tests: aiosmtpd, scripted refusals, TLS, AUTH.

`SinkServer` wraps an aiosmtpd `Controller` bound to 127.0.0.1 (with `server_hostname` so aiosmtpd
never calls `socket.getfqdn()`), counting connections server-side and storing every accepted
message. `ScriptedHandler` refuses by recipient, either from an explicit per-address script or from
the address's local part:

- `bounce…@`  → always `550 5.1.1 … User unknown` at RCPT;
- `busy…@`    → `450 4.2.1 … try again later` at RCPT for the first `busy_times` attempts;
- `drop…@`    → the first attempt gets `421 4.3.2 …` at RCPT and the connection is closed;
- `cut…@`     → the first attempt gets its connection closed at RCPT without any reply.

`make_certificates` writes a throw-away CA and a server certificate for 127.0.0.1/localhost (with the
`cryptography` package, else the `openssl` command).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Callable

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

# aiosmtpd logs every protocol line at INFO on `mail.log`. The sinks run in the test process, beside
# `mailer` commands invoked in it (cli_support.invoke), whose stderr handler takes the root logger's
# records while it runs: a sink's lines then landed in the command's stderr, which a real `mailer`
# process (the relay elsewhere) never shows. Warnings and errors still come through.
logging.getLogger("mail.log").setLevel(logging.WARNING)

SERVER_NAME = "mx.test.invalid"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    tls: bool
    authenticated: bool
    at: float = field(default_factory=time.time)  # when the final dot's answer was given (wall clock)

    def parse(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class ScriptedHandler:
    """Stores accepted messages; refuses recipients as scripted (see the module docstring)."""

    busy_times: int = 2
    rcpt_script: dict[str, list[str]] = field(default_factory=dict)   # address → replies, consumed in order
    data_script: list[str] = field(default_factory=list)              # replies to end-of-DATA, consumed
    data_reply: str = "250 2.0.0 Ok: queued as {n}"
    messages: list[Received] = field(default_factory=list)
    attempts: Counter = field(default_factory=Counter)                # RCPT attempts per address
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_rcpt: Callable[[str], str | None] | None = None
    pipelining: bool = False                                          # offer PIPELINING (RFC 2920) in EHLO
    pipelined: list[bool] = field(default_factory=list)               # per MAIL: had RCPT arrived with it?
    mail_script: list[str] = field(default_factory=list)              # replies to MAIL, consumed ("" = accept)

    # ----- what tests read ----------------------------------------------------------------------
    def count(self, address: str) -> int:
        with self.lock:
            return sum(1 for m in self.messages for r in m.rcpt_tos if r.lower() == address.lower())

    def per_recipient(self) -> Counter:
        with self.lock:
            return Counter(r.lower() for m in self.messages for r in m.rcpt_tos)

    # ----- aiosmtpd hooks -----------------------------------------------------------------------
    def _rcpt_reply(self, address: str) -> str | None:
        key = address.lower()
        with self.lock:
            self.attempts[key] += 1
            attempt = self.attempts[key]
            script = self.rcpt_script.get(key)
            if script:
                return script.pop(0) or None
        if self.on_rcpt is not None:
            reply = self.on_rcpt(key)
            if reply:
                return reply
        local = key.partition("@")[0]
        if local.startswith("bounce"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in local recipient table"
        if local.startswith("busy") and attempt <= self.busy_times:
            return f"450 4.2.1 <{address}>: mailbox busy, try again later"
        if local.startswith("drop") and attempt == 1:
            return "421 4.3.2 Service shutting down, closing transmission channel"
        if local.startswith("cut") and attempt == 1:
            return "CUT"
        return None

    async def handle_EHLO(self, server: SMTP, session, envelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does without this hook
        return [*responses[:-1], "250-PIPELINING", responses[-1]] if self.pipelining else responses

    async def handle_MAIL(self, server: SMTP, session, envelope, address: str, mail_options: list[str]) -> str:
        # the next command already read with MAIL's line: the client pipelined them (one write)
        self.pipelined.append(bytes(getattr(server._reader, "_buffer", b"")).upper().startswith(b"RCPT"))
        with self.lock:
            reply = self.mail_script.pop(0) if self.mail_script else ""
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session, envelope, address: str, rcpt_options: list[str]) -> str:
        reply = self._rcpt_reply(address)
        if reply == "CUT":
            server.transport.close()  # no reply at all: the client sees the connection vanish
            return "250 OK"  # never reaches the client
        if reply:
            if reply.startswith("421"):
                server.loop.call_soon(server.transport.close)  # after the reply is written
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session, envelope) -> str:
        with self.lock:
            if self.data_script:
                reply = self.data_script.pop(0)
                if reply:
                    if reply.startswith("421"):
                        server.loop.call_soon(server.transport.close)
                    return reply
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content),
                                          list(envelope.mail_options), server.transport.get_extra_info("ssl_object") is not None,
                                          bool(session.authenticated)))
            return self.data_reply.format(n=f"Q{len(self.messages):06d}")


class _CountingController(Controller):
    """A Controller whose protocol factory counts connections (one SMTP instance per connection)."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.connections = 0

    def factory(self) -> SMTP:
        self.connections += 1
        return super().factory()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_authenticator(username: str, password: str):  # noqa: ANN201
    def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:  # noqa: ANN001
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == username.encode()
              and auth_data.password == password.encode())
        return AuthResult(success=ok, handled=False)
    return authenticator


@dataclass
class SinkServer:
    handler: ScriptedHandler
    controller: _CountingController
    port: int

    @property
    def connections(self) -> int:
        return self.controller.connections

    stopped: bool = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.controller.stop(no_assert=True)


def start_server(handler: ScriptedHandler | None = None, *, port: int | None = None, auth: tuple[str, str] | None = None,
                 auth_require_tls: bool = True, starttls_context: ssl.SSLContext | None = None,
                 implicit_tls_context: ssl.SSLContext | None = None, **smtp_kwargs) -> SinkServer:  # noqa: ANN003
    """Start an aiosmtpd server on 127.0.0.1 (a fresh port unless given) in its own thread."""
    handler = handler or ScriptedHandler()
    kwargs = dict(smtp_kwargs)
    if auth is not None:
        kwargs.update(authenticator=make_authenticator(*auth), auth_require_tls=auth_require_tls)
    if starttls_context is not None:
        kwargs.update(tls_context=starttls_context, require_starttls=True)
    port = port or free_port()
    controller = _CountingController(handler, hostname="127.0.0.1", port=port, server_hostname=SERVER_NAME,
                                     ssl_context=implicit_tls_context, ready_timeout=5.0, **kwargs)
    controller.start()
    controller.connections = 0  # start() opens one connection of its own to check the server is up
    return SinkServer(handler, controller, port)


# ----- certificates --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_certificates(folder: Path) -> Certificates:
    folder.mkdir(parents=True, exist_ok=True)
    paths = Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    try:
        _with_cryptography(paths)
    except ImportError:
        if shutil.which("openssl") is None:
            raise RuntimeError("neither the cryptography package nor the openssl command is available") from None
        _with_openssl(paths)
    return paths


def _with_cryptography(paths: Certificates) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailer test CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))


def _with_openssl(paths: Certificates) -> None:
    folder = paths.ca.parent
    ca_key = folder / "ca.key"
    csr = folder / "server.csr"
    ext = folder / "server.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
                   "extendedKeyUsage=serverAuth\n", encoding="ascii")
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(ca_key),
        "-out", str(paths.ca), "-days", "2", "-subj", "/CN=mailer test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(paths.key),
        "-out", str(csr), "-subj", "/CN=localhost")
    run("x509", "-req", "-in", str(csr), "-CA", str(paths.ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(paths.cert), "-days", "2", "-extfile", str(ext))


# ----- misbehaving servers (raw sockets): greetings that refuse, replies that stall or trickle -------
class MisbehavingServer:
    """A TCP server on 127.0.0.1 speaking just enough SMTP to misbehave at one chosen point.

    `mode`:
    - `greet-421`: answers the connection with `421 4.3.2 …` and closes (a relay that is down);
    - `stall-greeting`: accepts the connection and never says anything;
    - `trickle-ehlo`: greets, then answers EHLO with `250-` continuation lines, one every `interval`
      seconds, forever (a "still thinking" server: each read succeeds, so a per-read timeout never fires);
    - `trickle-bytes`: greets, then answers EHLO one byte every `interval` seconds, never ending the line;
    - `stall-after-data`: a normal session until the final dot of DATA, then silence (the message may or
      may not have been accepted: the ambiguous window).

    `connections` counts accepted connections; `data_ends` counts messages whose final dot arrived.
    """

    def __init__(self, mode: str, *, interval: float = 0.5, port: int | None = None) -> None:
        self.mode = mode
        self.interval = interval
        self.connections = 0
        self.data_ends = 0
        self._stop = threading.Event()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port or 0))
        self._listener.listen(16)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name=f"misbehaving-{mode}", daemon=True)
        self._accepter.start()

    def stop(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        reader = _LineReader(conn, self._stop)
        try:
            if self.mode == "greet-421":
                conn.sendall(b"421 4.3.2 mx.test.invalid Service not available, try again later\r\n")
                return
            if self.mode == "stall-greeting":
                self._stop.wait(3600)
                return
            conn.sendall(b"220 mx.test.invalid ESMTP\r\n")
            in_data = False
            while not self._stop.is_set():
                line = reader.readline()
                if line is None:
                    return
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        self.data_ends += 1
                        self._stop.wait(3600)  # stall-after-data: never answer the final dot
                        return
                    continue
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    if self.mode == "trickle-ehlo":
                        n = 0
                        while not self._stop.wait(self.interval):
                            n += 1
                            conn.sendall(f"250-still thinking {n}\r\n".encode())
                        return
                    if self.mode == "trickle-bytes":
                        while not self._stop.wait(self.interval):
                            conn.sendall(b"2")
                        return
                    conn.sendall(b"250-mx.test.invalid\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    in_data = True
                    conn.sendall(b"354 go ahead\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 OK\r\n")
        except OSError:
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass


class _LineReader:
    def __init__(self, conn: socket.socket, stop: threading.Event) -> None:
        self.conn = conn
        self.stop = stop
        self.buffer = b""

    def readline(self) -> bytes | None:
        while b"\n" not in self.buffer:
            if self.stop.is_set():
                return None
            try:
                chunk = self.conn.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"
