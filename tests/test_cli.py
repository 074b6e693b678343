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

from .conftest import BASE_ENV, EXAMPLE_ISSUE, write_issue

MAILER = [sys.executable, "-m", "mailer.cli"]


@pytest.fixture
def run(project: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILER_", "SENDGRID_"))}
    env.update(BASE_ENV)

    def invoke(*args: str, extra_env: dict | None = None, check_exit: int | None = 0, stdin: str = "") -> subprocess.CompletedProcess:
        result = subprocess.run([*MAILER, *args], cwd=project, env={**env, **(extra_env or {})}, input=stdin,
                                capture_output=True, text=True, timeout=60)
        if check_exit is not None:
            assert result.returncode == check_exit, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result

    return invoke


def test_build_writes_three_files_and_reports(run, project):
    result = run("build", "donnees-ouvertes", "--out", "sortie")
    assert "built 2026-11-26-donnees-ouvertes" in result.stdout and "6 briefs" in result.stdout
    message = email.message_from_bytes((project / "sortie" / "email.eml").read_bytes(), policy=policy.default)
    assert message.is_multipart() and message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert (project / "sortie" / "email.html").stat().st_size > 10_000
    assert "Bonjour Camille Exemple," in (project / "sortie" / "email.txt").read_text(encoding="utf-8")


def test_bad_brief_is_one_line_error_naming_file_and_line(run, project):
    write_issue(project, "2026-12-03-casse", {"briefs.txt": "--> Bien.\n-->\n"})
    result = run("build", "casse", check_exit=3)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ") and "2026-12-03-casse/briefs.txt:2: empty brief" in lines[0]


@pytest.mark.slow  # > 2 s: several CLI processes
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


@pytest.mark.slow  # > 2 s: several CLI processes
def test_export_to_file_and_stdout(run, project):
    run("subscribers", "import", "subscribers/example.csv")
    run("subscribers", "export", "out.csv")
    exported = (project / "out.csv").read_text(encoding="utf-8")
    assert exported.splitlines()[0].startswith("email,name,language,status")
    assert exported == run("subscribers", "export").stdout
    assert len(exported.strip().splitlines()) == 6


@pytest.mark.slow  # > 2 s: several CLI processes
def test_send_then_status_then_resend_sends_nothing_twice(run, project):
    run("subscribers", "import", "subscribers/example.csv")
    first = run("send", EXAMPLE_ISSUE, "--yes")
    assert "sent 5 now (5 in all)" in first.stdout
    files = sorted((project / "outbox" / EXAMPLE_ISSUE).glob("*.eml"))
    assert len(files) == 5
    status = json.loads(run("status", "donnees-ouvertes", "--json").stdout)
    assert status["counts"]["sent"] == 5 and status["status"] == "sent"
    again = run("send", EXAMPLE_ISSUE, "--yes")
    assert "sent 0 now (5 in all)" in again.stdout
    assert sorted((project / "outbox" / EXAMPLE_ISSUE).glob("*.eml")) == files


def test_send_refuses_without_confirmation_when_not_interactive(run):
    result = run("send", EXAMPLE_ISSUE, check_exit=1)
    assert "add --yes" in result.stderr


@pytest.mark.slow  # > 2 s: several CLI processes
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


@pytest.mark.slow  # > 2 s: several CLI processes
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
