"""`animexpr evaluate` and `animexpr compare`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from animexpr.cli_common import console, get_settings

if TYPE_CHECKING:  # torch is imported by the commands themselves, so that other commands start fast
    from animexpr.model.evaluate import Progress as ProgressFn


@contextmanager
def _progress_bar() -> Iterator[ProgressFn]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def evaluate(
    ctx: typer.Context,
    run: Annotated[Path, typer.Argument(help="Run folder (or a G_ema-*.safetensors file in one).")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="Generator file to score (default: the run's newest).")
    ] = None,
    snapshot: Annotated[
        str | None, typer.Option(help="Snapshot NAME or folder (default: the one the run trained on).")
    ] = None,
    reference: Annotated[
        str, typer.Option(help="Real images of the target class for FID/KID: all, train or test splits.")
    ] = "all",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch: Annotated[int, typer.Option(help="Test images per generator batch.")] = 32,
    inception: Annotated[
        Path | None,
        typer.Option(
            help="Inception TorchScript (env ANIMEXPR_INCEPTION; else the user cache, else a fetch)."
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Cache of real features and classifiers (default: ~/.cache/animexpr).")
    ] = None,
    classifier_epochs: Annotated[int, typer.Option(help="Epochs of the expression classifier.")] = 30,
    save_images: Annotated[bool, typer.Option(help="Write the translations as PNG files.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print eval.json instead of the table.")] = False,
) -> None:
    """Score a run: every test image into every other class; FID, KID, expression accuracy, identity."""
    if reference not in ("all", "train", "test"):
        raise typer.BadParameter("expected all, train or test", param_hint="--reference")
    from animexpr.model.classifier import ClassifierConfig
    from animexpr.model.data import resolve_snapshot
    from animexpr.model.evaluate import EvalOptions, evaluate_run

    settings = get_settings(ctx)
    snapshot_folder = resolve_snapshot(snapshot, settings.home) if snapshot else None
    options = EvalOptions(
        reference=reference,  # type: ignore[arg-type]  # checked above
        batch=batch,
        device=device,
        save_images=save_images,
        inception=inception,
        cache_dir=cache_dir,
        classifier=ClassifierConfig(epochs=classifier_epochs),
    )
    with _progress_bar() as progress:
        report = evaluate_run(run, checkpoint, snapshot_folder, options, progress)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    from animexpr.model.evaluate import TABLE_COLUMNS, table_rows

    table = Table(
        *TABLE_COLUMNS, title=f"{report['run']} ({report['variant']}, iteration {report['iteration']})"
    )
    for row in table_rows(report):
        table.add_row(*row)
    console.print(table)
    accuracy = report["classifier"]["test_accuracy"]
    timing = report["timing"]
    console.print(
        f"classifier test accuracy {accuracy if accuracy is None else f'{accuracy:.3f}'}; "
        f"{timing['generation_ms_per_1000']:.0f} ms per 1,000 translations on {timing['device']} "
        f"({timing['translate_and_score_ms_per_1000']:.0f} ms with scoring); written to {run}/eval.json"
    )


def compare(
    runs: Annotated[list[Path], typer.Argument(help="Evaluated run folders.")],
    out: Annotated[Path, typer.Option(help="Markdown report to write.")] = Path("report.md"),
    figure: Annotated[Path | None, typer.Option(help="Figure PNG (default: beside the report).")] = None,
    rows: Annotated[int, typer.Option(help="Test inputs shown in the figure.")] = 8,
) -> None:
    """Table 1 for these runs (FID, KID, expression accuracy, identity, size, speed) and a figure."""
    from animexpr.model.compare import compare_runs

    result = compare_runs(runs, out, figure, rows)
    console.print(result.markdown, markup=False, highlight=False)
    console.print(f"written {out}" + (f" and {result.figure}" if result.figure else ""))


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
    app.command()(compare)
