"""The curate room's commands: each group lives in its own `*_cli` module with a `register(app)`."""

from __future__ import annotations

import typer

from animexpr.curate import crop_cli, expand_cli, review_cli


def register(app: typer.Typer) -> None:
    for module in (crop_cli, review_cli, expand_cli):
        module.register(app)
