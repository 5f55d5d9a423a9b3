"""End to end: `animexpr demo` at a small size runs every stage offline; each stage's counts are checked."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from animexpr import demo
from animexpr.demo import write_scripted_decisions
from animexpr.errors import AnimexprError

PER_CLASS = 8
CLASSES = 4
BAD_KINDS_PER_CLASS = 5  # the fake server's ambiguous, excluded, deleted, banned and video posts


def test_demo_runs_every_stage_with_the_expected_counts(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    unset = ("ANIMEXPR_ASSETS", "ANIMEXPR_HOME", "ANIMEXPR_DB", "ANIMEXPR_INCEPTION")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env |= {"NO_ALBUMENTATIONS_UPDATE": "1", "ANIMEXPR_CACHE": str(tmp_path / "cache"), "COLUMNS": "120"}
    command = [sys.executable, "-m", "animexpr", "demo", "--home", str(home)]
    result = subprocess.run(
        [*command, "--per-class", str(PER_CLASS), "--iters", "20"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "draws cartoon faces itself" in result.stdout
    assert "expression accuracy" in result.stdout  # what the model learned, on drawn faces it never saw
    assert "skipping `evaluate`" in result.stdout  # an empty cache: the demo stays offline

    status = json.loads(_cli(env, home, "status", "--json"))
    downloaded = PER_CLASS * CLASSES
    assert status["posts"]["downloaded"] == downloaded
    assert status["posts"]["skipped"] == BAD_KINDS_PER_CLASS * CLASSES
    rejected = downloaded // 10
    assert status["crops"] == {"pending": 0, "accepted": downloaded - rejected, "rejected": rejected}
    # expand doubles the accepted originals, counting near-duplicate drawings once
    distinct = _distinct_accepted_crops(home / "animexpr.sqlite3")
    assert status["augmented"] == 2 * (downloaded - rejected) - distinct
    assert distinct >= (downloaded - rejected) * 0.9
    assert status["snapshots"] == ["demo"]

    dataset = json.loads((home / "snapshots" / "demo" / "dataset.json").read_text())
    assert sum(dataset["split_sizes"].values()) == len(
        (home / "snapshots" / "demo" / "manifest.jsonl").read_text().splitlines()
    )
    run = home / "runs" / "00000-rendered-snapshot-ours"  # the model trains on 2,000 drawn identities
    assert list((run / "checkpoints").glob("G_ema-*.safetensors"))
    assert list((run / "samples").glob("*.png"))
    assert len(list((home / "transformed").glob("*.png"))) == 1

    # A second demo in the same folder starts afresh instead of piling onto the first.
    again = subprocess.run(
        [*command, "--per-class", "4", "--iters", "10", "--no-evaluate"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(_cli(env, home, "status", "--json"))["posts"]["downloaded"] == 4 * CLASSES


def _distinct_accepted_crops(database: Path) -> int:
    """Accepted crops, a cluster of near-duplicates counted once (what `expand` counts as originals)."""
    with sqlite3.connect(database) as connection:
        query = "SELECT id, duplicate_cluster FROM crops WHERE state = 'accepted'"
        rows = connection.execute(query).fetchall()
    return len({cluster if cluster is not None else -crop_id for crop_id, cluster in rows})


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = subprocess.run(
        [sys.executable, "-m", "animexpr", "demo", "--home", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "holds something other than an earlier demo" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_scripted_review_rejects_the_weakest_tenth(tmp_path: Path) -> None:
    queue = tmp_path / "queue.csv"
    rows = ["crop_id,state,label,detection_score"] + [f"{i},pending,smile,{i}" for i in range(1, 21)]
    queue.write_text("\n".join([*rows, "99,accepted,sad,0"]) + "\n")
    decisions = tmp_path / "decisions.csv"
    assert write_scripted_decisions(queue, decisions) == {"accepted": 18, "rejected": 2}
    lines = decisions.read_text().splitlines()
    assert lines[0] == "crop_id,state,label"
    assert {line for line in lines if "rejected" in line} == {"1,rejected,smile", "2,rejected,smile"}
    assert not any(line.startswith("99,") for line in lines)  # decided crops are left alone


def _cli(env: dict[str, str], home: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "animexpr", "--home", str(home), *args],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )  # fmt: skip
    return result.stdout


def test_the_closing_hints_name_a_command_that_runs_in_a_new_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    from animexpr import demo

    venv_command = Path(sys.executable).parent / "animexpr"
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)  # a new shell without the venv activated
    assert Path(demo.runnable_command()).resolve() == venv_command.resolve()
    monkeypatch.setattr(demo.shutil, "which", lambda name: str(venv_command))  # the venv is active
    assert demo.runnable_command() == "animexpr"


class _StepReturning:
    """A root command whose every step ends with `status`, as click's main returns it without exiting."""

    def __init__(self, status: int) -> None:
        self.status = status

    def main(self, args: list[str], *, standalone_mode: bool) -> int:
        return self.status


def test_an_interrupted_step_stops_the_demo_as_interrupted_a_failed_one_as_an_error(tmp_path: Path) -> None:
    with pytest.raises(typer.Exit) as stopped:  # the step said "interrupted" already: no second line
        demo._Stepper(_StepReturning(130), tmp_path, None).run("crop")
    assert stopped.value.exit_code == 130
    with pytest.raises(AnimexprError, match="`crop` failed with status 1"):
        demo._Stepper(_StepReturning(1), tmp_path, None).run("crop")
    demo._Stepper(_StepReturning(0), tmp_path, None).run("crop")
