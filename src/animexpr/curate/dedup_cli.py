"""`animexpr dedup`: hash new crops and group duplicates (the work: `curate.dedup.update_duplicates`)."""

from __future__ import annotations

import dataclasses

import typer

from animexpr.cli_common import JsonOption, console, get_state, print_json
from animexpr.curate.cli_shared import MaxDistance, progress_bar
from animexpr.curate.defaults import DEFAULT_MAX_DISTANCE


def dedup_command(
    ctx: typer.Context, max_distance: MaxDistance = DEFAULT_MAX_DISTANCE, as_json: JsonOption = False
) -> None:
    """Hash new crops and group duplicates (exact and near, mirrored copies included) into clusters."""
    from animexpr.curate.dedup import update_duplicates

    state = get_state(ctx)
    with progress_bar("hashing crops") as progress:
        summary = update_duplicates(state.engine, state.store, max_distance, progress=progress)
    if as_json:
        print_json(dataclasses.asdict(summary))
        return
    console.print(
        f"{summary.crops} crops, {summary.hashed} hashed now, {summary.clustered_crops} in "
        f"{summary.clusters} duplicate clusters (max distance {summary.max_distance}), "
        f"{summary.changed} changed"
        + (f", {summary.unreadable} unreadable" if summary.unreadable else "")
        + (f" ({summary.corrupt} corrupt_file: see the warnings)" if summary.corrupt else "")
    )


def register(app: typer.Typer) -> None:
    app.command("dedup")(dedup_command)
