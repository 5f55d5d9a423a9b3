"""Databases and homes that cannot be used: one line each, through the real command line, nothing written.

A home without a store is refused by every command but `init` (and `harvest`), so the database errors are
shown through `init`, which must open the database.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect
from tests.test_cli import run_cli

from animexpr.db.identity import STORE_ID_FILE, bind_store
from animexpr.db.session import open_db
from animexpr.errors import DatabaseOpenError


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def make_animexpr_db(tmp_path: Path) -> Path:
    home = tmp_path / "made"
    assert run_cli(home, "init").returncode == 0
    return home / "animexpr.sqlite3"


def test_a_text_file_as_the_database(tmp_path: Path) -> None:
    db = tmp_path / "notes.txt"
    db.write_text("shopping list\n" * 100)
    result = run_cli(tmp_path / "home", "--db", sqlite_url(db), "init")
    assert_one_line_error(result, str(db), "not a database")
    assert db.read_text() == "shopping list\n" * 100


def test_a_truncated_sqlite_file(tmp_path: Path) -> None:
    whole = make_animexpr_db(tmp_path).read_bytes()
    db = tmp_path / "truncated.sqlite3"
    db.write_bytes(whole[:3000])
    assert_one_line_error(run_cli(tmp_path / "home", "--db", sqlite_url(db), "init"), str(db))


def test_a_folder_as_the_database(tmp_path: Path) -> None:
    folder = tmp_path / "folder.sqlite3"
    folder.mkdir()
    result = run_cli(tmp_path / "home", "--db", sqlite_url(folder), "init")
    assert_one_line_error(result, "is a folder")


def test_an_unknown_database_kind_in_the_settings_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "animexpr.toml").write_text('db = "notadb://x"\n')
    assert_one_line_error(run_cli(home, "status"), "notadb://x", "expected sqlite:///PATH")


def test_an_unreachable_postgresql_hides_the_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://someone:hunter2@127.0.0.1:1/animexpr"
    result = run_cli(tmp_path / "home", "--db", url, "init")
    assert_one_line_error(result, "127.0.0.1", "***")
    assert "hunter2" not in result.stderr + result.stdout


def test_home_pointing_at_a_file(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    assert_one_line_error(run_cli(not_a_folder, "status"), "is a file, not a folder")
    assert not_a_folder.read_text() == "x"


@pytest.fixture
def read_only_home(tmp_path: Path) -> Iterator[Path]:
    """A home on a read-only bind mount (file modes do not stop root; a read-only mount does)."""
    source, mounted = tmp_path / "source", tmp_path / "mounted"
    assert run_cli(source, "init").returncode == 0
    mounted.mkdir()
    made = subprocess.run(["mount", "--bind", str(source), str(mounted)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip("cannot bind-mount here (needs root); a read-only home cannot be made")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mounted)], check=True)
        yield mounted
    finally:
        subprocess.run(["umount", str(mounted)], check=False)


def test_a_read_only_home(read_only_home: Path) -> None:
    for command in (["status"], ["status", "--json"], ["init"]):
        assert_one_line_error(run_cli(read_only_home, *command), "read-only")


def test_a_foreign_sqlite_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "other-program.sqlite3"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE notes (body TEXT)")
    result = run_cli(tmp_path / "home", "--db", sqlite_url(db), "init")
    assert_one_line_error(result, "another program", "notes")
    assert inspect(create_engine(sqlite_url(db))).get_table_names() == ["notes"]


def test_two_homes_on_one_database_are_refused(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    db_option = ["--db", sqlite_url(tmp_path / "shared.sqlite3")]
    assert run_cli(first, *db_option, "init").returncode == 0
    result = run_cli(second, *db_option, "init")
    assert_one_line_error(result, f"belongs to the store at {first.resolve()}", str(second))
    assert not (second / STORE_ID_FILE).exists()
    assert run_cli(first, *db_option, "status").returncode == 0


def test_a_moved_home_keeps_its_database(tmp_path: Path) -> None:
    db_option = ["--db", sqlite_url(tmp_path / "kept.sqlite3")]
    assert run_cli(tmp_path / "before", *db_option, "init").returncode == 0
    (tmp_path / "before").rename(tmp_path / "after")
    assert run_cli(tmp_path / "after", *db_option, "status").returncode == 0


@pytest.mark.postgres
def test_two_homes_on_one_postgresql_database_are_refused(postgres_url: str, tmp_path: Path) -> None:
    engine = open_db(postgres_url)
    try:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        store_id = bind_store(engine, tmp_path / "a")
        assert bind_store(engine, tmp_path / "a") == store_id
        with pytest.raises(DatabaseOpenError, match="belongs to the store"):
            bind_store(engine, tmp_path / "b")
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_foreign_postgresql_database_is_refused(postgres_url: str) -> None:
    other = create_engine(postgres_url)
    with other.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE invoices (id integer)")
    other.dispose()
    with pytest.raises(DatabaseOpenError, match="another program"):
        open_db(postgres_url)
