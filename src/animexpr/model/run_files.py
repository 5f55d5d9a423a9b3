"""The names of the files in a run folder, written once.

`runs/<number>-<description>/` holds config.json, stats.jsonl, samples/<iteration>.png,
checkpoints/state-<iteration>.pt and checkpoints/G_ema-<iteration>.safetensors, and eval.json once it is
evaluated. This module imports nothing heavy, so that `animexpr status` reads runs without loading torch.
"""

from __future__ import annotations

import re

CONFIG_FILE = "config.json"
STATS_FILE = "stats.jsonl"
CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
EVAL_JSON = "eval.json"

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
