"""Engines, sessions and schema versions.

Every command opens the database through `open_db`, which creates a new database, upgrades an older one
(logging what it does) and refuses one written by a newer animexpr, a database of another program, and any
database it cannot open, each with a one-line `DatabaseOpenError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from animexpr.errors import ConfigError, DatabaseOpenError, SchemaError, first_line

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the migrations folder has no revision"
    return head


def known_revisions() -> set[str]:
    return {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def make_engine(url: str) -> Engine:
    """An engine with the pragmas this project relies on (SQLite: foreign keys, WAL, busy timeout)."""
    parsed = _parse_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _prepare_sqlite_file(Path(parsed.database))
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(url, **kwargs)
    except (NoSuchModuleError, ArgumentError, ImportError) as exc:
        raise ConfigError(
            f"db: cannot use {safe_url(parsed)} ({first_line(exc)}); "
            "expected sqlite:///PATH or postgresql+psycopg://USER@HOST/NAME"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"db: {url!r} is not a database URL like sqlite:///PATH or postgresql://..."
        ) from None


def safe_url(url: URL | str) -> str:
    """The URL for messages: never with its password."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.render_as_string(hide_password=True)


def _prepare_sqlite_file(path: Path) -> None:
    """Say in one line why a SQLite file cannot be there, before SQLite says it less clearly."""
    if path.is_dir():
        raise DatabaseOpenError(f"db: {path} is a folder, not a SQLite database file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseOpenError(f"db: cannot create the folder {path.parent} ({exc.strerror})") from None
    if not os.access(path.parent, os.W_OK):
        # SQLite (in WAL mode) writes beside the database even to read it.
        raise DatabaseOpenError(f"db: the folder {path.parent} is read-only; animexpr needs to write there")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config()
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def ensure_schema(engine: Engine) -> None:
    """Bring the schema to this version's head, or refuse a database from a newer animexpr."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is not None and current not in known_revisions():
        raise SchemaError(
            f"the database is at schema revision {current}, newer than this animexpr knows (head {head}); "
            "upgrade animexpr (pip install -U animexpr) or point --db at another database"
        )
    if current is None:
        log.info("creating the database schema (revision %s)", head)
    else:
        log.warning("upgrading the database schema from revision %s to %s", current, head)
    upgrade_schema(engine)


def refuse_foreign_database(engine: Engine) -> None:
    """A database with tables but no animexpr schema belongs to another program: never fill it with ours."""
    if current_revision(engine) is not None:
        return
    tables = sorted(inspect(engine).get_table_names())
    if tables:
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise DatabaseOpenError(
            f"db: {safe_url(engine.url)} holds tables of another program ({shown}) and no animexpr schema; "
            "point --db at an empty database or an animexpr one"
        )


def open_db(url: str) -> Engine:
    """An engine on an up-to-date schema; `DatabaseOpenError` (one line) when it cannot be opened or used."""
    engine = make_engine(url)
    try:
        refuse_foreign_database(engine)
        ensure_schema(engine)
    except DBAPIError as exc:
        engine.dispose()
        raise DatabaseOpenError(f"db: cannot open {safe_url(engine.url)}: {first_line(exc)}") from None
    except BaseException:
        engine.dispose()
        raise
    return engine


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits when the block ends normally and rolls back otherwise."""
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session, session.begin():
        yield session
