"""Output that is not a terminal (CI, `| tee`, a log file) keeps whole lines and still reports progress."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from typer.testing import CliRunner

from animexpr import cli_common
from animexpr.cli import app
from animexpr.cli_common import LOG_COLUMNS, LogFriendlyConsole, ProgressBars

runner = CliRunner()  # its output is not a terminal


def _log_console(**kwargs: float) -> tuple[LogFriendlyConsole, io.StringIO]:
    out = io.StringIO()
    return LogFriendlyConsole(file=out, _environ={}, **kwargs), out


def test_status_keeps_table_headers_and_a_long_home_path_whole(tmp_path: Path) -> None:
    home = tmp_path / ("a-home-folder-whose-path-is-longer-than-eighty-columns-" * 2)
    assert runner.invoke(app, ["--home", str(home), "init"]).exit_code == 0
    result = runner.invoke(app, ["--home", str(home), "status"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith(f"home {home}  database sqlite:///") for line in lines)
    header = next(line for line in lines if "class" in line and "posts" in line)
    for column in ("downloaded", "skipped", "failed", "pending", "accepted", "rejected", "augmented"):
        assert column in header
    assert "…" not in result.output


def test_log_lines_are_whole_and_not_padded(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = runner.invoke(app, ["--home", str(home), "init"])
    assert result.exit_code == 0
    log_lines = [line for line in result.output.splitlines() if line.startswith("INFO")]
    assert log_lines
    assert all(line == line.rstrip() for line in log_lines)
    assert "creating the database schema (revision" in log_lines[0]


def test_a_console_that_is_not_a_terminal_is_wide_and_draws_short_rules() -> None:
    console, out = _log_console()
    assert not console.is_terminal
    assert console.width == LOG_COLUMNS
    title = "$ animexpr --home " + "/a/long/path" * 20 + " train --snapshot demo"
    console.rule(f"[bold]{title}", align="left")
    assert out.getvalue() == f"── {title}\n"


def test_a_terminal_console_is_left_as_rich_makes_it() -> None:
    out = io.StringIO()
    console = LogFriendlyConsole(file=out, force_terminal=True, width=80, _environ={})
    console.rule("title")
    assert console.width == 80
    assert len(out.getvalue().splitlines()[0]) > 70  # the usual rule, as wide as the terminal


def test_columns_still_set_the_width_of_a_log() -> None:
    console = LogFriendlyConsole(file=io.StringIO(), _environ={"COLUMNS": "120"})
    assert console.width == 120


def test_progress_prints_a_plain_line_every_few_seconds_when_not_a_terminal() -> None:
    console, out = _log_console(progress_log_seconds=0.05)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
    ) as bar:
        task = bar.add_task("downloading", total=10)
        bar.update(task, completed=3)
        time.sleep(0.4)
    lines = [line for line in out.getvalue().splitlines() if "downloading" in line]
    assert len(lines) >= 3  # the periodic lines, and rich's own final one
    assert all("3/10" in line for line in lines)


def test_progress_on_a_terminal_prints_no_extra_lines() -> None:
    out = io.StringIO()
    console = LogFriendlyConsole(
        file=out, force_terminal=True, width=80, progress_log_seconds=0.05, _environ={}
    )
    with Progress(TextColumn("{task.description}"), console=console) as bar:
        bar.add_task("downloading", total=10)
        time.sleep(0.2)
        assert console._progress_logger is None


def test_progress_bars_start_on_the_first_update_and_show_one_bar_per_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    console, out = _log_console(progress_log_seconds=0.05)
    monkeypatch.setattr(cli_common, "err_console", console)  # where every command's progress goes
    with ProgressBars(transient=False) as bars:
        time.sleep(0.15)
        assert out.getvalue() == ""  # no display, and no thread, before there is something to show
        bars.update("hashing", 3, 10, "2 clusters")
        bars.update("copying", 1, 4)
        bars.update("hashing", 5, 10, "4 clusters")
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert any("hashing" in line and "5/10" in line and "4 clusters" in line for line in lines)
    assert any("copying" in line and "1/4" in line for line in lines)
    assert not any("hashing" in line and "copying" in line for line in lines)  # a bar each
