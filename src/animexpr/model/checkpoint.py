"""Run folders and the two kinds of checkpoint.

- `checkpoints/state-<iteration>.pt`: the full training state (networks, EMA, optimisers, iteration, RNG),
  tensors and primitives only, so `torch.load(weights_only=True)` reads it; written atomically, last K kept.
- `checkpoints/G_ema-<iteration>.safetensors`: the EMA generator's weights for inference, with the training
  config and class names in the metadata.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor

from animexpr.errors import AnimexprError
from animexpr.store import atomic_write_bytes

CONFIG_FILE = "config.json"
STATS_FILE = "stats.jsonl"
CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
_STATE_PATTERN = re.compile(r"^state-(\d+)\.pt$")
_GENERATOR_PATTERN = re.compile(r"^G_ema-(\d+)\.safetensors$")
_RUN_PATTERN = re.compile(r"^(\d+)-")


class CheckpointError(AnimexprError):
    pass


def state_path(run_dir: Path, iteration: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"state-{iteration:07d}.pt"


def generator_path(run_dir: Path, iteration: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"G_ema-{iteration:07d}.safetensors"


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_training_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise CheckpointError(f"{path}: not a readable training state ({exc})") from exc
    if not isinstance(state, dict) or "iteration" not in state:
        raise CheckpointError(f"{path}: not an animexpr training state")
    return state


def save_generator(path: Path, weights: dict[str, Tensor], metadata: dict[str, str]) -> None:
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in weights.items()}
    atomic_write_bytes(path, safetensors_save(tensors, metadata=metadata))


def load_generator_file(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    data = path.read_bytes()
    try:
        tensors = safetensors_load(data)
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__", {})
    except Exception as exc:
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from exc
    if "config" not in metadata or "classes" not in metadata:
        raise CheckpointError(f"{path}: safetensors file without animexpr generator metadata")
    return tensors, metadata


def _numbered(folder: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name))]
    return sorted(found)


def training_states(run_dir: Path) -> list[tuple[int, Path]]:
    return _numbered(run_dir / CHECKPOINT_DIR, _STATE_PATTERN)


def generator_files(run_dir: Path) -> list[tuple[int, Path]]:
    return _numbered(run_dir / CHECKPOINT_DIR, _GENERATOR_PATTERN)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` files of each kind."""
    for files in (training_states(run_dir), generator_files(run_dir)):
        for _, path in files[:-keep]:
            path.unlink(missing_ok=True)


def new_run_dir(runs_root: Path, description: str) -> Path:
    """runs_root/<next number>-<description>, as NVlabs number their runs."""
    runs_root.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in runs_root.iterdir() if (m := _RUN_PATTERN.match(p.name))]
    run_dir = runs_root / f"{max(numbers, default=-1) + 1:05d}-{description}"
    run_dir.mkdir()
    return run_dir


def run_dirs(runs_root: Path) -> list[Path]:
    if not runs_root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in runs_root.iterdir() if (m := _RUN_PATTERN.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def read_run_config(run_dir: Path) -> dict[str, Any]:
    try:
        values: dict[str, Any] = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{run_dir}: no readable {CONFIG_FILE} ({exc})") from exc
    return values


def latest_generator(path: Path) -> Path:
    """A generator file itself, the newest one of a run folder, or that of the newest run in a runs folder."""
    if path.is_file():
        return path
    if generator_files(path):
        return generator_files(path)[-1][1]
    for run_dir in reversed(run_dirs(path)):
        if generator_files(run_dir):
            return generator_files(run_dir)[-1][1]
    raise CheckpointError(f"no G_ema-*.safetensors under {path}")
