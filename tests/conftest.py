"""Shared fixtures: a throw-away project folder, settings, and a real store on SQLite or PostgreSQL.

PostgreSQL variants use MAILER_TEST_DATABASE_URL (`.ci/run` always sets it) and a fresh schema per
test, so parallel or repeated runs never collide; without it they are skipped with that reason.
SQLite stores are copies of one file migrated once per session (`migrated_sqlite`); `empty_db_url`
gives an empty database for the tests of the migrations themselves.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sqlite3
import uuid
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from mailer.config import Settings, load_settings
from mailer.store import Store, open_store

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_ISSUE = "2026-11-26-donnees-ouvertes"
PG_URL = os.environ.get("MAILER_TEST_DATABASE_URL", "")
ARTIFACTS = REPO / "test-artifacts"

BASE_ENV = {
    "MAILER_NAME": "Le Fil du jeudi",
    "MAILER_LANGUAGE": "fr",
    "MAILER_FROM": "Le Fil du jeudi <lettre@example.org>",
    "MAILER_BASE_URL": "https://lettre.example.org",
    "MAILER_POSTAL_ADDRESS": "12 rue des Exemples, 75011 Paris",
    # A strong key made afresh for each test session: no key usable with a real backend is published
    # in the repository (mailer refuses published example keys). Subprocesses get it through BASE_ENV.
    "MAILER_SECRET_KEY": secrets.token_urlsafe(32),
    "MAILER_TIMEZONE": "Europe/Paris",
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with the shipped templates and example issue, ready to send (no mailer.toml)."""
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    shutil.copytree(REPO / "issues" / EXAMPLE_ISSUE, tmp_path / "issues" / EXAMPLE_ISSUE)
    # the shipped example is a draft (so that no scheduler sends it to a real list): tests send it
    # as an editor would once it is ready, without its `draft = true` line
    example = tmp_path / "issues" / EXAMPLE_ISSUE / "issue.toml"
    example.write_text(re.sub(r"(?m)^draft = true.*\n", "", example.read_text(encoding="utf-8")), encoding="utf-8")
    shutil.copytree(REPO / "subscribers", tmp_path / "subscribers",
                    ignore=shutil.ignore_patterns("*.db", "*.db-*", ".secret_key"))
    return tmp_path


@pytest.fixture
def cli(project: Path):
    """`cli(*ARGS, extra_env=None, check_exit=0, stdin="", cwd=project)`: `mailer ARGS` in this process
    (tests/cli_support.py), the exit code checked (None: any); returns stdout, stderr, returncode."""
    from .cli_support import checked, invoke

    def run(*args: str, extra_env: dict | None = None, check_exit: int | None = 0, stdin: str = "",
            cwd: Path | None = None):
        return checked(invoke(args, cwd or project, extra_env, stdin), check_exit)

    return run


@pytest.fixture
def make_settings(project: Path):
    def factory(**overrides) -> Settings:
        env = {**BASE_ENV, **{k: v for k, v in overrides.items() if k.isupper()}}
        return load_settings(project, env=env, **{k: v for k, v in overrides.items() if not k.isupper()})
    return factory


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings()


def _pg_schema_url(schema: str) -> str:
    separator = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{separator}options={quote(f'-csearch_path={schema}')}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast-sample", action="store_true",
                     help="generated-input tests draw a smaller sample (`make test-fast`); `make test` draws the full one")


@pytest.fixture
def sample_size(request) -> Callable[[int], int]:
    """`sample_size(full)`: how many generated inputs a test draws: `full`, or with --fast-sample (`make
    test-fast`) an eighth of it, never fewer than 2 (the same seed, so the first ones are the same)."""
    fast = request.config.getoption("--fast-sample")
    return lambda full: max(2, full // 8) if fast else full


MEASURED_SLOW = Path(__file__).with_name("measured_slow.txt")  # written by `make fast-list` (tests/slow_list.py)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every PostgreSQL variant (of the `db_url` or `empty_db_url` fixture, or a test's own `db_url`
    parameter) carries the `postgresql` mark, so that `make test-fast` can leave them to `make test`;
    the tests listed in tests/measured_slow.txt (measured at >= 0.1 s each) carry the `slow` mark."""
    measured = {line for line in MEASURED_SLOW.read_text(encoding="utf-8").splitlines()
                if line and not line.startswith("#")} if MEASURED_SLOW.exists() else set()
    for item in items:
        params = getattr(item, "callspec", None) and item.callspec.params
        if params and "postgresql" in (params.get("db_url"), params.get("empty_db_url")):
            item.add_marker(pytest.mark.postgresql)
        if item.nodeid in measured:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory) -> Path:
    """A SQLite file at the head revision, migrated once per session (per xdist worker) by the real
    migrations through `open_store`; the fixtures below give each test its own copy of it, so that a
    test does not pay the ~50 ms (CPU) of running every migration again."""
    path = tmp_path_factory.mktemp("migrated") / "subscribers.db"
    open_store(f"sqlite:///{path}").close()
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the file itself, none in -wal
    connection.close()
    return path


def _migrated_copy(template: Path, folder: Path) -> str:
    """The URL of a copy of `template` as folder/subscribers.db (the test's own database)."""
    path = folder / "subscribers.db"
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def _database_url(request, tmp_path: Path, *, migrated: bool):
    if request.param == "sqlite":
        yield _migrated_copy(request.getfixturevalue("migrated_sqlite"), tmp_path) if migrated \
            else f"sqlite:///{tmp_path / 'subscribers.db'}"
        return
    if not PG_URL:
        pytest.skip("MAILER_TEST_DATABASE_URL is unset: PostgreSQL variant skipped (.ci/run sets it)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _pg_schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path):
    """A database URL of the test's own: a SQLite file already at the head revision (a copy of
    `migrated_sqlite`), or a fresh PostgreSQL schema (migrated by the first `open_store`). Either way
    the schema is the migrations' own, and no other test sees this database."""
    yield from _database_url(request, tmp_path, migrated=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request, tmp_path: Path):
    """A database URL for an empty database (a new SQLite file, or a fresh PostgreSQL schema): the
    first `open_store` runs every migration (the migration tests)."""
    yield from _database_url(request, tmp_path, migrated=False)


@pytest.fixture
def store(db_url: str) -> Store:
    handle = open_store(db_url)
    yield handle
    handle.close()


@pytest.fixture
def sqlite_store(tmp_path: Path, migrated_sqlite: Path) -> Store:
    """A store on the test's own SQLite file (tmp_path/subscribers.db) at the head revision."""
    handle = open_store(_migrated_copy(migrated_sqlite, tmp_path))
    yield handle
    handle.close()


def write_issue(root: Path, slug: str, files: dict[str, str | bytes], toml: str | None = None) -> Path:
    """Create issues/<slug>/ with an issue.toml (default subject) and the given files."""
    folder = root / "issues" / slug
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "issue.toml").write_text(toml if toml is not None else 'subject = "Le Fil de la semaine"\ndate = 2026-11-26\n',
                                       encoding="utf-8")
    for name, content in files.items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder
