"""A segmented, two-language send is frozen whole: SIGKILL mid-send, then a brief, the subject, a
subscriber's attribute and the issue's segment edited, then a resume: no message carries the edit,
the audience is the one frozen at the start, each reader got their language's fixed strings — and
`--include-new` draws newcomers with the frozen segment, not the folder's."""

from __future__ import annotations

import json
import re
from email import message_from_bytes, policy
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailer.sending import dispatch
from mailer.sending.prepare import load_edition, plan_send, prepare_send, resume_notice
from mailer.subscribers import import_csv

from .cli_support import invoke_with
from .conftest import EXAMPLE_ISSUE
from .smtp_server import start_server
from .test_crash import GROUP, SlowHandler, _counts, _env, kill_mid_send
from .test_edition import carries_edit, edit_folder, edition_of

UNSUBSCRIBE = {"fr": "Se désabonner en un clic", "en": "Unsubscribe in one click:"}  # the text part's
UNSUBSCRIBE_HTML = {"fr": ">Se désabonner<", "en": ">Unsubscribe<"}


def _write_csv(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    path.write_text("email,name,language,city\n" + "".join(",".join(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _set_segment(project: Path, segment: str) -> None:
    toml = project / "issues" / EXAMPLE_ISSUE / "issue.toml"
    text = re.sub(r"(?m)^(segment|language) = .*\n", "", toml.read_text(encoding="utf-8"))
    toml.write_text(text + f"segment = '{segment}'\n", encoding="utf-8")


def _language_of(raw_text: str) -> str:
    found = [language for language, marker in UNSUBSCRIBE.items() if marker in raw_text]
    assert len(found) == 1, raw_text[-400:]
    return found[0]


@pytest.mark.slow
def test_a_killed_segmented_two_language_send_resumes_its_frozen_edition_and_audience(store, db_url, project):
    count = 360
    # every third reader outside the segment (Lille); languages alternate fr / en
    rows = [(f"lecteur{i:04d}@example.org", f"Lecteur {i}", "fr" if i % 2 else "en", "Lille" if i % 3 == 0 else "Lyon")
            for i in range(count)]
    assert import_csv(store, _write_csv(project / "liste.csv", rows)).added == count
    members = {email: language for email, _, language, city in rows if city == "Lyon"}
    outsider = next(email for email, _, _, city in rows if city == "Lille")
    _set_segment(project, 'city = "Lyon"')
    sink = start_server(SlowHandler())
    try:
        env = _env(db_url, sink.port)
        kill_mid_send(project, env, sink, len(members) // 4, len(members))
        assert edition_of(store).segment == 'city = "Lyon"'
        # while it is down: the text edited, an outsider moves to Lyon (the frozen segment would now
        # match them), and the folder's segment now names Lille instead
        edit_folder(project)
        outsider_row = next(row for row in rows if row[0] == outsider)
        moved = _write_csv(project / "moved.csv", [(*outsider_row[:3], "Lyon")])
        assert import_csv(store, moved).updated == 1
        _set_segment(project, 'city = "Lille"')

        resumed = invoke_with(env, ("send", EXAMPLE_ISSUE, "--yes"), project)
        assert resumed.returncode == 0, resumed.stderr
        assert "segment changed since the send started" in resumed.stderr, resumed.stderr
        assert "folder changed since the send started" in resumed.stderr, resumed.stderr
        frozen_run = list(sink.handler.messages)

        # --include-new: newcomers by the FROZEN segment (the moved outsider), not the folder's (Lille)
        newcomers = invoke_with(env, ("send", EXAMPLE_ISSUE, "--yes", "--include-new"), project)
        assert newcomers.returncode == 0, newcomers.stderr
        later = list(sink.handler.messages)[len(frozen_run):]
    finally:
        sink.stop()

    assert not [m.rcpt_tos for m in frozen_run + later if carries_edit(m.data)], "a message carries the edit"
    received: dict[str, list[str]] = {}
    for message in frozen_run:
        parsed = message.parse()
        language = _language_of(parsed.get_body(("plain",)).get_content())
        assert UNSUBSCRIBE_HTML[language] in parsed.get_body(("html",)).get_content()
        for address in message.rcpt_tos:
            received.setdefault(address, []).append(language)
    assert set(received) == set(members), "the resume's audience is not the frozen one"
    # the crash window over SMTP: one commit group (MAILER_SMTP_COMMIT_EVERY) per connection
    assert sum(len(languages) - 1 for languages in received.values()) <= GROUP, "more duplicates than the crash window"
    assert {address: languages[0] for address, languages in received.items()} == members, "a reader got the wrong strings"
    assert [m.rcpt_tos for m in later] == [[outsider]]
    assert _language_of(later[0].parse().get_body(("plain",)).get_content()) == outsider_row[2]
    final = _counts(store)
    assert final["sent"] == len(members) + 1 and final["queued"] == final["sending"] == 0
    assert edition_of(store).number == 1
    status = invoke_with(env, ("status", EXAMPLE_ISSUE, "--json"), project)
    edition = json.loads(status.stdout)["edition"]
    assert edition["segment"] == 'city = "Lyon"' and edition["language"] is None


def test_an_edition_stored_before_languages_were_frozen_is_sent_as_it_was(tmp_path, project):
    """A send frozen at revision 0005 (one HTML/text, no language, no segment) resumes after the
    migration with that edition: everyone gets it, whatever their language, and the folder's segment
    added since is not applied."""
    from mailer.config import load_settings
    from mailer.content.issue import load_issue
    from mailer.content.render import render_issue
    from mailer.sending.edition import content_hash, from_rendered
    from mailer.store import open_store, utcnow

    from .test_edition import _outbox_env, store_at_revision

    settings = load_settings(project, env=_outbox_env(tmp_path))
    old = store_at_revision(settings.database_url, "0005")
    edition = from_rendered(render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings))
    columns = {key: value for key, value in edition.values().items()
               if key not in ("language", "forced_language", "segment", "segment_zone", "variants")}
    # hashed as revision 0005 did: the one variant alone
    columns["content_hash"] = content_hash(edition.subject, edition.html.raw, edition.text.raw, edition.greeting,
                                           columns["headers"], edition.template)
    with old.begin() as conn:  # what 0005 left: 4 frozen (2 fr, 2 en), one edition, nothing sent
        for i in range(4):
            old.insert_subscriber(conn, email=f"r{i}@example.org", email_given=f"r{i}@example.org", status="active",
                                  language="fr" if i % 2 else "en")
        # the issue in plain SQL: today's Store knows columns of later revisions (0007's send_local)
        conn.execute(sa.text("INSERT INTO issues (slug, subject, status, web_html, issue_date, frozen_at, started_at) "
                             "VALUES (:slug, :subject, 'sending', '<p>x</p>', '2026-11-26', :now, :now)"),
                     {"slug": EXAMPLE_ISSUE, "subject": edition.subject, "now": utcnow()})
        row = conn.execute(sa.text("SELECT id FROM issues WHERE slug = :slug"), {"slug": EXAMPLE_ISSUE}).one()
        old.freeze_recipients(conn, row.id, None)
        conn.execute(sa.text("INSERT INTO editions (issue_id, number, created_at, reason, subject, html, text, greeting, "
                             "headers, template, mailer_version, content_hash, sent_before) VALUES (:issue_id, 1, "
                             ":now, 'send', :subject, :html, :text, :greeting, :headers, :template, :mailer_version, "
                             ":content_hash, 0)"),
                     {**columns, "headers": json.dumps(columns["headers"]), "issue_id": row.id, "now": utcnow()})
    old.engine.dispose()

    store = open_store(settings.database_url)  # migrates to the head
    try:
        assert resume_notice(settings, store, EXAMPLE_ISSUE) is None  # the folder renders as it did then
        _set_segment(project, 'language = "en"')
        assert "segment changed" in resume_notice(settings, store, EXAMPLE_ISSUE)
        report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
        stored = load_edition(settings, store, _issue_id(store), EXAMPLE_ISSUE)[0]
    finally:
        store.close()
    assert report.counts["sent"] == 4 and report.edition == 1
    assert (stored.language, stored.variants, stored.segment) == (settings.language, {}, None)
    files = list((settings.outbox_dir / EXAMPLE_ISSUE).glob("*.eml"))
    assert len(files) == 4 and all(_language_of(_text_part(path.read_bytes())) == settings.language for path in files)


def _issue_id(store) -> int:  # noqa: ANN001
    with store.engine.connect() as conn:
        return store.issue_row(conn, EXAMPLE_ISSUE).id


def _text_part(raw: bytes) -> str:
    """The text part of an .eml file, decoded."""
    return message_from_bytes(raw, policy=policy.default).get_body(("plain",)).get_content()


def test_rebuild_makes_new_content_and_keeps_the_frozen_segment(store, db_url, project, make_settings):
    settings = make_settings(database_url=db_url)
    rows = [(f"r{i}@example.org", f"R {i}", "fr" if i % 2 else "en", "Lyon" if i < 4 else "Lille") for i in range(10)]
    import_csv(store, _write_csv(project / "liste.csv", rows))
    _set_segment(project, 'city = "Lyon"')
    first = prepare_send(settings, store, EXAMPLE_ISSUE)
    assert first.frozen == 4 and set(first.factories) == {"fr", "en"}
    edit_folder(project)
    _set_segment(project, 'city = "Lille"')  # would match the 6 others
    notice = resume_notice(settings, store, EXAMPLE_ISSUE)
    assert "segment changed since the send started" in notice and 'segment: city = "Lyon"' in notice
    rebuilt = prepare_send(settings, store, EXAMPLE_ISSUE, rebuild=True, include_new=True)
    assert rebuilt.edition.number == 2 and rebuilt.frozen == 0, "--rebuild or --include-new re-read the segment"
    assert rebuilt.edition.segment == 'city = "Lyon"' and rebuilt.edition.subject != first.edition.subject
    assert plan_send(settings, store, EXAMPLE_ISSUE, include_new=True).recipients == 4
    # a `mailer worker` sends the stored edition (the rebuilt one): the frozen four, each in their language
    assert dispatch.work_queue(settings, store, once=True, poll_seconds=0) == 4
    sent = {}
    for path in (settings.outbox_dir / EXAMPLE_ISSUE).glob("*.eml"):
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        sent[str(message["To"]).strip("<>").split("<")[-1].rstrip(">")] = (
            _language_of(message.get_body(("plain",)).get_content()), carries_edit(path.read_bytes()))
    assert sent == {email: (language, True) for email, _, language, city in rows if city == "Lyon"}
