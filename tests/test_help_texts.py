"""Every command's `--help` reads cleanly: no `<bool>` beside flags, no stray space before a period, and no
help text that loses words to Rich markup (a `[...]` in a help string is a markup tag to Rich)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator

import pytest
import typer
from rich.text import Text
from typer.testing import CliRunner

from animexpr.cli import app

WIDE = {"COLUMNS": "250"}  # one line per option where it fits: a wrapped line cannot hide a " ."
STRAY_SPACE = re.compile(r"\w \.(\s|$)")  # "runs ." but not "./animexpr-home" nor "digits, . _ -"


def _commands(command: object, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


def _ids(path: tuple[str, ...]) -> str:
    return " ".join(path) or "animexpr"


def test_the_walk_finds_the_commands_of_every_room() -> None:
    paths = {_ids(path) for path, _ in COMMANDS}
    assert {"animexpr", "harvest", "expand", "train", "compare", "snapshot list", "review"} <= paths


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS], ids=_ids)
def test_help_shows_no_bool_type_and_no_space_before_a_period(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert "<bool>" not in result.output
    stray = [line.strip() for line in result.output.splitlines() if STRAY_SPACE.search(line)]
    assert stray == []


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[_ids(path) for path, _ in COMMANDS])
def test_help_strings_survive_rich_markup(path: tuple[str, ...], command: object) -> None:
    texts = {"(command)": getattr(command, "help", None) or ""}
    texts |= {
        param.name or "?": getattr(param, "help", None) or "" for param in getattr(command, "params", [])
    }
    eaten = {}
    for name, text in texts.items():
        written = inspect.cleandoc(text)
        shown = Text.from_markup(written).plain
        if shown != written:
            eaten[name] = (written, shown)
    assert eaten == {}, "help text with [...] that Rich reads as markup: write (...) or escape it"


def test_flags_still_show_their_names_and_options_their_types() -> None:
    output = CliRunner().invoke(app, ["harvest", "--help"], env=WIDE).output
    assert "--keep-ambiguous" in output
    assert "--no-keep-ambiguous" in output
    assert "<float range>" in output  # options that take a value keep their type
    assert "<original|sample>" in output  # and options of fixed choices list them
