"""`animexpr train` and `animexpr transform` through the real command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.model.grid import header_height
from animexpr.model.transform import faces_of

TINY_OPTIONS = [
    "--image-size=32",
    "--batch=2",
    "--n-critic=2",
    "--iters=2",
    "--g-conv-dim=8",
    "--g-res-blocks=1",
    "--att-res-blocks=1",
    "--d-conv-dim=8",
    "--d-repeat-num=4",
    "--mapping-dim=16",
    "--style-dim=8",
    "--log-every=2",
    "--sample-every=2",
    "--ckpt-every=2",
    "--device=cpu",
]


@pytest.fixture
def trained_home(snapshot_dir: Path, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(snapshot_dir, home / "snapshots" / "faces4")
    result = CliRunner().invoke(
        app, ["--home", str(home), "train", "--snapshot", "faces4", "--variant", "ours-no-cx", *TINY_OPTIONS]
    )
    assert result.exit_code == 0, result.output
    assert "trained ours-no-cx to iteration 2" in result.output
    return home


def unwrapped(output: str) -> str:
    """The console's output with its line wrapping undone (it wraps at 80 columns under the test runner)."""
    return output.replace("\n", "")


def _face(tmp_path: Path, size: tuple[int, int] = (40, 40)) -> Path:
    path = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(path)
    return path


def test_train_finds_the_snapshot_by_name_and_writes_a_run(trained_home: Path) -> None:
    runs = list((trained_home / "runs").iterdir())
    assert [r.name for r in runs] == ["00000-snapshot-ours-no-cx"]  # named by dataset.json
    assert (runs[0] / "checkpoints" / "G_ema-0000002.safetensors").is_file()


def test_resuming_a_finished_run_says_there_is_nothing_to_do(trained_home: Path) -> None:
    command = ["--home", str(trained_home), "train", "--snapshot", "faces4", "--variant", "ours-no-cx"]
    result = CliRunner().invoke(app, [*command, *TINY_OPTIONS, "--resume", "auto"])
    assert result.exit_code == 0, result.output
    assert "00000-snapshot-ours-no-cx is already at iteration 2 (--iters 2): nothing to do" in unwrapped(
        result.output
    )
    assert [r.name for r in (trained_home / "runs").iterdir()] == ["00000-snapshot-ours-no-cx"]


def test_transform_to_one_class_and_to_all(trained_home: Path, tmp_path: Path) -> None:
    face = _face(tmp_path)
    out = tmp_path / "out"
    target = json.loads((trained_home / "snapshots" / "faces4" / "dataset.json").read_text())["classes"][2]
    runner = CliRunner()
    result = runner.invoke(
        app, ["--home", str(trained_home), "transform", str(face), "--to", target, "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    single = Image.open(out / f"face-{target}.png")
    assert single.size == (32, 32)
    result = runner.invoke(
        app, ["--home", str(trained_home), "transform", str(face), "--all", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    # input + 4 classes; images and masks, under the column labels
    assert Image.open(out / "face-all.png").size == (32 * 5, header_height(32) + 32 * 2)


def test_transform_refuses_an_unknown_class_and_a_missing_choice(trained_home: Path, tmp_path: Path) -> None:
    face = _face(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["--home", str(trained_home), "transform", str(face), "--to", "sleepy"])
    assert result.exit_code != 0
    assert "unknown class 'sleepy'" in str(result.exception)
    result = runner.invoke(app, ["--home", str(trained_home), "transform", str(face)])
    assert result.exit_code != 0


def test_full_illustrations_go_through_the_cropper_and_crops_do_not() -> None:
    calls = []

    def cropper(image: np.ndarray) -> list[np.ndarray]:
        calls.append(image.shape)
        return [image[:10, :10], image[10:20, 10:20]]

    square = np.zeros((50, 50, 3), dtype=np.uint8)
    wide = np.zeros((50, 90, 3), dtype=np.uint8)
    assert len(faces_of(square, cropper, "auto")) == 1
    assert len(faces_of(wide, cropper, "auto")) == 2
    assert len(faces_of(square, cropper, "always")) == 2
    assert len(faces_of(wide, cropper, "never")) == 1
    assert calls == [(50, 90, 3), (50, 50, 3)]


def test_dry_run_prints_the_config_and_parameter_counts(snapshot_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "--home",
            str(tmp_path),
            "train",
            "--snapshot",
            str(snapshot_dir),
            "--variant",
            "stargan",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "8,427,392" in result.output  # StarGAN's generator for 4 classes
    assert "44,753,856" in result.output
