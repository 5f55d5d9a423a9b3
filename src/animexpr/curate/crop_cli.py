"""`animexpr crop`: faces out of the downloaded posts, waiting for review."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from animexpr.cli_common import (
    EXIT_INTERRUPTED,
    JsonOption,
    ProgressBars,
    console,
    get_state,
    print_json,
    require_store,
)
from animexpr.curate.cli_shared import Workers
from animexpr.curate.defaults import (
    CASCADE_ENV,
    DEFAULT_MARGIN,
    DEFAULT_SIZE,
    DETECTOR_HELP,
    DetectorName,
    FacePolicy,
    default_min_face,
)
from animexpr.errors import ConfigError

if TYPE_CHECKING:
    from animexpr.curate.crop import CropResult, CropSummary
    from animexpr.curate.detect import DetectorChoice

DEFAULT_MIN_FACE = default_min_face(DEFAULT_SIZE, DEFAULT_MARGIN)


class _CropProgress:
    """The crop stage's progress (start once the workers run, advance per post, stop) as a bar."""

    def __init__(self) -> None:
        self.bars = ProgressBars()
        self.total = self.done = self.crops = 0

    def start(self, total: int) -> None:
        self.total = total

    def advance(self, result: CropResult) -> None:
        self.done += 1
        self.crops += len(result.crops)
        self.bars.update("cropping", self.done, self.total, f"{self.crops} crops")

    def stop(self) -> None:
        self.bars.close()


def crop(
    ctx: typer.Context,
    detector: Annotated[
        DetectorName | None,
        typer.Option(
            help=f"{DETECTOR_HELP} A store cropped before keeps the detector of its latest crops.",
            show_default=False,
        ),
    ] = None,
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
    workers: Workers = None,
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
    as_json: JsonOption = False,
    box: Annotated[
        tuple[int, int, int, int] | None,
        typer.Option(
            metavar="POST X Y S",
            help="Crop one face by hand instead of detecting: the final crop square at X, Y with side S, in "
            "the post's original pixels (inside the picture, S at least half the crop size). Accepted at "
            "once as --reviewer, as the review page's hand crops; replaces the post's earlier hand crop.",
            show_default=False,
        ),
    ] = None,
    boxes: Annotated[
        Path | None,
        typer.Option(
            help="Hand crops from a UTF-8 CSV with the header post_id,x,y,size (as --box): bad lines are "
            "reported by number, the good ones applied as one batch that `review undo` takes back.",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
    reviewer: Annotated[
        str | None,
        typer.Option(help="Who made the hand crops (default: your login name).", show_default=False),
    ] = None,
) -> None:
    """Detect anime faces in the downloaded posts and store square crops for review (state pending).

    Posts already cropped with the same detector and settings are left alone, so running it again finishes
    an interrupted run. With --box or --boxes it makes hand crops instead (the detector options are not
    used; --size only when given, else the size of the latest detected crop).
    """
    from animexpr.curate import crop as cropping

    state = get_state(ctx)
    require_store(state.settings)  # before the detector, which may download its cascade
    if box is not None or boxes is not None:
        from animexpr.curate.review_cli import crop_by_hand

        # By name: typer carries its own copy of click, whose enum is not click.core's.
        source = ctx.get_parameter_source("size")
        given_size = size if source is not None and source.name == "COMMANDLINE" else None
        crop_by_hand(ctx, box, boxes, reviewer, given_size, as_json)
        return
    choice = cropping.choose_store_detector(state.engine, None if detector is None else detector.value)
    spec = cropping.make_detector_spec(
        choice.name,
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
    progress = _CropProgress()
    try:
        summary = cropping.crop_posts(
            state.engine, state.store, settings, workers=workers, limit=limit, progress=progress
        )
    finally:
        progress.stop()
    figures = summary_figures(summary, choice)
    if as_json:
        print_json(figures)
    else:
        _print_summary(figures)
    if summary.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


def summary_figures(summary: CropSummary, choice: DetectorChoice) -> dict[str, Any]:
    """The run's figures, printed as the summary line or, with --json, as one JSON object."""
    from animexpr.curate.crop import CropOutcome

    return {
        "detector": choice.name,
        "detector_reason": choice.reason,
        "settings_key": summary.settings_key,
        "total": summary.total,
        "done": summary.done,
        "crops": summary.crops,
        "cropped_posts": summary.outcomes.get(CropOutcome.CROPPED, 0),
        "outcomes": dict(sorted(summary.outcomes.items())),
        "interrupted": summary.interrupted,
        "elapsed_s": round(summary.elapsed_s, 3),
        "posts_per_s": round(summary.done / summary.elapsed_s, 3) if summary.elapsed_s > 0 else 0.0,
    }


def _print_summary(figures: dict[str, Any]) -> None:
    from animexpr.curate.crop import CropOutcome

    others = ", ".join(
        f"{outcome} {count}"
        for outcome, count in figures["outcomes"].items()
        if outcome != CropOutcome.CROPPED
    )
    head = "interrupted: kept" if figures["interrupted"] else "cropped"
    console.print(
        f"{head} {figures['done']} of {figures['total']} posts in {figures['elapsed_s']:.1f} s "
        f"({figures['posts_per_s']:.1f} posts/s): {figures['crops']} crops from "
        f"{figures['cropped_posts']} posts" + (f"; no crop: {others}" if others else ""),
        highlight=False,
    )
    console.print(f"detector {figures['detector']} ({figures['detector_reason']})", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(crop)
