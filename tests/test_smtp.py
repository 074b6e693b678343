"""The smtp backend against real aiosmtpd servers on loopback (plain, AUTH, STARTTLS, implicit TLS).

Backend-level tests drive `SmtpBackend.send_batch` directly; ledger tests run a whole issue through
`mailer.dispatch.send_issue` with MAILER_BACKEND=smtp on SQLite and PostgreSQL and count, at the
server, what each subscriber received.
"""

from __future__ import annotations

import smtplib
import ssl
import threading
import time
from email.utils import formatdate

import pytest
import sqlalchemy as sa

from mailer.sending import dispatch
from mailer.sending.status import issue_status
from mailer.providers import make_backend
from mailer.providers.base import Batch, OutgoingMessage, PermanentError, TransientError
from mailer.providers.smtp import SmtpBackend, is_hard_bounce, is_path_refusal, queue_id
from mailer.config import load_settings
from mailer.errors import ConfigError, SendAborted
from mailer.content.issue import load_issue
from mailer.mime import MessageFactory
from mailer.content.render import Recipient, render_issue
from mailer.store.schema import deliveries, subscribers
from mailer.subscribers import add_subscriber, remove_subscriber

from .conftest import BASE_ENV, EXAMPLE_ISSUE
from .smtp_server import MisbehavingServer, ScriptedHandler, free_port, make_certificates, start_server

SENDER = "lettre@example.org"


# ----- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
def servers():
    """Start aiosmtpd servers for a test; all stopped at its end."""
    started = []

    def start(*args, **kwargs):  # noqa: ANN002, ANN003
        server = start_server(*args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def factory(settings) -> MessageFactory:
    issue = load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone)
    return MessageFactory(render_issue(issue, settings))


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(dispatch, "BACKOFF_BASE", 0.01)
    monkeypatch.setattr(dispatch, "BACKOFF_CAP", 0.05)


def make_batch(factory: MessageFactory, addresses: list[str], name: str = "Personne") -> Batch:
    messages = tuple(
        OutgoingMessage(Recipient(email=address, name=f"{name} {i}", subscriber_id=i,
                                  unsubscribe_url=f"https://lettre.example.org/u/token-{i}"),
                        message_id=f"<msg-{i}@example.org>", delivery_id=i)
        for i, address in enumerate(addresses, 1))
    return Batch(factory, messages, 1, formatdate(usegmt=True))


def backend_for(server, **kwargs) -> SmtpBackend:  # noqa: ANN001, ANN003
    options = dict(tls="none", sender=SENDER, local_hostname="example.org", pool=1, timeout=10.0)
    options.update(kwargs)
    return SmtpBackend("127.0.0.1", server.port if server else free_port(), **options)


def smtp_settings(make_settings, port: int, db_url: str, **env):  # noqa: ANN001, ANN003
    values = dict(MAILER_BACKEND="smtp", MAILER_SMTP_HOST="127.0.0.1", MAILER_SMTP_PORT=str(port),
                  MAILER_SMTP_TLS="none", MAILER_SMTP_POOL="2")
    values.update(env)
    return make_settings(database_url=db_url, **values)


def add_people(store, addresses):  # noqa: ANN001, ANN201
    for address in addresses:
        add_subscriber(store, address, name=address.partition("@")[0].title())


def ledger(store, slug: str) -> dict[str, tuple[str, str | None, str | None]]:  # noqa: ANN001
    """email → (delivery status, last_error, provider_message_id)."""
    with store.engine.connect() as conn:
        issue = store.issue_row(conn, slug)
        rows = conn.execute(
            sa.select(subscribers.c.email, deliveries.c.status, deliveries.c.last_error, deliveries.c.provider_message_id)
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(deliveries.c.issue_id == issue.id)).all()
    return {email: (status, error, provider_id) for email, status, error, provider_id in rows}


def subscriber_status(store, email: str) -> str:  # noqa: ANN001
    with store.engine.connect() as conn:
        return conn.execute(sa.select(subscribers.c.status).where(subscribers.c.email == email)).scalar_one()


# ----- configuration ----------------------------------------------------------------------------
def test_ledger_is_written_per_message():
    # dispatch records each step before the next: one message per step, so a crash can duplicate
    # only the message in flight (the design's promise for SMTP)
    assert SmtpBackend.ledger_step == 1


def test_from_settings_defaults_and_required_host(make_settings):
    with pytest.raises(ConfigError, match="MAILER_SMTP_HOST"):
        SmtpBackend.from_settings(make_settings(MAILER_BACKEND="smtp"))
    for tls, port in (("starttls", 587), ("ssl", 465), ("none", 25)):
        backend = make_backend(make_settings(MAILER_BACKEND="smtp", MAILER_SMTP_HOST="mx.example.org",
                                             MAILER_SMTP_TLS=tls))
        assert isinstance(backend, SmtpBackend) and backend.port == port
        assert backend.local_hostname == "example.org"  # EHLO name: never socket.getfqdn()
        assert backend.sender == SENDER
        assert (backend.ssl_context is None) == (tls == "none")
    backend = SmtpBackend.from_settings(make_settings(MAILER_BACKEND="smtp", MAILER_SMTP_HOST="h", MAILER_SMTP_PORT="2525",
                                                      MAILER_SMTP_POOL="3"))
    assert (backend.port, backend.pool) == (2525, 3)
    assert backend.ssl_context.verify_mode == ssl.CERT_REQUIRED and backend.ssl_context.check_hostname


def test_reply_classification():
    assert is_hard_bounce(550, b"5.1.1 <x@y>: User unknown", "RCPT")
    assert is_hard_bounce(553, b"mailbox name not allowed", "RCPT")
    assert is_hard_bounce(550, b"5.2.1 mailbox disabled", "DATA")
    assert not is_hard_bounce(550, b"5.7.1 message rejected as spam", "RCPT")
    assert not is_hard_bounce(552, b"5.2.2 mailbox full", "RCPT")
    assert not is_hard_bounce(554, b"transaction failed", "DATA")
    assert not is_hard_bounce(450, b"4.2.1 busy", "RCPT")
    assert queue_id(b"2.0.0 Ok: queued as 4Xq1Lz0kQbz9sV") == "4Xq1Lz0kQbz9sV"
    assert queue_id(b"OK id=1tWxyz-000AbC-2Q") == "1tWxyz-000AbC-2Q"
    assert queue_id(b"OK") is None


# ----- the connection ---------------------------------------------------------------------------
def test_many_messages_over_one_connection_across_batches(servers, factory):
    server = servers()
    addresses = [f"reader{i}@example.net" for i in range(25)]
    with backend_for(server) as backend:
        results = backend.send_batch(make_batch(factory, addresses[:15]))
        results += backend.send_batch(make_batch(factory, addresses[15:]))
    assert [r.outcome for r in results] == ["sent"] * 25
    assert server.connections == 1
    assert server.handler.per_recipient() == {a: 1 for a in addresses}
    assert all(m.mail_from == SENDER and "SMTPUTF8" not in m.mail_options for m in server.handler.messages)
    assert results[0].provider_message_id == "Q000001"  # the queue id from the server's 250 reply


def test_pool_spreads_a_batch_over_its_connections(servers, factory):
    server = servers()
    addresses = [f"reader{i}@example.net" for i in range(40)]
    batch = make_batch(factory, addresses)
    with backend_for(server, pool=3) as backend:
        results = backend.send_batch(batch)
        results += backend.send_batch(make_batch(factory, [f"again{i}@example.net" for i in range(9)]))
    assert [r.message for r in results[:40]] == list(batch.messages)  # results in the batch's order
    assert all(r.outcome == "sent" for r in results)
    assert server.connections == 3
    counts = server.handler.per_recipient()
    assert len(counts) == 49 and set(counts.values()) == {1}


def test_the_full_newsletter_passes_a_real_line_length_check(servers, factory):
    """aiosmtpd answers `500 Line too long` past 998 octets: the QP-encoded newsletter never gets there."""
    server = servers()
    batch = make_batch(factory, ["long.lines@example.net"])
    with backend_for(server) as backend:
        [result] = backend.send_batch(batch)
    assert result.outcome == "sent", result.error
    [received] = server.handler.messages
    [message] = batch.messages
    assert received.data == factory.build(message.recipient, message.message_id, batch.date)  # byte for byte
    assert len(received.data) > 20_000  # the whole newsletter, HTML and text
    assert max(len(line) for line in received.data.split(b"\r\n")) <= 998
    html = received.parse().get_body(("html",)).get_content()
    assert len(max(html.splitlines(), key=len)) > 998  # MJML's one long line survived intact, only encoded
    # and the server really enforces the limit:
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="example.org") as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(SENDER, ["x@example.net"], b"Subject: long\r\n\r\n" + b"x" * 1200 + b"\r\n")
    assert refused.value.smtp_code == 500 and b"too long" in refused.value.smtp_error.lower()


def test_reconnects_when_the_server_dropped_the_idle_connection(servers, factory):
    server = servers()
    backend = backend_for(server)
    backend.open()
    assert backend.send_batch(make_batch(factory, ["one@example.net"]))[0].outcome == "sent"
    port = server.port
    server.stop()  # the server goes away (restart, idle timeout): our connection is dead
    again = servers(port=port)
    results = backend.send_batch(make_batch(factory, ["two@example.net", "three@example.net"]))
    backend.close()
    assert [r.outcome for r in results] == ["sent", "sent"]
    assert again.connections == 1 and again.handler.per_recipient() == {"two@example.net": 1, "three@example.net": 1}


def test_unreachable_server_is_transient(factory):
    backend = backend_for(None)  # nothing listens there
    with pytest.raises(TransientError, match="cannot connect"):
        backend.open()
    with pytest.raises(TransientError, match="cannot connect"):
        backend.send_batch(make_batch(factory, ["a@example.net", "b@example.net"]))
    backend.close()


def test_send_issue_waits_for_an_unreachable_server_then_pauses(make_settings, store, db_url):
    settings = smtp_settings(make_settings, free_port(), db_url, MAILER_PAUSE_AFTER="0.5")
    add_people(store, ["a@example.net", "b@example.net"])
    started = time.monotonic()
    with pytest.raises(SendAborted, match="cannot connect.*nobody's attempts were spent"):
        dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    assert 0.4 < time.monotonic() - started < 5
    counts = issue_status(settings, store, EXAMPLE_ISSUE)["counts"]
    assert counts["queued"] == 2 and counts["failed"] == 0


# ----- per-recipient outcomes ---------------------------------------------------------------------
PIPELINING = pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])


def _check_pipelining(handler: ScriptedHandler, pipelining: bool) -> None:
    """Every MAIL came with its RCPT in one write exactly when the server offered PIPELINING."""
    assert handler.pipelined and set(handler.pipelined) == {pipelining}


@PIPELINING
def test_refusals_per_recipient(servers, factory, pipelining):
    server = servers(ScriptedHandler(pipelining=pipelining))
    addresses = ["ok1@example.net", "bounce1@example.net", "busy1@example.net", "ok2@example.net"]
    with backend_for(server) as backend:
        results = backend.send_batch(make_batch(factory, addresses))
    outcome = {r.message.recipient.email: r for r in results}
    assert outcome["ok1@example.net"].outcome == outcome["ok2@example.net"].outcome == "sent"
    bounce = outcome["bounce1@example.net"]
    assert bounce.outcome == "permanent" and bounce.hard_bounce and "550 5.1.1" in bounce.error
    busy = outcome["busy1@example.net"]
    assert busy.outcome == "transient" and not busy.hard_bounce and busy.error.startswith("RCPT 450")
    assert server.connections == 1  # refusals RSET the transaction, the connection goes on
    assert server.handler.per_recipient() == {"ok1@example.net": 1, "ok2@example.net": 1}
    _check_pipelining(server.handler, pipelining)


@PIPELINING
def test_a_refused_sender_fails_that_message_alone_and_the_connection_goes_on(servers, factory, pipelining):
    """MAIL refused (pipelined: RCPT and DATA then answered 503): that message only, the next ones go out."""
    handler = ScriptedHandler(pipelining=pipelining, mail_script=["451 4.3.0 try later", "553 5.7.1 sender refused"])
    server = servers(handler)
    addresses = ["one@example.net", "two@example.net", "three@example.net"]
    with backend_for(server) as backend:
        results = backend.send_batch(make_batch(factory, addresses))
    assert [r.outcome for r in results] == ["deferred", "permanent", "sent"]
    assert results[0].error.startswith("MAIL 451") and results[1].error.startswith("MAIL 553")
    assert handler.per_recipient() == {"three@example.net": 1} and server.connections == 1
    _check_pipelining(handler, pipelining)


@PIPELINING
@pytest.mark.parametrize("where", ["rcpt-421", "data-421", "cut"])
def test_421_or_disconnect_mid_batch_reconnects_once(servers, factory, where, pipelining):
    handler = ScriptedHandler(pipelining=pipelining)
    addresses = [f"reader{i}@example.net" for i in range(8)]
    if where == "rcpt-421":
        addresses[3] = "drop3@example.net"
    elif where == "cut":
        addresses[3] = "cut3@example.net"
    else:
        handler.data_script = [None, None, None, "421 4.3.0 queue full, closing connection"]
    server = servers(handler)
    with backend_for(server) as backend:
        results = backend.send_batch(make_batch(factory, addresses))
    assert [r.outcome for r in results] == ["sent"] * 8
    assert server.connections == 2
    assert handler.per_recipient() == {a: 1 for a in addresses}  # nothing lost, nothing doubled
    _check_pipelining(handler, pipelining)


@PIPELINING
def test_server_that_keeps_dropping_keeps_what_was_accepted(servers, factory, pipelining):
    handler = ScriptedHandler(on_rcpt=lambda address: "421 4.3.2 shutting down" if address >= "reader3" else None,
                              pipelining=pipelining)
    server = servers(handler)
    addresses = [f"reader{i}@example.net" for i in range(6)]
    with backend_for(server) as backend:
        results = backend.send_batch(make_batch(factory, addresses))
    # the server's fault, not the recipients': the rest comes back deferred (queued, no attempt counted)
    assert [r.outcome for r in results] == ["sent"] * 3 + ["deferred"] * 3
    assert all("421" in r.error for r in results[3:])
    assert handler.per_recipient() == {a: 1 for a in addresses[:3]}
    _check_pipelining(handler, pipelining)


@PIPELINING
def test_systematic_refusal_at_data_stops_the_batch(servers, factory, pipelining):
    handler = ScriptedHandler(data_script=["554 5.7.1 message content rejected"] * 10, pipelining=pipelining)
    server = servers(handler)
    with backend_for(server) as backend:
        with pytest.raises(PermanentError, match="554 5.7.1"):
            backend.send_batch(make_batch(factory, [f"r{i}@example.net" for i in range(6)]))
    assert handler.messages == [] and len(handler.data_script) == 7  # stopped after three


# A long display name: message._to_header's short-name shortcut (formataddr) raises UnicodeEncodeError for a
# non-ASCII address; reported to message.py's owner. Until fixed, such recipients come back permanent.
LONG_NAME = "Élodie Marguerite-Antoinette de La Tour d'Auvergne"


def test_smtputf8_only_for_addresses_that_need_it(servers, factory):
    server = servers()
    with backend_for(server) as backend:
        results = backend.send_batch(make_batch(factory, ["plain@example.net", "élodie@exemple.fr"], LONG_NAME))
    assert [r.outcome for r in results] == ["sent", "sent"]
    by_rcpt = {m.rcpt_tos[0]: m for m in server.handler.messages}
    assert "SMTPUTF8" not in by_rcpt["plain@example.net"].mail_options
    assert "SMTPUTF8" in by_rcpt["élodie@exemple.fr"].mail_options

    strict = servers(enable_SMTPUTF8=False)
    with backend_for(strict) as backend:
        results = backend.send_batch(make_batch(factory, ["élodie@exemple.fr", "jo@exämple.fr", "ok@example.net"],
                                                LONG_NAME))
    assert results[0].outcome == "permanent" and "SMTPUTF8" in results[0].error
    assert [r.outcome for r in results[1:]] == ["sent", "sent"]
    assert strict.handler.messages[0].rcpt_tos == ["jo@xn--exmple-cua.fr"]  # IDNA domain, ASCII local part


# ----- TLS and AUTH -----------------------------------------------------------------------------
def test_auth_on_plain_loopback(servers, factory):
    server = servers(auth=("newsletter", "s3cret"), auth_require_tls=False)
    with backend_for(server, username="newsletter", password="s3cret") as backend:
        [result] = backend.send_batch(make_batch(factory, ["a@example.net"]))
    assert result.outcome == "sent"
    assert server.handler.messages[0].authenticated


def test_wrong_password_is_permanent_at_open(servers):
    server = servers(auth=("newsletter", "s3cret"), auth_require_tls=False)
    backend = backend_for(server, username="newsletter", password="wrong")
    with pytest.raises(PermanentError, match="refused the login of 'newsletter': 535"):
        backend.open()
    backend.close()


def test_starttls_with_auth_verifies_the_certificate(servers, factory, certs):
    server = servers(auth=("newsletter", "s3cret"), starttls_context=certs.server_context())
    with backend_for(server, tls="starttls", cafile=str(certs.ca), username="newsletter", password="s3cret") as backend:
        results = backend.send_batch(make_batch(factory, ["a@example.net", "b@example.net"]))
    assert [r.outcome for r in results] == ["sent", "sent"]
    assert all(m.tls and m.authenticated for m in server.handler.messages)
    assert server.connections == 1

    untrusting = backend_for(server, tls="starttls", username="newsletter", password="s3cret")  # system CAs only
    with pytest.raises(PermanentError, match="certificate not trusted"):
        untrusting.open()
    plain = servers()  # no STARTTLS offered: never fall back to clear text
    with pytest.raises(PermanentError, match="does not offer STARTTLS"):
        backend_for(plain, tls="starttls", cafile=str(certs.ca)).open()


def test_implicit_tls(servers, factory, certs):
    server = servers(implicit_tls_context=certs.server_context())
    context = ssl.create_default_context(cafile=str(certs.ca))
    with backend_for(server, tls="ssl", ssl_context=context) as backend:
        [result] = backend.send_batch(make_batch(factory, ["a@example.net"]))
    assert result.outcome == "sent" and server.handler.messages[0].tls


# ----- through dispatch, with the ledger -------------------------------------------------------
def test_send_issue_delivers_each_active_subscriber_once(servers, make_settings, store, db_url):
    server = servers()
    settings = smtp_settings(make_settings, server.port, db_url)
    active = [f"reader{i:02d}@example.net" for i in range(23)]
    add_people(store, active + ["gone@example.net"])
    remove_subscriber(store, "gone@example.net")

    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)

    assert report.counts["sent"] == 23 and report.complete
    assert server.handler.per_recipient() == {a: 1 for a in active}
    assert server.connections == 1  # one connection for the whole send (dispatch hands over one message per step)
    for received in server.handler.messages:
        assert received.mail_from == SENDER
        message = received.parse()
        assert message.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
        assert message["To"].addresses[0].addr_spec == received.rcpt_tos[0]
        assert message["Message-ID"].endswith("@example.org>")
        unsubscribe = str(message["List-Unsubscribe"])
        assert unsubscribe.startswith("<https://lettre.example.org/u/") and "mailto:" in unsubscribe
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert unsubscribe[1:unsubscribe.index(">")] in message.get_body(("html",)).get_content()
    rows = ledger(store, EXAMPLE_ISSUE)
    assert {email: status for email, (status, _, _) in rows.items()} == {a: "sent" for a in active}
    assert all(provider_id and provider_id.startswith("Q") for _, _, provider_id in rows.values())
    status = issue_status(settings, store, EXAMPLE_ISSUE)
    assert status["status"] == "sent" and status["counts"]["sent"] == 23


def test_send_issue_refusals_bounce_retry_and_reconnect(servers, make_settings, store, db_url):
    handler = ScriptedHandler(busy_times=2)
    server = servers(handler)
    settings = smtp_settings(make_settings, server.port, db_url, MAILER_SMTP_POOL="1", MAILER_BATCH_SIZE="10")
    ordinary = [f"reader{i:02d}@example.net" for i in range(20)]
    everyone = ordinary[:5] + ["bounce@example.net"] + ordinary[5:12] + ["drop@example.net", "busy@example.net"] + ordinary[12:]
    add_people(store, everyone)

    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)

    counts = report.counts
    assert (counts["sent"], counts["failed"], counts["queued"], counts["sending"]) == (22, 1, 0, 0)
    delivered = handler.per_recipient()
    assert delivered == {a: 1 for a in everyone if a != "bounce@example.net"}  # 421: nothing lost or doubled
    assert handler.attempts["busy@example.net"] == 3  # refused twice (450), accepted on the third try
    rows = ledger(store, EXAMPLE_ISSUE)
    status, error, _ = rows["bounce@example.net"]
    assert status == "failed" and "550 5.1.1" in error and "User unknown" in error
    assert subscriber_status(store, "bounce@example.net") == "bounced"
    assert rows["busy@example.net"][0] == "sent"
    assert server.connections == 2  # one reconnection after the 421
    with store.engine.connect() as conn:
        assert store.delivery_counts(conn, store.issue_row(conn, EXAMPLE_ISSUE).id)["failed"] == 1


def test_send_issue_with_a_wrong_password_pauses_and_fails_nobody(servers, make_settings, store, db_url):
    server = servers(auth=("newsletter", "s3cret"), auth_require_tls=False)
    settings = smtp_settings(make_settings, server.port, db_url, MAILER_SMTP_USERNAME="newsletter",
                             MAILER_SMTP_PASSWORD="wrong")
    add_people(store, [f"reader{i}@example.net" for i in range(5)])

    with pytest.raises(SendAborted, match="refused the login of 'newsletter': 535") as aborted:
        dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    assert "MAILER_SMTP_PASSWORD" in str(aborted.value)
    assert server.handler.messages == []
    status = issue_status(settings, store, EXAMPLE_ISSUE)
    assert status["status"] == "paused" and "535" in status["paused_reason"]
    assert status["counts"]["failed"] == 0 and status["counts"]["queued"] == 5

    fixed = smtp_settings(make_settings, server.port, db_url, MAILER_SMTP_USERNAME="newsletter",
                          MAILER_SMTP_PASSWORD="s3cret")
    report = dispatch.send_issue(fixed, store, EXAMPLE_ISSUE)  # resume once the password is right
    assert report.counts["sent"] == 5 and len(server.handler.messages) == 5


def test_send_issue_over_starttls_with_auth(servers, make_settings, store, db_url, certs):
    server = servers(auth=("newsletter", "s3cret"), starttls_context=certs.server_context())
    settings = smtp_settings(make_settings, server.port, db_url, MAILER_SMTP_TLS="starttls",
                             MAILER_SMTP_USERNAME="newsletter", MAILER_SMTP_PASSWORD="s3cret")
    add_people(store, [f"reader{i}@example.net" for i in range(6)])
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE,
                                 backend_factory=lambda: SmtpBackend.from_settings(settings, cafile=str(certs.ca)))
    assert report.counts["sent"] == 6
    assert all(m.tls and m.authenticated for m in server.handler.messages)


def test_send_test_over_smtp(servers, project):
    server = servers()
    env = {**BASE_ENV, "MAILER_BACKEND": "smtp", "MAILER_SMTP_HOST": "127.0.0.1", "MAILER_SMTP_PORT": str(server.port),
           "MAILER_SMTP_TLS": "none"}
    settings = load_settings(project, env=env)
    results = dispatch.send_test(settings, EXAMPLE_ISSUE, ["editor@example.org", "chief@example.org"])
    assert [r.outcome for r in results] == ["sent", "sent"]
    assert all(m.parse()["Subject"].startswith("[TEST]") for m in server.handler.messages)


def test_a_message_that_cannot_be_built_fails_alone(servers, factory):
    server = servers()
    with backend_for(server) as backend:
        results = backend.send_batch(make_batch(factory, ["ok@example.net", "two,people@example.net", "ok2@example.net"]))
    assert [r.outcome for r in results] == ["sent", "permanent", "sent"]
    assert results[1].error.startswith("cannot build the message") and not results[1].hard_bounce


def test_dot_stuffing_and_envelope_quoting_round_trip(servers):
    """The backend's leaner smtplib client (bytes.replace dot-stuffing, no parseaddr) keeps the bytes exact."""
    from mailer.providers.smtp import _Client

    server = servers()
    body = (b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nlone dot above\r\nmiddle . dot\r\n"
            b"end without a final line break .")
    with _Client("127.0.0.1", server.port, local_hostname="example.org") as client:
        client.sendmail(SENDER, ["a@example.net"], body)
        client.sendmail("Le Fil <lettre@example.org>", ["Someone <b@example.net>"], b".\r\n")
        assert client.last_data_reply == (250, b"2.0.0 Ok: queued as Q000002")
    first, second = server.handler.messages
    assert first.data == body + b"\r\n"
    assert (first.rcpt_tos, second.mail_from, second.rcpt_tos) == (["a@example.net"], SENDER, ["b@example.net"])
    assert second.data == b".\r\n"


def test_the_server_receives_what_plain_smtplib_would_deliver(servers, factory):
    """The backend sends `MessageFactory.smtp_data` (static pieces dot-stuffed once per issue): aiosmtpd
    receives, for every recipient, exactly the bytes plain smtplib delivers for `build`'s message
    (its own `sendmail`, regex stuffing). Recipients whose values open quoted-printable lines with dots."""
    server = servers()
    addresses = [".dot@example.net", "..two@example.net", "plain@example.net", ".@example.net"]
    batch = make_batch(factory, addresses, name=".Zoé")
    with backend_for(server) as backend:
        assert [r.outcome for r in backend.send_batch(batch)] == ["sent"] * len(addresses)
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="example.org") as client:
        for message in batch.messages:
            client.sendmail(SENDER, [message.recipient.email],
                            factory.build(message.recipient, message.message_id, batch.date))
    ours, plain = server.handler.messages[:len(addresses)], server.handler.messages[len(addresses):]
    assert any(b"\r\n." in m.data for m in ours)  # lines opening with a dot were on the wire, stuffed
    assert [m.data for m in ours] == [m.data for m in plain]


def test_a_systematic_refusal_pauses_the_send_and_nothing_is_lost(servers, make_settings, sqlite_store, tmp_path):
    """The relay refuses the message itself (DATA 5xx) for everyone: pause after three, not fail the list."""
    handler = ScriptedHandler(data_script=["554 5.7.1 message content rejected"] * 3)
    server = servers(handler)
    settings = smtp_settings(make_settings, server.port, f"sqlite:///{tmp_path / 'subscribers.db'}")
    everyone = [f"reader{i}@example.net" for i in range(6)]
    add_people(sqlite_store, everyone)
    # the wording changed with the streak rule: the first two refusals were never final (held until
    # something was accepted), so there is nothing to forgive
    with pytest.raises(SendAborted, match="3 messages in a row were refused .* at DATA.*again to resume "
                                          r"\(0 sent, 6 left\)"):
        dispatch.send_issue(settings, sqlite_store, EXAMPLE_ISSUE)
    counts = issue_status(settings, sqlite_store, EXAMPLE_ISSUE)["counts"]
    # the third refusal paused the send, and showed the first two were the relay's doing, not the
    # recipients': nobody failed, nobody's attempts were spent
    assert (counts["failed"], counts["queued"], counts["sent"]) == (0, 6, 0)

    report = dispatch.send_issue(settings, sqlite_store, EXAMPLE_ISSUE)  # fixed on the relay's side: resume
    assert report.counts["sent"] == 6 and report.counts["failed"] == 0
    assert handler.per_recipient() == {a: 1 for a in everyone}


# ----- total deadlines and the stop (a per-read timeout is not enough) -----------------------------------
@pytest.mark.parametrize("mode", ["stall-greeting", "trickle-ehlo", "trickle-bytes"])
def test_a_stalling_or_trickling_server_cannot_hold_a_connection_attempt(mode):
    """"250-still thinking" every 0.2 s (or one byte of it): every read succeeds, only a total deadline ends it."""
    server = MisbehavingServer(mode, interval=0.2)
    backend = SmtpBackend("127.0.0.1", server.port, tls="none", sender=SENDER, local_hostname="example.org",
                          timeout=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(TransientError, match="no complete answer within 1 s"):
            backend.open()
        assert 0.9 < time.monotonic() - started < 2.5
    finally:
        backend.close()
        server.stop()


def test_a_server_silent_after_the_final_dot_holds_a_message_no_longer_than_the_deadline(factory):
    server = MisbehavingServer("stall-after-data")
    backend = SmtpBackend("127.0.0.1", server.port, tls="none", sender=SENDER, local_hostname="example.org",
                          timeout=1.0)
    try:
        backend.open()
        started = time.monotonic()
        with pytest.raises(TransientError, match="no complete answer within 1 s"):
            backend.send_batch(make_batch(factory, ["a@example.net", "b@example.net"]))
        assert time.monotonic() - started < 2.5
        assert server.data_ends == 1  # the first message reached the final dot, the second never started
    finally:
        backend.close()
        server.stop()


@pytest.mark.parametrize("mode", ["stall-after-data", "trickle-ehlo"])
def test_abort_cuts_what_is_in_flight_at_once(factory, mode):
    """What dispatch calls a few seconds after SIGTERM: the message in flight comes back unsent."""
    server = MisbehavingServer(mode, interval=0.2)
    backend = SmtpBackend("127.0.0.1", server.port, tls="none", sender=SENDER, local_hostname="example.org",
                          timeout=60.0)
    try:
        if mode == "stall-after-data":
            backend.open()
        timer = threading.Timer(0.5, backend.abort)
        timer.start()
        started = time.monotonic()
        with pytest.raises(TransientError, match="cut by a stop request"):
            backend.send_batch(make_batch(factory, ["a@example.net"]))
        assert time.monotonic() - started < 1.5
    finally:
        backend.close()
        server.stop()


def test_host_names_are_resolved_under_the_deadline(servers, factory):
    server = servers()
    with SmtpBackend("localhost", server.port, tls="none", sender=SENDER, local_hostname="example.org",
                     timeout=5.0) as backend:
        assert [r.outcome for r in backend.send_batch(make_batch(factory, ["a@example.net"]))] == ["sent"]
    assert server.handler.per_recipient() == {"a@example.net": 1}


@pytest.mark.parametrize("reply, stage, path", [
    ("450 4.2.1 mailbox busy", "RCPT", False), ("451 4.7.1 greylisted, try later", "RCPT", False),
    ("450 too many connections from your host", "RCPT", False), ("452 4.3.1 insufficient system storage", "RCPT", True),
    ("451 4.3.0 temporary lookup failure", "RCPT", True), ("452 too many recipients", "RCPT", True),
    ("421 4.3.2 shutting down", "RCPT", True), ("451 4.3.0 local error", "MAIL", True),
    ("450 4.1.8 sender domain not found", "MAIL", True), ("451 local error in processing", "DATA", True),
    ("451 4.7.1 greylisted at DATA", "DATA", False), ("452 4.2.2 mailbox full", "DATA", False),
    ("550 5.1.1 user unknown", "RCPT", False),
])
def test_whose_fault_a_4xx_is(reply, stage, path):
    code, _, text = reply.partition(" ")
    assert is_path_refusal(int(code), text, stage) is path


def test_a_path_level_4xx_to_everyone_counts_against_nobody(servers, make_settings, store, db_url):
    """452 4.3.1 (the relay's disk is full) to every RCPT: the send pauses, nobody failed, no attempt spent."""
    handler = ScriptedHandler(on_rcpt=lambda address: "452 4.3.1 insufficient system storage")
    server = servers(handler)
    settings = smtp_settings(make_settings, server.port, db_url, MAILER_PAUSE_AFTER="0.5")
    people = [f"reader{i}@example.net" for i in range(4)]
    add_people(store, people)
    with pytest.raises(SendAborted, match="452 4.3.1"):
        dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    rows = ledger(store, EXAMPLE_ISSUE)
    assert {status for status, _, _ in rows.values()} == {"queued"}
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.max(deliveries.c.attempts))).scalar() == 0
    handler.on_rcpt = None
    assert dispatch.send_issue(settings, store, EXAMPLE_ISSUE).counts["sent"] == 4
    assert handler.per_recipient() == {a: 1 for a in people}


def test_rerunning_a_finished_issue_with_the_relay_down_changes_nothing(servers, make_settings, store, db_url):
    server = servers()
    settings = smtp_settings(make_settings, server.port, db_url, MAILER_PAUSE_AFTER="0.5")
    add_people(store, ["a@example.net", "b@example.net"])
    assert dispatch.send_issue(settings, store, EXAMPLE_ISSUE).complete
    server.stop()  # the relay is down now
    again = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    assert again.already_finished and again.counts["sent"] == 2
    status = issue_status(settings, store, EXAMPLE_ISSUE)
    assert status["status"] == "sent" and status["paused_reason"] is None
