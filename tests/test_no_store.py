"""Only `init` and `harvest` make a store: the others refuse a home without one, and create nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.cli_common import NoStoreError

runner = CliRunner()
COMMANDS = [["status"], ["crop"], ["review", "stats"], ["snapshot", "list"], ["dedup"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command))
def test_a_missing_home_is_refused_and_not_created(tmp_path: Path, command: list[str]) -> None:
    home = tmp_path / "mistyped-home"
    result = runner.invoke(app, ["--home", str(home), *command])
    assert result.exit_code == 1
    assert isinstance(result.exception, NoStoreError)
    assert f"no store at {home}" in str(result.exception)
    assert f"animexpr --home {home} init" in str(result.exception)
    assert not home.exists()


def test_a_folder_without_a_store_gets_nothing_written(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--home", str(tmp_path), "status"])
    assert isinstance(result.exception, NoStoreError)
    assert list(tmp_path.iterdir()) == []


def test_the_default_home_message_says_how_to_choose_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ANIMEXPR_HOME", raising=False)
    monkeypatch.delenv("ANIMEXPR_DB", raising=False)
    result = runner.invoke(app, ["status"])
    assert isinstance(result.exception, NoStoreError)
    assert "the default home" in str(result.exception)
    assert "--home" in str(result.exception)
    assert list(tmp_path.iterdir()) == []


def test_init_makes_the_store_that_the_other_commands_then_use(tmp_path: Path) -> None:
    home = tmp_path / "new"
    assert runner.invoke(app, ["--home", str(home), "init"]).exit_code == 0
    result = runner.invoke(app, ["--home", str(home), "status", "--json"])
    assert result.exit_code == 0, result.output


def test_the_command_line_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    home = tmp_path / "nowhere"
    result = subprocess.run(
        [sys.executable, "-m", "animexpr", "--home", str(home), "status"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: no store at {home}; make one with: animexpr --home {home} init"
    ]
    assert not home.exists()
