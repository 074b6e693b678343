"""Spam score zero: SpamAssassin's local rules (`spamassassin -L -t`, the Debian package) give every kind
of message mailer produces a score of 0 or less and no positive-scoring rule — the example issue,
generated issues (many briefs, links, images), the notices (confirm, welcome), in both languages, and
the exact per-recipient bytes the outbox and SMTP backends hand over (headers included).

Skipped when spamassassin is not installed, unless MAILER_REQUIRE_SPAMASSASSIN=1 (CI), where that is a
failure. All messages go through ONE spamassassin process (`--mbox`): its start-up is most of the cost.
"""

from __future__ import annotations

import os
import random

import pytest

from mailer.content import render
from mailer.sending import dispatch
from mailer.config import load_settings
from mailer.mime import MessageFactory
from mailer.content.spamcheck import SpamReport, spam_check_many, spamassassin_path
from mailer.sending.notices import Notifier
from mailer.subscribers import add_subscriber
from mailer.web.preview import build_issue

from .cli_support import Ran, invoke
from .conftest import BASE_ENV, EXAMPLE_ISSUE, write_issue
from .smtp_server import start_server


@pytest.fixture(scope="module")
def spamassassin() -> str:
    path = spamassassin_path()
    if path:
        return path
    reason = "spamassassin is not installed: the spam-score tests need the Debian spamassassin package"
    if os.environ.get("MAILER_REQUIRE_SPAMASSASSIN") == "1":
        pytest.fail(f"MAILER_REQUIRE_SPAMASSASSIN=1 but {reason}", pytrace=False)
    pytest.skip(reason)


_WORDS = ("données budget région transport école santé climat énergie logement vélo marché élection "
          "rapport portail carte « citoyens » réseau forêt eau rivière métropole quartier — été").split()


def generated_briefs(seed: int, count: int) -> str:
    """An arrow-format file of `count` briefs: inline Markdown, several links (bare and named, with
    query strings), an image per brief, lists, emphasis, typographic French punctuation."""
    rng = random.Random(seed)
    out = ["Cette semaine, beaucoup de nouvelles — et des cartes.\n"]
    for i in range(count):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(25, 70)))
        brief = [f"--> **{rng.choice(_WORDS).strip('«»').capitalize()} n° {i}** : {words}. "
                 f"À lire [sur le portail](https://data.example.org/jeux/{i}?utm_source=lettre&page={rng.randint(1, 9)}) "
                 f"et https://www.example.com/articles/{seed}-{i}."]
        if rng.random() < 0.8:
            brief.append(f"\n\n![Carte {i} de la région](https://img.example.org/{seed}/carte-{i}.png)")
        if rng.random() < 0.4:
            brief.append("\n\n- premier point\n- second point, *en italique*\n")
        out.append("".join(brief) + "\n")
    return "\n".join(out)


def _issue_messages(project, slug_count: int = 2) -> dict[str, bytes]:
    """`mailer build`'s .eml for the example and generated issues, French and English; the notices."""
    slugs = [EXAMPLE_ISSUE]
    for n in range(slug_count):
        slug = f"2026-12-{n + 3:02d}-genere-{n}"
        write_issue(project, slug, {"briefs.txt": generated_briefs(n, 6 + 8 * n)},
                    f'subject = "Numéro {n} : budgets, cartes et « données » de la semaine"\n'
                    f'preheader = "Les nouvelles de la semaine en {6 + 8 * n} brèves"\ndate = 2026-12-{n + 3:02d}\n')
        slugs.append(slug)
    messages: dict[str, bytes] = {}
    for language in ("fr", "en"):
        settings = load_settings(project, env={**BASE_ENV, "MAILER_LANGUAGE": language})
        for slug in slugs:
            messages[f"build {slug} ({language})"] = build_issue(settings, slug, write=False).eml
        notifier = Notifier(settings)
        for kind in ("confirm", "welcome"):
            notice, recipient = notifier.build(kind, 7, "camille.dupont@example.net", "Camille Dupont")
            messages[f"{kind} notice ({language})"] = MessageFactory(notice).build(
                recipient, f"<notice-{kind}-{language}@example.org>", "Thu, 26 Nov 2026 07:00:00 +0100")
    return messages


def _assert_clean(reports: dict[str, SpamReport]) -> None:
    dirty = {name: f"{report.score:g}: " + ", ".join(f"{r.name} {r.score:g}" for r in report.positive)
             for name, report in reports.items() if report.score > 0 or report.positive}
    assert not dirty, f"SpamAssassin scores above 0 or positive rules: {dirty}"


@pytest.mark.slow  # spamassassin: about a second to start, then ~0.3 s a message
def test_every_kind_of_message_scores_zero_with_no_positive_rule(spamassassin, project, make_settings,
                                                                 sqlite_store, tmp_path):
    messages = _issue_messages(project)
    # per-recipient bytes as the backends write and send them: the outbox's files, and what an SMTP
    # server received (Message-ID, Date, List-Unsubscribe…, a name with accents in To)
    for address, name in (("zoe.lefevre@example.net", "Zoé Lefèvre"), ("sam@example.com", "")):
        add_subscriber(sqlite_store, address, name=name)
    # with a VERP envelope sender (bounce mailboxes): the outbox files then start with its Return-Path
    outbox = make_settings(MAILER_OUTBOX_DIR=str(tmp_path / "outbox"), MAILER_BOUNCE_ADDRESS="bounces@example.org")
    dispatch.send_issue(outbox, sqlite_store, EXAMPLE_ISSUE)
    for path in sorted((tmp_path / "outbox").rglob("*.eml")):
        messages[f"outbox {path.name}"] = path.read_bytes()
        assert messages[f"outbox {path.name}"].startswith(b"Return-Path: <bounces+")
    server = start_server()
    try:
        smtp = make_settings(MAILER_BACKEND="smtp", MAILER_SMTP_HOST="127.0.0.1", MAILER_SMTP_PORT=str(server.port),
                             MAILER_SMTP_TLS="none", MAILER_LANGUAGE="en", MAILER_BOUNCE_ADDRESS="bounces@example.org")
        dispatch.send_issue(smtp, sqlite_store, "2026-12-04-genere-1")
    finally:
        server.stop()
    for received in server.handler.messages:
        messages[f"smtp to {received.rcpt_tos[0]}"] = received.data
    assert sum(name.startswith("outbox") for name in messages) == 2
    assert sum(name.startswith("smtp") for name in messages) == 2

    reports = dict(zip(messages, spam_check_many(list(messages.values()))))

    assert len(reports) == 14
    for report in reports.values():
        assert report.required == 5.0 and any(rule.name == "HTML_MESSAGE" for rule in report.rules)
    _assert_clean(reports)


@pytest.mark.slow  # spamassassin: about a second to start, then ~0.3 s a message
def test_white_hidden_text_is_what_the_check_catches(spamassassin, project, monkeypatch):
    """The oracle sees the kind of failure fixed here: the example with mj-preview's own styling of the
    preheader (white 1 px text) left in place scores HTML_FONT_LOW_CONTRAST."""
    settings = load_settings(project, env=BASE_ENV)
    eml = build_issue(settings, EXAMPLE_ISSUE, write=False).eml
    monkeypatch.setattr(render, "hidden_preheader", lambda compiled_html: compiled_html)
    white = build_issue(settings, EXAMPLE_ISSUE, write=False).eml
    clean, dirty = spam_check_many([eml, white])
    assert not clean.positive
    assert "HTML_FONT_LOW_CONTRAST" in {rule.name for rule in dirty.positive} and dirty.score > 0


def _build_lines(result: Ran) -> list[str]:
    """`mailer build`'s output without its audience line (a segment's size; not what these tests check)."""
    return [line for line in result.stdout.splitlines() if not line.startswith("audience:")]


def _cli(project, *args: str, path: str | None = None) -> Ran:
    """`mailer ARGS` in this process (tests/cli_support.py), with PATH replaced by `path` if given."""
    return invoke(args, project, {"PATH": path} if path is not None else None)


@pytest.mark.slow  # spamassassin: about a second to start, then ~0.3 s a message
def test_build_spam_check_prints_the_score_and_the_rules(spamassassin, project):
    result = _cli(project, "build", EXAMPLE_ISSUE, "--spam-check")
    assert result.returncode == 0, result.stderr
    lines = _build_lines(result)
    assert lines[0].startswith("built ")
    assert lines[1] == "SpamAssassin score 0 (spam at 5; local rules only)"
    assert any(line.split()[1:2] == ["HTML_MESSAGE"] for line in lines[2:])


def test_build_spam_check_without_spamassassin_is_one_line(project, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = _cli(project, "build", EXAMPLE_ISSUE, "--spam-check", path=str(empty))
    assert result.returncode == 0, result.stderr
    assert _build_lines(result)[1:] == [
        "spam check skipped: spamassassin is not installed (Debian: apt-get install spamassassin)"]


def spammy_issue(project, slug: str, seed: int, count: int) -> str:
    """A generated issue SpamAssassin calls spam (score >= 5): an all-caps subject, "100% GUARANTEED",
    many links to a URL shortener and to bare IP addresses."""
    rng = random.Random(seed)
    briefs = ["URGENT: YOU HAVE BEEN SELECTED AS A WINNER!!! CLICK HERE NOW!!!\n"]
    for i in range(count):
        briefs.append(f"--> # FREE OFFER {i} — BUY NOW!!!\nCLICK HERE for [100% GUARANTEED VIAGRA](http://bit.ly/x{rng.randint(0, 10**6)}) "
                      f"and [cheap meds](http://198.51.100.{rng.randint(1, 254)}/pills) — limited time offer, risk free, "
                      "no credit check, act now! Earn $$$ from home, MILLIONS OF DOLLARS, double your income.\n")
    write_issue(project, slug, {"briefs.txt": "\n".join(briefs)},
                'subject = "FREE MONEY!!! ACT NOW — 100% GUARANTEED WINNER $$$"\n'
                'preheader = "CLICK HERE to claim your prize, limited time offer!!!"\ndate = 2026-11-29\n')
    return slug


@pytest.mark.slow  # spamassassin: about a second to start, then ~0.3 s a message
def test_build_spam_check_prints_the_score_and_rules_of_a_spammy_issue(spamassassin, project):
    """A message scored as spam is wrapped by SpamAssassin, whose output then holds the report twice:
    the check still prints one score and the rules, and the build succeeds (the report is advice)."""
    slug = spammy_issue(project, "2026-11-29-spammy", seed=1, count=1)
    result = _cli(project, "build", slug, "--spam-check")
    assert result.returncode == 0, result.stderr
    lines = _build_lines(result)
    assert lines[0].startswith(f"built {slug}: ") and " 1 brief -> " in lines[0]
    score = float(lines[1].split()[2])
    assert lines[1] == f"SpamAssassin score {score:g} (spam at 5; local rules only)" and score >= 5
    rules = {line.split()[1]: float(line.split()[0]) for line in lines[2:]}
    assert "GUARANTEED_100_PERCENT" in rules
    assert sum(rules.values()) == pytest.approx(score, abs=0.05 * len(rules))  # each rule once (rounded to 0.1)
    assert len(rules) == len(lines) - 2


@pytest.mark.slow  # spamassassin: about a second to start, then ~0.3 s a message
def test_one_run_mixing_spam_and_ham_gives_each_message_its_own_report(spamassassin, project):
    settings = load_settings(project, env=BASE_ENV)
    ham = build_issue(settings, EXAMPLE_ISSUE, write=False).eml
    spams = [build_issue(settings, spammy_issue(project, f"2026-11-{29 - n}-spammy", seed=n, count=2 + 3 * n),
                         write=False).eml for n in range(2)]
    order = [("ham", ham), ("spam", spams[0]), ("ham", ham), ("spam", spams[1])]
    reports = spam_check_many([message for _, message in order])
    singles = [spam_check_many([message])[0] for message in (ham, *spams)]
    assert [report.score >= report.required for report in reports] == [kind == "spam" for kind, _ in order]
    assert [report.score for report in reports] == [singles[0].score, singles[1].score, singles[0].score, singles[2].score]
    for report in reports:  # no rule twice: one report per message, not the wrapper's copy as well
        assert len({rule.name for rule in report.rules}) == len(report.rules)
