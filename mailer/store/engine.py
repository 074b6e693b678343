"""Opening the database: the engine (SQLite pragmas, PostgreSQL pool) and Alembic migrations."""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..errors import ConfigError, MailerError
from .core import Store
from .segments import register_sqlite_functions


MIGRATIONS_DIR = Path(__file__).with_name("migrations")


HEAD_REVISION = "0010"

_migrated: set[str] = set()


_migrate_lock = threading.Lock()


# ----- opening and migrating -------------------------------------------------------------------
def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()
            register_sqlite_functions(dbapi_conn)  # the segments' case folding and comparisons

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    try:
        return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    except (ImportError, sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
        raise ConfigError(f"MAILER_DATABASE_URL {url.split('@')[-1]!r}: {exc} (for PostgreSQL: pip install 'mailer[postgres]')") from None


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine) -> str | None:
    """Apply pending migrations; returns the revision the database was at before."""
    before = current_revision(engine)
    if before == HEAD_REVISION:
        return before
    from alembic import command  # only when there is something to migrate: ~100 ms of imports
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    return before


def open_store(url: str, *, migrate: bool = True) -> Store:
    """Open the database, creating and migrating it on first use."""
    engine = make_engine(url)
    if migrate and url not in _migrated:
        with _migrate_lock:
            try:
                upgrade(engine)
            except sa.exc.OperationalError as exc:
                raise MailerError(f"cannot open the database {_safe_url(url)}: {exc.orig}") from None
            _migrated.add(url)
    return Store(engine)


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url
