"""Translation grids: inputs, translations and masks in rows, columns named in a header."""

from __future__ import annotations

import numpy as np
import torch

from animexpr.model.grid import grid_labels, translation_grid


def test_the_header_names_every_column_above_it() -> None:
    x = torch.zeros(2, 3, 32, 32)
    plain = translation_grid(x, [x, x], None)
    labelled = translation_grid(x, [x, x], None, grid_labels(["smile", "sad"]))
    header = labelled[: labelled.shape[0] - plain.shape[0]]
    assert labelled.shape[1] == plain.shape[1] == 3 * 32
    assert np.array_equal(labelled[header.shape[0] :], plain)
    for column in range(3):
        ink = header[:, column * 32 : (column + 1) * 32] < 128
        assert ink.any(), f"column {column} has no label"


def test_labels_are_the_input_then_the_classes() -> None:
    assert grid_labels(["angry", "sad"]) == ["input", "angry", "sad"]
