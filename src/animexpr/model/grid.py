"""Translation grids: each input next to its translation into every class, with the masks beneath."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from animexpr.store import atomic_write_bytes


def to_uint8_images(x: Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] (or a mask in [0, 1] with C = 1, scaled first) -> (B, H, W, 3) uint8."""
    x = x.detach().float().cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1) * 2 - 1
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def translation_grid(
    inputs: Tensor,
    outputs: Sequence[Tensor],
    masks: Sequence[Tensor] | None,
    column_labels: Sequence[str] | None = None,
) -> np.ndarray:
    """Rows: [input, output for class 0, ..., class C-1], followed by [blank, mask 0, ..., mask C-1] if masks.

    `outputs[c]` and `masks[c]` are the batch translated to class c; returns one (H_total, W_total, 3) image,
    under a header row naming each column when `column_labels` is given.
    """
    columns_images = [to_uint8_images(inputs)] + [to_uint8_images(o) for o in outputs]
    batch, height, width, _ = columns_images[0].shape
    rows = []
    for i in range(batch):
        rows.append(np.concatenate([col[i] for col in columns_images], axis=1))
        if masks is not None:
            blank = np.full((height, width, 3), 255, dtype=np.uint8)
            mask_images = [to_uint8_images(m)[i] for m in masks]
            rows.append(np.concatenate([blank, *mask_images], axis=1))
    if column_labels is not None:
        rows.insert(0, _header(column_labels, width))
    return np.concatenate(rows, axis=0)


def grid_labels(classes: Sequence[str]) -> list[str]:
    """The column names of a translation grid: the input, then the class each column translates to."""
    return ["input", *classes]


def _label_font_size(column_width: int) -> int:
    return max(9, min(16, column_width // 7))


def header_height(column_width: int) -> int:
    """Pixels the column labels add above a grid of `column_width` px columns."""
    return round(_label_font_size(column_width) * 1.6)


def _header(labels: Sequence[str], column_width: int) -> np.ndarray:
    """A white strip with each label centred over its column."""
    font = ImageFont.load_default(size=_label_font_size(column_width))
    height = header_height(column_width)
    strip = Image.new("RGB", (column_width * len(labels), height), "white")
    draw = ImageDraw.Draw(strip)
    for index, label in enumerate(labels):
        centre = (index + 0.5) * column_width
        draw.text((centre, height / 2), label, fill="black", font=font, anchor="mm")
    return np.asarray(strip)


def save_png(image: np.ndarray, path: Path) -> None:
    """Write an RGB uint8 array as PNG, atomically."""
    from io import BytesIO

    buffer = BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
