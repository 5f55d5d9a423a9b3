"""Training curves: curves.png (Pillow line plots) and TensorBoard event files, from tiny real CPU runs."""

from __future__ import annotations

import errno
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_fixtures import tiny_config
from PIL import Image
from sqlalchemy import Engine
from test_baselines import tiny_baseline
from test_eval_protocol import FEATURES, options, untrained_run
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.config import Settings
from animexpr.model import curves
from animexpr.model.checkpoint import state_path
from animexpr.model.curves import (
    PANELS,
    TrainingCurves,
    curves_image,
    logged_series,
    nice_ticks,
    panel_series,
    write_curves_png,
)
from animexpr.model.evaluate import evaluate_run, headline
from animexpr.model.run import RunWriter
from animexpr.model.run_files import CURVES_PNG, TENSORBOARD_DIR, read_stats_rows
from animexpr.model.train import train


def _stats_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def _has_colour(pixels: np.ndarray, hex_colour: str) -> bool:
    rgb = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return bool((pixels == rgb).all(axis=-1).any())


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def _assert_same_curve(points: list[tuple[int, float]], rows: list[dict[str, Any]], key: str) -> None:
    """TensorBoard's points of `key` are the stats rows' values at their iterations (float32 there)."""
    assert [step for step, _ in points] == [row["iteration"] for row in rows], key
    assert [value for _, value in points] == pytest.approx([row[key] for row in rows], rel=1e-6), key


def test_a_training_run_draws_its_curves(snapshot_dir: Path, tmp_path: Path) -> None:
    result = train(tiny_config(snapshot_dir, variant="ours", log_every=1), tmp_path / "runs")
    pixels = _rgb(result.run_dir / CURVES_PNG)
    # the four panels (D, G, mask, label effect), two a row
    assert pixels.shape == (2 * curves.PANEL_HEIGHT, 2 * curves.PANEL_WIDTH, 3)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # lines, text and grid, not one colour
    for colour in curves._PALETTE[:4]:  # D draws four losses, each in its own colour
        assert _has_colour(pixels, colour)
    series = panel_series(logged_series(_stats_rows(result.run_dir)), PANELS[0])
    assert list(series) == ["D/loss_real", "D/loss_fake", "D/loss_cls", "D/loss_gp"]
    assert [it for it, _ in series["D/loss_real"]] == [1, 2, 3, 4]


def test_the_curves_are_redrawn_at_each_sample_step(
    snapshot_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[int] = []  # how many rows each drawing had
    write = curves.write_curves_png

    def counting_write(rows: list[dict[str, Any]], path: Path) -> bool:
        drawn.append(len(rows))
        return write(rows, path)

    monkeypatch.setattr(curves, "write_curves_png", counting_write)
    train(
        tiny_config(snapshot_dir, variant="stargan", iters=4, log_every=1, sample_every=2), tmp_path / "runs"
    )
    # at iterations 2 and 4, and once more when training stops: never at the other logged iterations
    assert drawn == [2, 4, 4]


def test_tensorboard_event_files_hold_the_logged_scalars(snapshot_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    result = train(tiny_config(snapshot_dir, variant="ours"), tmp_path / "runs")
    scalars = _tensorboard_scalars(result.run_dir / TENSORBOARD_DIR)
    rows = _stats_rows(result.run_dir)
    for key in ("D/loss_real", "D/loss_fake", "D/loss_gp", "G/loss_fake", "G/loss_cx", "G/mask_mean"):
        _assert_same_curve(scalars[key], rows, key)
    assert "G/label_effect" in scalars
    assert "lr" in scalars
    assert "iteration" not in scalars
    assert "kimg" not in scalars


def test_a_resumed_run_replaces_the_tensorboard_events_after_its_checkpoint(
    snapshot_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("tensorboard")
    first = train(tiny_config(snapshot_dir, variant="stargan", log_every=1), tmp_path / "runs")
    # as if killed after iteration 4 and resumed from the checkpoint at 2: iterations 3 and 4 run again
    # with another seed, so their losses differ from the first ones
    again = tiny_config(snapshot_dir, variant="stargan", log_every=1, seed=7)
    resumed = train(again, tmp_path / "runs", resume=str(state_path(first.run_dir, 2)))
    assert resumed.run_dir == first.run_dir
    rows = _stats_rows(resumed.run_dir)
    assert [row["iteration"] for row in rows] == [1, 2, 3, 4]
    scalars = _tensorboard_scalars(resumed.run_dir / TENSORBOARD_DIR)
    _assert_same_curve(scalars["D/loss_real"], rows, "D/loss_real")


def test_a_run_resumed_after_installing_tensorboard_gets_its_whole_history(
    snapshot_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorboard")
    monkeypatch.setattr(curves, "tensorboard_installed", lambda: False)
    first = train(tiny_config(snapshot_dir, variant="stargan", iters=2, log_every=1), tmp_path / "runs")
    assert (first.run_dir / CURVES_PNG).is_file()  # the picture needs no tensorboard
    assert not (first.run_dir / TENSORBOARD_DIR).exists()
    monkeypatch.undo()
    resumed = train(
        tiny_config(snapshot_dir, variant="stargan", iters=4, log_every=1), tmp_path / "runs", resume="auto"
    )
    scalars = _tensorboard_scalars(resumed.run_dir / TENSORBOARD_DIR)
    assert [step for step, _ in scalars["D/loss_fake"]] == [1, 2, 3, 4]


def test_a_baseline_run_draws_its_curves_without_the_mask_panels(snapshot_dir: Path, tmp_path: Path) -> None:
    result = train(tiny_baseline(snapshot_dir, "cyclegan"), tmp_path / "runs")
    pixels = _rgb(result.run_dir / CURVES_PNG)
    # D losses, G losses and the label effect: no attention mask
    assert pixels.shape == (2 * curves.PANEL_HEIGHT, 2 * curves.PANEL_WIDTH, 3)
    rows = _stats_rows(result.run_dir)
    assert panel_series(logged_series(rows), PANELS[2]) == {}
    assert set(panel_series(logged_series(rows), PANELS[1])) == {"G/loss_fake", "G/loss_rec", "G/loss_idt"}


@pytest.mark.slow  # a training run and two evaluations (each trains the expression classifier)
def test_the_evaluation_report_links_the_curves_and_status_shows_its_scores(
    snapshot_dir: Path, tmp_path: Path, settings: Settings, engine: Engine
) -> None:
    runs_root = settings.home / "runs"
    trained = train(tiny_config(snapshot_dir, variant="ours"), runs_root).run_dir
    report = evaluate_run(trained, options=options(tmp_path / "cache"), features=FEATURES)
    assert report["curves"] == CURVES_PNG
    assert "![training curves](curves.png)" in (trained / "eval.md").read_text()
    without_curves = untrained_run(snapshot_dir, runs_root)  # a generator file only: no curves to link
    evaluate_run(without_curves, options=options(tmp_path / "cache"), features=FEATURES)
    assert "curves" not in (without_curves / "eval.md").read_text()

    result = CliRunner().invoke(app, ["--home", str(settings.home), "status", "--json"])
    assert result.exit_code == 0, result.output
    listed = {run["name"]: run for run in json.loads(result.stdout)["runs"]}
    evaluation = listed[trained.name]["evaluation"]
    assert evaluation["fid"] == pytest.approx(headline(report)["fid"])
    assert evaluation["kid_mean"] == pytest.approx(headline(report)["kid_mean"])
    assert (evaluation["protocol"], evaluation["created"]) == ("paper", report["created"])
    assert listed[trained.name]["iterations_done"] == 4


# --- the picture itself, from rows written by hand ---


def _rows(count: int) -> list[dict[str, Any]]:
    return [
        {
            "iteration": 10 * (i + 1),
            "kimg": 0.16 * (i + 1),
            "D/loss_real": -5.0 + math.sin(i / 10),
            "D/loss_fake": 3.0 - math.cos(i / 7),
            "G/loss_fake": 2.0 + i / count,
            "G/label_effect": 0.01 * i,
            "lr": 1e-4,
        }
        for i in range(count)
    ]


def test_rows_cut_short_or_without_an_iteration_are_skipped(tmp_path: Path) -> None:
    stats = tmp_path / "stats.jsonl"
    stats.write_text('{"iteration": 1, "D/loss_real": 0.5}\n["a list"]\n{"kimg": 3}\n{"iteration": 2, "D/lo')
    assert read_stats_rows(stats) == [{"iteration": 1, "D/loss_real": 0.5}]
    assert read_stats_rows(tmp_path / "absent.jsonl") == []


def test_non_finite_values_are_left_out_of_the_curves() -> None:
    rows = [{"iteration": 1, "D/loss_real": 1.0}, {"iteration": 2, "D/loss_real": float("nan")}]
    assert logged_series(rows) == {"D/loss_real": [(1, 1.0)]}


def test_without_rows_no_picture_is_written(tmp_path: Path) -> None:
    assert not write_curves_png([{"iteration": 3, "lr": 1e-4}], tmp_path / CURVES_PNG)
    assert not (tmp_path / CURVES_PNG).exists()


def test_one_row_and_many_rows_both_draw(tmp_path: Path) -> None:
    assert write_curves_png(_rows(1), tmp_path / "one.png")
    assert write_curves_png(_rows(20_000), tmp_path / "many.png")  # thinned to the panel's pixel columns
    many = _rgb(tmp_path / "many.png")
    assert many.shape == (2 * curves.PANEL_HEIGHT, 2 * curves.PANEL_WIDTH, 3)  # D, G, label effect
    assert _has_colour(many, curves._PALETTE[1])


def test_a_constant_curve_still_gets_a_value_axis() -> None:
    rows = [{"iteration": i, "G/label_effect": 0.25} for i in (1, 2, 3)]
    image = curves_image(rows)
    assert image is not None
    assert image.size == (2 * curves.PANEL_WIDTH, curves.PANEL_HEIGHT)


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (-5.3, 2.1), (1.0, 200_000.0), (0.0153, 0.0159)])
def test_ticks_are_round_and_cover_the_range(low: float, high: float) -> None:
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low
    assert ticks[-1] >= high
    assert 3 <= len(ticks) <= 11
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-6


def test_training_curves_without_tensorboard_write_only_the_picture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(curves, "tensorboard_installed", lambda: False)
    stats = tmp_path / "stats.jsonl"
    stats.write_text("".join(json.dumps(row) + "\n" for row in _rows(3)))
    run_curves = TrainingCurves(tmp_path, stats, start_iteration=30)
    run_curves.add(_rows(4)[-1] | {"iteration": 40})
    run_curves.close()
    assert [row["iteration"] for row in run_curves.rows] == [10, 20, 30, 40]
    assert (tmp_path / CURVES_PNG).is_file()
    assert not (tmp_path / TENSORBOARD_DIR).exists()


# --- the curves never stop training ---

DISK_FULL = OSError(errno.ENOSPC, "No space left on device")


def _stats_file(folder: Path) -> Path:
    stats = folder / "stats.jsonl"
    stats.write_text("".join(json.dumps(row) + "\n" for row in _rows(3)))
    return stats


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


def test_a_tensorboard_that_does_not_import_leaves_the_picture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(curves, "tensorboard_installed", lambda: True)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import raises ImportError
    run_curves = TrainingCurves(tmp_path, _stats_file(tmp_path), start_iteration=30)
    run_curves.close()
    assert run_curves.tensorboard is None
    assert (tmp_path / CURVES_PNG).is_file()
    assert len(_warnings(caplog)) == 1
    assert "tensorboard is installed but does not import" in _warnings(caplog)[0]


def test_an_event_folder_that_cannot_be_written_leaves_the_picture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tensorboard = pytest.importorskip("torch.utils.tensorboard")

    def failing_writer(*args: Any, **kwargs: Any) -> Any:
        raise DISK_FULL

    monkeypatch.setattr(tensorboard, "SummaryWriter", failing_writer)
    run_curves = TrainingCurves(tmp_path, _stats_file(tmp_path), start_iteration=30)
    run_curves.add(_rows(4)[-1] | {"iteration": 40})
    run_curves.close()
    assert run_curves.tensorboard is None
    assert (tmp_path / CURVES_PNG).is_file()
    assert [message.split(": ", 1)[1] for message in _warnings(caplog)] == [
        "cannot write TensorBoard events ([Errno 28] No space left on device); training goes on without them"
    ]


def test_training_goes_on_when_the_picture_cannot_be_written(
    snapshot_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(curves, "tensorboard_installed", lambda: False)

    def disk_full(path: Path, data: bytes) -> None:
        raise DISK_FULL

    monkeypatch.setattr(curves, "atomic_write_bytes", disk_full)
    cfg = tiny_config(snapshot_dir, variant="stargan", iters=4, log_every=1, sample_every=2)
    result = train(cfg, tmp_path / "runs")
    assert result.iteration == 4
    assert result.generator_file is not None
    assert result.generator_file.is_file()
    assert not (result.run_dir / CURVES_PNG).exists()
    curve_warnings = [message for message in _warnings(caplog) if "training curves" in message]
    assert len(curve_warnings) == 1  # drawn three times, said once


def test_an_error_closing_the_curves_never_hides_the_error_of_the_loop(
    snapshot_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def failing_samples(self: RunWriter) -> Path:
        raise RuntimeError("the sample grid failed")

    def failing_close(self: TrainingCurves) -> None:
        raise ValueError("closing the curves failed")

    monkeypatch.setattr(RunWriter, "save_samples", failing_samples)
    monkeypatch.setattr(TrainingCurves, "close", failing_close)
    cfg = tiny_config(snapshot_dir, variant="stargan", iters=4, log_every=1, sample_every=2)
    with pytest.raises(RuntimeError, match="the sample grid failed"):
        train(cfg, tmp_path / "runs")
    assert "the training curves could not be finished" in caplog.text
    assert "closing the curves failed" in caplog.text  # the traceback of the second error is logged
