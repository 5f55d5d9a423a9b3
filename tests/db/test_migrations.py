"""Migrations from empty to head, no drift between models and migrations, older and newer databases."""

from __future__ import annotations

import logging

import pytest
from alembic import command
from sqlalchemy import inspect, text

from animexpr.db.models import Base
from animexpr.db.session import (
    alembic_config,
    current_revision,
    ensure_schema,
    head_revision,
    make_engine,
    open_db,
    upgrade_schema,
)
from animexpr.errors import SchemaError


def test_empty_database_is_migrated_to_head_with_every_table(any_db_url: str) -> None:
    engine = open_db(any_db_url)
    assert current_revision(engine) == head_revision()
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_models_and_migrations_do_not_drift(any_db_url: str) -> None:
    engine = open_db(any_db_url)
    cfg = alembic_config()
    with engine.connect() as connection:
        cfg.attributes["connection"] = connection
        command.check(cfg)  # raises when autogenerate would find a change
    engine.dispose()


def test_older_database_is_upgraded_with_a_message(any_db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(any_db_url)
    upgrade_schema(engine, "0001")
    if head_revision() == "0001":
        # Simulate an older database by removing the version mark: it is then re-created from scratch.
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE alembic_version"))
            for table in reversed(Base.metadata.sorted_tables):
                connection.execute(text(f"DROP TABLE {table.name}"))
    with caplog.at_level(logging.INFO, logger="animexpr"):
        ensure_schema(engine)
    assert current_revision(engine) == head_revision()
    assert any("schema" in record.getMessage() for record in caplog.records)
    engine.dispose()


def test_newer_database_is_refused(any_db_url: str) -> None:
    engine = open_db(any_db_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'ffffffffffff'"))
    with pytest.raises(SchemaError, match="newer than this animexpr"):
        ensure_schema(engine)
    engine.dispose()


def test_sqlite_connections_enforce_foreign_keys_and_use_wal(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() > 0
