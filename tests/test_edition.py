"""Content frozen at send: a send delivers the issue as it was when it started (its stored edition),
whatever happens to the folder afterwards — through a crash and resume, a second `mailer worker`,
`--retry-failed`, the scheduler, a database from before editions — until `--rebuild` makes a new
edition for those not reached yet."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailer.sending import dispatch
from mailer.sending.prepare import outgoing_message, plan_send, prepare_send, resume_notice, send_warnings
from mailer.providers import make_backend
from mailer.sending.status import issue_status
from mailer.config import load_settings, secret_key_for
from mailer.errors import RebuildRefused
from mailer.content.issue import load_issue
from mailer.mime import MessageFactory
from mailer.content.render import render_issue
from mailer.store import open_store
from mailer.subscribers import add_subscriber

from .cli_support import MAILER as CLI, checked, invoke_with
from .conftest import BASE_ENV, EXAMPLE_ISSUE
from .smtp_server import ScriptedHandler, start_server
from .test_crash import SlowHandler, _counts, _env, _populate as populate, _wait_for, kill_mid_send

MARK = "Brève ajoutée après le départ"
NEW_SUBJECT = "Sujet réécrit après le départ"


def edit_folder(project: Path, slug: str = EXAMPLE_ISSUE) -> None:
    """What an editor does while the send runs: a brief added, the subject rewritten."""
    folder = project / "issues" / slug
    briefs = folder / "briefs.txt"
    briefs.write_text(briefs.read_text(encoding="utf-8") + f"\n--> {MARK} : une brève que personne ne doit lire.\n",
                      encoding="utf-8")
    toml = folder / "issue.toml"
    toml.write_text(re.sub(r'(?m)^subject = ".*"$', f'subject = "{NEW_SUBJECT}"', toml.read_text(encoding="utf-8")),
                    encoding="utf-8")


def carries_edit(raw: bytes) -> bool:
    message = message_from_bytes(raw, policy=policy.default)
    bodies = [message.get_body(("plain",)).get_content(), message.get_body(("html",)).get_content()]
    return str(message["Subject"]) == NEW_SUBJECT or any(MARK in body or "personne ne doit lire" in body
                                                         for body in bodies)


def edition_of(store, slug: str = EXAMPLE_ISSUE):
    with store.engine.connect() as conn:
        return store.current_edition(conn, store.issue_row(conn, slug).id)


# ----- real processes: SIGKILL, resume, a second worker ---------------------------------------------
@pytest.mark.slow
def test_a_killed_send_resumed_with_a_second_worker_never_sends_the_edit(store, db_url, project):
    """SIGKILL mid-send, a brief added and the subject rewritten, then `mailer send` (the resume) and a
    `mailer worker` process side by side: nobody gets the edit, everyone gets exactly one copy
    (beyond the crash window: the one SMTP message in flight when the process died)."""
    count = 900
    addresses = populate(store, project, count)
    sink = start_server(SlowHandler())
    try:
        env = _env(db_url, sink.port)
        kill_mid_send(project, env, sink, count // 4, count)
        edit_folder(project)

        worker = subprocess.Popen([*CLI, "worker", "--once"], cwd=project, env=_env(db_url, sink.port, MAILER_BATCH_SIZE="20"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        resumed = subprocess.run([*CLI, "send", EXAMPLE_ISSUE, "--yes"], cwd=project, env=env, capture_output=True,
                                 text=True, timeout=180)
        worker_out, worker_err = worker.communicate(timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        assert worker.returncode == 0, worker_err
        assert int(re.search(r"worker stopped: (\d+) sent", worker_out)[1]) > 0, "the second worker took no work"
        notice = [line for line in resumed.stderr.splitlines() if "folder changed" in line]
        assert len(notice) == 1 and "the edition from" in notice[0] and "--rebuild" in notice[0], resumed.stderr
        messages = list(sink.handler.messages)
    finally:
        sink.stop()
    edited = [m.rcpt_tos for m in messages if carries_edit(m.data)]
    assert not edited, f"{len(edited)} of {len(messages)} messages carry the edit"
    per_recipient = sink.handler.per_recipient()
    assert set(per_recipient) == set(addresses), "someone was skipped"
    # the crash window over SMTP: one commit group (MAILER_SMTP_COMMIT_EVERY, 10 by default) per connection
    assert sum(n - 1 for n in per_recipient.values()) <= 10, "more duplicates than the crash window allows"
    final = _counts(store)
    assert final["sent"] == count and final["queued"] == final["sending"] == 0
    assert edition_of(store).number == 1


@dataclass
class GatedHandler(ScriptedHandler):
    """Accepts `open_for` messages, then holds each end-of-DATA until `gate` is set: a live sender
    holding its claims, for as long as the test wants."""

    open_for: int = 20
    gate: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001
        while len(self.messages) >= self.open_for and not self.gate.is_set():
            await asyncio.sleep(0.01)
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.slow
def test_rebuild_is_refused_while_a_live_sender_holds_claims_and_after_a_stop_goes_only_to_the_rest(
        store, db_url, project):
    count = 150
    addresses = populate(store, project, count)
    handler = GatedHandler(open_for=20)
    sink = start_server(handler)
    try:
        env = _env(db_url, sink.port)
        sender = subprocess.Popen([*CLI, "send", EXAMPLE_ISSUE, "--yes"], cwd=project, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for(lambda: len(handler.messages) >= 20 and _counts(store)["sending"] > 0, 60, "a sender holding claims")
            edit_folder(project)
            refused = invoke_with(env, ("send", EXAMPLE_ISSUE, "--yes", "--rebuild"), project)  # beside the live sender
            assert refused.returncode == 7, refused.stderr
            lines = refused.stderr.strip().splitlines()
            assert len(lines) == 1 and "refusing to rebuild while deliveries are being sent" in lines[0], lines
            assert edition_of(store).number == 1
        finally:
            sender.send_signal(signal.SIGTERM)  # a graceful stop: what is in flight finishes and is recorded
            handler.gate.set()
            _, err = sender.communicate(timeout=60)
        assert sender.returncode == 5, err
        before = len(handler.messages)
        assert before < count
        stopped = _counts(store)
        assert stopped["sent"] == before and stopped["sending"] == 0

        rebuilt = invoke_with(env, ("send", EXAMPLE_ISSUE, "--yes", "--rebuild"), project)
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert (f"edition 2 made from the folder: it goes to the {count - before} recipients left; the {before} "
                f"already sent keep edition 1 and are never sent again") in rebuilt.stderr
        status = json.loads(checked(invoke_with(env, ("status", EXAMPLE_ISSUE, "--json"), project), 0).stdout)
        messages = list(handler.messages)
    finally:
        sink.stop()
    assert [carries_edit(m.data) for m in messages] == [False] * before + [True] * (count - before)
    per_recipient = handler.per_recipient()
    assert set(per_recipient) == set(addresses) and set(per_recipient.values()) == {1}  # a stop repeats nobody
    assert status["edition"]["number"] == 2 and status["edition"]["editions"] == 2
    assert status["edition"]["reason"] == "rebuild" and status["subject"] == NEW_SUBJECT


# ----- the oracle: whatever changes, a resumed message is the message the first rendering made -------
_EDITS = ("subject", "brief", "intro", "template", "sender name", "reply-to", "newsletter name", "tracking on",
          "folder gone")


def _apply(edit: str, project: Path, env: dict[str, str]) -> None:
    folder = project / "issues" / EXAMPLE_ISSUE
    if edit == "subject":
        toml = folder / "issue.toml"
        toml.write_text(re.sub(r'(?m)^subject = ".*"$', 'subject = "Autre sujet"', toml.read_text(encoding="utf-8")),
                        encoding="utf-8")
    elif edit == "brief":
        (folder / "briefs.txt").write_text((folder / "briefs.txt").read_text(encoding="utf-8") + "\n--> Ajout.\n",
                                           encoding="utf-8")
    elif edit == "intro":
        text = (folder / "briefs.txt").read_text(encoding="utf-8")
        (folder / "briefs.txt").write_text("Une autre introduction.\n" + text, encoding="utf-8")
    elif edit == "template":
        for path in (project / "templates").glob("*.j2"):
            path.write_text(path.read_text(encoding="utf-8").replace("</mj-body>", "<mj-section><mj-column><mj-text>"
                                                                    "Pied modifié</mj-text></mj-column></mj-section></mj-body>"),
                            encoding="utf-8")
    elif edit == "sender name":
        env["MAILER_FROM"] = "Autre Nom <autre@example.org>"
    elif edit == "reply-to":
        env["MAILER_REPLY_TO"] = "Réponses <reponses@example.org>"
    elif edit == "newsletter name":
        env["MAILER_NAME"] = "Un autre nom"
    elif edit == "tracking on":  # tracking is frozen with the edition: switching it on mid-send changes nothing
        env["MAILER_TRACK_CLICKS"] = env["MAILER_TRACK_OPENS"] = "1"
    elif edit == "folder gone":
        shutil.move(folder, project / "ailleurs")


def _parts(raw: bytes) -> dict[str, str]:
    message = message_from_bytes(raw, policy=policy.default)
    fields = {name: str(message[name]) for name in ("Subject", "From", "Reply-To", "List-Id", "To", "Message-ID",
                                                    "List-Unsubscribe")}
    fields["text"] = message.get_body(("plain",)).get_content()
    fields["html"] = message.get_body(("html",)).get_content()
    return fields


def _edit_sets() -> list[tuple[str, ...]]:
    """Each edit alone, then random combinations of them (seeded)."""
    rng = random.Random(11)
    combos = [rng.sample(_EDITS, rng.randint(2, 5)) for _ in range(3)]
    last = "folder gone"  # nothing can be edited in a folder after it is gone
    return [(edit,) for edit in _EDITS] + [tuple(sorted(c, key=lambda e: e == last)) for c in combos]


@pytest.mark.parametrize("edits", _edit_sets(), ids="+".join)
def test_a_resumed_send_delivers_what_the_first_rendering_made_whatever_was_edited(tmp_path, project, edits):
    env = {**BASE_ENV, "MAILER_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "MAILER_BATCH_SIZE": "4"}
    settings = load_settings(project, env=env)
    store = open_store(settings.database_url)
    try:
        addresses = populate(store, project, 24)
        original = render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings)
        stop = threading.Event()
        first = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, stop=stop,
                                    on_progress=lambda p: stop.set() if p.sent >= 8 else None)
        assert 8 <= first.counts["sent"] < 24
        for edit in edits:
            _apply(edit, project, env)
        later = load_settings(project, env=env)
        resumed = dispatch.send_issue(later, store, EXAMPLE_ISSUE)
        assert resumed.complete and resumed.counts["sent"] == 24 and resumed.edition == 1
        oracle = MessageFactory(original)
        key = secret_key_for(settings)
        files = sorted((settings.outbox_dir / EXAMPLE_ISSUE).glob("*.eml"))
        assert len(files) == 24
        with store.engine.connect() as conn:
            ids = store.ids_by_emails(conn, addresses)
            issue_id = store.issue_row(conn, EXAMPLE_ISSUE).id
        for path in files:
            got = _parts(path.read_bytes())
            address = got["To"].rpartition("<")[2].rstrip(">")
            number = int(address[len("abonne"):len("abonne") + 4])
            message = outgoing_message(key, settings.base_url, EXAMPLE_ISSUE, settings.sender_domain,
                                       ids[address], address, f"Abonné {number}", issue_id=issue_id)
            expected = _parts(oracle.build(message.recipient, message.message_id))
            assert got == expected, (edits, path.name)
    finally:
        store.close()


# ----- the other ways back into a send --------------------------------------------------------------
def _outbox_env(tmp_path: Path) -> dict[str, str]:
    return {**BASE_ENV, "MAILER_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}


def _edited_files(settings) -> list[Path]:
    return [p for p in sorted((settings.outbox_dir / EXAMPLE_ISSUE).glob("*.eml")) if carries_edit(p.read_bytes())]


def test_retry_failed_and_include_new_send_the_stored_edition(store, db_url, project, make_settings):
    settings = make_settings(database_url=db_url)
    populate(store, project, 10)
    prepared = prepare_send(settings, store, EXAMPLE_ISSUE)
    with store.begin() as conn:  # three deliveries fail (a provider refused them)
        rows = store.claim_deliveries(conn, prepared.issue_id, "test-worker", 3)
        store.finish_deliveries(conn, "test-worker", [{"id": r.delivery_id, "status": "failed", "last_error": "refused"}
                                                      for r in rows])
    dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    assert _counts(store)["failed"] == 3
    edit_folder(project)
    add_subscriber(store, "nouvelle@example.org")
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, retry_failed=True, include_new=True)
    assert report.counts["sent"] == 11 and report.sent_now == 4
    assert len(list((settings.outbox_dir / EXAMPLE_ISSUE).glob("*.eml"))) == 11
    assert _edited_files(settings) == []


def test_a_sender_of_an_older_edition_claims_nothing_once_a_rebuild_made_a_newer_one(store, db_url, project,
                                                                                    make_settings):
    """The guard behind `--rebuild`: each claim reads the current edition in its own transaction."""
    settings = make_settings(database_url=db_url)
    populate(store, project, 6)
    prepared = prepare_send(settings, store, EXAMPLE_ISSUE)
    old = dispatch.Sender(settings, store, prepared.edition, prepared.issue_id, lambda: make_backend(settings))
    edit_folder(project)
    asked = plan_send(settings, store, EXAMPLE_ISSUE, rebuild=True).describe("outbox")
    assert asked.startswith(f"Rebuild {EXAMPLE_ISSUE} from its folder (\u201c{NEW_SUBJECT}\u201d)") and "6 subscriber(s) left of 6" in asked
    rebuilt = prepare_send(settings, store, EXAMPLE_ISSUE, rebuild=True)
    assert rebuilt.edition.number == 2 and "edition 2 made from the folder: it goes to the 6 recipients left" in rebuilt.notice
    old.run_worker("old-sender", 10)
    assert old.edition_changed and old.progress.sent == 0 and _counts(store)["queued"] == 6
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    assert report.complete and report.edition == 2
    assert len(_edited_files(settings)) == 6


def test_rebuild_rules(store, db_url, project, make_settings, monkeypatch):
    from click.testing import CliRunner

    from mailer.cli.main import main

    settings = make_settings(database_url=db_url)
    populate(store, project, 4)
    first = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, rebuild=True)  # nothing frozen yet: a first send
    assert first.complete and first.edition == 1 and first.notice is None
    with pytest.raises(RebuildRefused, match=r"nobody is left to send a new edition to \(4 sent") as refused:
        dispatch.send_issue(settings, store, EXAMPLE_ISSUE, rebuild=True)
    assert refused.value.exit_code == 7
    for name in [k for k in os.environ if k.startswith(("MAILER_", "SENDGRID_"))]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(project)
    env = {**BASE_ENV, "MAILER_DATABASE_URL": db_url}
    cli = CliRunner().invoke(main, ["send", EXAMPLE_ISSUE, "--yes", "--rebuild"], env=env)
    assert cli.exit_code == 7 and len(cli.output.strip().splitlines()) == 1 and "nobody is left" in cli.output
    shown = CliRunner().invoke(main, ["status", EXAMPLE_ISSUE], env=env).output.splitlines()
    assert re.fullmatch(r"  edition 1 of 1, frozen \d{4}-\d\d-\d\d .*\(send; template weekly; sha256 [0-9a-f]{12}\)",
                        shown[1]), shown
    add_subscriber(store, "nouvelle@example.org")
    unchanged = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, rebuild=True, include_new=True)
    assert "the folder is unchanged since edition 1: nothing rebuilt" in unchanged.notice and unchanged.edition == 1
    assert resume_notice(settings, store, EXAMPLE_ISSUE) is None  # finished: editing it now is normal
    assert edition_of(store).number == 1


def test_resume_notice_says_which_edition_is_used(store, db_url, project, make_settings):
    settings = make_settings(database_url=db_url)
    populate(store, project, 5)
    prepare_send(settings, store, EXAMPLE_ISSUE)
    assert resume_notice(settings, store, EXAMPLE_ISSUE) is None
    edit_folder(project)
    notice = resume_notice(settings, store, EXAMPLE_ISSUE)
    assert re.fullmatch(rf"{EXAMPLE_ISSUE}: the folder changed since the send started: the edition from "
                        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d(:\d\d)? .* is used; `mailer send {EXAMPLE_ISSUE} --rebuild` sends the "
                        rf"edited text to the 5 recipients left", notice), notice
    (project / "issues" / EXAMPLE_ISSUE / "briefs.txt").write_text("--> [lien cassé](\n", encoding="utf-8")
    (project / "issues" / EXAMPLE_ISSUE / "issue.toml").write_text("subject = \n", encoding="utf-8")
    broken = resume_notice(settings, store, EXAMPLE_ISSUE)
    assert "the folder does not render any more" in broken and "is sent as it was" in broken
    assert send_warnings(settings, store, EXAMPLE_ISSUE) == ()  # a broken folder never blocks a resume
    plan = plan_send(settings, store, EXAMPLE_ISSUE)  # …nor its confirmation prompt
    assert plan.recipients == 5 and plan.describe("outbox").startswith(f"Resume {EXAMPLE_ISSUE} \u201c")
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    assert report.complete and report.counts["sent"] == 5 and _edited_files(settings) == []


# ----- a database from before editions ----------------------------------------------------------------
def store_at_revision(database_url: str, revision: str):  # noqa: ANN201 - a Store
    """A Store on a database migrated only up to `revision` (what an earlier version left); dispose
    of its engine before `open_store` migrates it to the head."""
    from alembic import command
    from alembic.config import Config
    from mailer.store import MIGRATIONS_DIR, Store, make_engine

    engine = make_engine(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    return Store(engine)


def leave_a_send_from_before_editions(settings) -> None:  # noqa: ANN001
    """What the version before editions left in `settings.database_url`: 6 frozen, 2 sent, 4 queued,
    no edition (migrated to 0003 only: `open_store` migrates the rest)."""
    from mailer.store import utcnow

    engine = store_at_revision(settings.database_url, "0003").engine
    with engine.begin() as conn:  # what the previous version left: 6 frozen, 2 sent, 4 queued, no edition
        # plain SQL: today's Store knows columns of later revisions
        now = utcnow()
        for i in range(6):
            conn.execute(sa.text("INSERT INTO subscribers (email, email_given, name, language, status, source, "
                                 "attributes, created_at, updated_at) VALUES (:e, :e, '', '', 'active', '', '{}', "
                                 ":now, :now)"), {"e": f"ancien{i}@example.org", "now": now})
        conn.execute(sa.text("INSERT INTO issues (slug, subject, status, web_html, issue_date, frozen_at, started_at) "
                             "VALUES (:slug, 'S', 'sending', '<p>x</p>', '2026-11-26', :now, :now)"),
                     {"slug": EXAMPLE_ISSUE, "now": now})
        conn.execute(sa.text("INSERT INTO deliveries (issue_id, subscriber_id, status, attempts, created_at, updated_at, "
                             "sent_at) SELECT i.id, s.id, CASE WHEN s.email < 'ancien2' THEN 'sent' ELSE 'queued' END, "
                             "CASE WHEN s.email < 'ancien2' THEN 1 ELSE 0 END, :now, :now, NULL "
                             "FROM issues i, subscribers s"), {"now": now})
    engine.dispose()


def test_a_send_in_progress_before_the_migration_freezes_its_folder_at_its_first_resume(tmp_path, project, caplog):
    from mailer.store import HEAD_REVISION

    settings = load_settings(project, env=_outbox_env(tmp_path))
    leave_a_send_from_before_editions(settings)
    store = open_store(settings.database_url)  # migrates to the head: editions
    try:
        notice = resume_notice(settings, store, EXAMPLE_ISSUE)
        assert "this send started before editions were stored" in notice and "4 recipients left" in notice
        worked = dispatch.work_queue(settings, store, once=True, poll_seconds=0)  # a `mailer worker` resumes it
        assert worked == 4
        edition = edition_of(store)
        assert (edition.number, edition.reason, edition.sent_before) == (1, "migrated", 2)
        assert "frozen as edition 1 for the 4 recipients left (2 already sent)" in caplog.text
        assert issue_status(settings, store, EXAMPLE_ISSUE)["edition"]["reason"] == "migrated"
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION
    finally:
        store.close()


# ----- the fixed headers and the Message-ID's domain are the edition's, not the resuming process's ---------
CHANGED = {"MAILER_FROM": "Autre <autre@changed.example.net>", "MAILER_NAME": "Nom changé",
           "MAILER_REPLY_TO": "Réponses <reponses@changed.example.net>", "MAILER_LIST_ID": "changed.example.net"}


def test_a_sendgrid_resume_with_changed_settings_sends_the_editions_from_reply_to_list_id_and_message_id(
        store, db_url, project, make_settings):
    from .sendgrid_server import SendGridServer
    with SendGridServer("SG.test") as server:
        env = {"MAILER_BACKEND": "sendgrid", "SENDGRID_API_KEY": "SG.test", "MAILER_SENDGRID_API_URL": server.url,
               "MAILER_REPLY_TO": "Rédaction <redaction@example.org>", "MAILER_LIST_ID": "fil.example.org"}
        first = make_settings(database_url=db_url, **env)
        populate(store, project, 5)
        prepare_send(first, store, EXAMPLE_ISSUE)
        report = dispatch.send_issue(make_settings(database_url=db_url, **{**env, **CHANGED}), store, EXAMPLE_ISSUE)
        assert report.sent_now == 5 and server.accepted
        for request in server.accepted:
            body = request.body
            assert body["from"] == {"email": "lettre@example.org", "name": "Le Fil du jeudi"}
            assert body["reply_to"] == {"email": "redaction@example.org", "name": "Rédaction"}
            assert "fil.example.org" in body["headers"]["List-Id"] and "changed" not in json.dumps(body)
            assert all(p["headers"]["Message-ID"].endswith("@example.org>") for p in request.personalizations)


def test_an_smtp_resume_with_changed_settings_keeps_the_editions_envelope_sender_from_and_message_id(
        store, db_url, project, make_settings):
    sink = start_server()
    try:
        env = {"MAILER_BACKEND": "smtp", "MAILER_SMTP_HOST": "127.0.0.1", "MAILER_SMTP_PORT": str(sink.port),
               "MAILER_SMTP_TLS": "none"}
        first = make_settings(database_url=db_url, **env)
        populate(store, project, 4)
        prepare_send(first, store, EXAMPLE_ISSUE)
        report = dispatch.send_issue(make_settings(database_url=db_url, **{**env, **CHANGED}), store, EXAMPLE_ISSUE)
        assert report.sent_now == 4 and len(sink.handler.messages) == 4
        for received in sink.handler.messages:
            message = received.parse()
            assert received.mail_from == "lettre@example.org"
            assert message["From"].addresses[0].addr_spec == "lettre@example.org"
            assert str(message["Message-ID"]).endswith("@example.org>")
            assert b"changed" not in received.data
    finally:
        sink.stop()


@pytest.mark.parametrize("damage", ["headers = '{not json'", "html = ''", "subject = 'Sujet trafiqué'",
                                    "variants = '[1, 2'"])
def test_a_corrupt_edition_stops_the_send_with_one_line_naming_it_and_nothing_sent_or_requeued(
        store, db_url, project, make_settings, damage):
    from mailer.errors import CorruptEdition
    if "json" in damage or "[1, 2" in damage:
        if not store.is_sqlite:
            pytest.skip("PostgreSQL's json columns refuse unparsable JSON: this damage cannot happen there")
    settings = make_settings(database_url=db_url)
    populate(store, project, 4)
    prepared = prepare_send(settings, store, EXAMPLE_ISSUE)
    with store.begin() as conn:  # a dead run's claim: a resume would queue it again
        store.claim_deliveries(conn, prepared.issue_id, "dead-worker", 1)
        conn.execute(sa.text(f"UPDATE editions SET {damage} WHERE id = :id"), {"id": prepared.edition.id})
    before = _counts(store)
    with pytest.raises(CorruptEdition) as caught:
        dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    message = str(caught.value)
    assert EXAMPLE_ISSUE in message and f"id {prepared.edition.id}" in message and "\n" not in message
    assert _counts(store) == before and not (settings.outbox_dir / EXAMPLE_ISSUE).exists()
