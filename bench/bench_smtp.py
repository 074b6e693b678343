#!/usr/bin/env python
"""SMTP throughput: mailer's smtp backend against a bare smtplib loop (the floor), unsigned and DKIM-signed.

One run prints figures (it is not a test). Each SMTP sink runs in its OWN process (a fresh one per
run), so the sink's CPU never shares the sender's GIL:

- `aiosmtpd`: the reference server, which reads DATA line by line (≈ what a careful MTA costs);
- `bulk`: a minimal asyncio sink that scans DATA in bulk for the final dot (EHLO/HELO/MAIL/RCPT/
  DATA/RSET/NOOP/QUIT), i.e. close to a fast relay: the sender becomes the bottleneck. It offers
  PIPELINING (RFC 2920) as Postfix and Exim do, so (b) sends MAIL, RCPT and DATA in one write
  (`--no-pipelining`: it does not); the floor (a), plain smtplib, never pipelines.

Against each sink, with the same number of connections N, the runs of one repetition are:

(a)     floor: a bare smtplib loop (one thread per connection) pushing ONE pre-built message (the real
        newsletter) to the list's envelope recipients: no building, no ledger;
(a+KEY) signing floor: the same loop, each message first signed with the same key through
        `cryptography` directly (SHA-256 of the message, then the key operation on the digest, the
        signature prepended as a header): the irreducible cost of a signature per message;
(b)     mailer: `dispatch.send_issue` with MAILER_BACKEND=smtp on a fresh copy of an M-subscriber
        SQLite list and the example issue (render, freeze, claim, build per recipient, send, group
        commits: all of it), N connections = `--workers N`;
(b+KEY) the same with MAILER_DKIM_* set (KEY = rsa: RSA-2048, ed25519), signing processes included.

Rates are the pace on the wire: the sink's count from its first accepted message to its last, so
connecting and (b)'s one-off render and freeze of the list are left out (the end-to-end ratio, with
them, is printed as well). Load drift cancels: the runs of a repetition go in one order, those of the next in the reverse
order (ABBA…), and each ratio is taken within a repetition; the summary prints the MEDIAN ratio over
the repetitions with its spread (min–max), next to the targets. The load average is printed too, and
the CPU per message of the sending process (for (b) net of its one-off render and freeze, and with the
signing processes' CPU added for "all processes"): on a shared machine far steadier than wall time,
and what bounds the pace when the sender is the bottleneck.

Usage: .venv/bin/python bench/bench_smtp.py [--messages 3000] [--pools 1,4] [--repeat 5]
       [--sinks aiosmtpd,bulk] [--dkim none,rsa,ed25519] [--no-pipelining] [--mailmerge 0] [--signing 2000]
       [--tracking 0] [--track-clicks] [--ledger-step N] [--profile [--dkim rsa]]
`--signing N` first prints the signing CPU per message (RSA-2048, Ed25519) next to the unsigned build,
the irreducible floor (hash + key operation) and dkimpy's own `dkim.sign`. `--tracking N` prints the
build CPU per recipient with click tracking on vs off (`tracking_cpu.py`); `--track-clicks` runs (b)
with tracking on. `--mailmerge N` adds (c): the mailmerge CLI (PyPI) on N messages, for scale.
Targets (issues 12 and 14): (b)/(a) ≥ 80 % on the bulk sink and ≥ 85 % on aiosmtpd, 1 and 4
connections; (b+KEY)/(a+KEY) ≥ 80 % (and (b+KEY)/(a) printed as it is).
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
    first = last = 0.0  # time.monotonic() of the first and the last message accepted

    @classmethod
    def accepted(cls, octets: int) -> int:
        cls.last = time.monotonic()
        if not cls.count:
            cls.first = cls.last
        cls.count += 1
        cls.octets += octets
        return cls.count


PIPELINING = True  # does the bulk sink offer PIPELINING (its process's --pipelining)


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
                number = _Stats.accepted(end + 2)
                del buffer[:end + 5]
                self.in_data, self.scanned = False, 0
                replies.append(b"250 2.0.0 Ok: queued as B%d\r\n" % number)
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            verb = bytes(buffer[:4]).upper()
            del buffer[:end + 2]
            if verb == b"EHLO":
                replies.append(b"250-" + SINK_HOSTNAME.encode() + b"\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
                               + (b"250-PIPELINING\r\n" if PIPELINING else b"") + b"250 SIZE 52428800\r\n")
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
        return f"250 2.0.0 Ok: queued as A{_Stats.accepted(len(envelope.original_content))}"


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
    print("COUNT", _Stats.count, _Stats.octets, f"{times.user + times.system:.3f}", f"{_Stats.last - _Stats.first:.6f}",
          flush=True)


class Sink:
    """A sink process; `stop()` returns (messages accepted, CPU seconds it used, seconds from the first
    message accepted to the last: the pace on the wire, without connection set-up or a send's freeze)."""

    def __init__(self, kind: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.kind = kind
        self.process = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(self.port),
                                         "--pipelining", "1" if PIPELINING else "0"],
                                        stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"{kind} sink did not start: {line!r}")

    def stop(self) -> tuple[int, float, float]:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=30)
        for line in out.splitlines():
            if line.startswith("COUNT"):
                _, count, _octets, cpu, span = line.split()
                return int(count), float(cpu), float(span)
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


def settings_for(project: Path, db: Path, port: int, pool: int, extra: dict | None = None):  # noqa: ANN201
    from mailer.config import load_settings
    env = {**ENV, "MAILER_SMTP_PORT": str(port), "MAILER_SMTP_POOL": str(pool), "MAILER_DATABASE_URL": f"sqlite:///{db}",
           **(extra or {})}
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
    """CPU per message of `MessageFactory.build` unsigned (the floor) and DKIM-signed in this process
    (RSA 2048, Ed25519), next to the irreducible cost (SHA-256 of the message + the key operation) and
    dkimpy's own whole-message `dkim.sign` (its pure-Python RSA)."""
    import dkim

    from mailer.config import load_settings
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
        settings = load_settings(project, env={**ENV, "MAILER_DKIM_PRIVATE_KEY": str(key.path),
                                               "MAILER_DKIM_SELECTOR": "bench"})
        factory = MessageFactory(render_issue(load_issue(ISSUE, settings.issues_dir, settings.zone), settings))
        sample = factory.build(recipients[0], "<x@example.org>")
        sample = sample[sample.index(b"\r\nDate:") + 2:]  # the unsigned message
        sign = floor_signer(key.key)
        started = time.process_time()
        for _ in range(count):
            sign(sample)
        irreducible = (time.process_time() - started) / count * 1e6
        figures.append(f"{kind} +{cpu_per_message(factory) - floor:,.0f} µs (irreducible: hash + key op {irreducible:,.0f} µs)")
        if kind == "rsa":
            pem = key.path.read_bytes()
            started = time.process_time()
            runs = max(1, count // 20)
            for _ in range(runs):
                dkim.sign(sample, b"bench", b"example.org", pem, canonicalize=(b"relaxed", b"relaxed"))
            dkimpy = (time.process_time() - started) / runs * 1e6
    print(f"DKIM signing in the sending process, CPU per message ({count} messages): build unsigned {floor:,.0f} µs; "
          f"signing adds " + ", ".join(figures) + f"; dkimpy's own dkim.sign (pure-Python RSA) {dkimpy:,.0f} µs",
          flush=True)


def floor_signer(key):  # noqa: ANN001, ANN201 - a dkim_signer.DkimKey
    """The signing floor's work per message: SHA-256 of the message, the key operation on the digest
    through `cryptography` (PKCS#1 v1.5 for RSA, Ed25519 on the digest as RFC 8463 does), the signature
    prepended as a header."""
    import base64
    import hashlib

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
    private = key.private
    if key.kind == "rsa":
        pad, prehashed = padding.PKCS1v15(), Prehashed(hashes.SHA256())
        return lambda data: (b"DKIM-Signature: b=" + base64.b64encode(private.sign(hashlib.sha256(data).digest(), pad,
                                                                                  prehashed)) + b"\r\n" + data)
    return lambda data: b"DKIM-Signature: b=" + base64.b64encode(private.sign(hashlib.sha256(data).digest())) + b"\r\n" + data


# ===== (a) floors ====================================================================================
def run_ceiling(port: int, data: bytes, count: int, connections: int, sign=None) -> float:  # noqa: ANN001
    counter = itertools.count()
    errors: list[BaseException] = []

    def lane() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="example.org") as client:
                while (i := next(counter)) < count:
                    client.sendmail(SENDER, [f"reader{i:06d}@example.net"], sign(data) if sign else data)
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
               extra: dict | None = None, profile: bool = False) -> tuple[float, float]:
    """(b): seconds end to end, and the CPU seconds of its one-off part (render and freeze: `prepare_send`)."""
    from mailer.sending import dispatch
    from mailer.store import open_store
    from mailer.providers.smtp import SmtpBackend
    db = project / f"send-{tag}.db"
    copy_db(template_db, db)
    # With one message per ledger step (as shipped) a send_batch call never spans lanes: several
    # connections come from dispatch's worker threads (`mailer send --workers N`), one backend each.
    # With whole-batch steps (--ledger-step 0) one worker spreads each batch over `pool` lanes.
    workers, lanes = (pool, 1) if SmtpBackend.ledger_step == 1 else (1, pool)
    settings = settings_for(project, db, port, lanes, extra)
    store = open_store(settings.database_url)
    profiler = None
    if profile:
        import cProfile
        profiler = cProfile.Profile(time.thread_time)  # CPU, not waits: what (b) costs the sending thread
        profiler.enable()
    one_off = [0.0]
    prepare_send = dispatch.prepare_send  # the name send_issue calls (dispatch's own import), timed in place

    def timed_prepare(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - render and freeze: once per send
        cpu = time.process_time()
        try:
            return prepare_send(*args, **kwargs)
        finally:
            one_off[0] += time.process_time() - cpu
    dispatch.prepare_send = timed_prepare
    started = time.perf_counter()
    try:
        report = dispatch.send_issue(settings, store, ISSUE, workers=workers, allow_draft=True)
    finally:
        dispatch.prepare_send = prepare_send
    elapsed = time.perf_counter() - started
    if profiler is not None:
        import pstats
        profiler.disable()
        print("\n----- cProfile of (b), by cumulative time (top 30) -----")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        print("----- by own time (top 25) -----")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    store.close()
    db.unlink()
    if report.counts["sent"] != count:
        raise RuntimeError(f"mailer sent {report.counts} instead of {count}")
    return elapsed, one_off[0]


def signer_cpu() -> float:
    """CPU seconds used so far by this process's DKIM signing processes (0 without them)."""
    from mailer import dkim_signer
    pool = dkim_signer._POOL
    if pool is None:
        return 0.0
    total = 0.0
    for process in list(pool._executor._processes.values()):  # noqa: SLF001 - a benchmark's look inside
        try:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


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


# ===== main ==========================================================================================
def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def spread(values: list[float]) -> str:
    return f"median {median(values):4.0%} [{min(values):.0%}–{max(values):.0%}]"


def load() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", choices=("aiosmtpd", "bulk"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pipelining", default="1", help=argparse.SUPPRESS)
    parser.add_argument("--no-pipelining", action="store_true",
                        help="the bulk sink does not offer PIPELINING (RFC 2920): (b) sends command by command")
    parser.add_argument("--messages", type=int, default=3000, help="messages per run of (a) and (b) (3000)")
    parser.add_argument("--pools", default="1,4", help="connection counts (1,4)")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions, in alternating order (5)")
    parser.add_argument("--sinks", default="aiosmtpd,bulk")
    parser.add_argument("--dkim", default="none,rsa,ed25519",
                        help="signing variants to run: none (unsigned), rsa, ed25519 (all three)")
    parser.add_argument("--mailmerge", type=int, default=0, help="messages for (c), 0 to skip (0)")
    parser.add_argument("--batch", type=int, default=0, help="override SmtpBackend.max_batch (ledger batch size)")
    parser.add_argument("--ledger-step", type=int, default=None,
                        help="override SmtpBackend.ledger_step (messages per ledger write; 0 = the whole batch)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile (b) with 1 connection on the bulk sink (signed with the first --dkim key) and stop")
    parser.add_argument("--signing", type=int, default=2000,
                        help="messages for the DKIM signing CPU figures, 0 to skip (2000)")
    parser.add_argument("--tracking", type=int, default=0,
                        help="messages for the click-tracking CPU figures (on vs off), 0 to skip (0)")
    parser.add_argument("--track-clicks", action="store_true", help="run (b) with click and open tracking on")
    args = parser.parse_args()
    global PIPELINING
    PIPELINING = args.pipelining == "1" and not args.no_pipelining
    if args.serve:
        serve(args.serve, args.port)
        return

    sys.path.insert(0, str(REPO))
    import logging
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    pools = [int(p) for p in args.pools.split(",") if p.strip()]
    sinks = [s.strip() for s in args.sinks.split(",") if s.strip()]
    kinds = [k.strip() for k in args.dkim.split(",") if k.strip()]
    if "none" not in kinds:  # the unsigned floor (a) and its (b): every signed ratio is also shown against it
        kinds.insert(0, "none")
    n = args.messages
    workdir = Path(tempfile.mkdtemp(prefix="bench-smtp-"))
    try:
        project = make_project(workdir)
        template_db = workdir / "list.db"
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {load()}", flush=True)
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
        from mailer.dkim_signing import generate_key
        keys, extras = {}, {"none": {}}
        for kind in kinds:
            if kind != "none":
                keys[kind] = generate_key(project / f"dkim-{kind}.pem", "bench", "example.org", kind)
                extras[kind] = {"MAILER_DKIM_PRIVATE_KEY": str(keys[kind].path), "MAILER_DKIM_SELECTOR": "bench"}
        setup = make_list(project, template_db, n)
        data = sample_message(project, 25)
        longest = max(len(line) for line in data.split(b"\r\n"))
        print(f"list: {n} subscribers imported in {setup:.1f}s; message: {len(data):,} octets, longest line {longest} octets")

        from mailer import dkim_signer
        from mailer.providers.smtp import SmtpBackend
        if args.batch:
            SmtpBackend.max_batch = args.batch
        if args.ledger_step is not None:
            SmtpBackend.ledger_step = args.ledger_step or None
        print(f"bulk sink offers PIPELINING: {'yes' if PIPELINING else 'no'}; claim batch: {SmtpBackend.max_batch} messages; ledger step: {SmtpBackend.ledger_step or 'whole batch'}; "
              f"signing processes: {min(dkim_signer.spare_cores(), dkim_signer.MAX_SIGNING_PROCESSES) or 'none (one core)'}")
        if keys:  # the signing processes start once per sending process: started here, timed apart
            started = time.perf_counter()
            pool = dkim_signer.signing_pool()
            if pool is not None:
                pool._executor.submit(int).result()  # noqa: SLF001
                print(f"signing processes started in {time.perf_counter() - started:.2f} s (once per sending process)")
        if args.profile:
            kind = next((k for k in kinds if k != "none"), "none")
            sink = Sink("bulk")
            try:
                elapsed, _ = run_mailer(project, template_db, sink.port, n, 1, "profile", extras[kind], profile=True)
            finally:
                _, _, span = sink.stop()
            print(f"(b{'' if kind == 'none' else '+' + kind}) 1 conn, bulk sink: {(n - 1) / span:,.0f} msg/s on the wire, "
                  f"{n / elapsed:,.0f} msg/s end to end (profiled)")
            return

        variants = [(side, kind) for kind in kinds for side in ("a", "b")]
        ratios: dict[tuple, list[float]] = {}
        for kind_sink in sinks:
            for pool in pools:
                for rep in range(args.repeat):
                    order = variants if rep % 2 == 0 else variants[::-1]
                    rates, totals, cpu = {}, {}, {}
                    for side, kind in order:
                        sink = Sink(kind_sink)
                        before, before_signer, one_off = time.process_time(), signer_cpu(), 0.0
                        try:
                            if side == "a":
                                sign = floor_signer(keys[kind].key) if kind != "none" else None
                                elapsed = run_ceiling(sink.port, data, n, pool, sign)
                            else:
                                elapsed, one_off = run_mailer(project, template_db, sink.port, n, pool,
                                                              f"{kind_sink}-{pool}-{rep}-{kind}", extras[kind])
                        finally:
                            got, sink_cpu, span = sink.stop()
                        assert got == n, f"({side}) the sink got {got} of {n}"
                        rates[(side, kind)] = (n - 1) / span  # the pace on the wire
                        totals[(side, kind)] = n / elapsed  # end to end: connections, render and freeze included
                        # CPU per message of the sending process, net of (b)'s one-off render and freeze
                        cpu[(side, kind)] = ((time.process_time() - before - one_off) / n * 1e6,
                                             (signer_cpu() - before_signer) / n * 1e6, sink_cpu / n * 1e6, one_off)
                    parts = []
                    for kind in kinds:
                        b = rates[("b", kind)]
                        ratios.setdefault((kind_sink, pool, kind, "a"), []).append(b / rates[("a", "none")])
                        ratios.setdefault((kind_sink, pool, kind, "end"), []).append(
                            totals[("b", kind)] / totals[("a", "none")])
                        label = "" if kind == "none" else "+" + kind
                        text = (f"a{label} {rates[('a', kind)]:5,.0f} b{label} {b:5,.0f}/s b/a {b / rates[('a', 'none')]:4.0%}")
                        if kind != "none":
                            ratios.setdefault((kind_sink, pool, kind, "a+"), []).append(b / rates[("a", kind)])
                            text += f" b/a{label} {b / rates[('a', kind)]:4.0%}"
                        sender_b, signer_b, sink_b, one_off = cpu[("b", kind)]
                        text += (f" [CPU/msg a {cpu[('a', kind)][0]:.0f}, b {sender_b:.0f}"
                                 + (f"+{signer_b:.0f} signing" if signer_b else "")
                                 + f" (+{one_off:.2f} s once), sink {sink_b:.0f} µs]")
                        ratios.setdefault((kind_sink, pool, kind, "cpu"), []).append(
                            cpu[("a", kind)][0] / (sender_b + signer_b))
                        ratios.setdefault((kind_sink, pool, kind, "cpu-sender"), []).append(cpu[("a", kind)][0] / sender_b)
                        parts.append(text)
                    print(f"[{kind_sink:8}] {pool} conn rep {rep + 1} ({'ABBA'[rep % 2]}…, {load()}): " + " | ".join(parts),
                          flush=True)
            if args.mailmerge:
                mm_cli = ensure_mailmerge()
                m = args.mailmerge
                sink = Sink(kind_sink)
                try:
                    files = make_mailmerge_files(project, sink.port, m)
                    elapsed = run_mailmerge(mm_cli, files)
                finally:
                    got, _, _ = sink.stop()
                assert got == m, f"mailmerge: the sink got {got} of {m}"
                print(f"[{kind_sink:8}] (c) mailmerge CLI, {m} messages: {m / elapsed:,.1f} msg/s", flush=True)

        print(f"\nsummary ({args.repeat} repetitions of {n} messages, alternating order; {load()}): "
              f"median ratio [min–max] of the repetitions, of the pace on the wire (the sink's first to last "
              f"message); 'end to end' adds connecting and (b)'s render and freeze of the list")
        for kind_sink in sinks:
            target = 0.85 if kind_sink == "aiosmtpd" else 0.80
            for pool in pools:
                for kind in kinds:
                    unsigned = ratios[(kind_sink, pool, kind, "a")]
                    end = ratios[(kind_sink, pool, kind, "end")]
                    floor_label = "(a)" if kind == "none" else f"(a+{kind})"
                    cpu_line = (f"      CPU per message {floor_label}/(b): sending process {spread(ratios[(kind_sink, pool, kind, 'cpu-sender')])}"
                                + ("" if kind == "none" else f", all processes {spread(ratios[(kind_sink, pool, kind, 'cpu')])}"))
                    if kind == "none":
                        verdict = "PASS" if median(unsigned) >= target else "MISS"
                        print(f"  {kind_sink:8} {pool} conn  unsigned      (b)/(a) {spread(unsigned)}  "
                              f"target ≥ {target:.0%} {verdict};  end to end {spread(end)}")
                        print(cpu_line)
                    else:
                        signed = ratios[(kind_sink, pool, kind, "a+")]
                        verdict = "PASS" if median(signed) >= 0.80 else "MISS"
                        print(f"  {kind_sink:8} {pool} conn  signed {kind:7} (b+)/(a+{kind}) {spread(signed)}  "
                              f"target ≥ 80 % {verdict};  (b+)/(a) unsigned floor {spread(unsigned)};  "
                              f"end to end /(a) {spread(end)}")
                        print(cpu_line)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
