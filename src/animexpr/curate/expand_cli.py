"""Commands `dedup`, `expand` and the `snapshot` group; each parses options and calls one library function."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from animexpr.cli_common import console, err_console, get_state
from animexpr.curate.augment import BALANCES, DEFAULT_TARGET, Balance, expand
from animexpr.curate.dedup import DEFAULT_MAX_DISTANCE, update_duplicates
from animexpr.curate.snapshot import (
    DEFAULT_TEST_FRACTION,
    create_snapshot,
    export_snapshot,
    list_snapshots,
    read_dataset,
    resolve_folder,
    verify_snapshot,
)
from animexpr.errors import AnimexprError

snapshot_app = typer.Typer(
    help="Frozen training sets: create, list, show, verify, export.", no_args_is_help=True
)

MaxDistance = Annotated[
    int,
    typer.Option(
        "--max-distance",
        min=0,
        max=63,
        help="Near-duplicate threshold: differing bits of the 64-bit perceptual hash (mirrors included).",
    ),
]


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def dedup_command(ctx: typer.Context, max_distance: MaxDistance = DEFAULT_MAX_DISTANCE) -> None:
    """Hash new crops and group duplicates (exact and near, mirrored copies included) into clusters."""
    state = get_state(ctx)
    with progress_bar("hashing crops") as progress:
        summary = update_duplicates(state.engine, state.store, max_distance, progress=progress)
    console.print(
        f"{summary.crops} crops, {summary.hashed} hashed now, {summary.clustered_crops} in "
        f"{summary.clusters} duplicate clusters (max distance {summary.max_distance}), "
        f"{summary.changed} changed"
        + (f", {summary.unreadable} unreadable" if summary.unreadable else "")
        + (f" ({summary.corrupt} corrupt_file: see the warnings)" if summary.corrupt else "")
    )


def expand_command(
    ctx: typer.Context,
    target: Annotated[
        int, typer.Option(min=1, help="Originals plus augmented images, all classes.")
    ] = DEFAULT_TARGET,
    balance: Annotated[
        str, typer.Option(help="proportional: keep each class's share; equal: even the classes out.")
    ] = "proportional",
    seed: Annotated[int, typer.Option(help="Seed of the augmentation plan and of every image.")] = 0,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Processes [default: one per available core].", show_default=False),
    ] = None,
    max_distance: MaxDistance = DEFAULT_MAX_DISTANCE,
) -> None:
    """Augment accepted, de-duplicated crops until originals plus copies reach the target exactly."""
    if balance not in BALANCES:
        raise AnimexprError(f"--balance must be one of {', '.join(BALANCES)}, not {balance!r}")
    chosen: Balance = "equal" if balance == "equal" else "proportional"
    state = get_state(ctx)
    with progress_bar("augmenting") as progress:
        summary = expand(
            state.engine,
            state.store,
            state.settings,
            target=target,
            balance=chosen,
            seed=seed,
            workers=workers,
            max_distance=max_distance,
            progress=progress,
        )
    table = Table("class", "originals", "augmented", "total")
    for name, counts in summary.plan.per_class.items():
        table.add_row(name, str(counts.originals), str(counts.augmented), str(counts.total))
    table.add_row(
        "all",
        *(
            str(sum(getattr(c, key) for c in summary.plan.per_class.values()))
            for key in ("originals", "augmented", "total")
        ),
    )
    console.print(table)
    console.print(
        f"{summary.created} augmented images made, {summary.already_there} already there "
        f"(target {target}, {chosen}, seed {seed})"
    )
    if summary.interrupted:
        err_console.print("interrupted: the images made so far are kept; run the same command to finish")
        raise typer.Exit(130)
    if summary.failed:
        for problem in summary.failed[:10]:
            err_console.print(f"[yellow]skipped[/] {problem}", highlight=False)
        corrupt = f" ({summary.corrupt} corrupt_file)" if summary.corrupt else ""
        raise AnimexprError(
            f"{len(summary.failed)} crops could not be augmented{corrupt}; fix or reject them, then rerun"
        )


@snapshot_app.command("create")
def snapshot_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Snapshot name (letters, digits, . _ -).")],
    test_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="Share of each class's crops held out, by source post.")
    ] = DEFAULT_TEST_FRACTION,
    seed: Annotated[int, typer.Option(help="Seed of the train/test split.")] = 0,
) -> None:
    """Freeze accepted, de-duplicated crops and their augmentations into an immutable manifest."""
    state = get_state(ctx)
    info = create_snapshot(
        state.engine, state.store, state.settings, name, test_fraction=test_fraction, seed=seed
    )
    _print_counts(info.counts["per_class"])
    sizes = info.counts["split_sizes"]
    console.print(
        f"snapshot [bold]{info.name}[/]: {info.counts['total']} images "
        f"(train {sizes['train']}, test {sizes['test']}), "
        f"manifest sha256 {info.manifest_sha256}"
    )


def _print_counts(per_class: dict[str, dict[str, int]]) -> None:
    table = Table("class", "train originals", "train augmented", "test originals", "total")
    for name, counts in per_class.items():
        table.add_row(
            name,
            *(
                str(counts.get(key, 0))
                for key in ("train_original", "train_augmented", "test_original", "total")
            ),
        )
    console.print(table)


@snapshot_app.command("list")
def snapshot_list(ctx: typer.Context) -> None:
    """List the snapshots, oldest first."""
    state = get_state(ctx)
    table = Table("name", "created", "images", "train", "test", "manifest sha256")
    for info in list_snapshots(state.engine, state.settings):
        sizes = info.counts.get("split_sizes", {})
        table.add_row(
            info.name,
            info.created_at.strftime("%Y-%m-%d %H:%M"),
            str(info.counts.get("total", "")),
            str(sizes.get("train", "")),
            str(sizes.get("test", "")),
            info.manifest_sha256[:16],
        )
    console.print(table)


@snapshot_app.command("show")
def snapshot_show(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Snapshot name or folder.")]
) -> None:
    """Show a snapshot's classes, counts, split sizes and the settings it was made with."""
    state = get_state(ctx)
    folder = resolve_folder(state.settings, name)
    dataset = read_dataset(folder)
    console.print(f"snapshot [bold]{dataset.get('name')}[/] in {folder}")
    console.print(f"manifest sha256 {dataset.get('manifest_sha256')}, created {dataset.get('created_at')}")
    _print_counts(dataset.get("counts", {}))
    settings = dataset.get("settings", {})
    expansion = settings.get("expansion")
    if expansion:
        console.print(
            f"expansion: target {expansion['target']}, {expansion['balance']}, seed {expansion['seed']}, "
            f"recipe {expansion['recipe']['version']}"
        )
    console.print(
        f"split: test fraction {settings.get('test_fraction')}, seed {settings.get('split_seed')}; "
        f"dedup {settings.get('dedup')}"
    )


@snapshot_app.command("verify")
def snapshot_verify(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Snapshot name or folder.")]
) -> None:
    """Re-hash the manifest and every file it lists; exit status 1 on any difference."""
    state = get_state(ctx)
    with progress_bar("verifying") as progress:
        report = verify_snapshot(state.engine, state.settings, name, progress=progress)
    for problem in report.problems:
        err_console.print(f"[red]manifest:[/] {problem}", highlight=False)
    for path in report.missing[:20]:
        err_console.print(f"[red]missing:[/] {path}", highlight=False)
    for path in report.modified[:20]:
        err_console.print(f"[red]modified:[/] {path}", highlight=False)
    if not report.ok:
        raise AnimexprError(
            f"snapshot {name} does not verify: {len(report.missing)} missing, "
            f"{len(report.modified)} modified, "
            f"{len(report.problems)} manifest problems"
        )
    console.print(f"snapshot {name}: manifest and {report.files} files verified")


@snapshot_app.command("export")
def snapshot_export(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Snapshot name or folder.")],
    out_dir: Annotated[Path, typer.Argument(help="New or empty folder.")],
) -> None:
    """Copy a snapshot to DIR/train/<class>/*.png and DIR/test/<class>/*.png with metadata.jsonl."""
    state = get_state(ctx)
    with progress_bar("exporting") as progress:
        summary = export_snapshot(state.settings, name, out_dir, progress=progress)
    console.print(
        f"exported {summary.files} images to {summary.folder} "
        f"(train {summary.split_sizes['train']}, test {summary.split_sizes['test']})"
    )


def register(app: typer.Typer) -> None:
    app.command("dedup")(dedup_command)
    app.command("expand")(expand_command)
    app.add_typer(snapshot_app, name="snapshot")
