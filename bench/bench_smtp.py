#!/usr/bin/env python
"""SMTP throughput: mailer's smtp backend against a bare smtplib ceiling and against mailmerge.

One run prints figures (it is not a test). Each SMTP sink runs in its OWN process, so the sink's
CPU is not the sender's:

- `aiosmtpd`: the reference server, which reads DATA line by line (≈ what a careful MTA costs);
- `bulk`: a minimal asyncio sink that scans DATA in bulk for the final dot (EHLO/HELO/MAIL/RCPT/
  DATA/RSET/NOOP/QUIT), i.e. close to a fast relay: the sender becomes the bottleneck.

Against each sink, with the same number of connections for (a) and (b):

(a) ceiling: a bare smtplib loop (one thread per connection) pushing ONE pre-built message (the real
    newsletter) to N envelope recipients — no building, no ledger;
(b) mailer: `dispatch.send_issue` with MAILER_BACKEND=smtp on an N-subscriber SQLite list and the
    example issue in issues/ (render, freeze, claim, build per recipient, send, record: all of it).
    As shipped the ledger is written per message (`SmtpBackend.ledger_step = 1`), so N connections
    are N dispatch workers; `--ledger-step 0` records per claimed batch and spreads each batch over
    the backend's N lanes instead;
(c) mailmerge (PyPI, installed into the venv if missing), run through its CLI with a template
    equivalent to our message (multipart/alternative, same text and HTML, same headers), capped at
    --mailmerge messages and its rate extrapolated (it opens a connection per message).

Each (a)/(b) pair runs --repeat times, interleaved, best kept: the machine may be shared, and the
CPU time per message (sender process, sink process) is printed too, as it is far less noisy than
wall time. `--patched` applies in memory the changes proposed to files the smtp backend does not
own (see `apply_proposed_patches`); `--profile` prints a cProfile of (b) on the bulk sink.

Usage: .venv/bin/python bench/bench_smtp.py [--messages 10000] [--pools 1,4] [--mailmerge 1000]
       [--sinks aiosmtpd,bulk] [--repeat 3] [--ledger-step 0] [--patched] [--profile]
       [--dkim rsa|ed25519] [--signing 2000] [--tracking 2000] [--track-clicks]
DKIM: `--signing N` (default 2000) first prints the signing CPU per message next to the unsigned build
(the floor); `--dkim KIND` signs every message of (a) and (b), so b/a shows what signing costs a send.
Click tracking: `--tracking N` (default 2000) prints the build CPU per recipient with tracking on (every
link a per-recipient click token, the open pixel) next to tracking off (the floor; `tracking_cpu.py`);
`--track-clicks` runs (b) with MAILER_TRACK_CLICKS and MAILER_TRACK_OPENS on.
Targets: (b) ≥ 80 % of (a) on both sinks, (b) ≥ 20 × (c) on the bulk sink.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import os
import secrets
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ISSUE = "2026-11-26-donnees-ouvertes"
SINK_HOSTNAME = "sink.bench.invalid"
SENDER = "lettre@example.org"
ENV = {
    "MAILER_NAME": "Le Fil du jeudi",
    "MAILER_LANGUAGE": "fr",
    "MAILER_FROM": f"Le Fil du jeudi <{SENDER}>",
    "MAILER_BASE_URL": "https://lettre.example.org",
    "MAILER_POSTAL_ADDRESS": "12 rue des Exemples, 75011 Paris",
    "MAILER_SECRET_KEY": secrets.token_urlsafe(32),  # mailer refuses weak or published keys
    "MAILER_TIMEZONE": "Europe/Paris",
    "MAILER_BACKEND": "smtp",
    "MAILER_SMTP_HOST": "127.0.0.1",
    "MAILER_SMTP_TLS": "none",
}


# ===== the sinks (run in their own process: `bench_smtp.py --serve KIND --port N`) =====================
class _Stats:
    count = 0
    octets = 0


class BulkSink(asyncio.Protocol):
    """Just enough SMTP: commands line by line, DATA scanned in bulk for CRLF.CRLF."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = bytearray()
        self.in_data = False
        self.scanned = 0
        transport.write(b"220 " + SINK_HOSTNAME.encode() + b" ESMTP bulk sink\r\n")

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        replies: list[bytes] = []
        while True:
            if self.in_data:
                end = buffer.find(b"\r\n.\r\n", max(self.scanned - 4, 0))
                if end < 0:
                    self.scanned = len(buffer)
                    break
                _Stats.count += 1
                _Stats.octets += end + 2
                del buffer[:end + 5]
                self.in_data, self.scanned = False, 0
                replies.append(b"250 2.0.0 Ok: queued as B%d\r\n" % _Stats.count)
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            verb = bytes(buffer[:4]).upper()
            del buffer[:end + 2]
            if verb == b"EHLO":
                replies.append(b"250-" + SINK_HOSTNAME.encode() + b"\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
                               b"250 SIZE 52428800\r\n")
            elif verb == b"HELO":
                replies.append(b"250 " + SINK_HOSTNAME.encode() + b"\r\n")
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                replies.append(b"250 OK\r\n")
            elif verb == b"DATA":
                replies.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                self.in_data, self.scanned = True, 0
            elif verb == b"QUIT":
                self.transport.write(b"".join(replies) + b"221 Bye\r\n")
                self.transport.close()
                return
            else:
                replies.append(b"502 5.5.1 Command not implemented\r\n")
        if replies:
            self.transport.write(b"".join(replies))


class _CountingHandler:
    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001
        _Stats.count += 1
        _Stats.octets += len(envelope.original_content)
        return f"250 2.0.0 Ok: queued as A{_Stats.count}"


def serve(kind: str, port: int) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    if kind == "bulk":
        factory = BulkSink
    else:
        from aiosmtpd.smtp import SMTP
        handler = _CountingHandler()
        factory = lambda: SMTP(handler, hostname=SINK_HOSTNAME, enable_SMTPUTF8=True, loop=loop)  # noqa: E731
    server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", port))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    print("READY", flush=True)
    loop.run_forever()
    server.close()
    times = os.times()
    print("COUNT", _Stats.count, _Stats.octets, f"{times.user + times.system:.3f}", flush=True)


class Sink:
    """A sink process; `stop()` returns (messages accepted, CPU seconds it used)."""

    def __init__(self, kind: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.kind = kind
        self.process = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(self.port)],
                                        stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"{kind} sink did not start: {line!r}")

    def stop(self) -> tuple[int, float]:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=30)
        for line in out.splitlines():
            if line.startswith("COUNT"):
                _, count, _octets, cpu = line.split()
                return int(count), float(cpu)
        raise RuntimeError(f"{self.kind} sink gave no count: {out!r}")


# ===== the project, the list, the message ============================================================
def make_project(root: Path) -> Path:
    shutil.copytree(REPO / "templates", root / "templates")
    shutil.copytree(REPO / "issues" / ISSUE, root / "issues" / ISSUE)
    # the shipped example is a draft (no scheduler sends it to a real list): sent as an editor would once ready
    toml = root / "issues" / ISSUE / "issue.toml"
    toml.write_text("".join(line for line in toml.read_text(encoding="utf-8").splitlines(keepends=True)
                            if not line.startswith("draft")), encoding="utf-8")
    (root / "subscribers").mkdir()
    return root


def settings_for(project: Path, db: Path, port: int, pool: int):  # noqa: ANN201
    from mailer.config import load_settings
    env = {**ENV, "MAILER_SMTP_PORT": str(port), "MAILER_SMTP_POOL": str(pool), "MAILER_DATABASE_URL": f"sqlite:///{db}"}
    return load_settings(project, env=env)


def make_list(project: Path, db: Path, count: int) -> float:
    """An N-subscriber SQLite list, imported through the real CSV import."""
    from mailer.store import open_store
    from mailer.subscribers import import_csv
    path = project / "list.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name"])
        for i in range(count):
            writer.writerow([f"reader{i:06d}@example.net", f"Lecteur {i}"])
    started = time.perf_counter()
    store = open_store(f"sqlite:///{db}")
    report = import_csv(store, path)
    store.close()
    assert report.rows >= count, report.summary()
    return time.perf_counter() - started


def copy_db(source: Path, target: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        if Path(str(source) + suffix).exists():
            shutil.copyfile(str(source) + suffix, str(target) + suffix)


def sample_message(project: Path, port: int) -> bytes:
    from email.utils import formatdate

    from mailer.content.issue import load_issue
    from mailer.mime import MessageFactory
    from mailer.content.render import Recipient, render_issue
    settings = settings_for(project, project / "unused.db", port, 1)
    rendered = render_issue(load_issue(ISSUE, settings.issues_dir, settings.zone), settings)
    factory = MessageFactory(rendered)
    recipient = Recipient(email="reader000000@example.net", name="Lecteur 0", subscriber_id=1,
                          unsubscribe_url="https://lettre.example.org/u/" + "x" * 43)
    return factory.build(recipient, "<0123456789abcdef01234567@example.org>", formatdate(usegmt=True))


def measure_signing(project: Path, count: int) -> None:
    """CPU per message of `MessageFactory.build` unsigned (the floor) and DKIM-signed (RSA 2048, Ed25519),
    and of dkimpy's own whole-message `dkim.sign` (its pure-Python RSA) for comparison."""
    import dkim

    from mailer.content.issue import load_issue
    from mailer.content.render import Recipient, render_issue
    from mailer.dkim_signing import generate_key
    from mailer.mime import MessageFactory

    recipients = [Recipient(email=f"reader{i:06d}@example.net", name=f"Lecteur {i}", subscriber_id=i,
                            unsubscribe_url=f"https://lettre.example.org/u/{i:043d}") for i in range(count)]

    def cpu_per_message(factory) -> float:  # noqa: ANN001
        started = time.process_time()
        for i, recipient in enumerate(recipients):
            factory.build(recipient, f"<{i}@example.org>", "Thu, 26 Nov 2026 07:00:00 GMT")
        return (time.process_time() - started) / count * 1e6

    base = settings_for(project, project / "unused.db", 25, 1)
    floor = cpu_per_message(MessageFactory(render_issue(load_issue(ISSUE, base.issues_dir, base.zone), base)))
    figures = []
    for kind in ("rsa", "ed25519"):
        key = generate_key(project / f"bench-{kind}.pem", "bench", "example.org", kind)
        from mailer.config import load_settings
        settings = load_settings(project, env={**ENV, "MAILER_DKIM_PRIVATE_KEY": str(key.path),
                                               "MAILER_DKIM_SELECTOR": "bench"})
        factory = MessageFactory(render_issue(load_issue(ISSUE, settings.issues_dir, settings.zone), settings))
        figures.append((kind, cpu_per_message(factory) - floor))
        if kind == "rsa":
            sample = factory.build(recipients[0], "<x@example.org>")
            sample = sample[sample.index(b"\r\nDate:") + 2:]  # the unsigned message
            pem = key.path.read_bytes()
            started = time.process_time()
            runs = max(1, count // 20)
            for _ in range(runs):
                dkim.sign(sample, b"bench", b"example.org", pem, canonicalize=(b"relaxed", b"relaxed"))
            dkimpy = (time.process_time() - started) / runs * 1e6
    print(f"DKIM signing, CPU per message ({count} messages): build unsigned (floor) {floor:,.0f} µs; signing adds "
          + ", ".join(f"{kind} {extra:,.0f} µs" for kind, extra in figures)
          + f"; dkimpy's own dkim.sign (pure-Python RSA, whole message) {dkimpy:,.0f} µs", flush=True)


# ===== (a) ceiling ===================================================================================
def run_ceiling(port: int, data: bytes, count: int, connections: int) -> float:
    counter = itertools.count()
    errors: list[BaseException] = []

    def lane() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="example.org") as client:
                while (i := next(counter)) < count:
                    client.sendmail(SENDER, [f"reader{i:06d}@example.net"], data)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=lane) for _ in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


# ===== (b) mailer ====================================================================================
def run_mailer(project: Path, template_db: Path, port: int, count: int, pool: int, tag: str,
               profile: bool = False) -> tuple[float, dict]:
    from mailer.sending import dispatch
    from mailer.store import open_store
    from mailer.providers.smtp import SmtpBackend
    db = project / f"send-{tag}.db"
    copy_db(template_db, db)
    # With one message per ledger step (as shipped) a send_batch call never spans lanes: several
    # connections come from dispatch's worker threads (`mailer send --workers N`), one backend each.
    # With whole-batch steps (--ledger-step 0) one worker spreads each batch over `pool` lanes.
    workers, lanes = (pool, 1) if SmtpBackend.ledger_step == 1 else (1, pool)
    settings = settings_for(project, db, port, lanes)
    store = open_store(settings.database_url)
    profiler = None
    if profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    report = dispatch.send_issue(settings, store, ISSUE, workers=workers, allow_draft=True)
    elapsed = time.perf_counter() - started
    if profiler is not None:
        import pstats
        profiler.disable()
        print("\n----- cProfile of (b), by cumulative time (top 30) -----")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        print("----- by own time (top 20) -----")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    store.close()
    if report.counts["sent"] != count:
        raise RuntimeError(f"mailer sent {report.counts} instead of {count}")
    return elapsed, report.counts


# ===== (c) mailmerge =================================================================================
def ensure_mailmerge() -> Path:
    cli = Path(sys.executable).with_name("mailmerge")
    if not cli.exists():
        print("installing mailmerge into the venv …", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "mailmerge"], check=True)
    return cli


def _jinja(template) -> str:  # noqa: ANN001 - mailer.render.Template
    """Our text/HTML template with its slots as Jinja variables (static text kept raw)."""
    out = []
    for index, piece in enumerate(template.pieces):
        if index % 2:
            out.append("{{ " + piece.replace(".", "_") + " }}")
        elif piece:
            out.append("{% raw %}" + piece + "{% endraw %}")
    return "".join(out)


def make_mailmerge_files(project: Path, port: int, count: int) -> tuple[Path, Path, Path]:
    """A template equivalent to our message: same headers, multipart/alternative, same text and HTML."""
    from email.utils import formataddr

    from mailer.content.issue import load_issue
    from mailer.mime import MessageFactory
    from mailer.content.render import Recipient, render_issue
    from mailer import tokens
    settings = settings_for(project, project / "unused.db", port, 1)
    rendered = render_issue(load_issue(ISSUE, settings.issues_dir, settings.zone), settings)
    factory = MessageFactory(rendered)
    static = factory._static_headers.decode("ascii").replace("\r\n", "\n")  # From, Subject (RFC 2047), List-Id
    boundary = "=_mailmerge_boundary_0123456789"
    template = (
        static
        + "To: {{ to }}\n"
        + "Message-ID: {{ message_id }}\n"
        + "List-Unsubscribe: <{{ unsubscribe_url }}>, <mailto:" + settings.effective_unsubscribe_mailto
        + "?subject=unsubscribe>\n"
        + "List-Unsubscribe-Post: List-Unsubscribe=One-Click\n"
        + "MIME-Version: 1.0\n"
        + f'Content-Type: multipart/alternative; boundary="{boundary}"\n\n'
        + f"--{boundary}\n" + 'Content-Type: text/plain; charset="utf-8"\n\n' + _jinja(rendered.text) + "\n"
        + f"--{boundary}\n" + 'Content-Type: text/html; charset="utf-8"\n\n' + _jinja(rendered.html) + "\n"
        + f"--{boundary}--\n"
    )
    template_path = project / "mailmerge_template.txt"
    template_path.write_text(template, encoding="utf-8")
    database_path = project / "mailmerge_database.csv"
    key = settings.secret_key.encode()
    columns = ["to", "message_id", "greeting", "greeting_html", "email", "email_html", "unsubscribe_url",
               "unsubscribe_url_html"]
    with open(database_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for i in range(count):
            email = f"reader{i:06d}@example.net"
            url = f"{settings.base_url}/u/{tokens.make_token(key, 'unsubscribe', i + 1)}"
            values = rendered.slot_values(Recipient(email=email, name=f"Lecteur {i}", unsubscribe_url=url))
            writer.writerow([formataddr((f"Lecteur {i}", email)),
                             tokens.message_id(key, ISSUE, i + 1, settings.sender_domain)]
                            + [values[c.replace("_html", ".html")] for c in columns[2:]])
    config_path = project / "mailmerge_server.conf"
    config_path.write_text(f"[smtp_server]\nhost = 127.0.0.1\nport = {port}\nratelimit = 0\n", encoding="ascii")
    return template_path, database_path, config_path


def run_mailmerge(cli: Path, files: tuple[Path, Path, Path]) -> float:
    template, database, config = files
    started = time.perf_counter()
    subprocess.run([str(cli), "--no-dry-run", "--no-limit", "--template", str(template), "--database", str(database),
                    "--config", str(config), "--output-format", "raw"],
                   check=True, stdout=subprocess.DEVNULL, cwd=template.parent)
    return time.perf_counter() - started


# ===== proposed changes elsewhere, applied in memory for --patched ====================================
def apply_proposed_patches() -> None:
    """What bench/bench_smtp.py's profile asks of files the smtp backend does not own (see the module doc).

    1. config.py: `Settings.sender_email` / `sender_domain` run `email.utils.parseaddr` on every access
       (three times per message: dispatch's Message-ID, message.py's List-Unsubscribe twice):
       make them `functools.cached_property` (Settings is a frozen dataclass without slots: this works).
    2. message.py: `MessageFactory.build` calls `recipient_headers()` (formats a List-Unsubscribe string it
       does not use) and `effective_unsubscribe_mailto` per message: precompute the mailto tail in __init__.
    3. store.py: see below. (4., dispatch.py: record SMTP results as they arrive with group commits instead of
       one transaction per message — approximated here by `--ledger-step 0`, one write per claimed batch.)
    """
    import functools

    from mailer import config, mime as message
    for name in ("sender_email", "sender_domain"):
        current = config.Settings.__dict__[name]
        if isinstance(current, property):  # (already a cached_property in later versions of config.py)
            prop = functools.cached_property(current.fget)
            prop.__set_name__(config.Settings, name)
            setattr(config.Settings, name, prop)

    original_init = message.MessageFactory.__init__

    def init(self, rendered, **kwargs):  # noqa: ANN001, ANN003
        original_init(self, rendered, **kwargs)
        self._unsubscribe_tail = (b">,\r\n <mailto:" + self.settings.effective_unsubscribe_mailto.encode("ascii")
                                  + b"?subject=unsubscribe>\r\n")

    def build(self, recipient, message_id=None, date=None) -> bytes:  # noqa: ANN001
        values = self.slot_values(recipient)
        return b"".join((
            b"Date: " + (date or message.formatdate(localtime=False, usegmt=True)).encode("ascii") + message.CRLF,
            self._static_headers,
            message._to_header(recipient),
            b"Message-ID: " + (message_id or message.make_msgid(domain=self.domain)).encode("ascii") + message.CRLF,
            b"List-Unsubscribe: <" + recipient.unsubscribe_url.encode("ascii") + self._unsubscribe_tail,
            b"List-Unsubscribe-Post: " + message.ONE_CLICK.encode("ascii") + message.CRLF,
            self._mime_head, self._text_head, self.text_part.fill(values), self._html_head,
            self.html_part.fill(values), self._closing,
        ))

    message.MessageFactory.__init__ = init
    message.MessageFactory.build = build

    # 3. store/ledger.py: `finish_deliveries` builds a new Core UPDATE per distinct (status, provider id, error):
    #    one per row for SMTP, where every message has its own id, and SQLAlchemy's statement
    #    construction is most of the cost of a one-row write. Build the statement ONCE, with bound
    #    parameters, and executemany (one round trip for a batch, cached compilation for a single row).
    import sqlalchemy as sa

    from mailer import store as store_module
    from mailer.store.schema import deliveries as table
    statement = (table.update()
                 .where(table.c.id == sa.bindparam("b_id"), table.c.claimed_by == sa.bindparam("b_worker"),
                        table.c.status == "sending")
                 .values(status=sa.bindparam("b_status"), provider_message_id=sa.bindparam("b_provider_id"),
                         last_error=sa.bindparam("b_error"), sent_at=sa.bindparam("b_sent_at"),
                         updated_at=sa.bindparam("b_now")))

    def finish_deliveries(self, conn, worker, rows):  # noqa: ANN001
        if not rows:
            return
        now = store_module.utcnow()
        conn.execute(statement, [{"b_id": r["id"], "b_worker": worker, "b_status": r["status"],
                                  "b_provider_id": r.get("provider_message_id"), "b_error": r.get("last_error"),
                                  "b_sent_at": now if r["status"] == "sent" else None, "b_now": now} for r in rows])

    store_module.Store.finish_deliveries = finish_deliveries


# ===== main ==========================================================================================
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", choices=("aiosmtpd", "bulk"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--messages", type=int, default=10_000, help="list size for (a) and (b) (10000)")
    parser.add_argument("--pools", default="1,4", help="connection counts to compare for (a) and (b) (1,4)")
    parser.add_argument("--mailmerge", type=int, default=1000, help="messages for (c), 0 to skip (1000)")
    parser.add_argument("--sinks", default="aiosmtpd,bulk")
    parser.add_argument("--batch", type=int, default=0, help="override SmtpBackend.max_batch (ledger batch size)")
    parser.add_argument("--ledger-step", type=int, default=None,
                        help="override SmtpBackend.ledger_step (messages per ledger write; 0 = the whole batch)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of (a) and (b) per sink and pool; best kept (3)")
    parser.add_argument("--profile", action="store_true", help="cProfile (b) with pool 1 on the bulk sink and stop")
    parser.add_argument("--dkim", choices=("none", "rsa", "ed25519"), default="none",
                        help="sign every message of (a) and (b) with a fresh DKIM key of this type (none)")
    parser.add_argument("--signing", type=int, default=2000,
                        help="messages for the DKIM signing CPU figures, 0 to skip (2000)")
    parser.add_argument("--tracking", type=int, default=2000,
                        help="messages for the click-tracking CPU figures (on vs off), 0 to skip (2000)")
    parser.add_argument("--track-clicks", action="store_true", help="run (b) with click and open tracking on")
    parser.add_argument("--patched", action="store_true",
                        help="apply the changes proposed to config.py/message.py/dispatch.py (in memory) first")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return

    sys.path.insert(0, str(REPO))
    import logging
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    pools = [int(p) for p in args.pools.split(",") if p.strip()]
    sinks = [s.strip() for s in args.sinks.split(",") if s.strip()]
    n = args.messages
    workdir = Path(tempfile.mkdtemp(prefix="bench-smtp-"))
    try:
        project = make_project(workdir)
        template_db = workdir / "list.db"
        if args.signing:
            measure_signing(project, args.signing)
        if args.tracking:
            from tracking_cpu import measure
            measure(project, {**ENV, "MAILER_DATABASE_URL": f"sqlite:///{project / 'unused.db'}"},
                    "SMTP message (MessageFactory.build)",
                    lambda factory, message: factory.build(message.recipient, message.message_id,
                                                           "Thu, 26 Nov 2026 07:00:00 +0000"), args.tracking)
        if args.track_clicks:
            ENV.update(MAILER_TRACK_CLICKS="1", MAILER_TRACK_OPENS="1")
            print("click tracking: every message of (b) tracked (links and open pixel)")
        if args.dkim != "none":
            from mailer.dkim_signing import generate_key
            key = generate_key(project / "dkim.pem", "bench", "example.org", args.dkim)
            ENV.update(MAILER_DKIM_PRIVATE_KEY=str(key.path), MAILER_DKIM_SELECTOR="bench")
            print(f"DKIM: every message of (a) and (b) signed ({args.dkim})")
        setup = make_list(project, template_db, n)
        data = sample_message(project, 25)
        longest = max(len(line) for line in data.split(b"\r\n"))
        print(f"list: {n} subscribers imported in {setup:.1f}s; message: {len(data):,} octets, "
              f"longest line {longest} octets; "
              f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")

        if args.patched:
            apply_proposed_patches()
        from mailer.providers.smtp import SmtpBackend
        if args.batch:
            SmtpBackend.max_batch = args.batch
        if args.ledger_step is not None:
            SmtpBackend.ledger_step = args.ledger_step or None
        print(f"claim batch: {SmtpBackend.max_batch} messages; ledger step: {SmtpBackend.ledger_step or 'whole batch'}"
              f" ({'N connections = N dispatch workers' if SmtpBackend.ledger_step == 1 else 'N connections = N lanes of one worker'})")
        if args.profile:
            sink = Sink("bulk")
            try:
                elapsed, _ = run_mailer(project, template_db, sink.port, n, 1, "profile", profile=True)
            finally:
                sink.stop()
            print(f"(b) pool 1, bulk sink: {n / elapsed:,.0f} msg/s")
            return

        mm_cli = ensure_mailmerge() if args.mailmerge else None
        best: dict[tuple[str, str, int], float] = {}
        cpu_best: dict[tuple[str, str, int], float] = {}
        for kind in sinks:
            for pool in pools:
                for attempt in range(1, args.repeat + 1):  # (a) and (b) interleaved: shared-machine noise hits both
                    sink = Sink(kind)
                    cpu = time.process_time()
                    try:
                        elapsed = run_ceiling(sink.port, data, n, pool)
                    finally:
                        got, sink_cpu_a = sink.stop()
                    cpu_a = time.process_time() - cpu
                    assert got == n, f"ceiling: the sink got {got} of {n}"
                    rate_a = n / elapsed
                    best[(kind, "a", pool)] = max(best.get((kind, "a", pool), 0), rate_a)
                    cpu_best[(kind, "a", pool)] = min(cpu_best.get((kind, "a", pool), 1e9), cpu_a / n * 1e6)

                    sink = Sink(kind)
                    cpu = time.process_time()
                    try:
                        elapsed, counts = run_mailer(project, template_db, sink.port, n, pool, f"{kind}-{pool}-{attempt}")
                    finally:
                        got, sink_cpu_b = sink.stop()
                    cpu_b = time.process_time() - cpu
                    assert got == n, f"mailer: the sink got {got} of {n}"
                    rate_b = n / elapsed
                    best[(kind, "b", pool)] = max(best.get((kind, "b", pool), 0), rate_b)
                    cpu_best[(kind, "b", pool)] = min(cpu_best.get((kind, "b", pool), 1e9), cpu_b / n * 1e6)
                    print(f"[{kind:8}] {pool} conn, run {attempt}: (a) ceiling {rate_a:7,.0f} msg/s "
                          f"[sender {cpu_a / n * 1e6:4.0f} µs CPU/msg, sink {sink_cpu_a / n * 1e6:4.0f}]   "
                          f"(b) mailer {rate_b:7,.0f} msg/s [sender {cpu_b / n * 1e6:4.0f}, sink {sink_cpu_b / n * 1e6:4.0f}]"
                          f"  b/a {rate_b / rate_a:.0%}", flush=True)
            if mm_cli is not None:
                m = args.mailmerge
                sink = Sink(kind)
                try:
                    files = make_mailmerge_files(project, sink.port, m)
                    elapsed = run_mailmerge(mm_cli, files)
                finally:
                    got, _ = sink.stop()
                assert got == m, f"mailmerge: the sink got {got} of {m}"
                best[(kind, "c", 1)] = m / elapsed
                print(f"[{kind:8}] (c) mailmerge CLI, {m} messages: {m / elapsed:,.1f} msg/s ({elapsed:.1f}s; "
                      f"{n} would take ≈{n / (m / elapsed):,.0f}s)", flush=True)

        print(f"\nsummary: best of {args.repeat} runs, messages per second; (b)/(a) at the same connection count; "
              f"(b)/(c) = best (b) over (c)")
        for kind in sinks:
            parts = []
            for pool in pools:
                a, b = best[(kind, "a", pool)], best[(kind, "b", pool)]
                parts.append(f"{pool} conn: a={a:,.0f} b={b:,.0f} b/a={b / a:.0%} "
                             f"(sender CPU/msg a={cpu_best[(kind, 'a', pool)]:.0f}µs b={cpu_best[(kind, 'b', pool)]:.0f}µs)")
            line = f"  {kind:8} " + " | ".join(parts)
            if (kind, "c", 1) in best:
                top = max(best[(kind, "b", pool)] for pool in pools)
                line += f" | c={best[(kind, 'c', 1)]:,.1f} b/c={top / best[(kind, 'c', 1)]:.0f}x"
            print(line)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
