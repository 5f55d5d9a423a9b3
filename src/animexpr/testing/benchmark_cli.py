"""`animexpr benchmark synthetic`: the paired benchmark on rendered faces (testing/benchmark.py).

torch and the model room are imported inside the command, so that every other command starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from animexpr.cli_common import ProgressBars, console, get_settings
from animexpr.model.config import DEVICE_CHOICES

benchmark_app = typer.Typer(help="Benchmarks with a known answer.", no_args_is_help=True)


def synthetic(
    ctx: typer.Context,
    variants: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated variants (default stargan,ours; --full: all five).", show_default=False
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Training seeds per variant (mean ± std over them).")] = 1,
    iters: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Training iterations; the learning rate decays over the second half "
            "(default: the small configuration's, or 200000 with --full).",
            show_default=False,
        ),
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(
            min=8,
            help="Resolution in px (default: the small configuration's 64, or 128 with --full).",
            show_default=False,
        ),
    ] = None,
    train_identities: Annotated[
        int, typer.Option(min=4, help="Rendered training identities, one expression each.")
    ] = 2000,
    test_identities: Annotated[
        int, typer.Option(min=2, help="Rendered test identities, all four expressions each.")
    ] = 50,
    classifier_identities: Annotated[
        int, typer.Option(min=2, help="Rendered identities the expression classifier trains on.")
    ] = 300,
    classifier_epochs: Annotated[int, typer.Option(min=1, help="Epochs of the expression classifier.")] = 6,
    device: Annotated[str, typer.Option(help=f"{DEVICE_CHOICES}.")] = "auto",
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="The paper's configuration: 128 px, paper widths, all five variants, 200k iterations.",
        ),
    ] = False,
    fid: Annotated[bool, typer.Option(help="FID/KID when the Inception weights are on this machine.")] = True,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Benchmark folder to create (default HOME/benchmarks/synthetic-NNNNN).", show_default=False
        ),
    ] = None,
) -> None:
    """Train variants on rendered faces and score each translation against the true rendering."""
    import dataclasses

    from animexpr.testing.benchmark import (
        DEFAULT_VARIANTS,
        FULL_CONFIG,
        FULL_VARIANTS,
        RENDER_CLASSIFIER,
        SMALL_CONFIG,
        BenchmarkOptions,
        next_benchmark_dir,
        prepare_out,
        run_benchmark,
        table_rows,
    )

    preset = FULL_CONFIG if full else SMALL_CONFIG
    config: dict[str, Any] = dict(preset)
    if iters is not None:  # the schedule scales with it: the rate decays over the second half
        config["iters"] = iters
        config["decay_start"] = iters // 2
    if image_size is not None:
        config["image_size"] = image_size
    chosen = (FULL_VARIANTS if full else DEFAULT_VARIANTS) if variants is None else _names(variants)
    options = BenchmarkOptions(
        variants=chosen,
        seeds=seeds,
        config=config,
        train_identities=train_identities,
        test_identities=test_identities,
        classifier_identities=classifier_identities,
        classifier=dataclasses.replace(RENDER_CLASSIFIER, epochs=classifier_epochs),
        device=device,
        fid=fid,
        preset="full" if full else "small",
    )
    options.check()  # before any folder is made
    if out is None:
        folder = next_benchmark_dir(get_settings(ctx).home / "benchmarks")
    else:
        prepare_out(out)
        folder = out
    console.print(f"benchmark folder: {folder}")
    with ProgressBars(transient=False) as bars:
        stages = _Stages(bars)
        report = run_benchmark(folder, options, stages.stage, stages.training)
    table = Table("variant", "seeds", "expr. acc.", "L1", "L1 out", "SSIM", "SSIM out", "IoU", "mask out",
                  "FID", "KID×1e3", "ms/iter", title=f"synthetic benchmark ({report['preset']})")  # fmt: skip
    for row in table_rows(report):
        table.add_row(*row)
    console.print(table)
    accuracy = report["classifier"]["test_accuracy"]
    console.print(f"classifier accuracy on true renders {accuracy:.3f}; {report['vgg']}; {report['fid']}")
    console.print(f"written {folder / 'report.md'}, report.json and figure.png ({report['total_s']:.0f} s)")


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


class _Stages:
    """Stage lines, and one progress bar per training run."""

    def __init__(self, bars: ProgressBars) -> None:
        self.bars = bars
        self.description = "train"

    def stage(self, text: str) -> None:
        self.bars.print(f"[bold]{text}")
        self.description = text

    def training(self, iteration: int, total: int, stats: dict[str, float] | None) -> None:
        self.bars.update(self.description, iteration, total)


def register(app: typer.Typer) -> None:
    benchmark_app.command("synthetic")(synthetic)
    app.add_typer(benchmark_app, name="benchmark")
