"""Segments end to end: issue.toml's `segment`, the freeze, a real send through an SMTP sink, the
audience shown before sending, the archive rule; the greeting's first name and per-language strings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailer.content.issue import load_issue
from mailer.content.render import render_variants
from mailer.errors import EmptyAudience, SourceError
from mailer.sending import dispatch
from mailer.sending.prepare import plan_send
from mailer.subscribers import add_subscriber

from .conftest import EXAMPLE_ISSUE
from .smtp_server import start_server
from .test_cli import _send_on_a_terminal, run  # noqa: F401 - `run` is a fixture

PEOPLE = [
    # email, name, language, attributes, lists
    ("lea@example.org", "Léa Martin", "fr", {"city": "Lyon", "tags": "premium, vip", "first_name": "léa"}, ["news"]),
    ("sam@example.org", "Sam Taylor", "en", {"city": "PARIS", "tags": ["premium"]}, []),
    ("ana@example.org", "", "en", {"city": "Lyon"}, []),
    ("yuki@example.org", "山田 優希", "fr", {"city": "Lille"}, ["news"]),
    ("bob@example.org", "Bob", "de", {"city": "'); DROP TABLE subscribers;--"}, []),
]


def _segment_issue(project: Path, segment: str, *, extra: str = "") -> Path:
    toml = project / "issues" / EXAMPLE_ISSUE / "issue.toml"
    text = re.sub(r"(?m)^(draft|segment|language) = .*\n", "", toml.read_text(encoding="utf-8"))
    toml.write_text(text + f"segment = '{segment}'\n{extra}", encoding="utf-8")
    return toml


def _add_people(store) -> None:  # noqa: ANN001
    for email, name, language, attributes, lists in PEOPLE:
        add_subscriber(store, email, name=name, language=language, attributes=attributes, lists=lists)


@pytest.fixture
def sink():
    server = start_server()
    yield server
    server.stop()


def test_only_the_segment_receives_the_issue_over_smtp(make_settings, project, store, db_url, sink) -> None:
    _add_people(store)
    _segment_issue(project, 'city in ("lyon", "Paris") or tags has "VIP"')
    settings = make_settings(database_url=db_url, MAILER_BACKEND="smtp", MAILER_SMTP_HOST="127.0.0.1",
                             MAILER_SMTP_PORT=str(sink.port), MAILER_SMTP_TLS="none")
    plan = plan_send(settings, store, EXAMPLE_ISSUE)
    assert plan.recipients == 3 and "segment" in plan.describe("smtp")
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    received = sorted(r for m in sink.handler.messages for r in m.rcpt_tos)
    assert received == ["ana@example.org", "lea@example.org", "sam@example.org"]
    assert report.counts["sent"] == 3
    # the frozen set is the audience: someone joining the segment later is not added by a resume
    add_subscriber(store, "new@example.org", attributes={"city": "Lyon"})
    add_subscriber(store, "out@example.org", attributes={"city": "Nice"})
    again = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    assert again.already_finished and len(sink.handler.messages) == 3
    # --include-new adds the newcomers the segment matches, and only them
    dispatch.send_issue(settings, store, EXAMPLE_ISSUE, include_new=True)
    assert sorted(r for m in sink.handler.messages[3:] for r in m.rcpt_tos) == ["new@example.org"]
    # a segment-only issue is private: the archive does not list it
    with store.engine.connect() as conn:
        assert store.issue_row(conn, load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone).slug).public is False
        assert store.published_issues(conn) == []


def test_greeting_and_fixed_strings_follow_each_subscriber(make_settings, project, store, db_url, sink) -> None:
    _add_people(store)
    _segment_issue(project, "exists city")
    settings = make_settings(database_url=db_url, MAILER_BACKEND="smtp", MAILER_SMTP_HOST="127.0.0.1",
                             MAILER_SMTP_PORT=str(sink.port), MAILER_SMTP_TLS="none")
    dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    by_address = {m.rcpt_tos[0]: m.parse() for m in sink.handler.messages}
    text = {address: message.get_body(("plain",)).get_content() for address, message in by_address.items()}
    html = {address: message.get_body(("html",)).get_content() for address, message in by_address.items()}
    # first name from the first_name attribute (capitalised), else from the name, else no name
    assert "Bonjour Léa," in text["lea@example.org"]
    assert "Hello Sam," in text["sam@example.org"]
    assert "Hello," in text["ana@example.org"] and "Hello ," not in text["ana@example.org"]
    # a name in a non-Latin script is greeted as written (family name first: the whole name)
    assert "Bonjour 山田," in text["yuki@example.org"]
    # English readers get English fixed strings, French readers French ones; an unshipped language
    # (de) gets MAILER_LANGUAGE's
    assert "Unsubscribe in one click:" in text["sam@example.org"]
    assert "Se désabonner en un clic" in text["lea@example.org"]
    assert "Se désabonner en un clic" in text["bob@example.org"]
    assert ">Unsubscribe<" in html["sam@example.org"] and ">Se désabonner<" in html["lea@example.org"]
    # the content itself is the same for everyone
    subject = {message["Subject"] for message in by_address.values()}
    assert len(subject) == 1


def test_issue_language_forces_one_set_of_strings(make_settings, project) -> None:
    _segment_issue(project, 'language = "en"', extra='language = "en"\n')
    settings = make_settings()
    issue = load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone)
    variants = render_variants(issue, settings)
    assert list(variants) == ["en"]
    unforced = render_variants(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone).__class__(
        **{**issue.__dict__, "language": None}), settings)
    assert list(unforced) == ["fr", "en"]  # MAILER_LANGUAGE first, then every other shipped language


def test_a_first_name_cannot_inject_markup_or_slots(make_settings, project, store, db_url, sink) -> None:
    add_subscriber(store, "x@example.org", name="X", language="en",
                   attributes={"first_name": "<b>Zoé</b> %%mailer:unsubscribe_url%%", "city": "Lyon"})
    _segment_issue(project, 'city = "lyon"')
    settings = make_settings(database_url=db_url, MAILER_BACKEND="smtp", MAILER_SMTP_HOST="127.0.0.1",
                             MAILER_SMTP_PORT=str(sink.port), MAILER_SMTP_TLS="none")
    dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    html = sink.handler.messages[0].parse().get_body(("html",)).get_content()
    assert "<b>Zoé</b>" not in html and "&lt;b&gt;" in html


def test_a_segment_matching_nobody_refuses_and_touches_nothing(make_settings, project, store, db_url) -> None:
    _add_people(store)
    _segment_issue(project, 'city = "Marseille"')
    settings = make_settings(database_url=db_url)
    with pytest.raises(EmptyAudience, match=r"segment 'city = \"Marseille\"' .* matches none of the 5 active"):
        dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    with store.engine.connect() as conn:
        assert store.issue_row(conn, EXAMPLE_ISSUE) is None or store.issue_row(conn, EXAMPLE_ISSUE).frozen_at is None


def test_unknown_attribute_is_refused_before_anything_is_sent(make_settings, project, store, db_url, sink) -> None:
    _add_people(store)
    toml = _segment_issue(project, 'language = "en" and citty = "Lyon"')
    settings = make_settings(database_url=db_url, MAILER_BACKEND="smtp", MAILER_SMTP_HOST="127.0.0.1",
                             MAILER_SMTP_PORT=str(sink.port), MAILER_SMTP_TLS="none")
    line = toml.read_text(encoding="utf-8").splitlines().index("segment = 'language = \"en\" and citty = \"Lyon\"'") + 1
    with pytest.raises(SourceError) as caught:
        dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    assert str(caught.value).startswith(f"{toml}:{line}: segment, column 21: unknown field 'citty': did you mean 'city'?")
    assert sink.handler.messages == []
    with store.engine.connect() as conn:
        assert store.issue_row(conn, EXAMPLE_ISSUE) is None


def test_cli_build_and_send_show_the_audience_and_errors_in_one_line(run, project: Path) -> None:
    for address, language in (("a@example.org", "en"), ("b@example.org", "en"), ("c@example.org", "fr")):
        run("subscribers", "add", address, "--language", language)
    _segment_issue(project, 'language = "en"')
    built = run("build", EXAMPLE_ISSUE, "--out", "sortie")
    assert 'audience: 2 active subscribers (segment: language = "en")' in built.stdout
    toml = _segment_issue(project, 'language = "en" and (city = "Lyon"')
    for command in (("build", EXAMPLE_ISSUE), ("send", EXAMPLE_ISSUE, "--yes")):
        broken = run(*command, check_exit=3)
        assert broken.stdout == ""
        assert broken.stderr.count("\n") == 1, broken.stderr
        assert broken.stderr.startswith(f"error: {toml}:")
        assert "segment, column 35: expected ')' to close the '(' of column 21" in broken.stderr
    assert not (project / "outbox").exists()


@pytest.mark.slow  # a real `mailer` process on a pseudo-terminal (the prompt is only asked on one)
def test_the_confirmation_on_a_terminal_names_the_segment_and_its_audience(run, project: Path) -> None:
    for address, language in (("a@example.org", "en"), ("b@example.org", "en"), ("c@example.org", "fr")):
        run("subscribers", "add", address, "--language", language)
    _segment_issue(project, 'language = "en"')
    prompt, code = _send_on_a_terminal(project, EXAMPLE_ISSUE)
    assert 'to 2 subscriber(s) in segment \'language = "en"\'?' in prompt
    assert code != 0 and not (project / "outbox").exists()


def test_sendgrid_requests_each_carry_one_language(make_settings, project, store, db_url) -> None:
    from .sendgrid_server import SendGridServer
    _add_people(store)
    _segment_issue(project, "exists city")
    with SendGridServer("SG.test-key") as server:
        settings = make_settings(database_url=db_url, MAILER_BACKEND="sendgrid", SENDGRID_API_KEY="SG.test-key",
                                 MAILER_SENDGRID_API_URL=server.url, MAILER_BATCH_SIZE="1000")
        dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
        languages = []
        for request in server.accepted:
            text = next(c["value"] for c in request.body["content"] if c["type"] == "text/plain")
            languages.append("en" if "Unsubscribe in one click:" in text else "fr")
            recipients = sorted(to["email"] for p in request.personalizations for to in p["to"])
            assert recipients == (["ana@example.org", "sam@example.org"] if languages[-1] == "en"
                                  else ["bob@example.org", "lea@example.org", "yuki@example.org"])
        assert sorted(languages) == ["en", "fr"]
        assert "Hello Sam," in server.delivered_to("sam@example.org")[0].text
        assert "Bonjour Léa," in server.delivered_to("lea@example.org")[0].text


def test_preview_shows_the_audience_and_a_segment_error(make_settings, project, store, db_url) -> None:
    from starlette.testclient import TestClient

    from mailer.web.preview import create_preview_app
    _add_people(store)
    _segment_issue(project, 'language = "en"')
    settings = make_settings(database_url=db_url)
    with TestClient(create_preview_app(settings, EXAMPLE_ISSUE, store)) as client:
        page = client.get("/").text
        assert 'destinataires\u00a0: 2\u00a0abonné·es actifs, segment\u00a0: <code>language = &#34;en&#34;</code>' in page
        _segment_issue(project, 'langage = "en"')
        page = client.get("/").text
        assert "segment, column 1: unknown field &#39;langage&#39;: did you mean &#39;language&#39;?" in page


@pytest.mark.parametrize("blank", ["", "   "])
def test_an_empty_segment_is_an_error_not_the_whole_list(make_settings, project, blank) -> None:
    """`segment = ""` reads like a filter; sending it to everyone would surprise whoever wrote it."""
    settings = make_settings()
    _segment_issue(project, blank)
    with pytest.raises(SourceError) as caught:
        load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone)
    text = str(caught.value)
    assert "segment is empty" in text and "issue.toml:" in text and "\n" not in text
