"""The names of the files in a run folder, written once, and the readers of its listings and stats rows.

`runs/<number>-<description>/` holds config.json, stats.jsonl, samples/<iteration>.png,
checkpoints/state-<iteration>.pt and checkpoints/G_ema-<iteration>.safetensors, curves.png (and tensorboard/
with the tensorboard package), and eval.json, eval.md and eval/ once it is evaluated. This module imports
nothing heavy, so that `animexpr status` reads runs without loading torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
STATS_FILE = "stats.jsonl"
CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
CURVES_PNG = "curves.png"
TENSORBOARD_DIR = "tensorboard"
EVAL_JSON = "eval.json"
EVAL_TABLE = "eval.md"
EVAL_DIR = "eval"  # the translated images, with --save-images

RUN_NAME = re.compile(r"^(\d+)-")  # <number>-<description>; a hidden `.tmp-*` folder is a run being set up
STATE_NAME = re.compile(r"^state-(\d+)\.pt$")
GENERATOR_NAME = re.compile(r"^G_ema-(\d+)\.safetensors$")
SAMPLE_NAME = re.compile(r"^(\d+)\.png$")


def state_name(iteration: int) -> str:
    return f"state-{iteration:07d}.pt"


def generator_name(iteration: int) -> str:
    return f"G_ema-{iteration:07d}.safetensors"


def sample_name(iteration: int) -> str:
    return f"{iteration:07d}.png"


def numbered(folder: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    """The entries of `folder` whose names `pattern` numbers (its first group), by number; [] without it."""
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), path) for path in folder.iterdir() if (m := pattern.match(path.name)))


def run_dirs(runs_root: Path) -> list[Path]:
    """The numbered run folders under `runs_root`, oldest first (a hidden `.tmp-*` folder is no run yet)."""
    return [path for _, path in numbered(runs_root, RUN_NAME) if path.is_dir()]


def stats_row(line: str) -> dict[str, Any] | None:
    """One line of stats.jsonl as a row, or None for a line cut short by a kill or a row with no iteration."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("iteration"), int) else None


def read_stats_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a stats.jsonl that say where they were logged ([] without the file)."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [row for line in lines if (row := stats_row(line)) is not None]
