"""The Table 2 baselines (CycleGAN, ComboGAN): the authors' architectures, their losses and pool, and tiny
real runs through the same `train()` as every other variant (run folder, checkpoints, exact resume,
transform)."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from model_fixtures import home_with_run
from PIL import Image
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.errors import AnimexprError, ConfigError
from animexpr.model import baseline_train
from animexpr.model import train as train_module
from animexpr.model.baseline_train import build_baseline_trainer
from animexpr.model.baselines import (
    ComboDecoder,
    ComboDiscriminator,
    ComboEncoder,
    ComboGANGenerators,
    CycleGANGenerators,
    ImagePool,
    PatchDiscriminator,
    ResnetGenerator,
    SourceClassError,
    baseline_parameter_counts,
    build_baseline_discriminators,
    build_baseline_generator,
    gaussian_kernel_1d,
    multiscale_lsgan_loss,
)
from animexpr.model.checkpoint import generator_files, load_training_state, training_states
from animexpr.model.config import BASELINES, VARIANTS, TrainConfig
from animexpr.model.data import FaceBatches
from animexpr.model.distributed import DistInfo
from animexpr.model.grid import header_height
from animexpr.model.train import NonFiniteLossError, train
from animexpr.model.transform import load_generator, transform_face

TIMING_KEYS = {"ms_per_iter", "images_per_s", "peak_mem_mib"}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One CPU thread: the tiny networks gain nothing from more, and on a busy machine threads contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_baseline(data: Path, variant: str, iters: int = 4, **overrides: Any) -> TrainConfig:
    """16 px, 4-channel convs, 2 ResNet blocks, 2-layer PatchGANs: a CPU iteration in milliseconds.

    The learning rate decays over the second half, as the baselines' own defaults do."""
    values: dict[str, Any] = {
        "iters": iters,
        "image_size": 16,
        "g_conv_dim": 4,
        "d_conv_dim": 4,
        "resnet_blocks": 2,
        "patch_layers": 2,
        "pool_size": 2,  # full after the first steps, so that the swaps are exercised
        "device": "cpu",
        "log_every": 2,
        "sample_every": 2,
        "ckpt_every": 2,
        "sample_count": 2,
    }
    values.update(overrides)
    return TrainConfig.for_variant(str(data), variant, **values)


def _conv(c_in: int, c_out: int, k: int) -> int:
    """Parameters of a conv or transposed conv with a bias."""
    return c_in * c_out * k * k + c_out


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------- architectures


def test_cyclegan_networks_have_the_authors_parameter_counts_at_ngf_64() -> None:
    # The layer list of resnet_9blocks: conv7 3->64, convs3 64->128->256, 9 blocks of two 3x3 256->256 convs,
    # transposed convs3 256->128->64, conv7 64->3; every conv has a bias (instance norm without affine).
    resnet_9blocks = (
        _conv(3, 64, 7)
        + _conv(64, 128, 3)
        + _conv(128, 256, 3)
        + 9 * 2 * _conv(256, 256, 3)
        + _conv(256, 128, 3)
        + _conv(128, 64, 3)
        + _conv(64, 3, 7)
    )
    # The basic PatchGAN (n_layers 3): convs4 3->64->128->256 (stride 2), 256->512 (stride 1), 512->1.
    patchgan = (
        _conv(3, 64, 4) + _conv(64, 128, 4) + _conv(128, 256, 4) + _conv(256, 512, 4) + _conv(512, 1, 4)
    )
    assert resnet_9blocks == 11_378_179
    assert patchgan == 2_764_737
    with torch.device("meta"):
        assert _count(ResnetGenerator()) == resnet_9blocks
        assert _count(PatchDiscriminator()) == patchgan
        cfg = TrainConfig.for_variant("", "cyclegan")
        counts = baseline_parameter_counts(
            build_baseline_generator(cfg, 4), build_baseline_discriminators(cfg, 4)
        )
    # 4 classes: 6 pair models, each with two generators and two discriminators
    assert counts == {
        "G (one direction)": 11_378_179,
        "D (one)": 2_764_737,
        "G": 12 * 11_378_179,
        "D": 12 * 2_764_737,
    }


def test_combogan_networks_have_the_authors_parameter_counts_at_ngf_64() -> None:
    block = 2 * _conv(256, 256, 3) + 1  # two 3x3 convs and one PReLU
    encoder = _conv(3, 64, 7) + _conv(64, 128, 3) + _conv(128, 256, 3) + 3 + 4 * block
    decoder = 5 * block + _conv(256, 128, 4) + _conv(128, 64, 4) + 2 + _conv(64, 3, 7)
    # Each branch: conv4 c->64, then 64->129, 128->257, 256->513 (one prediction channel more each),
    # 512->512 at stride 1, 512->1; five PReLUs.
    trunk = (
        _conv(64, 129, 4) + _conv(128, 257, 4) + _conv(256, 513, 4) + _conv(512, 512, 4) + _conv(512, 1, 4)
    )
    discriminator = _conv(1, 64, 4) + _conv(3, 64, 4) + 2 * (trunk + 5)
    assert (encoder, decoder, discriminator) == (5_099_143, 6_565_770, 13_931_410)
    with torch.device("meta"):
        assert _count(ComboEncoder()) == encoder
        assert _count(ComboDecoder()) == decoder
        assert _count(ComboDiscriminator()) == discriminator
        cfg = TrainConfig.for_variant("", "combogan")
        counts = baseline_parameter_counts(
            build_baseline_generator(cfg, 4), build_baseline_discriminators(cfg, 4)
        )
    assert counts == {
        "encoder": encoder,
        "decoder": decoder,
        "D (one)": discriminator,
        "G": 4 * (encoder + decoder),
        "D": 4 * discriminator,
    }


def test_output_shapes_of_the_authors_networks() -> None:
    with torch.device("meta"):  # shapes only: no arithmetic
        x = torch.empty(1, 3, 256, 256)
        assert ResnetGenerator()(x).shape == (1, 3, 256, 256)
        assert PatchDiscriminator()(x).shape == (1, 1, 30, 30)  # the 70x70 PatchGAN's 30x30 map at 256 px
        x = torch.empty(2, 3, 128, 128)
        assert ComboDecoder()(ComboEncoder()(x)).shape == (2, 3, 128, 128)
        maps = ComboDiscriminator()(x)
    # one map per scale, the luminance and the blurred-RGB branch side by side
    assert [tuple(m.shape) for m in maps] == [(2, 2, 33, 33), (2, 2, 17, 17), (2, 2, 9, 9), (2, 2, 11, 11)]


def test_combogan_blur_is_scipys_gaussian_filter_of_an_impulse_as_the_authors() -> None:
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    impulse = np.zeros((5, 5))
    impulse[2, 2] = 1
    expected = scipy_ndimage.gaussian_filter(impulse, 3)  # ComboGAN's util.gkern_2d(size=5, sigma=3)
    np.testing.assert_allclose(np.outer(gaussian_kernel_1d(), gaussian_kernel_1d()), expected, atol=1e-12)


def test_weights_start_from_a_normal_with_std_002_and_zero_biases() -> None:
    torch.manual_seed(0)
    generator = ResnetGenerator(ngf=16, blocks=2)
    convs = [m for m in generator.modules() if isinstance(m, torch.nn.Conv2d)]
    weights = torch.cat([m.weight.detach().flatten() for m in convs])
    biases = torch.cat([m.bias.detach().flatten() for m in convs if m.bias is not None])
    assert float(weights.std()) == pytest.approx(0.02, rel=0.05)
    assert float(biases.abs().max()) == 0.0


# ------------------------------------------------------------------------------------ losses and the pool


def test_combogan_lsgan_weighs_its_scales_as_the_authors() -> None:
    # four scales: weights 1, 2, 3, 5, divided by 11 * 4
    predictions = [torch.full((1, 2, 3, 3), value) for value in (1.0, 0.0, 0.5, 2.0)]
    expected_real = (1 * 0.0 + 2 * 1.0 + 3 * 0.25 + 5 * 1.0) / 44
    expected_fake = (1 * 1.0 + 2 * 0.0 + 3 * 0.25 + 5 * 4.0) / 44
    assert float(multiscale_lsgan_loss(predictions, True)) == pytest.approx(expected_real)
    assert float(multiscale_lsgan_loss(predictions, False)) == pytest.approx(expected_fake)


def test_image_pool_fills_then_swaps_half_of_the_time() -> None:
    rng = torch.Generator().manual_seed(0)
    pool = ImagePool(3)
    first = torch.arange(3.0).view(3, 1, 1, 1)
    assert torch.equal(pool.query(first, rng), first)  # filling: what comes in goes out
    shown = [float(pool.query(torch.full((1, 1, 1, 1), 10.0 + i), rng)) for i in range(400)]
    swapped = sum(value < 10 or value != 10.0 + i for i, value in enumerate(shown))
    assert 150 < swapped < 250  # about one in two returns an older image
    assert len(pool.images) == 3
    assert torch.equal(ImagePool(0).query(first, rng), first)


def test_the_pool_repeats_itself_from_its_saved_state() -> None:
    def fill(pool: ImagePool, rng: torch.Generator) -> list[float]:
        return [float(pool.query(torch.full((1, 1, 1, 1), float(i)), rng)) for i in range(20)]

    pool, rng = ImagePool(4), torch.Generator().manual_seed(1)
    fill(pool, rng)
    saved_images, saved_rng = pool.state(), rng.get_state()
    expected = fill(pool, rng)
    restored, rng = ImagePool(4), torch.Generator()
    restored.load(saved_images, torch.device("cpu"))
    rng.set_state(saved_rng)
    assert fill(restored, rng) == expected


# --------------------------------------------------------------------------------- generator contract


@pytest.mark.parametrize("variant", BASELINES)
def test_baseline_generators_route_every_sample_by_its_source_and_target(variant: str) -> None:
    torch.manual_seed(0)
    cfg = TrainConfig.for_variant("", variant, g_conv_dim=4, resnet_blocks=2)
    generator = build_baseline_generator(cfg, 4)
    assert generator.needs_source
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    eye = torch.eye(4)
    with pytest.raises(SourceClassError, match="source class"):
        generator(x, eye[[1, 1, 1]])
    with torch.no_grad():
        y, mask = generator(x, eye[[1, 2, 0]], eye[[0, 0, 0]])
        if isinstance(generator, CycleGANGenerators):
            expected_1 = generator.direction(0, 1)(x[:1])
        else:
            assert isinstance(generator, ComboGANGenerators)
            expected_1 = generator.decoders[1](generator.encoders[0](x[:1]))
    assert mask is None
    torch.testing.assert_close(y[:1], expected_1)
    assert torch.equal(y[2], x[2])  # to its own class: unchanged
    assert not torch.equal(y[1], y[0])


# --------------------------------------------------------------------------------------------- config


def test_the_baselines_take_their_authors_defaults_and_keep_the_paper_defaults_elsewhere() -> None:
    cyclegan = TrainConfig.for_variant("", "cyclegan")
    combogan = TrainConfig.for_variant("", "combogan", batch=4)
    assert (cyclegan.batch, cyclegan.lr, cyclegan.ema_beta, cyclegan.n_critic) == (1, 2e-4, 0.0, 1)
    assert (cyclegan.resnet_blocks, cyclegan.patch_layers, cyclegan.lambda_identity) == (9, 3, 0.5)
    assert (cyclegan.iters, cyclegan.decay_start) == (3_840_000, 1_920_000)
    assert TrainConfig.for_variant("", "cyclegan", iters=1000).decay_start == 500  # always the second half
    assert TrainConfig.for_variant("", "cyclegan", iters=1000, decay_start=900).decay_start == 900
    assert (combogan.patch_layers, combogan.lambda_identity, combogan.batch) == (4, 0.0, 4)
    assert (cyclegan.g_conv_dim, cyclegan.d_conv_dim, cyclegan.lambda_rec, cyclegan.pool_size) == (
        64,
        64,
        10,
        50,
    )
    ours = TrainConfig.for_variant("", "ours")
    assert ours == TrainConfig(data="")
    assert ours.resnet_blocks is None
    assert set(VARIANTS).isdisjoint(BASELINES)


def test_baseline_configs_refuse_what_their_authors_do_not_do() -> None:
    with pytest.raises(ConfigError, match=r"n_critic: cyclegan .*TrainConfig.for_variant"):
        TrainConfig(data="", variant="cyclegan")  # the paper's n_critic 5 and EMA, silently: refused
    with pytest.raises(ConfigError, match="ema_beta: combogan keeps no EMA"):
        TrainConfig.for_variant("", "combogan", ema_beta=0.999)
    with pytest.raises(ConfigError, match="lr_schedule: cyclegan decays linearly"):
        TrainConfig.for_variant("", "cyclegan", lr_schedule="stargan")
    with pytest.raises(ConfigError, match="too small for a 3-layer PatchGAN"):
        TrainConfig.for_variant("", "cyclegan", image_size=16)
    with pytest.raises(ConfigError, match="patch_layers: only for cyclegan and combogan"):
        TrainConfig.for_variant("", "stargan", patch_layers=3)
    with pytest.raises(ConfigError, match="is a baseline"):
        _ = TrainConfig.for_variant("", "combogan").spec


def test_baseline_trainers_refuse_several_processes_and_an_empty_class() -> None:
    cfg = TrainConfig.for_variant("", "cyclegan", g_conv_dim=4, d_conv_dim=4, resnet_blocks=1, patch_layers=2)
    images = torch.zeros(6, 16, 16, 3, dtype=torch.uint8)
    batches = FaceBatches(
        images, torch.tensor([0, 0, 1, 1, 2, 2]), 4, torch.device("cpu"), channels_last=False
    )
    with pytest.raises(AnimexprError, match="class 3 has no training image"):
        build_baseline_trainer(cfg, batches, torch.device("cpu"))
    with pytest.raises(AnimexprError, match="without torchrun"):
        build_baseline_trainer(cfg, batches, torch.device("cpu"), DistInfo(rank=0, world_size=2))


def test_train_refuses_a_baseline_under_torchrun_before_making_a_run_folder(
    snapshot_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_module, "init_distributed", lambda device: DistInfo(rank=0, world_size=2))
    monkeypatch.setattr(train_module, "shutdown_distributed", lambda info: None)
    with pytest.raises(AnimexprError, match="combogan trains in one process, as its authors: run it without"):
        train(tiny_baseline(snapshot_dir, "combogan"), tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------- real runs


def _stats(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("variant", BASELINES)
def test_each_baseline_trains_a_few_iterations_through_the_common_loop(
    variant: str, snapshot_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_baseline(snapshot_dir, variant)
    result = train(cfg, tmp_path / "runs")
    run = result.run_dir
    assert (result.iteration, result.interrupted) == (4, False)
    assert run.name == f"00000-snapshot-{variant}"
    assert TrainConfig.from_json((run / "config.json").read_text()) == cfg
    rows = _stats(run)
    assert [r["iteration"] for r in rows] == [2, 4]
    assert rows[-1]["kimg"] == pytest.approx(4 * 2 / 1000)  # a batch of each class of the pair
    for key in ("D/loss_real", "D/loss_fake", "G/loss_fake", "G/loss_rec", "G/loss_idt", "lr", "ms_per_iter"):
        assert np.isfinite(rows[-1][key]), key
    assert [r["lr"] for r in rows] == pytest.approx([2e-4, 1e-4])  # linear decay from iteration 2 to 0 at 4
    assert rows[-1]["G/label_effect"] > 0
    assert (rows[-1]["G/loss_idt"] > 0) == (variant == "cyclegan")  # ComboGAN's lambda_identity is 0
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["0000002.png", "0000004.png"]
    # input + 4 classes, no mask rows, under the column labels
    grid = Image.open(run / "samples" / "0000004.png")
    assert grid.size == (16 * 5, header_height(16) + 16 * 2)
    assert [i for i, _ in training_states(run)] == [2, 4]
    assert [i for i, _ in generator_files(run)] == [2, 4]
    assert result.state_file is not None
    state = load_training_state(result.state_file)
    assert len(state["pools"]) == (12 if variant == "cyclegan" else 4)
    # the generator file holds the trained weights (no EMA) of every pair generator or encoder/decoder
    loaded = load_generator(run)
    for name, value in state["G"].items():
        assert torch.equal(loaded.generator.state_dict()[name], value), name


def _learning_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in _stats(run_dir)]


def _assert_same_tensors(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=where)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("variant", BASELINES)
def test_a_resumed_baseline_run_gives_the_same_losses_and_weights(
    variant: str, snapshot_dir: Path, tmp_path: Path
) -> None:
    # 8 iterations, stopped by Ctrl-C after 4. Batches of 2 into pools of 1: from a pool's second image on,
    # every fake is a random draw, on both sides of the stop. The learning rate decays over the second half.
    cfg = tiny_baseline(snapshot_dir, variant, iters=8, batch=2, pool_size=1)

    def interrupt_at_three(iteration: int, total: int, stats: dict | None) -> None:
        if iteration == 3:
            signal.raise_signal(signal.SIGINT)

    straight = train(cfg, tmp_path / "straight")
    stopped = train(cfg, tmp_path / "split", progress=interrupt_at_three)
    assert (stopped.interrupted, stopped.iteration) == (True, 4)
    resumed = train(cfg, tmp_path / "split", resume="auto")
    assert resumed.run_dir == stopped.run_dir
    assert resumed.iteration == 8
    assert straight.state_file is not None
    assert resumed.state_file is not None
    expected, got = load_training_state(straight.state_file), load_training_state(resumed.state_file)
    for part in ("G", "D", "opt_G", "opt_D", "pools", "host_rng", "iteration"):
        _assert_same_tensors(got[part], expected[part], part)
    assert not torch.equal(got["host_rng"], torch.Generator().manual_seed(cfg.seed).get_state())  # pools drew
    expected_rows, got_rows = _learning_rows(straight.run_dir), _learning_rows(resumed.run_dir)
    assert [r["iteration"] for r in got_rows] == [2, 4, 6, 8]
    for got_row, expected_row in zip(got_rows, expected_rows, strict=True):
        assert got_row == pytest.approx(expected_row, rel=1e-6, abs=1e-7)


def test_a_nan_loss_stops_a_baseline_run_with_a_clear_message(
    snapshot_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = baseline_train.lsgan_loss

    def failing_after_two_steps(prediction: torch.Tensor, is_real: bool) -> torch.Tensor:
        calls.append(1)
        return real(prediction, is_real) * (float("nan") if len(calls) > 2 * 6 else 1.0)

    monkeypatch.setattr(baseline_train, "lsgan_loss", failing_after_two_steps)
    with pytest.raises(NonFiniteLossError, match=r"became nan.*state-0000002\.pt"):
        train(tiny_baseline(snapshot_dir, "cyclegan", iters=6), tmp_path / "runs")


# ------------------------------------------------------------------------------------ command line


TINY_OPTIONS = [
    "--image-size=16",
    "--iters=2",
    "--g-conv-dim=4",
    "--d-conv-dim=4",
    "--resnet-blocks=2",
    "--patch-layers=2",
    "--log-every=2",
    "--sample-every=2",
    "--ckpt-every=2",
    "--device=cpu",
]


@pytest.fixture
def cyclegan_home(snapshot_dir: Path, tmp_path: Path) -> Path:
    return home_with_run(snapshot_dir, tmp_path, "cyclegan", TINY_OPTIONS)


def _face(tmp_path: Path) -> Path:
    path = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)
    return path


def test_transform_with_a_baseline_needs_the_source_class(cyclegan_home: Path, tmp_path: Path) -> None:
    face, out = _face(tmp_path), tmp_path / "out"
    classes = json.loads((cyclegan_home / "snapshots" / "faces4" / "dataset.json").read_text())["classes"]
    base = ["--home", str(cyclegan_home), "transform", str(face), "-o", str(out)]
    runner = CliRunner()
    result = runner.invoke(app, [*base, "--to", classes[2]])
    assert result.exit_code != 0
    assert "cyclegan translates from a known class: give the class of the faces (--from CLASS" in str(
        result.exception
    )
    result = runner.invoke(app, [*base, "--to", classes[2], "--from", classes[0]])
    assert result.exit_code == 0, result.output
    assert Image.open(out / f"face-{classes[2]}.png").size == (16, 16)
    result = runner.invoke(app, [*base, "--all", "--from", classes[1]])
    assert result.exit_code == 0, result.output
    grid = np.asarray(Image.open(out / "face-all.png"))
    assert grid.shape == (header_height(16) + 16, 16 * 5, 3)  # input + 4 classes, no masks
    body = grid[header_height(16) :]
    assert np.array_equal(body[:, 16 * 2 : 16 * 3], body[:, :16])  # to its own class: the input itself
    result = runner.invoke(app, [*base, "--to", classes[2], "--from", "sleepy"])
    assert "unknown class 'sleepy'" in str(result.exception)


def test_transform_face_with_the_source_class_uses_that_pair_generator(cyclegan_home: Path) -> None:
    loaded = load_generator(cyclegan_home / "runs")
    face = np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    classes = loaded.classes
    from_0 = transform_face(loaded, face, classes[2], source=classes[0])
    from_1 = transform_face(loaded, face, classes[2], source=classes[1])
    assert from_0.shape == (16, 16, 3)
    assert not np.array_equal(from_0, from_1)


@pytest.mark.parametrize(("variant", "expected"), [("cyclegan", "11,378,179"), ("combogan", "13,931,410")])
def test_dry_run_prints_the_baselines_parameter_counts(
    variant: str, expected: str, snapshot_dir: Path, tmp_path: Path
) -> None:
    command = ["--home", str(tmp_path), "train", "--snapshot", str(snapshot_dir), "--variant", variant]
    result = CliRunner().invoke(app, [*command, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert expected in result.output
    assert '"batch": 1' in result.output
    assert '"ema_beta": 0.0' in result.output
