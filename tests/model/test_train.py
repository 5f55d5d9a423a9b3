"""Tiny real training runs on the CPU: every variant, resume, checkpoints, NaN stop, Ctrl-C."""

from __future__ import annotations

import copy
import json
import math
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from model_fixtures import tiny_config

from animexpr.model import train as train_module
from animexpr.model.checkpoint import generator_files, load_training_state, training_states
from animexpr.model.config import VARIANTS, TrainConfig
from animexpr.model.cuda_graphs import (
    clone_optimizer_state,
    portable_optimizer_state,
    restore_optimizer_state,
    set_learning_rate,
    use_tensor_learning_rates,
)
from animexpr.model.data import load_snapshot
from animexpr.model.networks import Generator
from animexpr.model.run import training_data
from animexpr.model.train import (
    NonFiniteLossError,
    Trainer,
    ema_weight,
    label_effect,
    learning_rate,
    schedule_change,
    train,
)
from animexpr.model.transform import load_generator
from animexpr.model.vgg import load_vgg19_features


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains_a_few_iterations(variant: str, snapshot_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_config(snapshot_dir, variant=variant)
    result = train(cfg, tmp_path / "runs")
    assert result.iteration == 4
    assert not result.interrupted
    run = result.run_dir
    assert run.name == f"00000-snapshot-{variant}"
    # config.json also says which VGG19 the contextual loss used
    recorded_vgg = "random" if cfg.spec.identity_loss == "contextual" else None
    assert TrainConfig.from_json((run / "config.json").read_text()) == replace(cfg, vgg_sha256=recorded_vgg)
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [2, 4]
    for key in ("D/loss_real", "D/loss_fake", "D/loss_cls", "D/loss_gp", "G/loss_fake", "G/loss_cls", "lr"):
        assert key in rows[-1]
    assert ("G/loss_cx" in rows[-1]) == (variant == "ours")
    assert ("G/mask_mean" in rows[-1]) == cfg.spec.attention_mask
    assert "ms_per_iter" in rows[-1]
    assert "images_per_s" in rows[-1]
    assert rows[-1]["G/label_effect"] > 0  # every variant's G answers to the target class from the start
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["0000002.png", "0000004.png"]
    assert [i for i, _ in training_states(run)] == [2, 4]
    assert [i for i, _ in generator_files(run)] == [2, 4]


def test_sample_grid_has_inputs_by_every_class_and_the_masks(snapshot_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    from animexpr.model.grid import header_height

    result = train(tiny_config(snapshot_dir, sample_count=3, iters=2), tmp_path / "runs")
    grid = Image.open(result.run_dir / "samples" / "0000002.png")
    # input + 4 classes; an image row and a mask row each, under the column labels
    assert grid.size == (32 * (1 + 4), header_height(32) + 32 * 3 * 2)


def test_learning_rate_decays_linearly_to_zero() -> None:
    cfg = TrainConfig(data="", iters=200_000, decay_start=100_000, lr=1e-4)
    assert learning_rate(cfg, 0) == 1e-4
    assert learning_rate(cfg, 99_999) == 1e-4
    assert learning_rate(cfg, 100_000) == pytest.approx(1e-4)
    assert learning_rate(cfg, 150_000) == pytest.approx(0.5e-4)
    assert learning_rate(cfg, 199_999) == pytest.approx(1e-9)
    assert learning_rate(cfg, 200_000) == 0.0
    assert learning_rate(TrainConfig(data="", iters=10, decay_start=50), 9) == 1e-4


def test_the_stargan_schedule_subtracts_a_step_every_1000_iterations_as_the_official_code() -> None:
    # solver.py: after iteration i, if (i+1) % 1000 == 0 and (i+1) > num_iters - num_iters_decay:
    # lr -= lr0 / num_iters_decay
    cfg = TrainConfig(data="", iters=200_000, decay_start=100_000, lr=1e-4, lr_schedule="stargan")
    step = 1e-4 / 100_000
    assert learning_rate(cfg, 100_000) == 1e-4
    assert learning_rate(cfg, 100_999) == 1e-4
    assert learning_rate(cfg, 101_000) == pytest.approx(1e-4 - step)
    assert learning_rate(cfg, 199_999) == pytest.approx(1e-4 - 99 * step)
    # barely decays: 99.9 % of the rate at the end, where the linear schedule reaches 0
    assert learning_rate(cfg, 200_000) == pytest.approx(0.999e-4)


def test_another_iters_on_resume_says_what_it_changes_in_the_schedule() -> None:
    saved = TrainConfig(data="", iters=200_000, decay_start=100_000)
    assert schedule_change(saved, saved) is None
    longer = schedule_change(saved, TrainConfig(data="", iters=300_000, decay_start=100_000))
    assert longer is not None
    assert "now ends at 300000" in longer
    shorter = schedule_change(saved, TrainConfig(data="", iters=50_000, decay_start=100_000))
    assert shorter is not None
    assert "no longer decays" in shorter
    undecayed = TrainConfig(data="", iters=500, decay_start=100_000)
    assert schedule_change(undecayed, TrainConfig(data="", iters=1000, decay_start=100_000)) is None
    starts = schedule_change(undecayed, TrainConfig(data="", iters=150_000, decay_start=100_000))
    assert starts is not None
    assert "now decays from iteration 100000 to 150000" in starts


def test_label_effect_is_zero_when_the_output_ignores_the_class() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert label_effect([x, x.clone(), x.clone()]) == 0.0
    assert label_effect([x, x + 0.5]) == pytest.approx(0.5)


def test_ema_warms_up_then_uses_its_beta() -> None:
    cfg = TrainConfig(data="", ema_beta=0.999)
    assert ema_weight(cfg, 0) == pytest.approx(0.9)
    assert ema_weight(cfg, 100_000) == pytest.approx(0.001)


def _assert_same_state(a: dict, b: dict) -> None:
    for part in ("G", "D", "G_ema"):
        for name in a[part]:
            torch.testing.assert_close(
                a[part][name], b[part][name], rtol=1e-6, atol=1e-7, msg=f"{part}.{name}"
            )
    for opt in ("opt_G", "opt_D"):
        for index, values in a[opt]["state"].items():
            for key, value in values.items():
                torch.testing.assert_close(value, b[opt]["state"][index][key], rtol=1e-6, atol=1e-7)


def test_resume_continues_exactly(snapshot_dir: Path, tmp_path: Path) -> None:
    straight = train(tiny_config(snapshot_dir, variant="ours", iters=4), tmp_path / "straight")
    first = train(tiny_config(snapshot_dir, variant="ours", iters=2), tmp_path / "split")
    resumed = train(tiny_config(snapshot_dir, variant="ours", iters=4), tmp_path / "split", resume="auto")
    assert resumed.run_dir == first.run_dir
    assert resumed.iteration == 4
    assert straight.state_file is not None
    assert resumed.state_file is not None
    _assert_same_state(load_training_state(straight.state_file), load_training_state(resumed.state_file))
    rows = (resumed.run_dir / "stats.jsonl").read_text().splitlines()
    assert [json.loads(r)["iteration"] for r in rows] == [2, 4]


def test_resume_auto_starts_fresh_when_nothing_matches(snapshot_dir: Path, tmp_path: Path) -> None:
    train(tiny_config(snapshot_dir, variant="stargan", iters=2), tmp_path / "runs")
    result = train(tiny_config(snapshot_dir, variant="ours", iters=2), tmp_path / "runs", resume="auto")
    assert result.run_dir.name == "00001-snapshot-ours"


def test_checkpoints_load_with_weights_only_and_only_the_last_k_are_kept(
    snapshot_dir: Path, tmp_path: Path
) -> None:
    result = train(tiny_config(snapshot_dir, iters=6, keep_ckpts=2), tmp_path / "runs")
    assert [i for i, _ in training_states(result.run_dir)] == [4, 6]
    assert [i for i, _ in generator_files(result.run_dir)] == [4, 6]
    assert result.state_file is not None
    state = torch.load(result.state_file, weights_only=True)
    assert state["iteration"] == 6
    assert set(state) >= {"G", "D", "G_ema", "opt_G", "opt_D", "rng", "config", "g_steps"}
    assert not list(result.run_dir.rglob(".tmp-*"))


def test_safetensors_generator_gives_the_same_outputs_as_the_training_state(
    snapshot_dir: Path, tmp_path: Path
) -> None:
    result = train(tiny_config(snapshot_dir, variant="ours", iters=2), tmp_path / "runs")
    loaded = load_generator(result.run_dir)
    assert loaded.iteration == 2
    assert result.state_file is not None
    state = load_training_state(result.state_file)
    cfg = TrainConfig.from_json(state["config"])
    reference = Generator(4, cfg.spec, cfg)
    reference.load_state_dict(state["G_ema"])
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    c = torch.eye(4)[[0, 2, 3]]
    with torch.no_grad():
        expected, expected_mask = reference(x, c)
        got, got_mask = loaded.generator(x, c)
    assert torch.equal(got, expected)
    assert got_mask is not None
    assert expected_mask is not None
    assert torch.equal(got_mask, expected_mask)


def test_a_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
    snapshot_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = train_module.wasserstein_generator_loss

    def failing_after_one_step(src_fake: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return real(src_fake) * (float("nan") if len(calls) > 1 else 1.0)

    monkeypatch.setattr(train_module, "wasserstein_generator_loss", failing_after_one_step)
    with pytest.raises(NonFiniteLossError, match=r"G/loss_fake became nan.*state-0000002\.pt"):
        train(tiny_config(snapshot_dir, iters=6), tmp_path / "runs")
    run = tmp_path / "runs" / "00000-snapshot-ours"
    assert [i for i, _ in training_states(run)] == [2]


def test_ctrl_c_writes_a_checkpoint_and_stops(snapshot_dir: Path, tmp_path: Path) -> None:
    def interrupt_at_three(iteration: int, total: int, stats: dict | None) -> None:
        if iteration == 3:
            signal.raise_signal(signal.SIGINT)

    cfg = tiny_config(snapshot_dir, iters=8, ckpt_every=100, log_every=100, sample_every=100)
    result = train(cfg, tmp_path / "runs", progress=interrupt_at_three)
    assert result.interrupted
    assert result.iteration == 4
    assert [i for i, _ in training_states(result.run_dir)] == [4]
    finished = train(cfg, tmp_path / "runs", resume=str(result.run_dir))
    assert finished.iteration == 8
    assert not finished.interrupted


# ---------------------------------------------------------------------- around the CUDA graphs


def _adam_after_steps(steps: int) -> torch.optim.Adam:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.Adam([weight], lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        (weight**2).sum().backward()
        opt.step()
    return opt


def test_an_optimizer_state_is_copied_back_into_its_own_tensors() -> None:
    opt = _adam_after_steps(1)
    saved = clone_optimizer_state(opt)
    (state,) = opt.state.values()
    tensors = dict(state)
    after_one = {k: v.clone() for k, v in tensors.items()}
    for _ in range(2):  # what the warm-up and the capture do
        opt.zero_grad()
        (opt.param_groups[0]["params"][0] ** 2).sum().backward()
        opt.step()
    assert not torch.equal(tensors["exp_avg"], after_one["exp_avg"])
    restore_optimizer_state(opt, saved)
    for key, value in tensors.items():
        assert state[key] is value  # the same tensors: a captured graph holds their addresses
        assert torch.equal(value, after_one[key])


def test_optimizer_state_made_after_the_clone_is_zeroed() -> None:
    opt = _adam_after_steps(0)
    saved = clone_optimizer_state(opt)  # a fresh optimiser: no state yet
    opt.zero_grad()
    (opt.param_groups[0]["params"][0] ** 2).sum().backward()
    opt.step()
    restore_optimizer_state(opt, saved)
    (state,) = opt.state.values()
    assert all(not value.any() for value in state.values())


def test_a_tensor_learning_rate_is_set_in_place_and_saved_as_a_float() -> None:
    opt = _adam_after_steps(1)
    use_tensor_learning_rates([opt], torch.device("cpu"))
    lr = opt.param_groups[0]["lr"]
    set_learning_rate([opt], 0.25)
    assert opt.param_groups[0]["lr"] is lr
    assert float(lr) == 0.25
    portable = portable_optimizer_state(opt)
    assert portable["param_groups"][0]["lr"] == 0.25
    assert isinstance(portable["param_groups"][0]["lr"], float)
    fresh = _adam_after_steps(0)
    fresh.load_state_dict(portable)
    assert fresh.param_groups[0]["lr"] == 0.25


@pytest.mark.gpu
def test_capturing_the_graphs_leaves_the_training_state_as_it_was(snapshot_dir: Path) -> None:
    device = torch.device("cuda")
    cfg = tiny_config(snapshot_dir, device="cuda", cuda_graphs=True)
    batches, _ = training_data(load_snapshot(snapshot_dir), cfg, device)
    trainer = Trainer(cfg, batches, device, vgg=load_vgg19_features(cfg.cx_layer, random_weights=True))
    assert trainer.use_graphs
    for _ in range(2):  # eager, so that the optimisers hold state before the capture
        trainer.run_iteration()
    before = copy.deepcopy(trainer.state_dict())  # state_dict() holds the live tensors
    rng = torch.cuda.get_rng_state(device)
    trainer.prepare()
    after = trainer.state_dict()
    _assert_same_state(before, after)
    assert torch.equal(torch.cuda.get_rng_state(device), rng)
    for _ in range(cfg.n_critic * 2):
        trainer.run_iteration()
    assert trainer.iteration == 2 + cfg.n_critic * 2
    assert all(math.isfinite(v) for v in trainer.flush_stats().values())
