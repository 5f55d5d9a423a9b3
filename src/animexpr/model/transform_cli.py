"""`animexpr transform`: faces (or full pictures, cropped first) turned into other expressions.

torch and the model modules are imported inside the command, so that every other command starts fast.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from animexpr.cli_common import JsonOption, console, get_settings, print_json
from animexpr.curate.defaults import DETECTOR_HELP, DetectorName
from animexpr.model.config import DEVICE_CHOICES, CropMode

if TYPE_CHECKING:
    from animexpr.model.transform import Cropper

log = logging.getLogger(__name__)


def _opt(help_text: str, **kwargs: Any) -> Any:
    return typer.Option(help=help_text, show_default=True, **kwargs)


def transform(
    ctx: typer.Context,
    images: Annotated[list[Path], typer.Argument(help="Face crops or full illustrations.", exists=True)],
    to: Annotated[str | None, _opt("Target class.")] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="The class of the faces given; cyclegan and combogan need it, the others ignore it.",
        ),
    ] = None,
    all_classes: Annotated[
        bool, typer.Option("--all", help="A grid with every class (and the masks).")
    ] = False,
    checkpoint: Annotated[
        Path | None, _opt("G_ema-*.safetensors, a run folder or a runs folder (default: HOME/runs).")
    ] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("."),
    crop: Annotated[CropMode, _opt("auto (crop non-square pictures), always or never.")] = "auto",
    detector: Annotated[
        DetectorName | None, typer.Option(help=f"Finds the faces in pictures to crop: {DETECTOR_HELP}")
    ] = None,
    cascade: Annotated[
        Path | None,
        typer.Option(
            help="The lbpcascade_animeface.xml that finds the faces in pictures to crop, as `crop` takes it. "
            "Default: $ANIMEXPR_CASCADE, else the user cache, else a download checked against its pinned "
            "sha256.",
            show_default=False,
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    device: Annotated[str, _opt(f"{DEVICE_CHOICES}.")] = "cpu",
    as_json: JsonOption = False,
) -> None:
    """Turn faces into another expression (--to CLASS) or into every one (--all).

    Outputs are named after their input (`face-smile.png`, `face-all.png`); when two inputs share a name,
    the later one's outputs get a number (`face-2-smile.png`). A picture where the detector finds no face is
    transformed by its centre square (and a warning says so).
    """
    if (to is None) == (not all_classes):
        raise typer.BadParameter("give exactly one of --to CLASS and --all")
    from animexpr.model.transform import load_generator, transform_images

    settings = get_settings(ctx)
    loaded = load_generator(checkpoint or settings.runs_dir, device)
    cropper = _curate_cropper(cascade, None if detector is None else detector.value)
    written = transform_images(images, loaded, out, to, cropper, crop, source)
    summary = {
        "written": [str(path) for path in written],
        "out": str(out),
        "variant": loaded.config.variant,
        "iteration": loaded.iteration,
        "checkpoint": str(loaded.source),
    }
    if as_json:
        print_json(summary)
        return
    console.print(
        f"{len(written)} image(s) written to {out} by {summary['variant']} "
        f"(iteration {summary['iteration']}, {loaded.source.name})"
    )


def _curate_cropper(cascade: Path | None = None, detector: str | None = None) -> Cropper:
    """The curate room's face cropper (`animexpr.curate.crop.crop_faces`) with `detector` (default: crop's
    default, `choose_detector`) and the LBP cascade `cascade` (else found as `crop` finds it).

    The detector is set up on the first picture that needs cropping, once: square face crops need none, so
    they are transformed on a machine without a cascade.
    """
    from animexpr.curate import crop as module  # opencv: imported by this command only, as torch is

    settings: list[Any] = []  # the crop settings, made on first use

    def crop_faces(rgb: Any) -> Any:
        if not settings:
            choice = module.choose_detector(detector)
            log.info("finding faces with the %s detector (%s)", choice.name, choice.reason)
            spec = module.make_detector_spec(choice.name, cascade=cascade)
            settings.append(module.CropSettings(detector=spec, faces=module.FacePolicy.ALL))
        return module.crop_faces(rgb, settings[0])

    return crop_faces
