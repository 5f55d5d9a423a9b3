"""`status` lists the training runs of the home folder: how far each got, its latest evaluation, and what
cannot be read in a broken run folder (in words, never a traceback), from the run's small files only.

The run folders here are written file by file as training and evaluate write them; a real trained and
evaluated run is listed in tests/model/test_curves.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from animexpr import status as status_module
from animexpr.cli import app
from animexpr.config import Settings
from animexpr.model.config import TrainConfig

runner = CliRunner()  # its output is not a terminal: whole lines
CHECKPOINT_TIME = 1_796_601_600  # 2026-12-07 00:00:00 UTC
RUN_KEYS = {
    "name",
    "path",
    "variant",
    "image_size",
    "iterations_done",
    "iterations_planned",
    "last_checkpoint",
    "evaluation",
    "problems",
}
EVALUATION_KEYS = {"fid", "kid_mean", "kid_std", "protocol", "created", "iteration", "generator"}


def _trained_run(runs_root: Path, name: str, variant: str = "ours", logged: tuple[int, ...] = (2, 4)) -> Path:
    """config.json, stats.jsonl (its last row cut short by a kill) and the checkpoints at the last row."""
    run_dir = runs_root / name
    (run_dir / "checkpoints").mkdir(parents=True)
    config = TrainConfig(data="/data/snapshot", variant=variant, iters=10, image_size=64)
    (run_dir / "config.json").write_text(config.to_json())
    rows = [{"iteration": it, "kimg": it * 0.016, "D/loss_real": -1.5, "G/loss_fake": 0.7} for it in logged]
    (run_dir / "stats.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows) + '{"iteration": 5, "D/l'
    )
    for kind in ("state-{:07d}.pt", "G_ema-{:07d}.safetensors"):
        path = run_dir / "checkpoints" / kind.format(logged[-1])
        path.write_bytes(b"weights")
        os.utime(path, (CHECKPOINT_TIME, CHECKPOINT_TIME))
    return run_dir


def _eval_report(protocol: str, fid: float, kid_mean: float) -> dict[str, Any]:
    """The keys of an eval.json that `status` reads, with the values evaluate writes there."""
    scores = {"fid": fid, "kid_mean": kid_mean, "kid_std": 0.001, "n_generated": 30, "n_real": 10}
    other = {"fid": 999.0, "kid_mean": 9.0, "kid_std": 0.5, "n_generated": 30, "n_real": 10}
    return {
        "format": "animexpr-eval-2",
        "created": "2026-12-07T01:02:03+00:00",
        "kind": "run",
        "protocol": protocol,
        "iteration": 4,
        "generator": "G_ema-0000004.safetensors",
        "per_class": {"smile": other},
        "pooled": scores if protocol == "paper" else None,
        "mean": scores if protocol == "per-class" else other,
    }


@pytest.fixture
def runs_root(settings: Settings, engine: Engine) -> Path:
    """The runs folder of a home that has a store."""
    return settings.home / "runs"


def _status_json(home: Path) -> dict[str, Any]:
    result = runner.invoke(app, ["--home", str(home), "status", "--json"])
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_status_lists_trained_evaluated_and_broken_runs(settings: Settings, runs_root: Path) -> None:
    trained = _trained_run(runs_root, "00000-snap-ours")
    evaluated = _trained_run(runs_root, "00001-snap-stargan", variant="stargan")
    (evaluated / "eval.json").write_text(json.dumps(_eval_report("paper", 52.07, 0.0130)))
    (runs_root / "00002-snap-ours").mkdir()  # made by hand: no config.json
    broken = _trained_run(runs_root, "00010-snap-ours", logged=(2,))
    (broken / "config.json").write_text('{"variant": "ours", "it')  # cut short
    (broken / "eval.json").write_text("[1, 2]")
    (runs_root / ".tmp-k2j3h4").mkdir()  # a new run being set up
    (runs_root / "notes").mkdir()
    (runs_root / "00003-a-file").write_text("not a run")

    runs = _status_json(settings.home)["runs"]

    assert [run["name"] for run in runs] == [
        "00000-snap-ours",
        "00001-snap-stargan",
        "00002-snap-ours",
        "00010-snap-ours",
    ]
    assert all(set(run) == RUN_KEYS for run in runs)
    first, second, empty, cut = runs
    assert first == {
        "name": "00000-snap-ours",
        "path": str(trained),
        "variant": "ours",
        "image_size": 64,
        "iterations_done": 4,
        "iterations_planned": 10,
        "last_checkpoint": {"iteration": 4, "time": "2026-12-07T00:00:00+00:00"},
        "evaluation": None,
        "problems": [],
    }
    assert second["evaluation"] == {
        "fid": 52.07,
        "kid_mean": 0.0130,
        "kid_std": 0.001,
        "protocol": "paper",
        "created": "2026-12-07T01:02:03+00:00",
        "iteration": 4,
        "generator": "G_ema-0000004.safetensors",
    }
    assert set(second["evaluation"]) == EVALUATION_KEYS
    assert (empty["variant"], empty["iterations_done"], empty["problems"]) == (None, 0, ["no config.json"])
    assert cut["problems"] == ["config.json is not valid JSON (cut short?)", "eval.json is not a JSON object"]
    assert (cut["iterations_done"], cut["last_checkpoint"]["iteration"]) == (2, 2)


def test_the_status_table_shows_each_run_in_one_line(settings: Settings, runs_root: Path) -> None:
    _trained_run(runs_root, "00000-snap-ours")
    evaluated = _trained_run(runs_root, "00001-snap-stargan", variant="stargan")
    (evaluated / "eval.json").write_text(json.dumps(_eval_report("paper", 52.07, 0.0130)))
    (runs_root / "00002-snap-ours").mkdir()

    result = runner.invoke(app, ["--home", str(settings.home), "status"])

    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines() if "-snap-" in line}
    assert "ours" in lines["00000-snap-ours"]
    assert "4 / 10" in lines["00000-snap-ours"]
    assert "4 (2026-12-07 00:00 UTC)" in lines["00000-snap-ours"]
    assert "not evaluated" in lines["00000-snap-ours"]
    assert (
        "FID 52.07, KID×1e3 13.00 (paper, iteration 4, 2026-12-07 01:02 UTC)" in lines["00001-snap-stargan"]
    )
    assert "no config.json; not evaluated" in lines["00002-snap-ours"]
    assert "Traceback" not in result.output


def test_the_headline_figures_are_those_evaluate_reports(runs_root: Path) -> None:
    from animexpr.model.evaluate import headline

    for protocol in ("paper", "per-class"):
        report = _eval_report(protocol, 61.5, 0.021)
        summary = status_module.evaluation_summary(report, [])
        assert summary is not None
        assert (summary["fid"], summary["kid_mean"]) == (
            headline(report)["fid"],
            headline(report)["kid_mean"],
        )


def test_an_eval_json_without_scores_or_with_odd_values_is_said_in_words(
    settings: Settings, runs_root: Path
) -> None:
    run_dir = _trained_run(runs_root, "00000-snap-ours")
    (run_dir / "eval.json").write_text(json.dumps({"protocol": "paper", "pooled": None}))
    assert _status_json(settings.home)["runs"][0]["problems"] == [
        "eval.json holds no scores; run `animexpr evaluate` on it again"
    ]
    odd = _eval_report("paper", 50.0, 0.01) | {"iteration": "four", "created": 7}
    odd["pooled"]["fid"] = "high"
    (run_dir / "eval.json").write_text(json.dumps(odd))
    evaluation = _status_json(settings.home)["runs"][0]["evaluation"]
    assert (evaluation["fid"], evaluation["iteration"], evaluation["created"]) == (None, None, None)
    table = runner.invoke(app, ["--home", str(settings.home), "status"])
    assert "FID -, KID×1e3 10.00 (paper, iteration ?, ?)" in table.output


def test_a_run_that_has_not_logged_yet_is_at_iteration_0(settings: Settings, runs_root: Path) -> None:
    run_dir = runs_root / "00000-snap-ours"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(TrainConfig(data="/data/snapshot").to_json())
    (run,) = _status_json(settings.home)["runs"]
    assert (run["iterations_done"], run["iterations_planned"]) == (0, 200_000)
    assert (run["last_checkpoint"], run["evaluation"], run["problems"]) == (None, None, [])


def test_a_config_that_is_no_training_config_is_said(settings: Settings, runs_root: Path) -> None:
    run_dir = runs_root / "00000-mine"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text('{"lr": 0.1}')
    (run,) = _status_json(settings.home)["runs"]
    assert run["problems"] == ["config.json names no variant: not a training config"]


def test_a_home_without_runs(settings: Settings, engine: Engine) -> None:
    assert _status_json(settings.home)["runs"] == []
    result = runner.invoke(app, ["--home", str(settings.home), "status"])
    assert "runs: none" in result.output


_MODULES_AFTER_STATUS = """
import sys
from animexpr.cli import main
sys.argv = ["animexpr", "--home", sys.argv[1], "status"]
try:
    main()
except SystemExit:
    pass
print(" ".join(sorted({name.split(".")[0] for name in sys.modules})), file=sys.stderr)
"""


def test_status_reads_runs_without_torch_or_numpy(settings: Settings, runs_root: Path) -> None:
    evaluated = _trained_run(runs_root, "00000-snap-ours")
    (evaluated / "eval.json").write_text(json.dumps(_eval_report("paper", 52.07, 0.0130)))
    result = subprocess.run(
        [sys.executable, "-c", _MODULES_AFTER_STATUS, str(settings.home)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "FID 52.07" in result.stdout
    loaded = set(result.stderr.strip().splitlines()[-1].split())
    assert loaded.isdisjoint({"torch", "numpy", "matplotlib", "PIL", "scipy", "cv2"})
