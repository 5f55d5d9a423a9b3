"""`animexpr train` and `animexpr transform` through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import home_with_run
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
    return home_with_run(snapshot_dir, tmp_path, "ours-no-cx", TINY_OPTIONS)


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


@pytest.mark.parametrize(
    ("option", "value"), [("--precision", "fp64"), ("--lr-schedule", "cosine"), ("--mapping-init", "xavier")]
)
def test_train_choices_are_checked_by_the_command_line(
    option: str, value: str, snapshot_dir: Path, tmp_path: Path
) -> None:
    command = ["--home", str(tmp_path), "train", "--snapshot", str(snapshot_dir), option, value, "--dry-run"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output  # a usage error, before anything is read or built
    assert value in unwrapped(result.output)


def _noise_image(path: Path, seed: int, size: tuple[int, int] = (40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_transform_gives_inputs_of_the_same_name_their_own_outputs(
    trained_home: Path, tmp_path: Path
) -> None:
    inputs = [
        _noise_image(tmp_path / "a" / "face.png", 1),
        _noise_image(tmp_path / "b" / "face.png", 2),
        _noise_image(tmp_path / "c" / "Face.jpg", 3),  # one name on a case-insensitive disk
        _noise_image(tmp_path / "d" / "face-2.png", 4),  # already the name a numbered output would take
    ]
    out = tmp_path / "out"
    target = json.loads((trained_home / "snapshots" / "faces4" / "dataset.json").read_text())["classes"][1]
    command = ["--home", str(trained_home), "transform", *map(str, inputs), "--to", target, "-o", str(out)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "4 image(s) written" in result.output
    names = sorted(path.name for path in out.iterdir())
    assert names == sorted(
        [f"face-{target}.png", f"face-2-{target}.png", f"Face-3-{target}.png", f"face-2-2-{target}.png"]
    )
    pictures = {np.asarray(Image.open(out / name)).tobytes() for name in names}
    assert len(pictures) == 4  # four inputs, four different translations: none overwrote another
    warning = f"{inputs[1]}: face-{target}.png is already written from {inputs[0]} in this run; writing"
    assert warning in unwrapped(result.output)


def test_transform_takes_the_cascade_that_its_error_message_names(
    trained_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANIMEXPR_CASCADE", raising=False)
    monkeypatch.setenv("ANIMEXPR_CACHE", str(tmp_path / "empty-cache"))
    wide = _noise_image(tmp_path / "wide.png", 5, size=(90, 40))  # not square: it is cropped first
    square = _noise_image(tmp_path / "square.png", 6)
    not_a_cascade = tmp_path / "cascade.xml"
    not_a_cascade.write_text("<opencv_storage></opencv_storage>")
    base = ["--home", str(trained_home), "transform", "--all", "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*base, str(wide), "--cascade", str(not_a_cascade)])
    assert result.exit_code == 1
    assert f"{not_a_cascade} is not a cascade OpenCV can load" in str(result.exception)
    # Face crops need no cascade: a bad one is not even read.
    result = CliRunner().invoke(app, [*base, str(square), "--cascade", str(not_a_cascade)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, [*base, str(square), "--cascade", str(tmp_path / "missing.xml")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_transform_crops_an_illustration_with_the_given_cascade(
    trained_home: Path, tmp_path: Path, assets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANIMEXPR_CASCADE", raising=False)
    monkeypatch.setenv("ANIMEXPR_CACHE", str(tmp_path / "empty-cache"))  # nothing cached, no download
    illustration = tmp_path / "scene.jpg"
    illustration.write_bytes((assets_dir / "illustration-grid.jpg").read_bytes())  # 37 faces
    out = tmp_path / "out"
    command = ["--home", str(trained_home), "transform", str(illustration), "--all", "--crop", "always"]
    command += ["--detector", "lbp"]  # the cascade is what this test is about (animeface would take a minute)
    cascade = assets_dir / "lbpcascade_animeface.xml"
    result = CliRunner().invoke(app, [*command, "-o", str(out), "--cascade", str(cascade)])
    assert result.exit_code == 0, result.output
    faces = sorted(path.name for path in out.iterdir())
    assert len(faces) >= 30
    assert all(name.startswith("scene-face") and name.endswith("-all.png") for name in faces)
