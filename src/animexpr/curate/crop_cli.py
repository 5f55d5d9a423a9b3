"""`animexpr crop`: faces out of the downloaded posts, waiting for review."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from animexpr.cli_common import console, get_state, require_store
from animexpr.curate.defaults import CASCADE_ENV, DEFAULT_MARGIN, DEFAULT_SIZE, FacePolicy, default_min_face
from animexpr.errors import ConfigError

if TYPE_CHECKING:
    from animexpr.curate.crop import CropResult, CropSummary

DEFAULT_MIN_FACE = default_min_face(DEFAULT_SIZE, DEFAULT_MARGIN)


class DetectorName(StrEnum):
    LBP = "lbp"
    ANIMEFACE = "animeface"
    WHOLE = "whole"


class _RichCropProgress:
    """A progress bar that starts only once the workers are running (they are forked before its thread)."""

    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("cropping"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[crops]} crops"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task = self.bar.add_task("crop", total=None, crops=0)
        self.crops = 0
        self.started = False

    def start(self, total: int) -> None:
        self.bar.update(self.task, total=total)
        if total:  # in a pipe or a log file the console prints it as a plain line every 30 s instead
            self.bar.start()
            self.started = True

    def advance(self, result: CropResult) -> None:
        self.crops += len(result.crops)
        self.bar.update(self.task, advance=1, crops=self.crops)

    def stop(self) -> None:
        if self.started:  # rich prints an empty line when stopping a bar that never ran
            self.bar.stop()


def crop(
    ctx: typer.Context,
    detector: Annotated[
        DetectorName,
        typer.Option(
            help="lbp (OpenCV cascade), animeface (optional extra), or whole (the pictures are face crops "
            "already: their centred square)."
        ),
    ] = DetectorName.LBP,
    scale_factor: Annotated[float, typer.Option(help="Detector pyramid step (detectMultiScale).")] = 1.1,
    min_neighbors: Annotated[int, typer.Option(help="Overlapping hits a face needs (detectMultiScale).")] = 5,
    min_size: Annotated[int, typer.Option(help="Smallest face the detector looks for, in pixels.")] = 24,
    margin: Annotated[
        float, typer.Option(help="Added around the face box on each side, as a share of its side.")
    ] = DEFAULT_MARGIN,
    size: Annotated[int, typer.Option(help="Side of the square crops, in pixels.")] = DEFAULT_SIZE,
    min_face: Annotated[
        int | None,
        typer.Option(
            help="Skip faces smaller than this (px). Default: the smallest face whose crop needs at most 2x "
            f"upscaling ({DEFAULT_MIN_FACE} at the default size and margin).",
            show_default=False,
        ),
    ] = None,
    faces: Annotated[
        FacePolicy,
        typer.Option(
            help="Posts with several faces: skip them, crop the largest if it is at least twice the next "
            "(largest-if-dominant), always the largest, or all (each labelled with the post's class)."
        ),
    ] = FacePolicy.LARGEST_IF_DOMINANT,
    keep_greyscale: Annotated[bool, typer.Option(help="Crop greyscale pictures too.")] = False,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes. Default: all cores.", show_default=False)
    ] = None,
    cascade: Annotated[
        Path | None,
        typer.Option(
            help=f"The lbpcascade_animeface.xml to use. Default: ${CASCADE_ENV}, else the user cache, "
            "else a download checked against its pinned sha256.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Crop at most this many posts (to try settings).", show_default=False)
    ] = None,
) -> None:
    """Detect anime faces in the downloaded posts and store square crops for review (state pending).

    Posts already cropped with the same detector and settings are left alone, so running it again finishes
    an interrupted run.
    """
    from animexpr.curate import crop as cropping

    state = get_state(ctx)
    require_store(state.settings)  # before the detector, which may download its cascade
    spec = cropping.make_detector_spec(
        str(detector),
        scale_factor=scale_factor,
        min_neighbors=min_neighbors,
        min_size=min_size,
        cascade=cascade,
    )
    try:
        settings = cropping.CropSettings(
            detector=spec,
            margin=margin,
            size=size,
            min_face=min_face,
            faces=cropping.FacePolicy(faces.value),
            keep_greyscale=keep_greyscale,
        )
    except ValueError as exc:
        raise ConfigError(f"crop: {exc}") from exc
    if workers is not None and workers < 1:
        raise ConfigError("crop: --workers must be at least 1")
    progress = _RichCropProgress()
    try:
        summary = cropping.crop_posts(
            state.engine, state.store, settings, workers=workers, limit=limit, progress=progress
        )
    finally:
        progress.stop()
    _print_summary(summary)
    if summary.interrupted:
        # The status a shell gives Ctrl-C. Raised as SystemExit: under standalone_mode=False, click turns
        # both KeyboardInterrupt and typer.Exit into a return value that the entry point does not pass on.
        raise SystemExit(130)


def _print_summary(summary: CropSummary) -> None:
    from animexpr.curate.crop import CropOutcome

    cropped = summary.outcomes.get(CropOutcome.CROPPED, 0)
    others = ", ".join(
        f"{outcome} {count}"
        for outcome, count in sorted(summary.outcomes.items())
        if outcome != CropOutcome.CROPPED
    )
    rate = summary.done / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    head = "interrupted: kept" if summary.interrupted else "cropped"
    console.print(
        f"{head} {summary.done} of {summary.total} posts in {summary.elapsed_s:.1f} s ({rate:.1f} posts/s): "
        f"{summary.crops} crops from {cropped} posts" + (f"; no crop: {others}" if others else ""),
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command()(crop)
