"""Personal data: `remove --purge` erases every copy mailer made (checked by grepping the database
files or tables and the outbox for the address), `subscribers restore` undoes a wrong suppression,
and `serve` never signs links with a leftover demo key."""

from __future__ import annotations

import base64
import json
import mailbox
import os
import random
import re
import time
import warnings
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailer import tokens
from mailer.config import secret_key_for
from mailer.sending.dispatch import send_issue, send_test
from mailer.errors import ConfigError, MailerError, NotFound
from mailer.addresses import parse_address
from mailer.store.schema import deliveries, provider_events, subscriber_events, subscribers
from mailer.subscribers import (add_subscriber, import_csv, remove_subscriber, restore_subscriber,
                                set_subscriber_status, show_subscriber)
from mailer.web.app import create_app

from . import bounce_samples as samples
from .conftest import EXAMPLE_ISSUE, write_issue
from .smtp_server import start_server
from .test_provider_plugin import registered  # noqa: F401 - the plug-in provider, registered for a test
from .test_web import ec_keys, sign, sg_event  # noqa: F401 - the module-scoped key pair fixture

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

GIVEN = "Bounce.Erin@Example.ORG"       # what the person typed (the local part starts with "bounce":
KEY = "bounce.erin@example.org"          # the loopback SMTP server refuses it with a 550)
STORED_GIVEN = "Bounce.Erin@example.org"  # as stored: local part as typed, domain normalised
NAME = "Erin Zabulonsky"
KEEP = "Keep.Me@example.org"


def forms_of(*addresses: str) -> set[bytes]:
    """Every spelling of the addresses a copy could hold: as typed, stored, lower and upper case,
    percent-encoded, and the name."""
    found: set[bytes] = set()
    for address in addresses:
        for variant in (address, address.lower(), address.upper(), address.replace("@", "%40"),
                        address.lower().replace("@", "%40")):
            found.add(variant.encode("utf-8"))
    return found


def sqlite_files(url: str) -> bytes:
    path = Path(url.split("///", 1)[1])
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def postgres_dump(store) -> bytes:
    """Every row of every table of the schema, as text (what pg_dump would print)."""
    chunks = []
    with store.engine.connect() as conn:
        names = sa.inspect(conn).get_table_names()
        for name in names:
            for row in conn.execute(sa.text(f'SELECT row_to_json(t)::text FROM "{name}" t')).scalars():
                chunks.append(row.encode("utf-8"))
    return b"\n".join(chunks)


def database_bytes(store, url: str) -> bytes:
    return sqlite_files(url) if store.is_sqlite else postgres_dump(store)


def outbox_bytes(outbox: Path) -> bytes:
    return b"".join(p.read_bytes() + str(p).encode() for p in outbox.rglob("*") if p.is_file())


def found_in(blob: bytes, needles: set[bytes]) -> list[bytes]:
    lowered = blob.lower()
    return sorted({n for n in needles if n in blob or n.lower() in lowered})


@pytest.fixture
def people(make_settings, store, db_url, ec_keys):  # noqa: F811
    """One person who used everything (web sign-up with a name, issue by outbox, a test send, webhook
    events with IP and user agent, a failed SMTP delivery) and one other person who stays."""
    private, public = ec_keys
    settings = make_settings(database_url=db_url, MAILER_SENDGRID_WEBHOOK_PUBLIC_KEY=public)
    client = TestClient(create_app(settings, store=store), base_url="https://lettre.example.org")
    with client:
        for email, name in ((GIVEN, NAME), (KEEP, "Keep Me")):
            client.post("/subscribe", data={"email": email, "name": name})
            link = _confirm_path(settings.outbox_dir, STORED_GIVEN if email == GIVEN else email)
            assert client.post(link).status_code == 200
    add_subscriber(store, "third@example.org", lists=["premium"])
    with store.engine.connect() as conn:
        sid = store.subscriber_by_email(conn, KEY).id
        keep = store.subscriber_by_email(conn, KEEP.lower()).id
    with store.begin() as conn:
        conn.execute(sa.text("INSERT INTO list_members (list_name, subscriber_id) VALUES ('premium', :i)"), {"i": sid})
        conn.execute(subscribers.update().where(subscribers.c.id == sid).values(attributes={"city": "Zabulonville"}))
    send_issue(settings, store, EXAMPLE_ISSUE)  # outbox: a file per person, its path in the ledger
    send_test(settings, EXAMPLE_ISSUE, [GIVEN, KEEP])
    # webhook events: with IP, user agent, clicked URL; one naming someone else's id (kept, unmatched)
    now = int(time.time())
    events = [sg_event("delivered", KEY, 1, mailer_subscriber=str(sid), ip="203.0.113.9"),
              sg_event("open", STORED_GIVEN, 2, mailer_subscriber=str(sid), ip="203.0.113.9",
                       useragent="Mozilla/5.0 Zabulon-Browser"),
              sg_event("click", KEY, 3, mailer_subscriber=str(sid), url=f"https://example.org/?who={KEY}"),
              sg_event("spamreport", KEY, 4, mailer_subscriber=str(keep)),
              sg_event("delivered", KEEP.lower(), 5, mailer_subscriber=str(keep), ip="198.51.100.7"),
              sg_event("deferred", f"Erin <{STORED_GIVEN}>", 6)]  # not a bare address: stored as given
    raw = json.dumps(events).encode()
    stamp = str(now)
    with client:
        answer = client.post("/webhooks/sendgrid", content=raw,
                             headers={"X-Twilio-Email-Event-Webhook-Timestamp": stamp,
                                      "X-Twilio-Email-Event-Webhook-Signature": sign(private, raw, stamp)})
        assert answer.status_code == 200 and answer.json()["new"] == 6
    # an SMTP send of a second issue: the relay refuses the address (550 quoting it), the ledger keeps the error
    server = start_server()
    try:
        write_issue(settings.root, "2026-11-27-smtp", {"briefs.txt": "--> Une brève par SMTP.\n"})
        smtp = make_settings(database_url=db_url, MAILER_BACKEND="smtp", MAILER_SMTP_HOST="127.0.0.1",
                             MAILER_SMTP_PORT=str(server.port), MAILER_SMTP_TLS="none")
        send_issue(smtp, store, "2026-11-27-smtp")
    finally:
        server.stop()
    return settings, store, client, sid, keep, private


def _confirm_path(outbox: Path, email: str) -> str:
    import re
    (path,) = sorted((outbox / "confirm").glob(f"*-{email}.eml"))
    return re.search(rb"https://lettre\.example\.org(/confirm/[A-Za-z0-9_-]+)", path.read_bytes()).group(1).decode()


def test_purge_leaves_no_copy_of_the_address_in_the_database_or_the_outbox(people, db_url):
    settings, store, client, sid, keep, private = people
    needles = forms_of(GIVEN, KEY, STORED_GIVEN) | {NAME.encode(), b"Zabulon"}
    before_db, before_outbox = database_bytes(store, db_url), outbox_bytes(settings.outbox_dir)
    # the scenario really put the address everywhere: events, ledger errors, webhook payloads, files
    assert found_in(before_db, needles) and found_in(before_outbox, needles)
    with store.engine.connect() as conn:
        assert "550" in show_subscriber(store, KEY).deliveries[-1]["last_error"]
        assert STORED_GIVEN in json.dumps([e["reason"] for e in show_subscriber(store, KEY).events])
    assert len(list(settings.outbox_dir.rglob(f"*{STORED_GIVEN}*"))) == 4  # confirm, welcome, issue, test send

    report = remove_subscriber(store, GIVEN, purge=True, outbox_dir=settings.outbox_dir)
    assert (report.provider_events, report.files, report.deliveries) == (5, 4, 2) and report.compacted

    after_db, after_outbox = database_bytes(store, db_url), outbox_bytes(settings.outbox_dir)
    assert found_in(after_db, needles) == []
    assert found_in(after_outbox, needles) == []
    # the other person is untouched (and the search would have found them)
    assert found_in(after_db, forms_of(KEEP)) and found_in(after_outbox, forms_of(KEEP))
    assert show_subscriber(store, KEEP).name == "Keep Me"
    # the tombstone: history shape kept, nobody can bring the address back by import or by hand
    with store.engine.connect() as conn:
        row = store.subscriber_by_id(conn, sid)
        kinds = conn.execute(sa.select(subscriber_events.c.kind).where(subscriber_events.c.subscriber_id == sid)).scalars().all()
    assert row.email.startswith("erased:") and row.name == "" and row.attributes == {}
    assert kinds[-1] == "erased" and "status" in kinds
    with pytest.raises(MailerError, match="asked to be erased"):
        add_subscriber(store, GIVEN)
    csv_path = settings.root / "again.csv"
    csv_path.write_text(f"email,name\n{GIVEN},{NAME}\n", encoding="utf-8")
    assert import_csv(store, csv_path).added == 0
    # webhook events about them that arrive later are stored without the address
    late = [sg_event("open", KEY, 9, mailer_subscriber=str(sid), ip="203.0.113.9", useragent="Zabulon")]
    raw = json.dumps(late).encode()
    stamp = str(int(time.time()))
    with client:
        assert client.post("/webhooks/sendgrid", content=raw, headers={
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
            "X-Twilio-Email-Event-Webhook-Signature": sign(private, raw, stamp)}).json()["new"] == 1
    store.compact()
    assert found_in(database_bytes(store, db_url), needles) == []
    # erasing again is harmless and says so
    again = remove_subscriber(store, KEY, purge=True, outbox_dir=settings.outbox_dir)
    assert again.already_erased and again.files == 0


def test_purge_from_the_command_line_says_what_it_erased(run_cli, project):
    run_cli("subscribers", "add", GIVEN, "--name", NAME)
    run_cli("send", EXAMPLE_ISSUE, "--yes")
    result = run_cli("subscribers", "remove", KEY, "--purge")
    assert result.stdout.startswith(f"erased {STORED_GIVEN}: ") and "1 outbox files deleted" in result.stdout
    assert "tombstone" in result.stdout and result.stdout.count("\n") == 1
    blob = sqlite_files(f"sqlite:///{project / 'subscribers' / 'subscribers.db'}") + outbox_bytes(project / "outbox")
    assert found_in(blob, forms_of(GIVEN) | {NAME.encode()}) == []
    assert run_cli("subscribers", "count").stdout == "0\n"
    missing = run_cli("subscribers", "remove", "nobody@example.org", "--purge", check_exit=4)
    assert missing.stderr == "error: no subscriber nobody@example.org\n"


# ----- restore ------------------------------------------------------------------------------------
def test_restore_undoes_a_wrong_suppression_and_records_it(store):
    cases = [  # (history applied after creation, expected status after restore)
        ([("complained", "webhook")], "active"),
        ([("bounced", "webhook")], "active"),
        ([("bounced", "send")], "active"),
        ([("unsubscribed", "cli")], "active"),                       # the operator's own remove
        ([("unsubscribed", "cli"), ("complained", "webhook")], "unsubscribed"),  # one step back, not two
    ]
    for n, (history, expected) in enumerate(cases):
        email = f"wrong{n}@example.org"
        add_subscriber(store, email)
        for status, source in history:
            set_subscriber_status(store, email, status, source=source, reason="forged event")
        result = restore_subscriber(store, email, reason="forged webhook events of 2026-11-26")
        assert (result.old, result.new, result.changed) == (history[-1][0], expected, True)
        assert show_subscriber(store, email).status == expected
        last = show_subscriber(store, email).events[-1]
        assert (last["old_status"], last["new_status"], last["source"]) == (history[-1][0], expected, "cli")
        assert last["reason"].startswith("restored: forged webhook events of 2026-11-26 (undoes ")
        assert f"by {history[-1][1]}" in last["reason"]
    pending, _ = add_subscriber(store, "pending@example.org", status="pending", source="web")
    set_subscriber_status(store, "pending@example.org", "bounced", source="webhook")
    assert restore_subscriber(store, "pending@example.org", reason="x").new == "pending"  # not more than they had


def test_restore_refuses_to_undo_what_the_person_chose(store, make_settings, db_url):
    settings = make_settings(database_url=db_url)
    client = TestClient(create_app(settings, store=store), base_url="https://lettre.example.org")
    sid, _ = add_subscriber(store, "chose@example.org")
    with client:
        client.post(f"/u/{tokens.make_token(secret_key_for(settings), 'unsubscribe', sid)}",
                    content=b"List-Unsubscribe=One-Click", headers={"Content-Type": "application/x-www-form-urlencoded"})
    for source in ("webhook", "import"):
        add_subscriber(store, f"{source}@example.org")
        set_subscriber_status(store, f"{source}@example.org", "unsubscribed", source=source)
    for email in ("chose@example.org", "webhook@example.org", "import@example.org"):
        with pytest.raises(MailerError, match=r"unsubscribed themselves .*--force"):
            restore_subscriber(store, email, reason="oops")
        assert show_subscriber(store, email).status == "unsubscribed"
    assert restore_subscriber(store, "chose@example.org", reason="they asked by phone", force=True).new == "active"
    # suppressed from the start (imported unsubscribed): nothing earlier to go back to
    csv_path = settings.root / "old.csv"
    csv_path.write_text("email,status\nleft@example.org,unsubscribed\n", encoding="utf-8")
    import_csv(store, csv_path)
    with pytest.raises(MailerError, match="from the start"):
        restore_subscriber(store, "left@example.org", reason="x")
    with pytest.raises(MailerError, match="needs --reason"):
        restore_subscriber(store, "chose@example.org", reason="  ")
    with pytest.raises(NotFound):
        restore_subscriber(store, "stranger@example.org", reason="x")
    assert not restore_subscriber(store, "chose@example.org", reason="again").changed  # active: nothing to do


def test_restore_on_the_command_line(run_cli):
    for email in ("a@example.org", "b@example.org", "c@example.org"):
        run_cli("subscribers", "add", email)
    from mailer.store import open_store
    store = open_store(f"sqlite:///{run_cli.project / 'subscribers' / 'subscribers.db'}")
    set_subscriber_status(store, "a@example.org", "complained", source="webhook", reason="sendgrid spamreport")
    set_subscriber_status(store, "b@example.org", "unsubscribed", source="one-click")
    store.close()
    result = run_cli("subscribers", "restore", "a@example.org", "b@example.org", "c@example.org", "nobody@example.org",
                     "--reason", "forged events", check_exit=4)
    out = result.stdout.splitlines()
    assert out[0].startswith("restored a@example.org: complained → active (undid active → complained by webhook on ")
    assert out[1] == "c@example.org is active: nothing to restore"
    errors = result.stderr.splitlines()
    assert errors[0].startswith("error: b@example.org unsubscribed themselves (") and "--force" in errors[0]
    assert errors[1] == "error: no subscriber nobody@example.org"
    assert run_cli("subscribers", "count", "--status", "active").stdout == "2\n"
    run_cli("subscribers", "restore", "b@example.org", "--reason", "asked us", "--force")
    assert run_cli("subscribers", "count", "--status", "active").stdout == "3\n"
    assert "restored: asked us" in run_cli("subscribers", "show", "b@example.org").stdout
    assert "--reason" in run_cli("subscribers", "restore", "a@example.org", check_exit=2).stderr


# ----- secret keys ---------------------------------------------------------------------------------
def test_a_leftover_demo_key_file_is_used_with_the_outbox_backend_only(make_settings, project):
    demo = make_settings(MAILER_SECRET_KEY="")
    key = secret_key_for(demo)  # generated once for local demos
    assert (project / "subscribers" / ".secret_key").read_text().strip().encode() == key
    assert secret_key_for(demo) == key
    for backend, extra in (("smtp", {"MAILER_SMTP_HOST": "127.0.0.1"}), ("sendgrid", {"SENDGRID_API_KEY": "SG.x"})):
        with pytest.raises(ConfigError, match="MAILER_SECRET_KEY is missing"):
            secret_key_for(make_settings(MAILER_SECRET_KEY="", MAILER_BACKEND=backend, **extra))


def test_serve_refuses_to_start_without_a_secret_key(run_cli, project):
    run_cli("subscribers", "add", "a@example.org")
    (project / "subscribers" / ".secret_key").write_text("leftover-demo-key-from-make-demo-0123456789\n")
    for backend in ("outbox", "smtp"):
        result = run_cli("serve", "--port", "1", extra_env={"MAILER_SECRET_KEY": "", "MAILER_BACKEND": backend,
                                                            "MAILER_SMTP_HOST": "127.0.0.1"}, check_exit=2)
        assert result.stderr.startswith("error: MAILER_SECRET_KEY is missing") and result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr


@pytest.fixture
def run_cli(project: Path, cli):
    """`mailer ARGS` in this process (tests/cli_support.py); an empty value in extra_env unsets it."""
    def invoke(*args: str, extra_env: dict | None = None, check_exit: int | None = 0):
        return cli(*args, extra_env={k: (v if v != "" else None) for k, v in (extra_env or {}).items()},
                   check_exit=check_exit)

    invoke.project = project
    return invoke


# ----- reports and events about an erased person --------------------------------------------------------
SEED = int(os.environ.get("MAILER_TEST_SEED", random.randrange(1 << 30)))


def _other_domain(domain: str) -> str:
    """The domain in its other IDNA form (Unicode ↔ `xn--`), or as given when it has none."""
    import idna
    try:
        other = idna.decode(domain) if domain.isascii() else idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return domain
    return other


def spellings(address: str, name: str) -> dict[str, str]:
    """How a remote server's words may write one person's address (and name), by kind."""
    local, domain = address.rsplit("@", 1)
    return {"bare": address, "angle": f"<{address}>", "quoted": f'"{local}"@{domain}', "upper": address.upper(),
            "idn": f"{local}@{_other_domain(domain)}", "local alone": f"{local}...", "named": f"{name} <{address}>",
            "percent-encoded": f"https://help.example.net/?rcpt={local}%40{domain}"}


def person_needles(address: str, name: str) -> set[bytes]:
    """What no copy may hold once the person is erased: the local part (every address form holds it)
    and the name, in the cases and the escapes (JSON's \\u00fc) a database may store them in."""
    local = address.rsplit("@", 1)[0]
    found = set()
    for text in (local, name, *name.split()):
        for variant in {text, text.lower(), text.upper()}:
            found |= {variant.encode("utf-8"), json.dumps(variant)[1:-1].encode("ascii")}
    return found


def held(blob: bytes, text: str) -> bool:
    """Whether the database's bytes hold `text` word for word, as text or as a JSON string."""
    return text.encode("utf-8") in blob or json.dumps(text)[1:-1].encode("ascii") in blob


def _diagnostics(address: str, name: str, status: str = "5.1.1") -> list[tuple[str, str, str]]:
    """(kind, Diagnostic-Code, human text) of one DSN per way of writing the address: a hard bounce
    (5.1.1), or a soft one (4.2.2)."""
    code, words = ("550", "Recipient address rejected: User unknown") if status == "5.1.1" else ("452", "Mailbox full")
    return [(kind, f"smtp; {code} {status} {text}: {words}",
             f"<{address}>: host mx.example.net said: {code} {status} {text}: {words}")
            for kind, text in spellings(address, name).items()]


def _recipient_field(address: str, rng: random.Random) -> str:
    """Final-Recipient / Original-Recipient as MTAs write them: `rfc822;` then the address, spelt anyhow."""
    local, domain = address.rsplit("@", 1)
    spelt = rng.choice([address, address.upper(), f"<{address}>", f"{local}@{_other_domain(domain)}",
                        f"{local.upper()}@{_other_domain(domain).upper()}"])
    return f"rfc822;{rng.choice(['', ' ', '  '])}{spelt}"


def test_bounces_about_an_erased_person_store_nothing_of_them(cli, project, store, db_url):
    """A real outbox send with VERP, bounce reports generated for each person's own return path (real
    MTA styles and DSNs whose diagnostic and RFC 3464 recipient fields write the address every way
    servers do: bare, <angle>, quoted, upper case, IDN, the local part alone, with the name, %40),
    `mailer bounces process` before and after `remove --purge`: once erased, the database holds none
    of it, for a bounce matched by VERP or unmatched alike, and the person's status and history do not
    move; the same reports about a person who stays are kept word for word (the search finds them)."""
    rng = random.Random(SEED)
    print(f"seed {SEED} (MAILER_TEST_SEED to replay)")
    url = store.engine.url.render_as_string(hide_password=False)
    env = {"MAILER_DATABASE_URL": url, "MAILER_BOUNCE_ADDRESS": "bounces@example.org"}
    n = rng.randint(10, 99)
    erased = {f"Ondine.Vrabec{n}@Example.ORG": "Ondine Vrabec",
              f"jürgen.blümel{n}@bücher{n}.example.org": "Jürgen Blümelhuber"}
    keeper = (f"Keeper.Quarlton{n}@example.net", "Keeper Quarlton")
    for address, name in [*erased.items(), keeper]:
        cli("subscribers", "add", address, "--name", name, extra_env=env)
    cli("send", EXAMPLE_ISSUE, "--yes", extra_env=env)
    sent = {}
    with store.engine.connect() as conn:  # the outbox backend's ledger keeps each file's path
        paths = dict(conn.execute(sa.select(subscribers.c.email_given, deliveries.c.provider_message_id)
                                  .join(deliveries, deliveries.c.subscriber_id == subscribers.c.id)).all())
    assert len(paths) == 3
    for address, path in paths.items():
        original = Path(path).read_bytes()
        sent[next(a for a in [*erased, keeper[0]] if parse_address(a).given == address)] = (
            original, original.split(b"\r\n", 1)[0].decode()[len("Return-Path: <"):-1])
    assert all(verp.startswith("bounces+") for _, verp in sent.values())

    def reports(address: str, name: str) -> list[bytes]:
        original, verp = sent[address]
        made = [samples.dsn(original, verp, rng, final_recipient=_recipient_field(address, rng),
                            original_recipient=_recipient_field(address, rng), diagnostic=diagnostic, human=human)
                for _, diagnostic, human in _diagnostics(address, name)]
        local, domain = address.rsplit("@", 1)
        spelt = rng.choice([address, address.upper(), f"{local}@{_other_domain(domain)}"])
        made += [style(original, spelt, verp, "5.1.1", rng) for style in
                 (samples.postfix, samples.gmail, samples.exchange, samples.exim)]
        # no VERP nor our headers returned (a relay that lost them): matches no one, names the address only
        made.append(samples.dsn(f"To: {name} <{address}>\nSubject: Le Fil\n\n".encode(), "bounces@example.org", rng,
                                final_recipient=_recipient_field(address, rng),
                                original_recipient=_recipient_field(address, rng),
                                diagnostic=_diagnostics(address, name)[0][1]))
        return made

    box = mailbox.Maildir(project / "Maildir", create=True)
    # while they are subscribers: soft bounces (a line of history each) writing the address every way,
    # and a hard bounce; kept raw, so the erasure has work to do
    for address, name in erased.items():
        original, verp = sent[address]
        for _, diagnostic, human in _diagnostics(address, name, "4.2.2"):
            box.add(samples.dsn(original, verp, rng, final_recipient=_recipient_field(address, rng),
                                original_recipient=_recipient_field(address, rng), diagnostic=diagnostic,
                                human=human, status="4.2.2"))
        box.add(samples.postfix(original, address, verp, "5.1.1", rng))
    soft = len(spellings(*keeper))
    assert json.loads(cli("bounces", "process", "Maildir", "--json", extra_env=env).stdout)["soft_bounces"] == 2 * soft
    everyone = set().union(*(person_needles(a, nm) for a, nm in erased.items()))
    assert len(found_in(database_bytes(store, db_url), everyone)) > 10
    for address in erased:
        cli("subscribers", "remove", address, "--purge", extra_env=env)
    assert found_in(database_bytes(store, db_url), everyone) == []
    with store.engine.connect() as conn:  # their history keeps its shape, the words that were theirs replaced
        lines = conn.execute(sa.select(subscriber_events.c.reason).where(subscriber_events.c.kind == "soft_bounce")
                             ).scalars().all()
    assert len(lines) == 2 * soft and all(line.startswith(f"soft bounce on {EXAMPLE_ISSUE}: 4.2.2 ")
                                          and "[erased]" in line for line in lines), lines
    with store.engine.connect() as conn:
        before = conn.execute(sa.select(subscribers.c.email, subscribers.c.status)
                              .where(subscribers.c.email.startswith("erased:"))).all()
        history = conn.execute(sa.select(sa.func.count()).select_from(subscriber_events)).scalar_one()
    assert len(before) == 2 and {status for _, status in before} == {"bounced"}

    # after the erasure: every kind of report about them, and the same ones about someone who stays
    made = {address: reports(address, name) for address, name in [*erased.items(), keeper]}
    for messages in made.values():
        for raw in messages:
            box.add(raw)
    summary = json.loads(cli("bounces", "process", "Maildir", "--json", extra_env=env).stdout)
    total = sum(len(m) for m in made.values())
    assert (summary["processed"], summary["unparseable"], summary["unmatched"]) == (total, 0, 3), summary
    blob = database_bytes(store, db_url)
    assert found_in(blob, everyone) == []
    # the search would have found them: the keeper's reports are kept with every spelling
    missing = [kind for kind, text in spellings(*keeper).items() if not held(blob, text)]
    assert missing == [], missing
    with store.engine.connect() as conn:
        after = conn.execute(sa.select(subscribers.c.email, subscribers.c.status)
                             .where(subscribers.c.email.startswith("erased:"))).all()
        new_lines = conn.execute(sa.select(subscriber_events.c.subscriber_id, subscriber_events.c.kind)
                                 .order_by(subscriber_events.c.id).offset(history)).all()
        tombstone_ids = set(conn.execute(sa.select(subscribers.c.id)
                                         .where(subscribers.c.email.startswith("erased:"))).scalars())
        stored = conn.execute(sa.select(provider_events.c.reason, provider_events.c.payload, provider_events.c.email,
                                        provider_events.c.issue_id, provider_events.c.subscriber_id)).all()
    assert sorted(after) == sorted(before)  # nobody's status moves
    keeper_id = show_subscriber(store, keeper[0]).id
    assert new_lines == [(keeper_id, "status")]  # the keeper's bounce; no line of history is theirs
    theirs = [row for row in stored if row.subscriber_id in tombstone_ids or row.payload.get("erased")]
    # before the erasure and after: each DSN of a spelling, the hard bounce, the unmatched one (without a person)
    assert len(theirs) >= 4 * (soft + 1) and sum(row.subscriber_id is None for row in theirs) == 2
    for reason, payload, email, issue_id, person in theirs:
        # of the server's words, the status codes only
        assert re.fullmatch(r"(?:5\.1\.1 550|4\.2\.2 452) \[erased\]", reason), reason
        assert payload == {"erased": True} and email == "" and person in tombstone_ids | {None}
        assert (issue_id is None) == (person is None)  # matched by VERP: still counted for the issue
    # what the command line prints about the list holds nothing of them either
    shown = [cli(*args, extra_env=env).stdout for args in
             (("subscribers", "list", "--format", "json"), ("subscribers", "export"),
              ("subscribers", "show", keeper[0], "--json"), ("report", EXAMPLE_ISSUE, "--json"))]
    assert found_in("\n".join(shown).encode("utf-8"), everyone) == []
    assert keeper[0] in shown[0] and "Recipient address rejected" in shown[2]
    assert json.loads(shown[3])["bounced"] == 3  # their bounces still count for the issue
    for address in erased:
        assert cli("subscribers", "show", address, extra_env=env, check_exit=4).stdout == ""


def test_webhook_events_about_an_erased_person_store_nothing_of_them(make_settings, store, db_url, ec_keys,  # noqa: F811
                                                                      registered):
    """SendGrid's signed webhook and a provider plug-in's (tests/plugins/mailer_postmarkish.py), after
    `remove --purge`: events naming the person by our custom argument, by their address alone (as
    typed, upper case, IDN, `Name <address>`, quoted) or both, their reasons and payloads writing the
    address every way servers do and carrying IP, user agent and links: none of it is stored, and
    nobody's status or history moves. The same events about a person who stays, or who erased
    themselves and came back through the subscribe form, are kept raw and act on them."""
    rng = random.Random(SEED)
    print(f"seed {SEED} (MAILER_TEST_SEED to replay)")
    private, public = ec_keys
    settings = make_settings(database_url=db_url, MAILER_SENDGRID_WEBHOOK_PUBLIC_KEY=public,
                             MAILER_POSTMARKISH_WEBHOOK_PASSWORD="hook-secret")
    client = TestClient(create_app(settings, store=store), base_url="https://lettre.example.org")
    n = rng.randint(10, 99)
    erased = {f"Ondine.Vrabec{n}@Example.ORG": "Ondine Vrabec",
              f"jürgen.blümel{n}@bücher{n}.example.org": "Jürgen Blümelhuber"}
    keeper = (f"Keeper.Quarlton{n}@example.net", "Keeper Quarlton")
    back = f"Revenante.Oxley{n}@example.org"
    ids = {address: add_subscriber(store, address, name=name)[0]
           for address, name in [*erased.items(), keeper, (back, "Revenante Oxley")]}
    for address in [*erased, back]:
        remove_subscriber(store, address, purge=True)
    with client:  # the one who comes back: the subscribe form, then the confirmation link
        client.post("/subscribe", data={"email": back, "name": "Revenante Oxley"})
        assert client.post(_confirm_path(settings.outbox_dir, parse_address(back).given)).status_code == 200
    assert show_subscriber(store, back).status == "active"

    def events(address: str, name: str, sid: int) -> tuple[list[dict], list[dict]]:
        """(SendGrid events, plug-in events) about one person, every spelling of them somewhere."""
        local, domain = address.rsplit("@", 1)
        addressed = [address, address.upper(), f"{local}@{_other_domain(domain)}", f"{name} <{address}>",
                     f'"{local}"@{domain}']
        spelt = list(spellings(address, name).values())
        sendgrid, plugin = [], []
        for i, text in enumerate(spelt):
            email = addressed[i % len(addressed)]
            who = rng.choice([{"mailer_subscriber": str(sid)}, {}, {"custom_args": {"mailer_subscriber": str(sid)}}])
            sendgrid.append(sg_event("bounce", email, rng.getrandbits(40), type="bounce",
                                     reason=f"550 5.1.1 {text}: no such user", ip="203.0.113.9", **who))
            plugin.append({"RecordType": "Bounce", "Type": "HardBounce", "ID": rng.getrandbits(40), "Email": email,
                           "Description": f"The server answered 550 5.1.1 {text}", "Details": f"smtp;550 {text}",
                           "Name": name, "BouncedAt": "2026-11-26T08:00:00Z",
                           "Metadata": rng.choice([{"mailer_subscriber": str(sid)}, {}])})
        sendgrid += [sg_event("open", "", rng.getrandbits(40), mailer_subscriber=str(sid), ip="203.0.113.9",
                              useragent=f"Mail/{name}"),
                     sg_event("click", address, rng.getrandbits(40),
                              url=f"https://example.org/?who={local}%40{domain}"),
                     sg_event("dropped", address.upper(), rng.getrandbits(40), reason="Bounced Address",
                              response=f"dropped {spelt[1]}")]
        return sendgrid, plugin

    def post(sendgrid: list[dict], plugin: list[dict]) -> tuple[int, int]:
        raw, stamp = json.dumps(sendgrid).encode(), str(int(time.time()))
        answer = client.post("/webhooks/sendgrid", content=raw, headers={
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
            "X-Twilio-Email-Event-Webhook-Signature": sign(private, raw, stamp)}).json()
        new, suppressed = answer["new"], answer["suppressed"]
        auth = base64.b64encode(b"postmark:hook-secret").decode()
        for event in plugin:
            answer = client.post("/webhooks/postmarkish", content=json.dumps(event).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Basic {auth}"})
            assert answer.status_code == 200, answer.text
            new, suppressed = new + answer.json()["new"], suppressed + answer.json()["suppressed"]
        return new, suppressed

    everyone = set().union(*(person_needles(a, nm) for a, nm in erased.items()))
    with store.engine.connect() as conn:
        history = conn.execute(sa.select(sa.func.count()).select_from(subscriber_events)).scalar_one()
        before = dict(conn.execute(sa.select(subscribers.c.id, subscribers.c.status)).all())
    with client:
        for address, name in erased.items():
            sendgrid, plugin = events(address, name, ids[address])
            assert post(sendgrid, plugin) == (len(sendgrid) + len(plugin), 0)
    store.compact()
    assert found_in(database_bytes(store, db_url), everyone) == []
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(subscriber_events)).scalar_one() == history
        assert dict(conn.execute(sa.select(subscribers.c.id, subscribers.c.status)).all()) == before
        stored = conn.execute(sa.select(provider_events.c.email, provider_events.c.subscriber_id,
                                        provider_events.c.reason, provider_events.c.payload)).all()
    assert all(row.email == "" and row.payload.get("erased") and "[erased]" in row.reason or not row.reason
               for row in stored), stored
    assert {row.subscriber_id for row in stored} <= {ids[a] for a in erased} | {None}

    # the same events about people who are subscribers now: kept raw, and they act
    with client:
        for address, name in (keeper, (back, "Revenante Oxley")):
            sid = show_subscriber(store, address).id
            sendgrid, plugin = events(address, name, sid)
            assert post(sendgrid, plugin)[1] == 1  # the first bounce suppresses them
            assert show_subscriber(store, address).status == "bounced"
    blob = database_bytes(store, db_url)
    for address, name in (keeper, (back, "Revenante Oxley")):
        missing = [kind for kind, text in spellings(address, name).items() if not held(blob, text)]
        assert missing == [], (address, missing)
    assert found_in(blob, everyone) == []
