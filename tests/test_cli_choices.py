"""Options of fixed choices are checked by the command line: a usage error (status 2) that lists the
choices, before any file or database is touched; the choices are the ones the library defines."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.curate.review import STATE_FILTERS
from animexpr.model.config import BASELINES, VARIANTS

WIDE = {"COLUMNS": "250"}


@pytest.mark.parametrize(
    ("args", "choices"),
    [
        (["train", "--snapshot", "s", "--variant", "stargan-v2"], (*VARIANTS, *BASELINES)),
        (["expand", "--balance", "even"], ("proportional", "equal")),
        (["snapshot", "create", "s", "--size", "10", "--balance", "even"], ("proportional", "equal")),
        (["snapshot", "export", "s", "out", "--format", "zip"], ("stargan", "imagefolder")),
        (["harvest", "--variant", "huge"], ("original", "sample")),
        (["evaluate", "run", "--protocol", "fid-only"], ("paper", "per-class")),
        (["evaluate", "run", "--protocol", "per-class", "--reference", "val"], ("all", "train", "test")),
        (["compare", "eval.json", "--table", "3"], ("1", "2", "both")),
        (["transform", "{face}", "--all", "--crop", "sometimes"], ("auto", "always", "never")),
        (["review", "export", "out.csv", "--state", "reviewed"], tuple(STATE_FILTERS)),
    ],
    ids=lambda value: value[-1] if isinstance(value, list) else None,
)
def test_a_value_outside_the_choices_is_a_usage_error_listing_them(
    args: list[str], choices: tuple[str, ...], tmp_path: Path
) -> None:
    face = tmp_path / "face.png"
    face.write_bytes(b"")  # transform's argument must exist; the crop choice is refused before it is read
    home = tmp_path / "home"
    command = ["--home", str(home), *(arg.format(face=face) for arg in args)]
    result = CliRunner().invoke(app, command, env=WIDE)
    assert result.exit_code == 2, result.output
    assert args[-1] in result.output
    for choice in choices:
        assert f"'{choice}'" in result.output
    assert not home.exists()  # refused before the home was looked at


def test_the_choices_are_listed_in_help() -> None:
    output = CliRunner().invoke(app, ["train", "--help"], env=WIDE).output
    assert "<" + "|".join((*VARIANTS, *BASELINES)) + ">" in output


def test_the_variant_choices_are_the_configs_own() -> None:
    # Every other choice type is defined once in a light module (curate.defaults, model.config) that the
    # commands and the stages both import; the variants are made into a choice from config's tuples.
    from animexpr.model import train_cli

    assert get_args(train_cli.VariantName) == (*VARIANTS, *BASELINES)
