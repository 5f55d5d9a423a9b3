"""`animexpr snapshot create|list|show|verify|export`: frozen training sets.

The work is in `curate.snapshot` (manifests, verification, the stargan export), `curate.snapshot_plan`
(`--size`) and `curate.export_imagefolder`; these commands parse options and print what those return.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from animexpr.cli_common import (
    EXIT_INTERRUPTED,
    JsonOption,
    choices,
    console,
    err_console,
    get_state,
    print_json,
)
from animexpr.curate.cli_shared import Workers, progress_bar
from animexpr.curate.defaults import DEFAULT_TEST_FRACTION, Balance
from animexpr.errors import AnimexprError

if TYPE_CHECKING:
    from animexpr.curate.snapshot_plan import SnapshotSize


snapshot_app = typer.Typer(
    help="Frozen training sets: create, list, show, verify, export.", no_args_is_help=True
)


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
        Balance | None,
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
        raise typer.Exit(EXIT_INTERRUPTED) from None
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


def _size_request(size: int | None, balance: Balance | None, augment_seed: int | None) -> SnapshotSize | None:
    from animexpr.curate.snapshot_plan import SnapshotSize

    if size is None:
        if balance is not None or augment_seed is not None:
            raise AnimexprError(
                "--balance and --augment-seed go with --size; without it the snapshot takes the last "
                "`animexpr expand` plan"
            )
        return None
    return SnapshotSize(size, balance or "proportional", augment_seed or 0)


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
def snapshot_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the snapshots, oldest first."""
    from animexpr.curate.snapshot import list_snapshots

    state = get_state(ctx)
    snapshots = [
        {
            "name": info.name,
            "created": info.created_at.isoformat(),
            "images": info.counts.get("total"),
            "train": info.counts.get("split_sizes", {}).get("train"),
            "test": info.counts.get("split_sizes", {}).get("test"),
            "manifest_sha256": info.manifest_sha256,
            "folder": str(info.folder),
        }
        for info in list_snapshots(state.engine, state.settings)
    ]
    if as_json:
        print_json({"snapshots": snapshots})
        return
    table = Table("name", "created", "images", "train", "test", "manifest sha256")
    for row in snapshots:
        table.add_row(
            row["name"],
            row["created"][:16].replace("T", " "),  # to the minute
            *("" if row[key] is None else str(row[key]) for key in ("images", "train", "test")),
            row["manifest_sha256"][:16],
        )
    console.print(table)


@snapshot_app.command("show")
def snapshot_show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Snapshot name or folder.")],
    as_json: JsonOption = False,
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
if TYPE_CHECKING:
    ExportFormat = str
else:
    ExportFormat = choices(EXPORT_FORMATS)


@snapshot_app.command("export")
def snapshot_export(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Snapshot name (or, for stargan, a snapshot folder).")],
    out_dir: Annotated[Path, typer.Argument(help="New or empty folder.")],
    export_format: Annotated[
        ExportFormat,
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
    app.add_typer(snapshot_app, name="snapshot")
