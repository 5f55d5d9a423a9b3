"""The run around a trainer: planning a run writes nothing, a failed start leaves no run folder, and which
folders are runs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from model_fixtures import tiny_config

from animexpr.demo import newest_run
from animexpr.errors import AnimexprError
from animexpr.model.checkpoint import new_run_dir
from animexpr.model.run import plan_run, record_run
from animexpr.model.run_files import CONFIG_FILE, run_dirs
from animexpr.model.train import train
from animexpr.model.vgg import VGG19_ENV_VARIABLE, WeightsMissingError


@pytest.fixture
def no_vgg_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No VGG19 file in any place the loader looks; downloads are refused (ANIMEXPR_OFFLINE=1 in tests)."""
    monkeypatch.delenv(VGG19_ENV_VARIABLE, raising=False)
    for variable in ("ANIMEXPR_CACHE", "XDG_CACHE_HOME", "TORCH_HOME"):
        monkeypatch.setenv(variable, str(tmp_path / "empty-cache" / variable))


@pytest.mark.usefixtures("no_vgg_weights")
def test_a_failed_vgg_fetch_leaves_no_run_folder(snapshot_dir: Path, tmp_path: Path) -> None:
    runs_root = tmp_path / "runs"
    cfg = tiny_config(snapshot_dir, variant="ours", vgg_random=False)
    with pytest.raises(WeightsMissingError) as failure:
        train(cfg, runs_root, vgg_download=True)
    assert "\n" not in str(failure.value)
    assert "forbids downloads" in str(failure.value)
    assert not runs_root.exists() or not list(runs_root.iterdir())


@pytest.mark.usefixtures("no_vgg_weights")
def test_a_failed_vgg_fetch_leaves_a_resumed_runs_config_alone(snapshot_dir: Path, tmp_path: Path) -> None:
    runs_root = tmp_path / "runs"
    cfg = tiny_config(snapshot_dir, variant="ours", vgg_random=False)
    run_dir = new_run_dir(runs_root, "snapshot-ours", cfg.to_json())  # killed before its first checkpoint
    before = (run_dir / CONFIG_FILE).read_text(encoding="utf-8")
    with pytest.raises(WeightsMissingError):
        train(replace(cfg, iters=8), runs_root, resume="auto", vgg_download=True)
    assert (run_dir / CONFIG_FILE).read_text(encoding="utf-8") == before
    assert run_dirs(runs_root) == [run_dir]


def test_planning_a_new_run_writes_nothing_until_it_is_recorded(snapshot_dir: Path, tmp_path: Path) -> None:
    runs_root = tmp_path / "runs"
    cfg = tiny_config(snapshot_dir)
    plan = plan_run(cfg, runs_root, resume="auto")  # nothing to resume: a new run
    assert (plan.run_dir, plan.cfg, plan.state_file, plan.saved) == (None, cfg, None, None)
    assert not runs_root.exists()
    run_dir = record_run(plan, cfg, runs_root, "snapshot-ours")
    assert run_dir == runs_root / "00000-snapshot-ours"
    assert (run_dir / CONFIG_FILE).read_text(encoding="utf-8") == cfg.to_json()


def test_a_run_without_checkpoint_is_planned_again_with_the_settings_given_now(
    snapshot_dir: Path, tmp_path: Path
) -> None:
    runs_root = tmp_path / "runs"
    run_dir = new_run_dir(runs_root, "snapshot-ours", tiny_config(snapshot_dir).to_json())
    before = (run_dir / CONFIG_FILE).read_text(encoding="utf-8")
    longer = tiny_config(snapshot_dir, iters=40, lr=5e-4)
    plan = plan_run(longer, runs_root, resume=str(run_dir))
    assert (plan.run_dir, plan.cfg, plan.state_file) == (run_dir, longer, None)
    assert (run_dir / CONFIG_FILE).read_text(encoding="utf-8") == before  # not yet
    assert record_run(plan, plan.cfg, runs_root, "unused") == run_dir
    assert (run_dir / CONFIG_FILE).read_text(encoding="utf-8") == longer.to_json()


def test_a_run_of_other_data_without_checkpoint_is_not_resumed(snapshot_dir: Path, tmp_path: Path) -> None:
    runs_root = tmp_path / "runs"
    other = tiny_config(tmp_path / "other-snapshot")
    run_dir = new_run_dir(runs_root, "other-ours", other.to_json())
    with pytest.raises(AnimexprError, match="without a checkpoint; start a new run instead"):
        plan_run(tiny_config(snapshot_dir), runs_root, resume=str(run_dir))


def test_resume_takes_a_state_file_only_from_a_checkpoints_folder(snapshot_dir: Path, tmp_path: Path) -> None:
    stray = tmp_path / "state-0000004.pt"
    stray.write_bytes(b"")
    with pytest.raises(AnimexprError, match="not in the checkpoints/ folder of a run"):
        plan_run(tiny_config(snapshot_dir), tmp_path / "runs", resume=str(stray))
    with pytest.raises(AnimexprError, match="neither 'auto', a run folder nor a state file"):
        plan_run(tiny_config(snapshot_dir), tmp_path / "runs", resume=str(tmp_path / "missing"))


def test_a_damaged_training_image_leaves_no_run_folder(snapshot_dir: Path, tmp_path: Path) -> None:
    first = json.loads((snapshot_dir / "manifest.jsonl").read_text(encoding="utf-8").splitlines()[0])
    (snapshot_dir / first["file"]).write_bytes(b"not a picture any more")
    runs_root = tmp_path / "runs"
    with pytest.raises(AnimexprError):
        train(tiny_config(snapshot_dir), runs_root)
    assert not runs_root.exists() or not list(runs_root.iterdir())


def test_run_folders_are_ordered_by_number_and_a_staging_folder_is_no_run(tmp_path: Path) -> None:
    runs_root = tmp_path / "runs"
    for name in ("00009-snap-ours", "00010-snap-ours", ".tmp-k2j3h4", "notes"):
        (runs_root / name).mkdir(parents=True)
    (runs_root / "00011-a-file").write_text("not a run")
    assert [path.name for path in run_dirs(runs_root)] == ["00009-snap-ours", "00010-snap-ours"]
    assert run_dirs(tmp_path / "absent") == []
    (runs_root / "9-by-hand").mkdir()  # the number counts, not the name as text
    assert [path.name for path in run_dirs(runs_root)][-1] == "00010-snap-ours"
    assert newest_run(tmp_path) == runs_root / "00010-snap-ours"  # the demo's home holds runs/ as well


def test_the_demo_says_when_its_home_has_no_run(tmp_path: Path) -> None:
    (tmp_path / "runs" / ".tmp-k2j3h4").mkdir(parents=True)  # a train step killed while setting up
    with pytest.raises(AnimexprError, match="no training run"):
        newest_run(tmp_path)
