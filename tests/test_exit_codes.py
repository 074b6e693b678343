"""Exit codes and ISSUE once its folder is gone: every code the command line can return is in the
README's list; the short form of ISSUE (`donnees-ouvertes`) finds the ledger's issue when the folder is
gone; a send from before editions whose folder is gone says so and exits 9, nothing requeued."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from mailer.cli.main import main
from mailer.config import load_settings
from mailer.sending.prepare import prepare_send
from mailer.store import open_store

from .conftest import BASE_ENV, EXAMPLE_ISSUE
from .test_crash import _populate as populate
from .test_edition import leave_a_send_from_before_editions

ROOT = Path(__file__).resolve().parent.parent
SHORT = EXAMPLE_ISSUE.split("-", 3)[3]  # "donnees-ouvertes"


def code_exit_codes() -> set[int]:
    """What the command line can exit with: every `exit_code` of mailer/errors.py, every number given
    to `sys.exit`/`os._exit` in mailer/ (handle_errors' 130 among them), 0, and click's usage error 2."""
    codes = {0, 2}
    for node in ast.walk(ast.parse((ROOT / "mailer" / "errors.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == ["exit_code"]:
            codes.add(node.value.value)
    for path in (ROOT / "mailer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("exit", "_exit") and node.args:
                codes |= {n.value for n in ast.walk(node.args[0])
                          if isinstance(n, ast.Constant) and type(n.value) is int}
    return codes


def readme_exit_codes() -> set[int]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    paragraph = text[text.index("\nExit codes, "):].split("\n\n")[0]
    return {int(code) for code in re.findall(r"(?:: |; )(\d{1,3}) ", paragraph.replace("\n", " "))}


def test_every_exit_code_of_the_command_line_is_in_the_readme():
    assert {1, 2, 3, 4, 5, 6, 7, 8, 9, 130} <= code_exit_codes()
    assert readme_exit_codes() == code_exit_codes()


def _cli(project: Path, monkeypatch, settings, *args: str):
    monkeypatch.chdir(project)
    return CliRunner().invoke(main, list(args), env={**BASE_ENV, "MAILER_DATABASE_URL": settings.database_url},
                              catch_exceptions=False)


def test_the_short_form_of_issue_finds_the_ledgers_issue_once_the_folder_is_gone(
        store, db_url, project, make_settings, monkeypatch):
    settings = make_settings(database_url=db_url)
    populate(store, project, 4)
    prepare_send(settings, store, EXAMPLE_ISSUE)  # frozen, nothing sent yet
    shutil.rmtree(project / "issues" / EXAMPLE_ISSUE)
    status = _cli(project, monkeypatch, settings, "status", SHORT)
    assert status.exit_code == 0 and status.output.startswith(f"{EXAMPLE_ISSUE}: sending"), status.output
    sent = _cli(project, monkeypatch, settings, "send", SHORT, "--yes")
    assert sent.exit_code == 0, sent.output
    assert len(list((settings.outbox_dir / EXAMPLE_ISSUE).glob("*.eml"))) == 4

    with store.begin() as conn:  # a second ledger issue ending in "-donnees-ouvertes": ambiguous
        store.ensure_issue(conn, slug=f"2026-12-03-{SHORT}", subject="Autre", list_name=None, web_html=None,
                           issue_date="2026-12-03")
    ambiguous = _cli(project, monkeypatch, settings, "send", SHORT, "--yes")
    assert ambiguous.exit_code == 4
    assert ambiguous.output.strip() == (f"error: issue '{SHORT}' is ambiguous: 2026-11-26-{SHORT}, 2026-12-03-{SHORT}")
    unknown = _cli(project, monkeypatch, settings, "send", "nulle-part", "--yes")
    assert unknown.exit_code == 4 and unknown.output.count("\n") == 1 and "no issue 'nulle-part'" in unknown.output


@pytest.mark.parametrize("command", [["worker", "--once"], ["send", EXAMPLE_ISSUE, "--yes"], ["send", SHORT, "--yes"]],
                         ids=["worker", "send", "send-short"])
def test_a_send_from_before_editions_whose_folder_is_gone_says_so_and_exits_9(tmp_path, project, monkeypatch,
                                                                               command):
    settings = load_settings(project, env={**BASE_ENV, "MAILER_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"})
    leave_a_send_from_before_editions(settings)  # 2 sent, 4 queued, no edition
    shutil.rmtree(project / "issues" / EXAMPLE_ISSUE)

    def ledger() -> list:
        with open_store(settings.database_url).engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(
                "SELECT d.id, d.status, d.attempts, d.claimed_by, d.updated_at, i.status, i.paused_reason, "
                "(SELECT count(*) FROM editions) FROM deliveries d JOIN issues i ON i.id = d.issue_id ORDER BY d.id"))]

    before = ledger()
    result = _cli(project, monkeypatch, settings, *command)
    assert result.exit_code == 9, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert f"{EXAMPLE_ISSUE}: cannot resume" in errors[0] and str(settings.issues_dir / EXAMPLE_ISSUE) in errors[0]
    assert "4 recipient(s) left" in errors[0] and "nothing was requeued" in errors[0]
    if command[0] == "worker":
        assert "worker stopped: 0 sent" in result.output
    assert ledger() == before  # nothing requeued, claimed, paused or frozen
    assert not (settings.outbox_dir / EXAMPLE_ISSUE).exists()
