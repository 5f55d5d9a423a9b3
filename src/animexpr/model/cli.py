"""`animexpr train` and `animexpr transform`.

torch and the model modules are imported inside the commands, so that every other command starts fast.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from animexpr.cli_common import console, err_console, get_settings
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
    from animexpr.model.transform import CropMode, Cropper

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
        str,
        _opt(
            f"One of: {', '.join(ALL_VARIANTS)}. {' and '.join(BASELINES)} are Table 2's baselines, trained "
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
    run_dir: Annotated[Path | None, _opt("Folder of numbered runs [default: HOME/runs].")] = None,
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
    vgg_download: Annotated[bool, _opt("Download the VGG19 weights (sha256-checked) if not found.")] = False,
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
) -> None:
    """Train the expression GAN (or one of its ablations) on a snapshot; torchrun runs it on several GPUs."""
    from animexpr.model.data import resolve_snapshot
    from animexpr.model.train import train as run_training

    settings = get_settings(ctx)
    data = resolve_snapshot(snapshot, settings.home).resolve()
    given: dict[str, Any] = dict(  # noqa: C408  # keyword form: the TrainConfig field names, unquoted
        iters=iters,
        batch=batch,
        image_size=image_size,
        n_critic=n_critic,
        lr=lr,
        decay_start=decay_start,
        lr_schedule=lr_schedule,
        ema_beta=ema,
        lambda_cx=lambda_cx,
        lambda_cls=lambda_cls,
        lambda_gp=lambda_gp,
        lambda_rec=lambda_rec,
        lambda_identity=lambda_identity,
        resnet_blocks=resnet_blocks,
        patch_layers=patch_layers,
        pool_size=pool_size,
        lambda_mask=lambda_mask,
        balanced=balanced,
        device=device,
        precision=precision,
        seed=seed,
        vgg_weights=str(vgg_weights) if vgg_weights else None,
        vgg_random=vgg_random,
        cuda_graphs=cuda_graphs,
        compile=compile_nets,
        g_conv_dim=g_conv_dim,
        g_res_blocks=g_res_blocks,
        att_res_blocks=att_res_blocks,
        d_conv_dim=d_conv_dim,
        d_repeat_num=d_repeat_num,
        mapping_dim=mapping_dim,
        style_dim=style_dim,
        mapping_init=mapping_init,
        log_every=log_every,
        sample_every=sample_every,
        ckpt_every=ckpt_every,
        keep_ckpts=keep_ckpts,
    )
    # Options left out take the variant's default (the baselines' differ from the paper's).
    cfg = TrainConfig.for_variant(str(data), variant, **{k: v for k, v in given.items() if v is not None})
    if dry_run:
        console.print_json(cfg.to_json())
        _print_parameter_counts(cfg)
        return
    runs_root = run_dir or settings.home / "runs"
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: the other processes show nothing
        result = run_training(cfg, runs_root, resume, None, vgg_download)
        return
    with _progress_bar(_BASELINE_SHOWN if cfg.is_baseline else _SHOWN) as (progress_fn, _):
        result = run_training(cfg, runs_root, resume, progress_fn, vgg_download)
    if result.interrupted:
        console.print(f"stopped at iteration {result.iteration}; resume with --resume {result.run_dir}")
        raise typer.Exit(130)
    if result.generator_file is not None:
        console.print(
            f"trained {cfg.variant} to iteration {result.iteration} in {result.run_dir}; "
            f"generator {result.generator_file.name}"
        )
    else:  # resumed a run that had already reached --iters
        console.print(
            f"{result.run_dir} is already at iteration {result.iteration} (--iters {cfg.iters}): "
            "nothing to do"
        )


def _print_parameter_counts(cfg: TrainConfig) -> None:
    import torch

    from animexpr.model.baselines import (
        baseline_parameter_counts,
        build_baseline_discriminators,
        build_baseline_generator,
    )
    from animexpr.model.networks import build_networks, parameter_counts

    table = Table("part", "parameters")
    with torch.device("meta"):  # shapes only: a CycleGAN of 4 classes holds 170 million parameters
        if cfg.is_baseline:
            counts = baseline_parameter_counts(
                build_baseline_generator(cfg, num_classes=4),
                build_baseline_discriminators(cfg, num_classes=4),
            )
        else:
            counts = parameter_counts(*build_networks(cfg, num_classes=4))
    for name, count in counts.items():
        table.add_row(name, f"{count:,}")
    console.print(f"{cfg.variant} (counts for 4 classes)")
    console.print(table)


_SHOWN = ("D/loss_gp", "G/loss_fake", "G/loss_cls", "G/mask_mean", "ms_per_iter")
_BASELINE_SHOWN = ("D/loss_real", "D/loss_fake", "G/loss_fake", "G/loss_rec", "ms_per_iter")


class _progress_bar:
    """A rich progress bar fed by the training loop's callback, with the latest losses beside it."""

    def __init__(self, shown: tuple[str, ...]) -> None:
        self.shown = shown

    def __enter__(self) -> tuple[Any, Progress]:
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=err_console,  # beside the log lines, and never mixed into what a script reads from stdout
        )
        self.progress.start()
        self.task = None

        def update(iteration: int, total: int, stats: dict[str, float] | None) -> None:
            if self.task is None:
                self.task = self.progress.add_task("train", total=total, completed=iteration, status="")
            if stats:
                status = " ".join(f"{k.split('/')[-1]} {stats[k]:.3g}" for k in self.shown if k in stats)
                self.progress.update(self.task, status=status)
            self.progress.update(self.task, completed=iteration, total=total)

        return update, self.progress

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def transform(
    ctx: typer.Context,
    images: Annotated[list[Path], typer.Argument(help="Face crops or full illustrations.", exists=True)],
    to: Annotated[str | None, _opt("Target class.")] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="The class of the faces given; cyclegan and combogan need it, the others ignore it.",
        ),
    ] = None,
    all_classes: Annotated[
        bool, typer.Option("--all", help="A grid with every class (and the masks).")
    ] = False,
    checkpoint: Annotated[
        Path | None, _opt("G_ema-*.safetensors, a run folder or a runs folder [default: HOME/runs].")
    ] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("."),
    crop: Annotated[str, _opt("auto (crop non-square pictures), always or never.")] = "auto",
    cascade: Annotated[
        Path | None,
        typer.Option(
            help="The lbpcascade_animeface.xml that finds the faces in pictures to crop, as `crop` takes it. "
            "Default: $ANIMEXPR_CASCADE, else the user cache, else a download checked against its pinned "
            "sha256.",
            show_default=False,
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    device: Annotated[str, _opt(f"{DEVICE_CHOICES}.")] = "cpu",
) -> None:
    """Turn faces into another expression (--to CLASS) or into every one (--all).

    Outputs are named after their input (`face-smile.png`, `face-all.png`); when two inputs share a name,
    the later one's outputs get a number (`face-2-smile.png`).
    """
    if (to is None) == (not all_classes):
        raise typer.BadParameter("give exactly one of --to CLASS and --all")
    if crop not in ("auto", "always", "never"):
        raise typer.BadParameter("--crop: auto, always or never")
    from animexpr.model.transform import load_generator, transform_images

    settings = get_settings(ctx)
    loaded = load_generator(checkpoint or settings.home / "runs", device)
    mode: CropMode = crop  # type: ignore[assignment]  # checked above
    written = transform_images(images, loaded, out, to, _curate_cropper(cascade), mode, source)
    console.print(
        f"{len(written)} image(s) written to {out} by {loaded.config.variant} "
        f"(iteration {loaded.iteration}, {loaded.source.name})"
    )


def _curate_cropper(cascade: Path | None = None) -> Cropper | None:
    """The curate room's face cropper (`animexpr.curate.crop.crop_faces`) with the LBP cascade `cascade`
    (else found as `crop` finds it), or None when the curate room is not installed.

    The cascade is found on the first picture that needs cropping, once: square face crops need none, so
    they are transformed on a machine without it.
    """
    try:
        module = importlib.import_module("animexpr.curate.crop")
    except ImportError:
        return None
    settings: list[Any] = []  # the crop settings, made on first use

    def crop_faces(rgb: Any) -> Any:
        if not settings:
            detector = module.make_detector_spec("lbp", cascade=cascade)
            settings.append(module.CropSettings(detector=detector, faces=module.FacePolicy.ALL))
        return module.crop_faces(rgb, settings[0])

    return crop_faces


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("transform")(transform)
