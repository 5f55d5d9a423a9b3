"""`animexpr train`: its options, the config built from them, the progress bar and the summary.

torch and the model modules are imported inside the commands, so that every other command starts fast.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from animexpr.cli_common import (
    EXIT_INTERRUPTED,
    JsonOption,
    ProgressBars,
    choices,
    console,
    err_console,
    get_settings,
    print_json,
)
from animexpr.model.config import (
    ALL_VARIANTS,
    BASELINES,
    DEVICE_CHOICES,
    VARIANT_DEFAULTS,
    LrSchedule,
    MappingInit,
    Precision,
    TrainConfig,
)

if TYPE_CHECKING:
    from animexpr.model.train import TrainResult

    VariantName = str
else:
    VariantName = choices(ALL_VARIANTS)  # the paper's variants, then the baselines, as config defines them

log = logging.getLogger(__name__)
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name != "data"}


def _opt(help_text: str, **kwargs: Any) -> Any:
    return typer.Option(help=help_text, show_default=True, **kwargs)


def _per_variant(help_text: str, name: str) -> Any:
    """An option whose default depends on the variant: the baselines train with their authors' values."""
    baseline = VARIANT_DEFAULTS[BASELINES[0]][name]
    return typer.Option(
        help=f"{help_text} Default: {_DEFAULTS[name]}; {' and '.join(BASELINES)}: {baseline}.",
        show_default=False,
    )


def _baseline_only(help_text: str, defaults: str) -> Any:
    return typer.Option(help=f"{help_text} {' and '.join(BASELINES)} only; default: {defaults}.")


def train(
    ctx: typer.Context,
    snapshot: Annotated[str, _opt("Snapshot NAME (in HOME/snapshots) or a snapshot/export folder.")],
    variant: Annotated[
        VariantName,
        _opt(
            f"{' and '.join(BASELINES)} are Table 2's baselines, trained "
            "with their authors' settings (batch 1, Adam 2e-4, LSGAN, no EMA): one iteration is one step of "
            "one class pair."
        ),
    ] = _DEFAULTS["variant"],
    iters: Annotated[int | None, _per_variant("Training iterations.", "iters")] = None,
    batch: Annotated[int | None, _per_variant("Global batch size.", "batch")] = None,
    image_size: Annotated[int, _opt("Training resolution in px.")] = _DEFAULTS["image_size"],
    n_critic: Annotated[int | None, _per_variant("D iterations per G update.", "n_critic")] = None,
    lr: Annotated[float | None, _per_variant("Adam learning rate of G and D.", "lr")] = None,
    decay_start: Annotated[
        int | None,
        typer.Option(
            help="Iteration where the linear decay to 0 begins. "
            f"Default: {_DEFAULTS['decay_start']}; {' and '.join(BASELINES)}: half of --iters.",
            show_default=False,
        ),
    ] = None,
    lr_schedule: Annotated[
        LrSchedule,
        _opt(
            "linear: a true linear decay to 0 from --decay-start to --iters; stargan: StarGAN's official "
            "rule (lr/(iters-decay_start) subtracted every 1,000 iterations, which barely decays)."
        ),
    ] = _DEFAULTS["lr_schedule"],
    ema: Annotated[
        float | None,
        _per_variant(
            "EMA decay of G's weights (transform and evaluate use the EMA); 0 turns it off.", "ema_beta"
        ),
    ] = None,
    lambda_cx: Annotated[float, _opt("Contextual loss weight.")] = _DEFAULTS["lambda_cx"],
    lambda_cls: Annotated[float, _opt("Classification loss weight.")] = _DEFAULTS["lambda_cls"],
    lambda_gp: Annotated[float, _opt("Gradient penalty weight.")] = _DEFAULTS["lambda_gp"],
    lambda_rec: Annotated[
        float | None,
        _per_variant("Cycle reconstruction weight (variants without CX; lambda_cyc).", "lambda_rec"),
    ] = None,
    lambda_identity: Annotated[
        float | None,
        _baseline_only("Identity loss weight (CycleGAN: times lambda_rec);", "cyclegan 0.5, combogan 0"),
    ] = None,
    resnet_blocks: Annotated[
        int | None, _baseline_only("ResNet blocks per generator (ComboGAN: n // 2 in the encoder);", "9")
    ] = None,
    patch_layers: Annotated[
        int | None, _baseline_only("Stride-2 convs of the PatchGAN D;", "cyclegan 3, combogan 4")
    ] = None,
    pool_size: Annotated[
        int, _opt("Earlier fakes kept per discriminator, 0: none; cyclegan and combogan only.")
    ] = _DEFAULTS["pool_size"],
    lambda_mask: Annotated[float, _opt("Mask collapse guard weight (0: off).")] = _DEFAULTS["lambda_mask"],
    balanced: Annotated[bool, _opt("Draw classes uniformly, not by frequency.")] = _DEFAULTS["balanced"],
    device: Annotated[str, _opt(f"{DEVICE_CHOICES}.")] = _DEFAULTS["device"],
    precision: Annotated[
        Precision, _opt("fp32, tf32 or bf16 (autocast; GP norm and CX stay fp32).")
    ] = _DEFAULTS["precision"],
    run_dir: Annotated[Path | None, _opt("Folder of numbered runs (default: HOME/runs).")] = None,
    resume: Annotated[
        str | None,
        _opt(
            "'auto': the newest run of this snapshot and variant; a run folder; or a state file in one. "
            "A run continues from its newest checkpoint (or the state file given), and what it wrote after "
            "that checkpoint is dropped; a run killed before its first checkpoint starts again from "
            "iteration 0 in the same folder, with the settings given now. No run of this snapshot and "
            "variant under --run-dir: 'auto' starts a new one."
        ),
    ] = None,
    seed: Annotated[int, _opt("Random seed.")] = _DEFAULTS["seed"],
    vgg_weights: Annotated[
        Path | None, _opt("torchvision vgg19-dcbb9e9d.pth for the contextual loss.")
    ] = None,
    vgg_download: Annotated[
        bool,
        _opt(
            "When the VGG19 weights are not found, download them into the user cache (575 MB, "
            "sha256-checked); --no-vgg-download for offline machines."
        ),
    ] = True,
    vgg_random: Annotated[bool, _opt("Random VGG19 weights (tests and speed runs only).")] = False,
    cuda_graphs: Annotated[
        bool | None,
        _per_variant("Capture the steps as CUDA graphs (one GPU; never for the baselines).", "cuda_graphs"),
    ] = None,
    compile_nets: Annotated[
        bool, typer.Option("--compile", help="torch.compile G's parts and VGG (D stays eager).")
    ] = False,
    g_conv_dim: Annotated[int, _opt("Width of G's first conv.")] = _DEFAULTS["g_conv_dim"],
    g_res_blocks: Annotated[int, _opt("Bottlenecks on each side of G_trans.")] = _DEFAULTS["g_res_blocks"],
    att_res_blocks: Annotated[int, _opt("Bottlenecks of G_att.")] = _DEFAULTS["att_res_blocks"],
    d_conv_dim: Annotated[int, _opt("Width of D's first conv.")] = _DEFAULTS["d_conv_dim"],
    d_repeat_num: Annotated[int, _opt("Stride-2 convs of D.")] = _DEFAULTS["d_repeat_num"],
    mapping_dim: Annotated[int, _opt("Hidden width of F.")] = _DEFAULTS["mapping_dim"],
    style_dim: Annotated[int, _opt("Size N of the control information.")] = _DEFAULTS["style_dim"],
    mapping_init: Annotated[
        MappingInit,
        _opt(
            "Initial weights of F: he (Kaiming, lets the label reach G from the start) or torch "
            "(PyTorch's default: the label barely changes G's output at first)."
        ),
    ] = _DEFAULTS["mapping_init"],
    log_every: Annotated[int | None, _per_variant("Iterations between stats lines.", "log_every")] = None,
    sample_every: Annotated[
        int | None, _per_variant("Iterations between sample grids.", "sample_every")
    ] = None,
    ckpt_every: Annotated[int | None, _per_variant("Iterations between checkpoints.", "ckpt_every")] = None,
    keep_ckpts: Annotated[int, _opt("Checkpoints of each kind kept.")] = _DEFAULTS["keep_ckpts"],
    dry_run: Annotated[bool, _opt("Print the config and parameter counts, then stop.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Train the expression GAN (or one of its ablations) on a snapshot; torchrun runs it on several GPUs."""
    from animexpr.model.data import resolve_snapshot
    from animexpr.model.train import train as run_training

    settings = get_settings(ctx)
    data = resolve_snapshot(snapshot, settings.home).resolve()
    given = _config_fields(ctx.params)
    # Options left out take the variant's default (the baselines' differ from the paper's).
    cfg = TrainConfig.for_variant(str(data), variant, **{k: v for k, v in given.items() if v is not None})
    if dry_run:
        _show_dry_run(cfg, as_json)
        return
    runs_root = run_dir or settings.runs_dir
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: the other processes show nothing
        result = run_training(cfg, runs_root, resume, None, vgg_download)
        return
    with ProgressBars(transient=False) as bars:
        progress = _TrainProgress(bars, _BASELINE_SHOWN if cfg.is_baseline else _SHOWN)
        result = run_training(cfg, runs_root, resume, progress, vgg_download)
    summary = train_summary(cfg, result, progress.last_stats)
    if as_json:
        print_json(summary)
    if result.interrupted:
        # on standard error with --json: standard output holds the JSON alone
        (err_console if as_json else console).print(
            f"stopped at iteration {result.iteration}; resume with --resume {result.run_dir}"
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    if not as_json:
        _print_train_summary(summary)


# The train options named otherwise than the TrainConfig fields they set.
_OPTION_FIELDS = {"ema": "ema_beta", "compile_nets": "compile"}


def _config_fields(params: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields the train options set, by field name (options and fields share their names
    but for `_OPTION_FIELDS`); the other options (snapshot, run folder, resume, ...) are left out."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"data", "variant"}
    given = {_OPTION_FIELDS.get(name, name): value for name, value in params.items()}
    if given.get("vgg_weights") is not None:
        given["vgg_weights"] = str(given["vgg_weights"])
    return {name: value for name, value in given.items() if name in fields}


def train_summary(
    cfg: TrainConfig, result: TrainResult, last_stats: dict[str, float] | None
) -> dict[str, Any]:
    """What `train` shows at the end, and `--json` prints: where the run is, how far, its last stats row."""
    return {
        "variant": cfg.variant,
        "run_dir": str(result.run_dir),
        "iteration": result.iteration,
        "iters": cfg.iters,
        "interrupted": result.interrupted,
        "generator": None if result.generator_file is None else str(result.generator_file),
        "state": None if result.state_file is None else str(result.state_file),
        "stats": last_stats,  # None when a resumed run had nothing left to do
    }


def _print_train_summary(summary: dict[str, Any]) -> None:
    if summary["generator"] is not None:
        console.print(
            f"trained {summary['variant']} to iteration {summary['iteration']} in {summary['run_dir']}; "
            f"generator {Path(summary['generator']).name}"
        )
    else:  # resumed a run that had already reached --iters
        console.print(
            f"{summary['run_dir']} is already at iteration {summary['iteration']} "
            f"(--iters {summary['iters']}): nothing to do"
        )


def _show_dry_run(cfg: TrainConfig, as_json: bool) -> None:
    counts = _parameter_counts(cfg)
    if as_json:
        print_json({"config": json.loads(cfg.to_json()), "parameters": counts})
        return
    console.print_json(cfg.to_json())
    table = Table("part", "parameters")
    for name, count in counts.items():
        table.add_row(name, f"{count:,}")
    console.print(f"{cfg.variant} (counts for 4 classes)")
    console.print(table)


def _parameter_counts(cfg: TrainConfig) -> dict[str, int]:
    import torch

    from animexpr.model.baselines import (
        baseline_parameter_counts,
        build_baseline_discriminators,
        build_baseline_generator,
    )
    from animexpr.model.networks import build_networks, parameter_counts

    with torch.device("meta"):  # shapes only: a CycleGAN of 4 classes holds 170 million parameters
        if cfg.is_baseline:
            counts = baseline_parameter_counts(
                build_baseline_generator(cfg, num_classes=4),
                build_baseline_discriminators(cfg, num_classes=4),
            )
        else:
            counts = parameter_counts(*build_networks(cfg, num_classes=4))
    return counts


_SHOWN = ("D/loss_gp", "G/loss_fake", "G/loss_cls", "G/mask_mean", "ms_per_iter")
_BASELINE_SHOWN = ("D/loss_real", "D/loss_fake", "G/loss_fake", "G/loss_rec", "ms_per_iter")


class _TrainProgress:
    """Shows the training loop's callback `(iteration, total, stats)` as a bar with the latest losses beside
    it, and keeps the newest stats row for the summary."""

    def __init__(self, bars: ProgressBars, shown: tuple[str, ...]) -> None:
        self.bars = bars
        self.shown = shown
        self.status = ""
        self.last_stats: dict[str, float] | None = None

    def __call__(self, iteration: int, total: int, stats: dict[str, float] | None) -> None:
        if stats:
            self.last_stats = dict(stats)
            self.status = " ".join(f"{k.split('/')[-1]} {stats[k]:.3g}" for k in self.shown if k in stats)
        self.bars.update("train", iteration, total, self.status)
