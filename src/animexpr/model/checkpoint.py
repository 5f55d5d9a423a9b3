"""Run folders and the two kinds of checkpoint (the file names are model/run_files.py's).

- `checkpoints/state-<iteration>.pt`: the full training state (networks, EMA, optimisers, iteration, RNG),
  tensors and primitives only, so `torch.load(weights_only=True)` reads it; written atomically, last K kept.
- `checkpoints/G_ema-<iteration>.safetensors`: the EMA generator's weights for inference, with the training
  config and class names in the metadata.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save
from torch import Tensor

from animexpr.errors import AnimexprError
from animexpr.model.run_files import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    GENERATOR_NAME,
    RUN_NAME,
    SAMPLE_NAME,
    SAMPLES_DIR,
    STATE_NAME,
    STATS_FILE,
    generator_name,
    numbered,
    run_dirs,
    state_name,
    stats_row,
)
from animexpr.store import TEMP_PREFIX, atomic_write_bytes

log = logging.getLogger(__name__)

_MAX_CAUSE_CHARS = 300  # of a library's error message quoted in ours: the start names the problem


class CheckpointError(AnimexprError):
    pass


def unusable(path: Path, what: str, exc: BaseException) -> CheckpointError:
    """A one-line error naming `path`, with the cause (torch's messages span many lines) folded onto it."""
    cause = " ".join(str(exc).split()) or type(exc).__name__
    if len(cause) > _MAX_CAUSE_CHARS:
        cause = cause[: _MAX_CAUSE_CHARS - 3] + "..."
    return CheckpointError(f"{path}: {what} ({cause})")


def state_path(run_dir: Path, iteration: int) -> Path:
    return run_dir / CHECKPOINT_DIR / state_name(iteration)


def generator_path(run_dir: Path, iteration: int) -> Path:
    return run_dir / CHECKPOINT_DIR / generator_name(iteration)


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_training_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise unusable(path, "not a readable training state", exc) from exc
    if not isinstance(state, dict) or "iteration" not in state:
        raise CheckpointError(f"{path}: not an animexpr training state")
    return state


def save_generator(path: Path, weights: dict[str, Tensor], metadata: dict[str, str]) -> None:
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in weights.items()}
    atomic_write_bytes(path, safetensors_save(tensors, metadata=metadata))


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors (on the CPU) and the metadata of a safetensors file.

    OSError when it cannot be read, SafetensorError when it is not a safetensors file.
    """
    with safe_open(path, framework="pt") as handle:
        names = handle.keys()  # safe_open is not iterable (and offset_keys needs safetensors 0.5.3)
        return {name: handle.get_tensor(name) for name in names}, handle.metadata() or {}


def load_generator_file(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        tensors, metadata = read_safetensors(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the generator file ({exc.strerror or exc})") from exc
    except Exception as exc:  # SafetensorError and whatever a damaged header raises
        raise unusable(path, "not a safetensors file", exc) from exc
    if "config" not in metadata or "classes" not in metadata:
        raise CheckpointError(f"{path}: safetensors file without animexpr generator metadata")
    return tensors, metadata


def training_states(run_dir: Path) -> list[tuple[int, Path]]:
    return numbered(run_dir / CHECKPOINT_DIR, STATE_NAME)


def generator_files(run_dir: Path) -> list[tuple[int, Path]]:
    return numbered(run_dir / CHECKPOINT_DIR, GENERATOR_NAME)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` files of each kind."""
    for files in (training_states(run_dir), generator_files(run_dir)):
        for _, path in files[:-keep]:
            path.unlink(missing_ok=True)


def new_run_dir(runs_root: Path, description: str, config_json: str) -> Path:
    """runs_root/<next number>-<description> holding config.json, as NVlabs number their runs.

    The folder is filled under a hidden name and renamed into place, so that a numbered run folder always
    has its config (a kill leaves at most a hidden `.tmp-*` folder, which no command takes for a run).
    """
    runs_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=runs_root))
    try:
        write_run_config(staging, config_json)
        return _rename_to_next_number(staging, runs_root, description)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _rename_to_next_number(staging: Path, runs_root: Path, description: str) -> Path:
    while True:
        numbers = [number for number, _ in numbered(runs_root, RUN_NAME)]
        run_dir = runs_root / f"{max(numbers, default=-1) + 1:05d}-{description}"
        try:
            os.rename(staging, run_dir)  # fails on a folder with contents: another process took the number
        except OSError:
            if run_dir.exists():
                continue
            raise
        return run_dir


def write_run_config(run_dir: Path, config_json: str) -> None:
    atomic_write_bytes(run_dir / CONFIG_FILE, config_json.encode("utf-8"))


def read_run_config(run_dir: Path) -> dict[str, Any]:
    try:
        values: dict[str, Any] = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{run_dir}: no readable {CONFIG_FILE} ({exc})") from exc
    return values


def discard_after(run_dir: Path, iteration: int) -> None:
    """Make the run folder say what the run did up to `iteration` and nothing after it.

    A resumed run continues from its checkpoint at `iteration`; whatever a killed process wrote later
    (stats rows, sample grids, newer checkpoints when resuming from an older state, temporary files)
    would otherwise stand beside what the resumed run writes again. Newer checkpoints go first, so that a
    kill during this leaves a run whose newest checkpoint still matches its stats.
    """
    later = [p for i, p in training_states(run_dir) + generator_files(run_dir) if i > iteration]
    for path in later:
        log.warning("removing %s: the run continues from iteration %d", path, iteration)
        path.unlink(missing_ok=True)
    _truncate_stats(run_dir / STATS_FILE, iteration)
    for sample_iteration, path in numbered(run_dir / SAMPLES_DIR, SAMPLE_NAME):
        if sample_iteration > iteration:
            path.unlink(missing_ok=True)
    for folder in (run_dir, run_dir / CHECKPOINT_DIR, run_dir / SAMPLES_DIR):
        for leftover in folder.glob(f"{TEMP_PREFIX}*"):  # atomic writes a kill cut short
            leftover.unlink(missing_ok=True)


def _truncate_stats(path: Path, iteration: int) -> None:
    """Keep the rows up to `iteration`, atomically; a row cut short by a kill is dropped too."""
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    rows = [(line, stats_row(line)) for line in text.splitlines()]
    new_text = "".join(f"{line}\n" for line, row in rows if row is not None and row["iteration"] <= iteration)
    if new_text != text:
        atomic_write_bytes(path, new_text.encode("utf-8"))


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
