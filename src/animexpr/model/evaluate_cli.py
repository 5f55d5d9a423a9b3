"""`animexpr evaluate`: score a run, or a folder of images made elsewhere (the work: `model.evaluate`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from animexpr.cli_common import ProgressBars, console, get_settings
from animexpr.model.config import EvalProtocol, Reference


def evaluate(
    ctx: typer.Context,
    run: Annotated[
        Path | None,
        typer.Argument(help="Run folder (or a G_ema-*.safetensors file in one); omit with --images."),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            help="Score DIR/<class>/*.png made by another program instead of a run (needs --snapshot)."
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Generator file to score (default: the run's newest).")
    ] = None,
    snapshot: Annotated[
        str | None,
        typer.Option(help="Snapshot NAME or folder (default: the one the run trained on)."),
    ] = None,
    protocol: Annotated[
        EvalProtocol,
        typer.Option(
            help="paper: FID/KID pooled, against the test images; "
            "per-class: per target class against --reference originals, averaged."
        ),
    ] = "paper",
    reference: Annotated[
        Reference | None,
        typer.Option(
            help="per-class protocol: real images of the target class from all, train or test splits."
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="With --images: the method's row name in compare (e.g. cyclegan; default: DIR's name)."
        ),
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(help="With --images: px the images are decoded and resized to, as the real ones [128]."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="With --images: the report file (default DIR/eval.json).")
    ] = None,
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
    """Score a run (every test image into every other class) or a folder of images: FID, KID, expression
    accuracy, identity; the paper's protocol unless told otherwise."""
    _check_evaluate_arguments(run, images, snapshot, protocol, reference, method, out, image_size)
    from animexpr.model.classifier import ClassifierConfig
    from animexpr.model.data import resolve_snapshot
    from animexpr.model.evaluate import (
        DEFAULT_IMAGE_SIZE,
        EVAL_JSON,
        EvalOptions,
        default_images_report,
        evaluate_images,
        evaluate_run,
        resolve_run_dir,
    )

    settings = get_settings(ctx)
    snapshot_folder = resolve_snapshot(snapshot, settings.home) if snapshot else None
    options = EvalOptions(
        protocol=protocol,
        reference=reference,
        batch=batch,
        device=device,
        save_images=save_images,
        inception=inception,
        cache_dir=cache_dir,
        classifier=ClassifierConfig(epochs=classifier_epochs),
    )
    # On standard error: standard output holds the report (`--json` prints it there for scripts to read).
    with ProgressBars() as bars:
        progress = bars.update
        if images is not None:
            assert snapshot_folder is not None  # checked above
            size = image_size or DEFAULT_IMAGE_SIZE
            report = evaluate_images(images, snapshot_folder, out, method, size, options, progress)
            written = out or default_images_report(images)
        else:
            assert run is not None  # checked above
            report = evaluate_run(run, checkpoint, snapshot_folder, options, progress)
            written = resolve_run_dir(run) / EVAL_JSON
    if as_json:
        print(json.dumps(report, indent=2))
        return
    _print_report(report, written)


def _check_evaluate_arguments(
    run: Path | None,
    images: Path | None,
    snapshot: str | None,
    protocol: EvalProtocol,
    reference: Reference | None,
    method: str | None,
    out: Path | None,
    image_size: int | None,
) -> None:
    if (run is None) == (images is None):
        raise typer.BadParameter("give a run folder or --images DIR (one of them)", param_hint="RUN")
    if images is not None and snapshot is None:
        raise typer.BadParameter("--images needs --snapshot (the real images to compare with)")
    if images is None and (method is not None or out is not None or image_size is not None):
        raise typer.BadParameter("--method, --out and --image-size go with --images only")
    if protocol == "paper" and reference not in (None, "test"):
        raise typer.BadParameter(
            "goes with --protocol per-class; the paper protocol compares with the test images",
            param_hint="--reference",
        )


def _print_report(report: dict[str, Any], written: Path) -> None:
    from animexpr.model.evaluate import TABLE_COLUMNS, headline, protocol_text, table_rows, title

    table = Table(*TABLE_COLUMNS, title=title(report))
    for row in table_rows(report):
        table.add_row(*row)
    console.print(table)
    console.print(protocol_text(report), markup=False, highlight=False)
    accuracy = report["classifier"]["test_accuracy"]
    timing = report["timing"]
    scores = headline(report)
    speed = (
        f"; {timing['generation_ms_per_1000']:.0f} ms per 1,000 translations on {timing['device']} "
        f"({timing['translate_and_score_ms_per_1000']:.0f} ms with scoring)"
        if "generation_ms_per_1000" in timing
        else ""
    )
    fid_text = "-" if scores.get("fid") is None else f"{scores['fid']:.2f}"
    console.print(
        f"FID {fid_text} ({report['protocol']}); classifier test accuracy "
        f"{accuracy if accuracy is None else f'{accuracy:.3f}'}{speed}; written to {written}",
        markup=False,
        highlight=False,
    )
    for warning in report.get("warnings", []):
        console.print(Text.assemble(("warning: ", "bold yellow"), warning), highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
