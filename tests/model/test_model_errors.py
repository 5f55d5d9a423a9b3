"""Bad input to train, transform and evaluate: one line naming the problem, no traceback, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import tiny_config
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.errors import AnimexprError
from animexpr.model.checkpoint import CheckpointError, generator_files, load_training_state, training_states
from animexpr.model.device import DeviceError, resolve_device
from animexpr.model.train import train

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


@pytest.fixture
def run_dir(snapshot_dir: Path, tmp_path: Path) -> Path:
    return train(tiny_config(snapshot_dir, variant="ours-no-cx", iters=2), tmp_path / "runs").run_dir


@pytest.fixture
def face(tmp_path: Path) -> Path:
    path = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


def _one_line_error(exc: BaseException | None) -> str:
    assert isinstance(exc, AnimexprError), repr(exc)
    assert "\n" not in str(exc)
    return str(exc)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpu", "--device gpu: not a device name; expected auto, cpu, cuda, cuda:N or mps"),
        ("cuda:x", "--device cuda:x: not a device name"),
        ("", "not a device name"),
        ("meta", "--device meta: meta devices are not supported"),
        pytest.param("cuda", "--device cuda: no CUDA device is available on this machine", marks=no_cuda),
        pytest.param("cuda:1", "--device cuda:1: no CUDA device is available", marks=no_cuda),
        pytest.param(
            "mps",
            "--device mps: no Apple MPS device is available on this machine",
            marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS"),
        ),
    ],
)
def test_a_device_this_machine_lacks_is_one_line(spec: str, message: str) -> None:
    with pytest.raises(DeviceError) as raised:
        resolve_device(spec)
    assert message in _one_line_error(raised.value)


def test_auto_and_cpu_resolve_here() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@no_cuda
def test_transform_on_cuda_without_cuda_is_one_red_line(run_dir: Path, face: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "animexpr", "--home", str(tmp_path / "home"), "transform", str(face)]
    command += ["--all", "--checkpoint", str(run_dir), "--device", "cuda", "-o", str(out)]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --device cuda: no CUDA device is available on this machine"
    assert not out.exists()


@pytest.mark.parametrize(
    "device", [pytest.param("cuda", marks=no_cuda, id="absent"), pytest.param("gpu", id="unknown-name")]
)
def test_train_on_a_missing_device_is_one_line_and_makes_no_run(
    snapshot_dir: Path, tmp_path: Path, device: str
) -> None:
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        app,
        [
            "--home",
            str(tmp_path),
            "train",
            "--snapshot",
            str(snapshot_dir),
            "--device",
            device,
            "--run-dir",
            str(runs),
        ],
    )
    assert f"--device {device}:" in _one_line_error(result.exception)
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.parametrize(
    "device", [pytest.param("cuda", marks=no_cuda, id="absent"), pytest.param("gpu", id="unknown-name")]
)
def test_evaluate_on_a_missing_device_is_one_line(run_dir: Path, tmp_path: Path, device: str) -> None:
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "evaluate", str(run_dir), "--device", device])
    assert f"--device {device}:" in _one_line_error(result.exception)
    assert not (run_dir / "eval.json").exists()


def _transform(tmp_path: Path, face: Path, checkpoint: Path) -> BaseException | None:
    command = ["--home", str(tmp_path), "transform", str(face), "--all", "--checkpoint", str(checkpoint)]
    return CliRunner().invoke(app, [*command, "-o", str(tmp_path / "out")]).exception


def test_transform_refuses_a_truncated_generator_file(run_dir: Path, face: Path, tmp_path: Path) -> None:
    generator = generator_files(run_dir)[-1][1]
    generator.write_bytes(generator.read_bytes()[:200])
    message = _one_line_error(_transform(tmp_path, face, generator))
    assert message.startswith(f"{generator}: not a safetensors file")


def test_transform_refuses_weights_that_do_not_fit_the_config(
    run_dir: Path, face: Path, tmp_path: Path
) -> None:
    generator = generator_files(run_dir)[-1][1]
    weights = load_file(generator)
    with generator.open("rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    dropped = sorted(weights)[0]
    del weights[dropped]
    save_file(weights, generator, metadata=header["__metadata__"])
    message = _one_line_error(_transform(tmp_path, face, generator))
    assert message.startswith(f"{generator}: not a usable animexpr generator")
    assert dropped in message


def test_transform_refuses_a_generator_with_a_broken_config(
    run_dir: Path, face: Path, tmp_path: Path
) -> None:
    generator = generator_files(run_dir)[-1][1]
    weights = load_file(generator)
    save_file(weights, generator, metadata={"config": "{not json", "classes": "[]"})
    message = _one_line_error(_transform(tmp_path, face, generator))
    assert message.startswith(f"{generator}: not a usable animexpr generator")


def test_transform_refuses_a_folder_without_generators(face: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    message = _one_line_error(_transform(tmp_path, face, tmp_path / "empty"))
    assert message == f"no G_ema-*.safetensors under {tmp_path / 'empty'}"


def test_transform_refuses_a_file_that_is_not_an_image(run_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    message = _one_line_error(_transform(tmp_path, text, run_dir))
    assert message.startswith(f"{text}: ")
    assert not (tmp_path / "out").exists()


def test_resume_refuses_a_truncated_state_file(snapshot_dir: Path, run_dir: Path) -> None:
    state = training_states(run_dir)[-1][1]
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as raised:
        train(tiny_config(snapshot_dir, variant="ours-no-cx", iters=4), run_dir.parent, resume="auto")
    assert _one_line_error(raised.value).startswith(f"{state}: not a readable training state")


def test_resume_refuses_a_state_of_other_networks(snapshot_dir: Path, run_dir: Path) -> None:
    path = training_states(run_dir)[-1][1]
    state = load_training_state(path)
    first = sorted(state["G"])[0]
    state["G"][first] = torch.zeros(3)
    torch.save(state, path)
    with pytest.raises(CheckpointError) as raised:
        train(tiny_config(snapshot_dir, variant="ours-no-cx", iters=4), run_dir.parent, resume=str(path))
    message = _one_line_error(raised.value)
    assert message.startswith(f"{path}: does not fit the networks of its run's config.json")
    assert first in message


def test_resume_refuses_a_state_file_outside_a_run(snapshot_dir: Path, run_dir: Path, tmp_path: Path) -> None:
    stray = tmp_path / "state.pt"
    stray.write_bytes(training_states(run_dir)[-1][1].read_bytes())
    with pytest.raises(AnimexprError) as raised:
        train(tiny_config(snapshot_dir, variant="ours-no-cx", iters=4), run_dir.parent, resume=str(stray))
    assert _one_line_error(raised.value) == f"--resume {stray}: not in the checkpoints/ folder of a run"
