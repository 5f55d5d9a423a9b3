"""Runs killed with SIGKILL, then resumed: the same run folder, one stats row per iteration, exact results.

The kills are real: a child process trains and sends itself SIGKILL from the progress callback, which the
loop calls after the iteration's stats row, sample grid and checkpoint are on disk.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from model_fixtures import tiny_config

from animexpr.model.checkpoint import CheckpointError, load_training_state, training_states
from animexpr.model.config import TrainConfig
from animexpr.model.train import train
from animexpr.store import TEMP_PREFIX

TRAIN_UNTIL_KILLED = """
import os, signal, sys
from pathlib import Path
from animexpr.model.config import TrainConfig
from animexpr.model.train import train

config_file, runs_root, kill_at, resume = sys.argv[1:]

def kill_myself(iteration, total, stats):
    if iteration == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)

train(TrainConfig.from_json(Path(config_file).read_text()), Path(runs_root), resume or None, kill_myself)
"""
TIMING_KEYS = {"ms_per_iter", "images_per_s", "peak_mem_mib"}


def _train_until_killed(cfg: TrainConfig, runs_root: Path, kill_at: int, resume: str = "") -> None:
    config_file = runs_root.parent / "killed-config.json"
    config_file.write_text(cfg.to_json(), encoding="utf-8")
    child = subprocess.run(
        [sys.executable, "-c", TRAIN_UNTIL_KILLED, str(config_file), str(runs_root), str(kill_at), resume],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr


def _stats(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


def _learning_stats(run_dir: Path) -> list[dict[str, Any]]:
    """The rows without the wall-clock figures, which differ between any two runs."""
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in _stats(run_dir)]


def _assert_same_stats(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [row["iteration"] for row in got] == [row["iteration"] for row in expected]
    for got_row, expected_row in zip(got, expected, strict=True):
        assert got_row.keys() == expected_row.keys()
        for key, value in expected_row.items():
            assert got_row[key] == pytest.approx(value, rel=1e-6, abs=1e-7), (got_row["iteration"], key)


def _samples(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "samples").iterdir())


def test_a_run_killed_before_its_first_checkpoint_is_resumed_in_the_same_folder(
    snapshot_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(snapshot_dir, iters=4, log_every=1, sample_every=1, ckpt_every=4)
    straight = train(cfg, tmp_path / "straight")
    runs = tmp_path / "runs"
    _train_until_killed(cfg, runs, kill_at=2)
    (killed_run,) = list(runs.iterdir())
    assert [row["iteration"] for row in _stats(killed_run)] == [1, 2]
    assert training_states(killed_run) == []

    _train_until_killed(cfg, runs, kill_at=3, resume="auto")  # killed again, still before a checkpoint
    assert list(runs.iterdir()) == [killed_run]
    assert [row["iteration"] for row in _stats(killed_run)] == [1, 2, 3]

    resumed = train(cfg, runs, resume="auto")
    assert resumed.run_dir == killed_run
    assert [p.name for p in runs.iterdir()] == ["00000-snapshot-ours"]
    _assert_same_stats(_learning_stats(resumed.run_dir), _learning_stats(straight.run_dir))
    assert _samples(resumed.run_dir) == ["0000001.png", "0000002.png", "0000003.png", "0000004.png"]
    assert [i for i, _ in training_states(resumed.run_dir)] == [4]


def test_a_run_killed_after_a_checkpoint_keeps_one_row_per_iteration_and_matches_a_straight_run(
    snapshot_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(snapshot_dir, iters=4, log_every=1, sample_every=1, ckpt_every=2)
    straight = train(cfg, tmp_path / "straight")
    runs = tmp_path / "runs"
    _train_until_killed(cfg, runs, kill_at=3)
    (killed_run,) = list(runs.iterdir())
    assert [i for i, _ in training_states(killed_run)] == [2]
    # A kill in the middle of the next row and of the next checkpoint's atomic write leaves these too.
    with (killed_run / "stats.jsonl").open("a") as stats:
        stats.write('{"iteration": 4, "D/loss_re')
    (killed_run / "checkpoints" / f"{TEMP_PREFIX}state").write_bytes(b"half a state")

    resumed = train(cfg, runs, resume="auto")
    assert resumed.run_dir == killed_run
    assert [row["iteration"] for row in _stats(resumed.run_dir)] == [1, 2, 3, 4]
    _assert_same_stats(_learning_stats(resumed.run_dir), _learning_stats(straight.run_dir))
    assert _samples(resumed.run_dir) == ["0000001.png", "0000002.png", "0000003.png", "0000004.png"]
    assert not list(resumed.run_dir.rglob(f"{TEMP_PREFIX}*"))
    assert resumed.state_file is not None
    assert straight.state_file is not None
    resumed_state = load_training_state(resumed.state_file)
    straight_state = load_training_state(straight.state_file)
    for name, tensor in straight_state["G_ema"].items():
        assert resumed_state["G_ema"][name].allclose(tensor, rtol=1e-6, atol=1e-7), name


def test_resuming_from_an_older_state_file_drops_what_came_after_it(
    snapshot_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(snapshot_dir, iters=6, log_every=1, sample_every=1, ckpt_every=2)
    first = train(cfg, tmp_path / "runs")
    older = dict(training_states(first.run_dir))[2]
    again = train(
        tiny_config(snapshot_dir, iters=3, log_every=1, sample_every=1, ckpt_every=2),
        tmp_path / "runs",
        resume=str(older),
    )
    assert again.run_dir == first.run_dir
    assert [row["iteration"] for row in _stats(again.run_dir)] == [1, 2, 3]
    assert [i for i, _ in training_states(again.run_dir)] == [2, 3]
    assert _samples(again.run_dir) == ["0000001.png", "0000002.png", "0000003.png"]


def test_resume_auto_takes_the_newest_run_of_the_snapshot_and_variant(
    snapshot_dir: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    trained = train(tiny_config(snapshot_dir, iters=2), runs)
    train(tiny_config(snapshot_dir, iters=2, variant="stargan"), runs)
    resumed = train(tiny_config(snapshot_dir, iters=4), runs, resume="auto")
    assert resumed.run_dir == trained.run_dir
    assert resumed.iteration == 4
    assert [row["iteration"] for row in _stats(resumed.run_dir)] == [2, 4]


def test_resume_refuses_a_folder_that_is_not_a_run(snapshot_dir: Path, tmp_path: Path) -> None:
    not_a_run = tmp_path / "holiday-photos"
    not_a_run.mkdir()
    with pytest.raises(CheckpointError, match=r"holiday-photos: no readable config\.json"):
        train(tiny_config(snapshot_dir, iters=2), tmp_path / "runs", resume=str(not_a_run))
    assert not (not_a_run / "config.json").exists()


def test_resume_refuses_a_run_without_checkpoint_of_another_variant(
    snapshot_dir: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    _train_until_killed(tiny_config(snapshot_dir, iters=4, ckpt_every=4, variant="stargan"), runs, kill_at=1)
    (stargan_run,) = list(runs.iterdir())
    with pytest.raises(Exception, match="without a checkpoint; start a new run instead"):
        train(tiny_config(snapshot_dir, iters=2), runs, resume=str(stargan_run))
    assert TrainConfig.from_json((stargan_run / "config.json").read_text()).variant == "stargan"
