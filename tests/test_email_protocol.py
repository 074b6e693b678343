"""One typed shape for "an email with slots" (`content.email.EmailWithSlots`): a rendered issue, a
stored edition and a notice each have it, `MessageFactory` builds messages from any of them, and
providers read only the factory, never the content behind it."""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from mailer.config import Settings
from mailer.content.email import EmailWithSlots
from mailer.content.issue import load_issue
from mailer.content.render import Recipient, RenderedIssue, Template, render_issue
from mailer.mime import MessageFactory
from mailer.sending.edition import Edition, from_rendered
from mailer.sending.notices import Notice, Notifier

from .conftest import EXAMPLE_ISSUE, REPO

MEMBERS = ("settings", "subject", "html", "text", "key", "notice_kind", "slot_values")
RECIPIENT = Recipient(email="camille@example.net", name="Camille Dupont", subscriber_id=7,
                      unsubscribe_url="https://lettre.example.org/u/TOKEN")


def _emails(settings: Settings) -> dict[str, object]:
    rendered = render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings)
    notices = {kind: Notifier(settings).build(kind, 7, RECIPIENT.email, RECIPIENT.name)[0]
               for kind in ("confirm", "welcome")}
    return {"rendered issue": rendered, "edition": from_rendered(rendered), **notices}


def _hints() -> dict[str, object]:
    """The protocol's member types, evaluated (its annotations are strings)."""
    names = {"Settings": Settings, "Template": Template, "Recipient": Recipient}
    hints = {}
    for name in MEMBERS:
        member = getattr(EmailWithSlots, name)
        function = member.fget if isinstance(member, property) else member
        hints[name] = typing.get_type_hints(function, localns=names)["return"]
    return hints


def test_the_protocol_names_exactly_what_message_factory_reads():
    assert set(MEMBERS) == {name for name in vars(EmailWithSlots) if not name.startswith("_")} - {"__weakref__"}


def test_rendered_issues_editions_and_notices_are_emails_with_slots(project, settings):
    hints = _hints()
    for kind, email in _emails(settings).items():
        assert isinstance(email, EmailWithSlots), kind
        for name in MEMBERS[:-1]:
            assert isinstance(getattr(email, name), hints[name]), (kind, name, type(getattr(email, name)))
        values = email.slot_values(RECIPIENT)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()), kind
        assert set(email.html.slot_names) | set(email.text.slot_names) <= set(values), kind
        assert (email.notice_kind is None) == (kind in ("rendered issue", "edition"))


def test_message_factory_builds_the_same_email_from_each_and_gives_providers_what_they_need(project, settings):
    for kind, email in _emails(settings).items():
        factory = MessageFactory(email)
        parsed = message_from_bytes(factory.build(RECIPIENT, "<m@example.org>"), policy=policy.default)
        html, text = factory.personalise(RECIPIENT)
        assert parsed.get_body(("html",)).get_content().replace("\r\n", "\n") == html.replace("\r\n", "\n"), kind
        assert parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == text.replace("\r\n", "\n"), kind
        assert str(parsed["Subject"]) == factory.subject and factory.key == email.key
        assert factory.is_notice == (email.notice_kind is not None)
        assert factory.raw_html == email.html.raw and factory.raw_text == email.text.raw
        assert factory.slot_names == set(email.html.slot_names) | set(email.text.slot_names)
        assert factory.slot_values(RECIPIENT) == email.slot_values(RECIPIENT)


def test_providers_read_the_factory_never_the_content_behind_it():
    """`factory.email…` / `.rendered…` in a provider would tie it to one kind of content again."""
    offending = []
    for path in sorted((REPO / "mailer" / "providers").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("email", "rendered") \
                    and isinstance(node.value, (ast.Name, ast.Attribute)) \
                    and (getattr(node.value, "id", None) or getattr(node.value, "attr", None)) == "factory":
                offending.append(f"{path.name}:{node.lineno}")
    assert not offending, offending


CHECK = """
from mailer.content.email import EmailWithSlots
from mailer.content.render import RenderedIssue
from mailer.sending.edition import Edition
from mailer.sending.notices import Notice


def take(email: EmailWithSlots) -> None: ...


def check(a: RenderedIssue, b: Edition, c: Notice) -> None:
    take(a)
    take(b)
    take(c)


class NotAnEmail:  # the control: mypy must refuse it (no slots, a subject of the wrong type)
    subject = 3


take(NotAnEmail())
"""


@pytest.mark.slow  # mypy reads the package: ~10 s cold
def test_mypy_agrees_that_the_three_satisfy_the_protocol(tmp_path: Path):
    source = tmp_path / "check_email.py"
    source.write_text(CHECK, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
                             "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), str(source)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and f"{source}:21:" in errors[0] and "NotAnEmail" in errors[0], result.stdout
