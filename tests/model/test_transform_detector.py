"""`transform` on full illustrations: crop's detectors, and the centre square where no face is found."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_model_cli import trained_home  # noqa: F401 (a fixture shared with the command-line tests)
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.images import decode_image
from animexpr.model.transform import centre_square, faces_of


def test_centre_square_is_never_squashed() -> None:
    wide = np.arange(40 * 90 * 3, dtype=np.uint32).reshape(40, 90, 3).astype(np.uint8)
    assert centre_square(wide).shape == (40, 40, 3)
    assert np.array_equal(centre_square(wide), wide[:, 25:65])
    tall = np.zeros((91, 30, 3), np.uint8)
    assert centre_square(tall).shape == (30, 30, 3)
    assert centre_square(tall[:30]).shape == (30, 30, 3)


def test_no_face_found_says_so_and_takes_the_centre_square(caplog: pytest.LogCaptureFixture) -> None:
    wide = np.random.default_rng(1).integers(0, 255, (50, 90, 3), dtype=np.uint8)
    with caplog.at_level(logging.WARNING):
        faces = faces_of(wide, lambda image: [], "auto", "scene.png")
    assert len(faces) == 1
    assert np.array_equal(faces[0], wide[:, 20:70])
    assert caplog.messages == ["scene.png: no face found; transforming its centre square"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        faces = faces_of(wide, None, "auto", "scene.png")  # no cropper at all: the same, never squashed
    assert faces[0].shape == (50, 50, 3)
    assert "no face cropper available" in caplog.messages[0]


def _picture(path: Path, rgb: np.ndarray) -> Path:
    Image.fromarray(rgb).save(path)
    return path


def test_transform_takes_crops_detector_option(
    trained_home: Path,  # noqa: F811
    tmp_path: Path,
    assets_dir: Path,
) -> None:
    cascade = assets_dir / "lbpcascade_animeface.xml"
    grid = decode_image(assets_dir / "illustration-grid.jpg").rgb
    # One illustration of the grid (one face), made wider with white so that it is cropped first.
    scene = np.full((512, 700, 3), 255, np.uint8)
    scene[:, :512] = grid[:512, 512:1024]
    blank = np.full((200, 320, 3), 255, np.uint8)
    pictures = [_picture(tmp_path / "scene.png", scene), _picture(tmp_path / "blank.png", blank)]
    out = tmp_path / "out"
    command = ["--home", str(trained_home), "transform", *map(str, pictures), "--to", "gura", "-o", str(out)]
    result = CliRunner().invoke(app, [*command, "--detector", "lbp", "--cascade", str(cascade)])
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.iterdir()) == ["blank-gura.png", "scene-gura.png"]
    output = result.output.replace("\n", " ")
    assert "finding faces with the lbp detector (chosen with --detector)" in output
    assert "blank.png: no face found; transforming its centre square" in output
    assert "scene.png: no face found" not in output
    result = CliRunner().invoke(app, [*command, "--detector", "yolo"])
    assert result.exit_code == 2
    assert "lbp+animeface" in result.output  # the choices are listed
