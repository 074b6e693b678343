"""The command line as users and scripts see it: outputs, one-line errors, exit codes."""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
from email import policy
from pathlib import Path

import pytest

from .cli_support import MAILER, process_env
from .conftest import BASE_ENV, EXAMPLE_ISSUE, write_issue



@pytest.fixture
def run(cli):
    """`mailer ARGS` in this process (tests/cli_support.py); the real processes are below."""
    return cli


def test_build_writes_three_files_and_reports(run, project):
    result = run("build", "donnees-ouvertes", "--out", "sortie")
    assert "built 2026-11-26-donnees-ouvertes" in result.stdout and "6 briefs" in result.stdout
    message = email.message_from_bytes((project / "sortie" / "email.eml").read_bytes(), policy=policy.default)
    assert message.is_multipart() and message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert (project / "sortie" / "email.html").stat().st_size > 10_000
    assert "Bonjour Camille," in (project / "sortie" / "email.txt").read_text(encoding="utf-8")


def test_bad_brief_is_one_line_error_naming_file_and_line(run, project):
    write_issue(project, "2026-12-03-casse", {"briefs.txt": "--> Bien.\n-->\n"})
    result = run("build", "casse", check_exit=3)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ") and "2026-12-03-casse/briefs.txt:2: empty brief" in lines[0]


def test_subscriber_commands(run):
    run("subscribers", "add", "Camille@Example.org", "--name", "Camille")
    run("subscribers", "add", "b@example.org")
    assert run("subscribers", "count").stdout == "2\n"
    run("subscribers", "remove", "b@example.org")
    assert run("subscribers", "count", "--status", "active").stdout == "1\n"
    assert run("subscribers", "list").stdout.split() == ["Camille@example.org", "b@example.org"]
    assert run("subscribers", "list", "--status", "unsubscribed").stdout.split() == ["b@example.org"]
    rows = [json.loads(line) for line in run("subscribers", "list", "--format", "json").stdout.splitlines()]
    assert rows[0]["name"] == "Camille" and rows[1]["status"] == "unsubscribed"
    shown = run("subscribers", "show", "b@example.org").stdout
    assert "unsubscribed" in shown and "removed by the operator" in shown
    bad = run("subscribers", "add", "pas une adresse", check_exit=2)
    assert bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
    missing = run("subscribers", "show", "inconnu@example.org", check_exit=4)
    assert "no subscriber inconnu@example.org" in missing.stderr


def test_import_reports_rejected_lines_and_summary(run, project):
    (project / "liste.csv").write_text("email,name\nun@example.org,Un\nnope,Non\nun@example.org,Doublon\n", encoding="utf-8")
    result = run("subscribers", "import", "liste.csv")
    assert "added 1, updated 0, unchanged 0, rejected 2" in result.stdout
    assert "liste.csv:3: rejected 'nope'" in result.stderr
    assert "liste.csv:4: rejected 'un@example.org': duplicate" in result.stderr


def test_export_to_file_and_stdout(run, project):
    run("subscribers", "import", "subscribers/example.csv")
    run("subscribers", "export", "out.csv")
    exported = (project / "out.csv").read_text(encoding="utf-8")
    assert exported.splitlines()[0].startswith("email,name,language,status")
    assert exported == run("subscribers", "export").stdout
    assert len(exported.strip().splitlines()) == 6


def test_send_then_status_then_resend_sends_nothing_twice(run, project):
    run("subscribers", "import", "subscribers/example.csv")
    first = run("send", EXAMPLE_ISSUE, "--yes")
    assert "sent 5 now (5 in all)" in first.stdout
    files = sorted((project / "outbox" / EXAMPLE_ISSUE).glob("*.eml"))
    assert len(files) == 5
    status = json.loads(run("status", "donnees-ouvertes", "--json").stdout)
    assert status["counts"]["sent"] == 5 and status["status"] == "sent"
    again = run("send", EXAMPLE_ISSUE, "--yes")
    assert "already sent (5 sent" in again.stdout
    assert sorted((project / "outbox" / EXAMPLE_ISSUE).glob("*.eml")) == files


def test_send_refuses_without_confirmation_when_not_interactive(run):
    result = run("send", EXAMPLE_ISSUE, check_exit=1)
    assert "add --yes" in result.stderr


def test_missing_settings_stop_the_send_before_anything(run, project):
    run("subscribers", "add", "a@example.org")
    result = run("send", EXAMPLE_ISSUE, "--yes", extra_env={"MAILER_BACKEND": "smtp", "MAILER_POSTAL_ADDRESS": ""},
                 check_exit=2)
    assert "MAILER_POSTAL_ADDRESS is missing" in result.stderr and "MAILER_SMTP_HOST is missing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    not_started = run("status", EXAMPLE_ISSUE, check_exit=4)
    assert "never been sent" in not_started.stderr
    assert not (project / "outbox").exists()


def test_invalid_setting_value_is_named(run):
    result = run("subscribers", "count", extra_env={"MAILER_RATE_LIMIT": "vite"}, check_exit=2)
    assert "MAILER_RATE_LIMIT" in result.stderr and "'vite'" in result.stderr


def test_test_send_does_not_touch_the_ledger(run, project):
    run("subscribers", "add", "a@example.org")
    result = run("send", EXAMPLE_ISSUE, "--test", "moi@example.org,collegue@example.org")
    assert result.stdout.count(": sent") == 2
    files = sorted(p.name for p in (project / "outbox" / EXAMPLE_ISSUE).glob("*.eml"))
    assert files == ["test-collegue@example.org.eml", "test-moi@example.org.eml"]
    message = email.message_from_bytes((project / "outbox" / EXAMPLE_ISSUE / files[0]).read_bytes(), policy=policy.default)
    assert message["Subject"].startswith("[TEST] ")
    run("status", EXAMPLE_ISSUE, check_exit=4)


def test_issue_new_then_build(run, project):
    created = run("issue", "new", "Bilan de l'année", "--date", "2026-12-31").stdout
    assert "2026-12-31-bilan-de-l-ann-e" in created or "2026-12-31-bilan" in created
    folder = next((project / "issues").glob("2026-12-31-*"))
    run("build", str(folder))


def test_db_upgrade_is_idempotent(run):
    assert "database at revision" in run("db", "upgrade").stdout
    assert "database at revision" in run("db", "upgrade").stdout


@pytest.mark.parametrize("char", ["\x0c", "\x0b", "\x1b", "\x00", "\x7f", "\x85", "\u2028"])
def test_a_control_character_in_a_brief_is_one_line_error_before_rendering(run, project, char):
    write_issue(project, "2026-12-03-ctrl", {"briefs.txt": f"--> Bien.\n--> Une brève{char} collée.\n"})
    result = run("build", "ctrl", check_exit=3)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MJML" not in lines[0]
    assert f"2026-12-03-ctrl/briefs.txt:2: control character U+{ord(char):04X} (" in lines[0]
    assert "at column 14" in lines[0]  # after "--> Une brève"
    assert not (project / "build").exists()


def test_issue_new_transliterates_and_build_warns_about_placeholders(run, project):
    result = run("issue", "new", "trains-et-vélos", "--date", "2026-12-10")
    folder = project / "issues" / "2026-12-10-trains-et-velos"
    assert result.stdout.strip() == f"created {folder}"
    assert "draft = true" in (folder / "issue.toml").read_text(encoding="utf-8")
    built = run("build", "trains-et-velos")
    assert "warning: " in built.stderr and "the subject 'Objet de la lettre' is a placeholder" in built.stderr
    assert "draft = true: the scheduler holds it" in built.stderr


# ----- sends that cannot go wrong quietly ---------------------------------------------------------------
def test_a_send_to_nobody_is_refused_with_the_reason(run, project):
    refused = run("send", EXAMPLE_ISSUE, "--yes", check_exit=6)
    assert refused.stderr.startswith("error: refusing to send") and "no subscribers yet" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and refused.stdout == ""
    run("subscribers", "add", "a@example.org", "--list", "premium")
    toml = project / "issues" / EXAMPLE_ISSUE / "issue.toml"
    toml.write_text(toml.read_text(encoding="utf-8") + '\nlist = "premuim"\n', encoding="utf-8")
    typo = run("send", EXAMPLE_ISSUE, "--yes", check_exit=6)
    assert "list 'premuim'" in typo.stderr and "did you mean 'premium'?" in typo.stderr
    assert "never been sent" in run("status", EXAMPLE_ISSUE, check_exit=4).stderr
    assert not (project / "outbox").exists()


def test_a_rerun_of_a_finished_issue_says_so_and_writes_nothing(run, project):
    run("subscribers", "add", "a@example.org")
    first = run("send", EXAMPLE_ISSUE, "--yes")
    assert "messages are in" in first.stdout
    again = run("send", EXAMPLE_ISSUE, "--yes")
    assert "already sent (1 sent, 0 failed, 0 skipped); nothing to do" in again.stdout
    assert "messages are in" not in again.stdout  # none were written


def _send_on_a_terminal(project: Path, *args: str, answer: bytes = b"n\n",
                        env: dict[str, str] | None = None) -> tuple[str, int]:
    """`mailer send ARGS` with a pseudo-terminal as stdin, stdout and stderr (what a person sees, in
    order); answers the confirmation prompt with `answer`. Returns (the terminal's text, exit code)."""
    import pty
    import select

    controller, terminal = pty.openpty()
    process = subprocess.Popen([*MAILER, "send", *args], cwd=project, env=env or process_env(), stdin=terminal,
                               stdout=terminal, stderr=terminal, close_fds=True)
    os.close(terminal)
    seen = b""
    try:
        while b"[y/N]" not in seen:
            ready, _, _ = select.select([controller], [], [], 30)
            assert ready, seen
            seen += os.read(controller, 4096)
        os.write(controller, answer)
        process.wait(30)
    finally:
        process.kill()
        os.close(controller)
    return seen.decode("utf-8", "replace"), process.returncode


@pytest.mark.slow  # a real `mailer` process on a pseudo-terminal (what a person sees is the process's)
def test_the_confirmation_names_the_issue_its_subject_and_its_audience(run, project):
    """On a terminal, `mailer send ISSUE` asks about the issue it resolved, not the argument typed."""
    for i in range(3):
        run("subscribers", "add", f"r{i}@example.org")
    prompt, code = _send_on_a_terminal(project, "donnees-ouvertes")
    assert f"Send {EXAMPLE_ISSUE} " in prompt and "Données ouvertes, trains de nuit" in prompt
    assert "through outbox to 3 subscriber(s)?" in prompt
    assert code != 0 and not (project / "outbox").exists()


@pytest.mark.slow  # a real `mailer` process on a pseudo-terminal, and a 20,000-word issue rendered four times
def test_send_prints_every_build_warning_before_its_confirmation_prompt(run, project):
    """Gmail clipping, a missing alt text, an insecure link: `build` warns, and so does `send`, before
    it asks (the same lines, in the same order); answering no sends nothing."""
    run("subscribers", "add", "a@example.org")
    long = " ".join(f"mot{i}" for i in range(20_000))
    write_issue(project, "2026-12-03-lourde", {"briefs.txt": f"--> ![](https://example.org/a.png) Une image.\n"
                                                             f"--> Voir [ici](http://example.net/page).\n--> {long}\n"},
                toml='subject = "Une lettre bien lourde"\ndate = 2026-12-03\n')
    built = [line for line in run("build", "lourde").stderr.splitlines() if line.startswith("warning: ")]
    assert any("Gmail clips" in w for w in built) and any("no alt text" in w for w in built)
    assert any("insecure link (http://): http://example.net/page" in w for w in built)
    seen, code = _send_on_a_terminal(project, "lourde")
    lines = seen.replace("\r\n", "\n").splitlines()
    prompt_at = next(i for i, line in enumerate(lines) if "[y/N]" in line)
    assert [line for line in lines[:prompt_at] if line.startswith("warning: ")] == built
    assert code != 0 and not (project / "outbox").exists()
    sent = run("send", "lourde", "--yes")  # without a prompt, the warnings still come first
    assert [line for line in sent.stderr.splitlines() if line.startswith("warning: ")] == built
    assert "sent 1 now" in sent.stdout


def test_a_scaffold_with_only_its_subject_written_is_held_and_refused_until_allow_draft(run, project):
    """Issue 10.12: `issue new`, the subject written and `draft = true` removed: the scheduler holds it
    (PLACEHOLDER, with every reason) and `send` refuses it in one line naming file:line; --allow-draft
    sends it as it is, after printing each placeholder as a warning."""
    run("subscribers", "add", "a@example.org")
    run("issue", "new", "rentree", "--date", "2026-12-10")
    folder = project / "issues" / "2026-12-10-rentree"
    toml = (folder / "issue.toml").read_text(encoding="utf-8").replace("Objet de la lettre", "La rentrée du rail")
    (folder / "issue.toml").write_text("\n".join(line for line in toml.split("\n") if "draft" not in line),
                                       encoding="utf-8")
    expected = [f"{folder / 'issue.toml'}:2: preheader is still the placeholder",
                f"{folder / 'briefs.txt'}:1: the intro is still the placeholder",
                f"{folder / 'briefs.txt'}:3: brief is still the placeholder 'Première brève.",
                f"{folder / 'briefs.txt'}:4: brief is still the placeholder 'Deuxième brève.'"]

    row = next(r for r in json.loads(run("schedule", "list", "--json").stdout)["issues"] if r["slug"] == folder.name)
    assert row["state"] == "placeholder" and row["ready"] is False and row["not_ready"] == "placeholder"
    assert len(row["warnings"]) == 4 and all(w.startswith(e) for w, e in zip(row["warnings"], expected))
    line = next(l for l in run("schedule", "list").stdout.splitlines() if l.startswith(folder.name))
    assert f"PLACEHOLDER: not sent by the scheduler: {expected[0]}" in line and "(and 3 more" in line

    refused = run("send", "rentree", "--yes", check_exit=3)
    assert refused.stdout == "" and len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.startswith(f"error: {expected[0]}") and "(and 3 more" in refused.stderr
    assert "--allow-draft" in refused.stderr and not (project / "outbox").exists()
    assert "never been sent" in run("status", "rentree", check_exit=4).stderr  # nothing frozen

    sent = run("send", "rentree", "--yes", "--allow-draft")
    warnings = [line for line in sent.stderr.splitlines() if line.startswith("warning: ")]
    assert [w for w in warnings if "placeholder" in w and any(e in w for e in expected)] == warnings
    assert len(warnings) == 4 and "sent 1 now" in sent.stdout


# ----- secrets stay out of what people read -------------------------------------------------------------
def test_verbose_output_never_shows_the_api_key_or_the_subscribers(run, project):
    from .sendgrid_server import SendGridServer

    key = "SG.k3yS3cr3t-abcdefgh.ijklmnopqrstuv0123456789"
    people = [f"lecteur{i}@example.org" for i in range(5)]
    for address in people:
        run("subscribers", "add", address, "--name", f"Lecteur {address[7]}")
    with SendGridServer(key) as server:
        env = {"MAILER_BACKEND": "sendgrid", "SENDGRID_API_KEY": key, "MAILER_SENDGRID_API_URL": server.url}
        result = run("-v", "send", EXAMPLE_ISSUE, "--yes", extra_env=env)
        assert len(server.recipients()) == 5
    output = result.stdout + result.stderr
    assert "DEBUG" in result.stderr  # -v is on
    for secret in (key, key[3:], key.split(".")[1], key.split(".")[2]):
        assert secret not in output
    assert "Authorization" not in output and "Bearer" not in output
    for address in people:
        assert address not in output
    assert "/u/" not in output  # no personal unsubscribe link either


def test_credentials_in_urls_never_reach_messages(run, project):
    run("subscribers", "add", "a@example.org")
    result = run("send", EXAMPLE_ISSUE, "--yes", check_exit=2,
                 extra_env={"MAILER_BACKEND": "sendgrid", "SENDGRID_API_KEY": "SG.x",
                            "MAILER_SENDGRID_API_URL": "https://mailer:hunter2@api.sendgrid.com"})
    assert "must not contain a user name or password" in result.stderr and "hunter2" not in result.stderr
    assert "https://mailer:***@api.sendgrid.com" in result.stderr


def test_a_send_that_cannot_build_its_messages_never_leaves_the_issue_half_started(run, project):
    """An internationalised sender domain (a real-world case): whatever the message builder makes of it
    — punycode, or a refusal — `send` either completes or refuses in one line with the issue untouched,
    never a traceback and never an issue stuck in `sending`."""
    run("subscribers", "add", "a@example.org")
    env = {"MAILER_FROM": "Médiathèque <lettre@médiathèque-exemple.fr>",
           "MAILER_BASE_URL": "https://lettres.médiathèque-exemple.fr"}
    result = run("send", EXAMPLE_ISSUE, "--yes", extra_env=env, check_exit=None)
    assert "Traceback" not in result.stderr
    status = run("status", EXAMPLE_ISSUE, "--json", check_exit=None)
    if result.returncode == 0:
        assert json.loads(status.stdout)["status"] == "sent"
    else:
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error:")
        assert status.returncode == 4  # never started: no ledger
        fixed = run("send", EXAMPLE_ISSUE, "--yes")  # with a plain domain it goes
        assert "sent 1 now" in fixed.stdout


# ----- `mailer status` without an issue: every ledger, newest first ------------------------------------
def test_status_without_an_issue_lists_every_ledger_newest_first(project, db_url, cli):
    """One line (and one JSON object) per issue with a ledger, ordered by its last activity; each
    object is exactly what `status ISSUE --json` says of that issue (a second code path: the oracle)."""
    import random
    from datetime import datetime, timedelta, timezone

    import sqlalchemy as sa

    from mailer.sending import dispatch
    from mailer.sending.prepare import prepare_send
    from mailer.config import load_settings
    from mailer.store.schema import deliveries
    from mailer.store import open_store

    env = {**BASE_ENV, "MAILER_DATABASE_URL": db_url}

    def invoke(*args: str, code: int = 0):
        return cli(*args, extra_env={"MAILER_DATABASE_URL": db_url}, check_exit=code)

    assert invoke("status").stdout.startswith("no issue sent yet")
    assert json.loads(invoke("status", "--json").stdout) == []
    for i in range(4):
        invoke("subscribers", "add", f"r{i}@example.org")
    slugs = [f"2026-12-0{i}-lettre-{i}" for i in range(1, 5)]
    for slug in slugs:
        write_issue(project, slug, {"briefs.txt": "--> Une brève.\n"}, toml=f'subject = "Lettre {slug[-1]}"\n')
    settings = load_settings(project, env=env)
    store = open_store(db_url)
    try:
        for slug in slugs[:2]:
            assert dispatch.send_issue(settings, store, slug).complete
        prepare_send(settings, store, slugs[2])  # frozen, all queued
        prepare_send(settings, store, slugs[3])
        rng = random.Random(1012)
        base = datetime(2026, 12, 1, 7, tzinfo=timezone.utc)
        hours = rng.sample(range(100), 8)
        expected_when = {}
        with store.begin() as conn:
            for index, slug in enumerate(slugs):
                row = store.issue_row(conn, slug)
                started, finished = base + timedelta(hours=hours[2 * index]), base + timedelta(hours=hours[2 * index + 1])
                values = {"started_at": started, "finished_at": finished if index < 2 else None}
                if index == 3:
                    values.update(status="paused", paused_reason="too many failures in a row")
                store.update_issue(conn, row.id, **values)
                expected_when[slug] = values["finished_at"] or started
            first_sent = store.issue_row(conn, slugs[0])
            conn.execute(sa.update(deliveries).where(deliveries.c.issue_id == first_sent.id,
                                                     deliveries.c.subscriber_id == 1).values(status="failed"))
    finally:
        store.close()
    order = sorted(slugs, key=lambda slug: expected_when[slug], reverse=True)

    overview = json.loads(invoke("status", "--json").stdout)
    assert [item["issue"] for item in overview] == order
    assert overview == [json.loads(invoke("status", slug, "--json").stdout) for slug in order]
    assert [datetime.fromisoformat(item["when"]) for item in overview] == [expected_when[slug] for slug in order]

    lines = invoke("status").stdout.splitlines()
    assert [line.split()[0] for line in lines] == order
    by_slug = {line.split()[0]: line for line in lines}
    assert "  sent  " in by_slug[slugs[0]] and "sent 3  failed 1  skipped 0  queued 0  of 4" in by_slug[slugs[0]]
    assert "sent 4  failed 0  skipped 0  queued 0  of 4" in by_slug[slugs[1]]
    assert "sending" in by_slug[slugs[2]] and "queued 4  of 4" in by_slug[slugs[2]]
    assert "paused" in by_slug[slugs[3]] and by_slug[slugs[3]].endswith("(too many failures in a row)")
    local = expected_when[slugs[1]].astimezone(settings.zone)
    assert f"{local:%Y-%m-%d %H:%M} {local.tzname()}" in by_slug[slugs[1]]
    assert "never been sent" in invoke("status", "nope", code=4).stderr


# ----- a project folder without its templates -----------------------------------------------------------
def test_missing_templates_name_the_templates_folder_and_hold_the_issue(run, project):
    """No templates/ (a fresh project folder): every command that would render names MAILER_TEMPLATES_DIR
    and its resolved path — not issue.toml, which names no template — and the scheduler shows the issue
    as unbuildable instead of READY; a template the issue does name is its issue.toml line's error."""
    import shutil

    shutil.rmtree(project / "templates")
    (project / "mailer.toml").write_text('[schedule]\ncron = "0 7 * * MON"\n', encoding="utf-8")
    run("subscribers", "add", "a@example.org")
    toml = project / "issues" / EXAMPLE_ISSUE / "issue.toml"
    for env, folder in (({}, project / "templates"), ({"MAILER_TEMPLATES_DIR": "gabarits"}, project / "gabarits")):
        built = run("build", EXAMPLE_ISSUE, extra_env=env, check_exit=2)
        lines = built.stderr.strip().splitlines()
        assert len(lines) == 1 and "unknown template" not in lines[0] and "issue.toml:" not in lines[0]
        assert f"MAILER_TEMPLATES_DIR, here {folder})" in lines[0] and "weekly.mjml.j2" in lines[0]
        refused = run("send", EXAMPLE_ISSUE, "--yes", extra_env=env, check_exit=2)
        assert refused.stderr.strip().splitlines() == lines and refused.stdout == ""
        info = json.loads(run("schedule", "list", "--json", extra_env=env).stdout)
        row = next(r for r in info["issues"] if r["slug"] == EXAMPLE_ISSUE)
        assert row["state"] == "unbuildable" and row["ready"] is False and row["not_ready"] == "unbuildable"
        assert row["warnings"][0] == lines[0].removeprefix("error: ")
        assert all(run_["issue"] is None for run_ in info["cadence"]["next_runs"])
        text = run("schedule", "list", extra_env=env).stdout
        line = next(l for l in text.splitlines() if l.startswith(EXAMPLE_ISSUE))
        assert "UNBUILDABLE: not sent by the scheduler" in line and "READY" not in line
    assert "never been sent" in run("status", EXAMPLE_ISSUE, check_exit=4).stderr  # nothing frozen

    shutil.copytree(Path(__file__).resolve().parent.parent / "templates", project / "templates")
    (project / "templates" / "weekly.txt.j2").unlink()  # half a template
    half = run("build", EXAMPLE_ISSUE, check_exit=2).stderr
    assert f"MAILER_TEMPLATES_DIR, here {project / 'templates'}) has no weekly.txt.j2" in half
    assert "weekly.mjml.j2" not in half
    toml.write_text(toml.read_text(encoding="utf-8") + 'template = "special"\n', encoding="utf-8")
    line = len(toml.read_text(encoding="utf-8").splitlines())
    named = run("build", EXAMPLE_ISSUE, check_exit=3).stderr.strip().splitlines()
    assert len(named) == 1 and f"{toml}:{line}: unknown template 'special': " in named[0]
    assert "has no special.mjml.j2 and no special.txt.j2" in named[0] and "(templates there: " in named[0]
    assert "weekly" in named[0].split("(templates there: ")[1]


# ----- the process around a command ----------------------------------------------------------------------
def test_a_command_leaves_the_process_it_ran_in_as_it_found_it(run, project):
    """`mailer.cli.main` run in a longer-lived process (these tests, an application calling it): the
    SIGTERM/SIGINT handlers a send or a worker installs, its logging handler and level, and its
    database connections are gone when the command ends, whether it succeeded or failed."""
    import logging
    import signal

    root = logging.getLogger()

    def process_state():
        return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), list(root.handlers), root.level

    database = project / "subscribers" / "subscribers.db"
    before = process_state()
    run("subscribers", "add", "a@example.org")
    for args, code in ((("send", EXAMPLE_ISSUE, "--yes"), 0), (("-v", "worker", "--once"), 0),
                       (("send", EXAMPLE_ISSUE, "--yes", "--rebuild"), 7), (("send", "no-such-issue", "--yes"), 4),
                       (("status", EXAMPLE_ISSUE), 0), (("subscribers", "add", "nope"), 2)):
        run(*args, check_exit=code)
        assert process_state() == before, args
        # SQLite removes its write-ahead log when the last connection to the file closes
        assert database.exists() and not database.with_name("subscribers.db-wal").exists(), args


# ----- a real `mailer` process, end to end ---------------------------------------------------------------
# Real processes stay where the behaviour is the process's: the terminal above, and here the installed
# console script as a user starts it (start-up, imports, exit codes and the streams of a real process,
# stdin not a terminal). Signals and crashes: test_crash.py; the scheduler and workers: test_scheduler.py,
# test_edition.py, test_waves.py.
@pytest.mark.slow  # five real processes: their start-up is what this test checks
def test_the_installed_mailer_command_imports_sends_reports_and_fails_in_one_line(project):
    mailer = Path(sys.executable).with_name("mailer")  # pyproject's [project.scripts] entry point

    def real(*args: str, code: int = 0) -> subprocess.CompletedProcess:
        result = subprocess.run([str(mailer), *args], cwd=project, env=process_env(), stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result

    assert "added 5" in real("subscribers", "import", "subscribers/example.csv").stdout
    refused = real("send", EXAMPLE_ISSUE, code=1)
    assert refused.stderr == "error: refusing to send without confirmation: add --yes\n" and refused.stdout == ""
    assert "sent 5 now (5 in all)" in real("send", EXAMPLE_ISSUE, "--yes").stdout
    assert len(list((project / "outbox" / EXAMPLE_ISSUE).glob("*.eml"))) == 5
    assert json.loads(real("status", EXAMPLE_ISSUE, "--json").stdout)["counts"]["sent"] == 5
    write_issue(project, "2026-12-03-casse", {"briefs.txt": "--> Bien.\n-->\n"})
    broken = real("build", "casse", code=3)
    assert broken.stderr.count("\n") == 1 and "2026-12-03-casse/briefs.txt:2: empty brief" in broken.stderr


def _typed(name: str, address: str) -> str:
    """A name-addr as a person types it: a name with specials in a quoted-string (RFC 5322 §3.2.4)."""
    if not name:
        return address
    if any(c in name for c in '",;:<>@()[]\\.'):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + f'" <{address}>'
    return f"{name} <{address}>"


def test_send_test_accepts_name_addr_with_non_ascii_quoted_and_comma_names(run, project):
    """`--test 'Ünï <you@example.com>'` and generated display names (quotes, commas, non-ASCII): each is
    delivered to its address, and the To field, read back with email.policy.default, gives the name typed."""
    import random
    rng = random.Random(int(os.environ.get("MAILER_TEST_SEED", "5322")))
    pieces = ["Ünï", "Dupont, Jean", 'Le "Chef"', "Zoë O'Brien", "李雷", "Ana", "x.y", "back\\slash", "Émile Zola"]
    entries = [("Ünï", "you@example.com")] + [(rng.choice(pieces) + rng.choice(["", " " + rng.choice(pieces)]),
                                              f"r{n}@example.net") for n in range(5)] + [("", "plain@example.net")]
    result = run("send", EXAMPLE_ISSUE, "--test", ", ".join(_typed(name, address) for name, address in entries))
    assert result.stdout.count(": sent") == len(entries), result.stdout + result.stderr
    for name, address in entries:
        raw = (project / "outbox" / EXAMPLE_ISSUE / f"test-{address}.eml").read_bytes()
        assert max(len(line) for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")) <= 998
        to = email.message_from_bytes(raw, policy=policy.default)["To"]
        [mailbox] = to.addresses
        assert (mailbox.display_name, mailbox.addr_spec) == (name, address), (name, str(to))
    bad = run("send", EXAMPLE_ISSUE, "--test", "Ünï <not-an-address>", check_exit=2)
    assert len(bad.stderr.strip().splitlines()) == 1 and "not-an-address" in bad.stderr, bad.stderr


@pytest.mark.parametrize("args", [
    ("subscribers", "add", "x@example.org", "--timezone", "Mars/Olympus"),
    ("subscribers", "add", "x@example.org", "--timezone", ""),
    ("subscribers", "add", "x@example.org", "--language", "tlh"),
    ("subscribers", "add", "not-an-address"),
    ("subscribers", "import", "people.csv", "--map", "Ville"),
    ("subscribers", "import", "people.csv", "--map", "pays=city"),
    ("subscribers", "import", "people.csv", "--map", "Ville=name", "--map", "Courriel=name"),
    ("subscribers", "import", "people.csv", "--encoding", "klingon-8"),
    ("subscribers", "import", "people.csv", "--max-errors", "-1"),
    ("subscribers", "import", "."),
], ids=lambda args: " ".join(args[1:]))
def test_an_invalid_option_of_subscribers_add_or_import_exits_2_on_one_line_and_writes_nothing(run, project, args):
    """The README's exit codes: 2 for a command line click refuses, an invalid address, and an option
    value that is invalid (the option named, nobody added or imported)."""
    (project / "people.csv").write_text("Courriel,Ville\na@example.org,Lyon\n", encoding="utf-8")
    result = run(*args, check_exit=2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and "Traceback" not in result.stderr
    assert len(lines) == 1 or lines[0].startswith("Usage:"), result.stderr  # ours: one line; click's: its usage
    assert run("subscribers", "export").stdout.count("@") == 0  # nobody added, nothing imported
