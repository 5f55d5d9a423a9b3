"""`animexpr expand`: augmented copies of accepted crops up to a target (the work: `curate.expand.expand`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from animexpr.cli_common import EXIT_INTERRUPTED, JsonOption, console, err_console, get_state, print_json
from animexpr.curate.cli_shared import MaxDistance, Workers, progress_bar
from animexpr.curate.defaults import DEFAULT_MAX_DISTANCE, DEFAULT_TARGET, Balance
from animexpr.errors import AnimexprError

if TYPE_CHECKING:  # the stage imports numpy and OpenCV: loaded by the command itself, not by `--help`
    from animexpr.curate.expand import ExpandSummary


def expand_command(
    ctx: typer.Context,
    target: Annotated[
        int, typer.Option(min=1, help="Originals plus augmented images, all classes.")
    ] = DEFAULT_TARGET,
    balance: Annotated[
        Balance,
        typer.Option(help="proportional: keep each class's share; equal: even the classes out."),
    ] = "proportional",
    seed: Annotated[int, typer.Option(help="Seed of the augmentation plan and of every image.")] = 0,
    workers: Workers = None,
    max_distance: MaxDistance = DEFAULT_MAX_DISTANCE,
    as_json: JsonOption = False,
) -> None:
    """Augment accepted, de-duplicated crops until originals plus copies reach the target exactly.

    A snapshot with a test split leaves out the copies of its test crops; `snapshot create NAME --size N`
    plans the copies for its training side instead and holds exactly N images.
    """
    from animexpr.curate.expand import expand

    state = get_state(ctx)
    with progress_bar("augmenting") as progress:
        summary = expand(
            state.engine,
            state.store,
            state.settings,
            target=target,
            balance=balance,
            seed=seed,
            workers=workers,
            max_distance=max_distance,
            progress=progress,
        )
    _show_expansion(expansion_dict(summary), as_json)
    if summary.interrupted:
        err_console.print("interrupted: the images made so far are kept; run the same command to finish")
        raise typer.Exit(EXIT_INTERRUPTED)
    if summary.failed:
        for problem in summary.failed[:10]:
            err_console.print(f"[yellow]skipped[/] {problem}", highlight=False)
        corrupt = f" ({summary.corrupt} corrupt_file)" if summary.corrupt else ""
        raise AnimexprError(
            f"{len(summary.failed)} crops could not be augmented{corrupt}; fix or reject them, then rerun"
        )


_EXPANSION_COUNTS = ("originals", "augmented", "total")


def expansion_dict(summary: ExpandSummary) -> dict[str, Any]:
    """What `expand` shows, and `--json` prints: the plan per class and in all, and what this run did."""
    plan = summary.plan
    per_class = {
        name: {"originals": counts.originals, "augmented": counts.augmented, "total": counts.total}
        for name, counts in plan.per_class.items()
    }
    return {
        "per_class": per_class,
        "all": {key: sum(counts[key] for counts in per_class.values()) for key in _EXPANSION_COUNTS},
        "created": summary.created,
        "already_there": summary.already_there,
        "target": plan.target,
        "balance": plan.balance,
        "seed": plan.seed,
        "failed": len(summary.failed),
        "corrupt": summary.corrupt,
        "problems": summary.failed,
        "interrupted": summary.interrupted,
    }


def _show_expansion(expansion: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(expansion)
        return
    table = Table("class", *_EXPANSION_COUNTS)
    for name, counts in [*expansion["per_class"].items(), ("all", expansion["all"])]:
        table.add_row(name, *(str(counts[key]) for key in _EXPANSION_COUNTS))
    console.print(table)
    console.print(
        f"{expansion['created']} augmented images made, {expansion['already_there']} already there "
        f"(target {expansion['target']}, {expansion['balance']}, seed {expansion['seed']})"
    )


def register(app: typer.Typer) -> None:
    app.command("expand")(expand_command)
