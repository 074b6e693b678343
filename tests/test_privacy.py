"""Personal data: `remove --purge` erases every copy mailer made (checked by grepping the database
files or tables and the outbox for the address), `subscribers restore` undoes a wrong suppression,
and `serve` never signs links with a leftover demo key."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailer import tokens
from mailer.config import secret_key_for
from mailer.sending.dispatch import send_issue, send_test
from mailer.errors import ConfigError, MailerError, NotFound
from mailer.store.schema import subscriber_events, subscribers
from mailer.subscribers import (add_subscriber, import_csv, remove_subscriber, restore_subscriber,
                                set_subscriber_status, show_subscriber)
from mailer.web.app import create_app

from .conftest import EXAMPLE_ISSUE, write_issue
from .smtp_server import start_server
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
