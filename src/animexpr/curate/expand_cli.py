"""Commands `dedup`, `expand` and the `snapshot` group; each parses options and calls one library function."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from animexpr.cli_common import console, err_console, get_state
from animexpr.curate.defaults import DEFAULT_MAX_DISTANCE, DEFAULT_TARGET, DEFAULT_TEST_FRACTION
from animexpr.errors import AnimexprError

if TYPE_CHECKING:
    from animexpr.curate.snapshot_plan import SnapshotSize


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
    from animexpr.curate.dedup import update_duplicates

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
        typer.Option(min=1, help="Processes (default: one per available core).", show_default=False),
    ] = None,
    max_distance: MaxDistance = DEFAULT_MAX_DISTANCE,
) -> None:
    """Augment accepted, de-duplicated crops until originals plus copies reach the target exactly.

    A snapshot with a test split leaves out the copies of its test crops; `snapshot create NAME --size N`
    plans the copies for its training side instead and holds exactly N images.
    """
    from animexpr.curate.augment import BALANCES, Balance, expand

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


Workers = Annotated[
    int | None,
    typer.Option(min=1, help="Processes (default: one per available core).", show_default=False),
]


@snapshot_app.command("create")
def snapshot_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Snapshot name (letters, digits, . _ -).")],
    size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Exactly this many images: every original (train and test) plus augmented copies of "
            "training crops, made now where missing (default: the last `expand` plan, less the copies of "
            "test crops).",
            show_default=False,
        ),
    ] = None,
    test_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="Share of each class's crops held out, by source post.")
    ] = DEFAULT_TEST_FRACTION,
    seed: Annotated[int, typer.Option(help="Seed of the train/test split.")] = 0,
    balance: Annotated[
        str | None,
        typer.Option(
            help="With --size: proportional keeps each class's share, equal evens the classes out "
            "(default: proportional).",
            show_default=False,
        ),
    ] = None,
    augment_seed: Annotated[
        int | None,
        typer.Option(help="With --size: seed of the augmented copies (default: 0).", show_default=False),
    ] = None,
    workers: Workers = None,
) -> None:
    """Freeze accepted, de-duplicated crops and their augmentations into an immutable manifest."""
    from animexpr.curate.snapshot import create_snapshot, describe_snapshot

    request = _size_request(size, balance, augment_seed)
    state = get_state(ctx)
    try:
        with progress_bar("creating the snapshot") as progress:
            info = create_snapshot(
                state.engine,
                state.store,
                state.settings,
                name,
                test_fraction=test_fraction,
                seed=seed,
                size=request,
                workers=workers,
                progress=progress,
            )
    except KeyboardInterrupt:
        err_console.print(
            "interrupted: the augmented copies made so far are kept; run the same command to finish"
        )
        raise typer.Exit(130) from None
    if info.augmented_made:
        console.print(f"made {info.augmented_made} augmented copies of training crops")
    description = describe_snapshot(info.folder)
    _print_counts(description)
    sizes = description["split_sizes"]
    console.print(
        f"snapshot [bold]{info.name}[/]: {description['total']} images "
        f"(train {sizes['train']}, test {sizes['test']}), "
        f"manifest sha256 {info.manifest_sha256}"
    )
    _note_left_out_copies(description)


def _size_request(size: int | None, balance: str | None, augment_seed: int | None) -> SnapshotSize | None:
    from animexpr.curate.augment import BALANCES
    from animexpr.curate.snapshot_plan import SnapshotSize

    if size is None:
        if balance is not None or augment_seed is not None:
            raise AnimexprError(
                "--balance and --augment-seed go with --size; without it the snapshot takes the last "
                "`animexpr expand` plan"
            )
        return None
    chosen = balance or "proportional"
    if chosen not in BALANCES:
        raise AnimexprError(f"--balance must be one of {', '.join(BALANCES)}, not {chosen!r}")
    return SnapshotSize(size, "equal" if chosen == "equal" else "proportional", augment_seed or 0)


def _note_left_out_copies(description: dict[str, Any]) -> None:
    """Without --size the test side's share of the expansion is missing: say so, and how to get the target."""
    expansion = description["settings"].get("expansion") or {}
    target = expansion.get("target")
    if description["size"] is None and target and description["total"] < target:
        err_console.print(
            f"note: {target - description['total']} augmented copies of test crops in the last expansion "
            f"(target {target}) are left out, since the test side holds originals only; "
            f"`snapshot create NAME --size {target}` makes a snapshot of exactly {target} images"
        )


def _print_counts(description: dict[str, Any]) -> None:
    from animexpr.curate.snapshot import COUNT_KEYS

    table = Table("class", "train originals", "train augmented", "test originals", "total")
    rows = [*description["per_class"].items(), ("all", description["all"])]
    for name, counts in rows:
        table.add_row(name, *(str(counts[key]) for key in COUNT_KEYS))
    console.print(table)


@snapshot_app.command("list")
def snapshot_list(ctx: typer.Context) -> None:
    """List the snapshots, oldest first."""
    from animexpr.curate.snapshot import list_snapshots

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
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Snapshot name or folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show a snapshot's identity, per-class counts (originals, augmented, test) and its settings."""
    from animexpr.curate.snapshot import describe_snapshot, resolve_folder

    state = get_state(ctx)
    description = describe_snapshot(resolve_folder(state.settings, name))
    if as_json:
        print(json.dumps(description, indent=2, ensure_ascii=False))
        return
    console.print(f"snapshot [bold]{description['name']}[/] in {description['folder']}")
    console.print(f"manifest sha256 {description['manifest_sha256']}, created {description['created_at']}")
    if "snapshot_manifest_sha256" in description:
        console.print(
            f"exported from the snapshot with manifest sha256 {description['snapshot_manifest_sha256']}"
        )
    _print_counts(description)
    settings = description["settings"]
    expansion = settings.get("expansion")
    if expansion:
        goal = f"size {expansion['size']}" if "size" in expansion else f"target {expansion['target']}"
        console.print(
            f"expansion: {goal}, {expansion['balance']}, seed {expansion['seed']}, "
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
    from animexpr.curate.snapshot import verify_snapshot

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


EXPORT_FORMATS = ("stargan", "imagefolder")


@snapshot_app.command("export")
def snapshot_export(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Snapshot name (or, for stargan, a snapshot folder).")],
    out_dir: Annotated[Path, typer.Argument(help="New or empty folder.")],
    export_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="stargan: DIR/{train,test}/<class>/*.png with metadata.jsonl; imagefolder: "
            "DIR/{train,test}/*.png with a metadata.csv of provenance and a dataset card, for Hugging Face "
            "datasets' load_dataset('imagefolder', data_dir=DIR).",
        ),
    ] = "stargan",
) -> None:
    """Copy a snapshot to a folder that trains without the home (both formats) or loads with `datasets`."""
    from animexpr.curate.export_imagefolder import export_imagefolder
    from animexpr.curate.snapshot import export_snapshot

    if export_format not in EXPORT_FORMATS:
        raise AnimexprError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {export_format!r}")
    state = get_state(ctx)
    with progress_bar("exporting") as progress:
        if export_format == "imagefolder":
            summary = export_imagefolder(state.engine, state.settings, name, out_dir, progress=progress)
        else:
            summary = export_snapshot(state.settings, name, out_dir, progress=progress)
    console.print(
        f"exported {summary.files} images to {summary.folder} as {export_format} "
        f"(train {summary.split_sizes['train']}, test {summary.split_sizes['test']})"
    )


def register(app: typer.Typer) -> None:
    app.command("dedup")(dedup_command)
    app.command("expand")(expand_command)
    app.add_typer(snapshot_app, name="snapshot")
