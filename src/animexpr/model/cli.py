"""The model room's commands: `train` in `train_cli`, `transform` in `transform_cli`."""

from __future__ import annotations

import typer

from animexpr.model import train_cli, transform_cli


def register(app: typer.Typer) -> None:
    app.command("train")(train_cli.train)
    app.command("transform")(transform_cli.transform)
