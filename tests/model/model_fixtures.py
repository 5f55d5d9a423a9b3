"""Helpers of the model tests: snapshots (real face crops when ANIMEXPR_ASSETS is set, generated images
otherwise) and tiny training configs.

Until the curate room produces snapshots, the four character folders of assets/faces stand in for four
expression classes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.model.config import TrainConfig
from animexpr.model.data import write_folder_snapshot

GENERATED_CLASSES = ("angry", "sad", "smile", "surprised")


def _generated_faces(root: Path, per_class: int) -> Path:
    """Class-coloured discs on noisy backgrounds, 48 px, as PNG files in class folders."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    for c, label in enumerate(GENERATED_CLASSES):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
            disc = (yy - 24 - i % 5) ** 2 + (xx - 24) ** 2 < (10 + 3 * c) ** 2
            image[disc] = (60 * c, 255 - 60 * c, 40 * i % 255)
            Image.fromarray(image).save(root / label / f"{c}-{i:03d}.png")
    return root


def build_test_snapshot(tmp: Path, per_class: int = 5, test_per_class: int = 1) -> Path:
    """A snapshot folder (dataset.json + manifest.jsonl, files_root ".") under `tmp`."""
    assets = os.environ.get("ANIMEXPR_ASSETS")
    if assets and (Path(assets) / "faces").is_dir():
        class_root = Path(assets) / "faces"
    else:
        class_root = _generated_faces(tmp / "generated", per_class + test_per_class)
    return write_folder_snapshot(
        class_root, tmp / "snapshot", test_per_class, limit=per_class + test_per_class
    )


def tiny_config(data: Path, **overrides: object) -> TrainConfig:
    """Widths small enough for a CPU: 32 px, 8-channel convs, a 4-layer D, random VGG19 (the log says so)."""
    values: dict[str, object] = {
        "data": str(data),
        "iters": 4,
        "batch": 2,
        "image_size": 32,
        "n_critic": 2,
        "g_conv_dim": 8,
        "g_res_blocks": 1,
        "att_res_blocks": 1,
        "d_conv_dim": 8,
        "d_repeat_num": 4,
        "mapping_dim": 16,
        "style_dim": 8,
        "vgg_random": True,  # no ImageNet weights on the test machines: the test says so
        "cx_layer": "relu3_2",
        "device": "cpu",
        "log_every": 2,
        "sample_every": 2,
        "ckpt_every": 2,
        "sample_count": 2,
        "decay_start": 1000,
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def home_with_run(snapshot_dir: Path, tmp_path: Path, variant: str, options: Sequence[str]) -> Path:
    """A home holding `snapshot_dir` as snapshot faces4 and a 2-iteration run of `variant`, trained through
    the command line with `options`."""
    home = tmp_path / "home"
    shutil.copytree(snapshot_dir, home / "snapshots" / "faces4")
    command = ["--home", str(home), "train", "--snapshot", "faces4", "--variant", variant, *options]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert f"trained {variant} to iteration 2" in result.output
    return home
