"""The curate room's commands: each command (or command group) lives in `<command>_cli.py` with a
`register(app)`, and its stage in `<command>.py` (`crop`, `review`, `dedup`, `expand`, `snapshot`)."""

from __future__ import annotations

import typer

from animexpr.curate import crop_cli, dedup_cli, expand_cli, review_cli, snapshot_cli


def register(app: typer.Typer) -> None:
    for module in (crop_cli, review_cli, dedup_cli, expand_cli, snapshot_cli):
        module.register(app)
