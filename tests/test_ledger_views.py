"""`mailer schedule list` (text and --json) and `mailer status` (text and --json) for one fixture
holding a finished, a paused, a partly sent and a scheduled issue, against outputs recorded in
tests/data/ledger_views/ (MAILER_RECORD_LEDGER_VIEWS=1 rewrites them) before the ledger's wording moved from scheduling to the command line:
the move changed no byte a user sees."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailer.store.schema import editions, issues

from .conftest import write_issue

DATA = Path(__file__).resolve().parent / "data" / "ledger_views"
BRIEFS = {"briefs.txt": "--> Une brève, avec un [lien](https://example.org).\n"}
NOW = "2026-11-20T10:00"  # Europe/Paris (BASE_ENV's MAILER_TIMEZONE)
ISSUES = {  # slug → issue.toml's extra line; the first four are sent
    "2026-11-18-finished": "", "2026-11-08-paused": "", "2026-11-15-partly": "", "2026-11-01-older": "",
    "2026-12-24-scheduled": "send_at = 2026-12-24T07:00:00+01:00\n",
}
OUTPUTS = {  # data file → the command printing it
    "schedule_list.txt": ("schedule", "list", "--now", NOW),
    "schedule_list.json": ("schedule", "list", "--now", NOW, "--json"),
    "status.txt": ("status",),
    "status.json": ("status", "--json"),
    "status_partly.txt": ("status", "2026-11-15-partly"),
}


def _fixture(project: Path, cli, db_url: str) -> None:
    """A weekly cadence; five people; four issues sent, then made finished (one failed, one skipped),
    paused by a human-held reason, partly sent (two queued again) and finished long ago (listed
    only by --json); one scheduled ahead. The ledger's moments are set to fixed ones (the outputs
    show them)."""
    import shutil
    shutil.rmtree(project / "issues")
    (project / "mailer.toml").write_text('[schedule]\ncron = "0 7 * * MON"\n', encoding="utf-8")
    for slug, extra in ISSUES.items():
        write_issue(project, slug, BRIEFS, f'subject = "Le Fil {slug[11:]}"\ndate = {slug[:10]}\n{extra}')
    for i in range(5):
        cli("subscribers", "add", f"p{i}@example.org", "--name", f"P{i}")
    for slug in list(ISSUES)[:4]:
        cli("send", slug, "--yes")
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            ids = dict(conn.execute(sa.text("SELECT slug, id FROM issues")).all())
            update = "UPDATE deliveries SET status = :status WHERE issue_id = :issue AND subscriber_id IN ({})"
            finished, paused, partly = (ids[slug] for slug in list(ISSUES)[:3])
            conn.execute(sa.text(update.format("1")), {"status": "failed", "issue": finished})
            conn.execute(sa.text(update.format("2")), {"status": "skipped", "issue": finished})
            conn.execute(sa.text(update.format("3, 4, 5")), {"status": "queued", "issue": paused})
            conn.execute(sa.text(update.format("4, 5")), {"status": "queued", "issue": partly})
            conn.execute(sa.text("UPDATE issues SET status = 'paused', finished_at = NULL, paused_reason = "
                                 "'too many failures (3 of the last 3)' WHERE id = :id"), {"id": paused})
            conn.execute(sa.text("UPDATE issues SET status = 'sending', finished_at = NULL WHERE id = :id"),
                         {"id": partly})
            for day, issue in ((18, finished), (8, paused), (15, partly), (1, ids["2026-11-01-older"])):
                at = datetime(2026, 11, day, 6, 0, tzinfo=timezone.utc)  # through the columns' own types
                conn.execute(issues.update().where(issues.c.id == issue).values(frozen_at=at, started_at=at))
                conn.execute(issues.update().where(issues.c.id == issue, issues.c.finished_at.is_not(None))
                             .values(finished_at=at + timedelta(minutes=5)))
                conn.execute(editions.update().where(editions.c.issue_id == issue).values(created_at=at))
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_schedule_list_and_status_print_what_they_printed(project: Path, cli, db_url: str, name: str) -> None:
    """The same bytes on SQLite and PostgreSQL."""
    env = {"MAILER_DATABASE_URL": db_url}
    _fixture(project, lambda *args: cli(*args, extra_env=env), db_url)
    output = cli(*OUTPUTS[name], extra_env=env).stdout
    if os.environ.get("MAILER_RECORD_LEDGER_VIEWS") == "1":  # recording, by hand: commit what it wrote
        (DATA / name).write_text(output, encoding="utf-8")
    assert output == (DATA / name).read_text(encoding="utf-8")
