"""`animexpr --help` reads like the README's diagram: the commands in three panels, in pipeline order."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from animexpr.cli import app

PIPELINE = [
    ("Dataset", ["harvest", "crop", "review", "dedup", "expand", "snapshot"]),
    ("Model", ["train", "transform", "evaluate", "compare", "benchmark"]),
    ("Store", ["init", "status", "demo"]),
]
_PANEL_TOP = re.compile(r"╭─ (\w+) ─")
_COMMAND_LINE = re.compile(r"│ ([a-z][a-z-]*) ")  # a first line; wrapped lines start with spaces


def command_panels(help_text: str) -> list[tuple[str, list[str]]]:
    """The panels of a rich `--help` page in order, each with the commands it lists (options left out)."""
    panels: list[tuple[str, list[str]]] = []
    for line in help_text.splitlines():
        if top := _PANEL_TOP.match(line):
            panels.append((top[1], []))
        elif (command := _COMMAND_LINE.match(line)) and panels:
            panels[-1][1].append(command[1])
    return [(name, commands) for name, commands in panels if name != "Options"]


def test_help_lists_every_command_under_its_panel_in_pipeline_order() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert command_panels(result.output) == PIPELINE


def test_a_command_group_lists_its_own_commands_as_before() -> None:
    # Only the root is arranged in panels; `snapshot --help` keeps typer's single panel in its own order.
    result = CliRunner().invoke(app, ["snapshot", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert command_panels(result.output) == [("Commands", ["create", "list", "show", "verify", "export"])]
