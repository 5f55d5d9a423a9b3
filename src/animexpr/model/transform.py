"""Turn faces into other expressions with a trained generator (the EMA weights of a run).

Full illustrations are cut into faces first by a cropper, a function RGB image -> face crops that the caller
provides (the CLI passes the curate room's); already-cropped faces go straight in. The baselines (CycleGAN,
ComboGAN) translate from a known class: they need the source class of the faces (`source`, `--from`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from animexpr.errors import AnimexprError
from animexpr.images import ImageDecodeError, decode_image
from animexpr.model.baselines import build_baseline_generator
from animexpr.model.checkpoint import latest_generator, load_generator_file, unusable
from animexpr.model.config import CropMode, TrainConfig
from animexpr.model.data import resize_square
from animexpr.model.device import resolve_device
from animexpr.model.grid import grid_labels, save_png, translation_grid
from animexpr.model.networks import Generator

log = logging.getLogger(__name__)

Cropper = Callable[[np.ndarray], list[np.ndarray]]  # RGB uint8 illustration -> RGB uint8 face crops


@dataclass(frozen=True)
class LoadedGenerator:
    # networks.Generator or a baseline's baselines.PairTranslator; both are called as
    # generator(x, target one-hot, source one-hot or None) -> (y, mask or None) and say `needs_source`.
    generator: torch.nn.Module
    classes: tuple[str, ...]
    config: TrainConfig
    iteration: int
    source: Path
    device: torch.device

    def class_index(self, name: str) -> int:
        if name not in self.classes:
            raise AnimexprError(f"unknown class {name!r}; this generator knows {', '.join(self.classes)}")
        return self.classes.index(name)


def load_generator(checkpoint: Path, device: str | torch.device = "cpu") -> LoadedGenerator:
    """The EMA generator from a G_ema-*.safetensors file, a run folder or a folder of runs (newest)."""
    target = resolve_device(device)  # a missing GPU is one line, before any file is read
    path = latest_generator(Path(checkpoint))
    weights, metadata = load_generator_file(path)
    try:
        config = TrainConfig.from_json(metadata["config"])
        classes = tuple(str(name) for name in json.loads(metadata["classes"]))
        iteration = int(metadata.get("iteration", 0))
        generator: torch.nn.Module
        if config.is_baseline:  # every pair generator (CycleGAN) or encoder and decoder (ComboGAN)
            generator = build_baseline_generator(config, len(classes))
        else:
            generator = Generator(len(classes), config.spec, config)
        generator.load_state_dict(weights)
    except (RuntimeError, ValueError, TypeError, KeyError, AnimexprError) as exc:  # tampered or foreign
        raise unusable(path, "not a usable animexpr generator", exc) from exc
    generator.requires_grad_(False).eval()
    return LoadedGenerator(generator.to(target), classes, config, iteration, path, target)


def checked_source(loaded: LoadedGenerator, source: str | None) -> int | None:
    """The index of the faces' class `source`; a clear error when the generator needs one and has none."""
    if source is None:
        if bool(getattr(loaded.generator, "needs_source", False)):
            raise AnimexprError(
                f"{loaded.config.variant} translates from a known class: give the class of the faces "
                f"(--from CLASS, one of {', '.join(loaded.classes)})"
            )
        return None
    return loaded.class_index(source)


def to_tensor(faces: Sequence[np.ndarray], image_size: int, device: torch.device) -> torch.Tensor:
    """RGB uint8 faces of any size -> (B, 3, S, S) in [-1, 1]."""
    batch = np.stack([resize_square(face, image_size) for face in faces])
    return torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1


def _onehot(loaded: LoadedGenerator, index: int, count: int) -> torch.Tensor:
    labels = torch.full((count,), index, dtype=torch.long, device=loaded.device)
    return torch.nn.functional.one_hot(labels, len(loaded.classes)).float()


@torch.no_grad()
def translate(
    loaded: LoadedGenerator, faces: Sequence[np.ndarray], targets: Sequence[int], source: int | None = None
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor] | None]:
    """Inputs (of class `source`, if known), their translations to each class in `targets` and the masks
    (None without a mask network)."""
    x = to_tensor(faces, loaded.config.image_size, loaded.device)
    source_onehot = None if source is None else _onehot(loaded, source, len(x))
    outputs, masks = [], []
    for target in targets:
        y, m = loaded.generator(x, _onehot(loaded, target, len(x)), source_onehot)
        outputs.append(y)
        if m is not None:
            masks.append(m)
    return x, outputs, (masks or None)


def transform_face(
    loaded: LoadedGenerator, face: np.ndarray, target: str, source: str | None = None
) -> np.ndarray:
    """One face (RGB uint8, of the class `source` if known) as the class `target`: an RGB uint8 image of the
    model's size."""
    source_index = checked_source(loaded, source)
    _, outputs, _ = translate(loaded, [face], [loaded.class_index(target)], source_index)
    return ((outputs[0][0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def centre_square(image: np.ndarray) -> np.ndarray:
    """The largest square in the middle of a picture: a face stand-in that is never squashed."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


def faces_of(
    image: np.ndarray, cropper: Cropper | None, crop: CropMode, name: str = "the picture"
) -> list[np.ndarray]:
    """The faces to transform in one picture: itself when it is a crop, the cropper's faces otherwise.

    `auto` treats a square picture as an already-cropped face (crops are square) and crops the others;
    `always` crops every picture. With either, a picture where no face is found gives its centre square, with
    a warning; without a cropper, `auto` does the same and `always` is an error.
    """
    square = abs(image.shape[0] - image.shape[1]) <= 0.02 * max(image.shape[:2])
    if crop == "never" or (crop == "auto" and square):
        return [image]
    if cropper is None:
        if crop == "always":
            raise AnimexprError("no face cropper is available to crop the illustration")
        log.warning("%s: no face cropper available; transforming its centre square", name)
        return [centre_square(image)]
    faces = cropper(image)
    if not faces:
        log.warning("%s: no face found; transforming its centre square", name)
        return [centre_square(image)]
    return faces


def transform_images(
    paths: Sequence[Path],
    loaded: LoadedGenerator,
    out_dir: Path,
    target: str | None = None,
    cropper: Cropper | None = None,
    crop: CropMode = "auto",
    source: str | None = None,
) -> list[Path]:
    """Write `<stem>[-face<i>]-<class>.png` for one target, or a grid `<stem>[-face<i>]-all.png` for all.

    Two inputs with the same stem (a/face.png and b/face.png, face.png and face.jpg) would write the same
    file: the later one gets a number (`face-2-smile.png`) and a warning says so, so no output is lost.
    `source` is the class of every face given (needed by the baselines; the others ignore it).
    """
    source_index = checked_source(loaded, source)
    targets = [loaded.class_index(target)] if target is not None else list(range(len(loaded.classes)))
    written = []
    names = OutputNames()
    for path in paths:
        try:
            image = decode_image(path).rgb
        except ImageDecodeError as exc:
            raise AnimexprError(f"{path}: {exc}") from exc
        faces = faces_of(image, cropper, crop, str(path))
        for i, face in enumerate(faces):
            stem = path.stem if len(faces) == 1 else f"{path.stem}-face{i}"
            x, outputs, masks = translate(loaded, [face], targets, source_index)
            out = out_dir / names.claim(stem, target or "all", path)
            if target is not None:
                save_png(translation_grid(outputs[0], [], None), out)
            else:
                labels = grid_labels([loaded.classes[t] for t in targets])
                save_png(translation_grid(x, outputs, masks, labels), out)
            written.append(out)
    return written


class OutputNames:
    """The file names one transform run writes, kept distinct: a name already written in this run gets the
    first free number after the stem. Compared case-insensitively, as macOS and Windows folders do."""

    def __init__(self) -> None:
        self.taken: dict[str, Path] = {}  # casefolded name -> the input that wrote it

    def claim(self, stem: str, suffix: str, source: Path) -> str:
        name = f"{stem}-{suffix}.png"
        if name.casefold() in self.taken:
            first = self.taken[name.casefold()]
            number = 2
            while f"{stem}-{number}-{suffix}.png".casefold() in self.taken:
                number += 1
            unique = f"{stem}-{number}-{suffix}.png"
            log.warning(
                "%s: %s is already written from %s in this run; writing %s", source, name, first, unique
            )
            name = unique
        self.taken[name.casefold()] = source
        return name
