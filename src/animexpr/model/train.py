"""The paper's training step and the loop: one code path for every variant, on the CPU, one GPU or several.

Per iteration: one discriminator step (WGAN-GP + classification on real images); every n_critic-th iteration
also one generator step (adversarial + classification on fakes + cycle or contextual loss + mask guard) and
the EMA update. On a single GPU both kinds of iteration run as CUDA graphs (model/cuda_graphs.py); under
torchrun the networks are wrapped in DDP.

The baselines of Table 2 (CycleGAN, ComboGAN) bring their own trainer (model/baseline_train.py); `train()`
runs either through the `RunTrainer` protocol, with the run folder, resume, Ctrl-C and checkpoints of
model/run.py around it, and stops on a NaN or inf loss.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from animexpr.errors import AnimexprError
from animexpr.model import checkpoint as ckpt
from animexpr.model.config import TrainConfig
from animexpr.model.cuda_graphs import IterationGraphs, portable_optimizer_state, set_learning_rate
from animexpr.model.data import FaceBatches, load_snapshot
from animexpr.model.device import resolve_device
from animexpr.model.distributed import (
    DistInfo,
    all_reduce_mean,
    any_rank,
    broadcast_object,
    gather_objects,
    init_distributed,
    shutdown_distributed,
)
from animexpr.model.losses import (
    classification_loss,
    contextual_loss,
    cycle_reconstruction_loss,
    gradient_penalty,
    mask_collapse_penalty,
    mask_statistics,
    wasserstein_critic_loss,
    wasserstein_generator_loss,
)
from animexpr.model.networks import Generator, build_networks, parameter_counts
from animexpr.model.run import (
    RunPlan,
    RunWriter,
    StopRequest,
    capture_rng,
    check_ranks_agree,
    load_checked_state,
    log_run_start,
    plan_run,
    record_run,
    restore_rng,
    training_data,
)
from animexpr.model.vgg import VGG19Features, load_vgg19_features

log = logging.getLogger(__name__)

ModuleT = TypeVar("ModuleT", bound=nn.Module)
D_KEYS = ("D/loss_real", "D/loss_fake", "D/loss_cls", "D/loss_gp")
ProgressFn = Callable[[int, int, dict[str, float] | None], None]


class NonFiniteLossError(AnimexprError):
    pass


class RunTrainer(Protocol):
    """What the run around a trainer uses: the StarGAN family's `Trainer` and the baselines' trainers."""

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    iteration: int
    use_graphs: bool

    @property
    def images_per_iteration(self) -> int: ...  # real images drawn per iteration (stats' kimg)

    def run_iteration(self) -> None: ...

    def flush_stats(self) -> dict[str, float]: ...

    def translate(
        self, x: Tensor, source: Tensor | None = None, use_ema: bool = True
    ) -> tuple[list[Tensor], list[Tensor] | None]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def prepare(self) -> None: ...

    def parameter_counts(self) -> dict[str, int]: ...

    def generator_state(self) -> dict[str, Tensor]: ...  # what the G_ema-*.safetensors file holds

    def synced_modules(self) -> list[nn.Module]: ...  # the networks DDP keeps equal on every rank


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    iteration: int
    state_file: Path | None
    generator_file: Path | None
    interrupted: bool


STARGAN_LR_UPDATE_STEP = 1000  # StarGAN's official code changes the learning rate every 1,000 iterations


def learning_rate(cfg: TrainConfig, iteration: int) -> float:
    """The learning rate of the iteration after `iteration` completed ones.

    "linear": lr0 until decay_start, then a true linear decay reaching 0 at `iters`. "stargan": the official
    code's rule, lr0 / (iters - decay_start) subtracted once per 1,000 iterations past decay_start.
    """
    if iteration < cfg.decay_start or cfg.iters <= cfg.decay_start:
        return cfg.lr
    decay_iters = cfg.iters - cfg.decay_start
    if cfg.lr_schedule == "stargan":
        updates = iteration // STARGAN_LR_UPDATE_STEP - cfg.decay_start // STARGAN_LR_UPDATE_STEP
        return cfg.lr * max(0.0, 1 - updates / decay_iters)
    return cfg.lr * max(0.0, (cfg.iters - iteration) / decay_iters)


def schedule_change(saved: TrainConfig, new: TrainConfig) -> str | None:
    """What another --iters changes in a resumed run's learning-rate schedule (None: nothing)."""
    if saved.iters == new.iters or max(saved.iters, new.iters) <= saved.decay_start:
        return None
    if new.iters <= saved.decay_start:
        return f"--iters {new.iters} instead of {saved.iters}: the learning rate no longer decays"
    if saved.iters <= saved.decay_start:
        return (
            f"--iters {new.iters} instead of {saved.iters}: the learning rate now decays from iteration "
            f"{saved.decay_start} to {new.iters}"
        )
    return (
        f"--iters {new.iters} instead of {saved.iters}: the learning-rate decay from iteration "
        f"{saved.decay_start} now ends at {new.iters} (the rate at each iteration changes)"
    )


def label_effect(outputs: list[Tensor]) -> float:
    """Mean |G(x, c_i) - G(x, c_j)| over pairs of target classes (pixels in [-1, 1]): 0 when G ignores c."""
    pairs = list(itertools.combinations(outputs, 2))
    if not pairs:
        return 0.0
    return float(sum((a - b).abs().mean() for a, b in pairs)) / len(pairs)


def ema_weight(cfg: TrainConfig, g_step: int) -> float:
    """Weight of the new generator in the EMA; the warm-up keeps a short run's EMA from staying near init."""
    beta = min(cfg.ema_beta, (1 + g_step) / (10 + g_step))
    return 1.0 - beta


def configure_backends(cfg: TrainConfig, device: torch.device) -> None:
    if device.type == "cuda":
        tf32 = cfg.precision in ("tf32", "bf16")
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True


def onehot(labels: Tensor, num_classes: int) -> Tensor:
    # A comparison rather than F.one_hot: never a host-side range check, so it is safe in graph capture.
    classes = torch.arange(num_classes, device=labels.device)
    return (labels[:, None] == classes).float()


def checked_finite(stats: dict[str, float], iteration: int) -> dict[str, float]:
    """`stats` unchanged, or NonFiniteLossError naming the first NaN or inf loss."""
    bad = [k for k, v in stats.items() if not math.isfinite(v)]
    if bad:
        raise NonFiniteLossError(f"{bad[0]} became {stats[bad[0]]} before iteration {iteration}")
    return stats


@torch.no_grad()
def translate_to_every_class(
    generator: Callable[..., tuple[Tensor, Tensor | None]],
    x: Tensor,
    source_onehot: Tensor | None,
    num_classes: int,
) -> tuple[list[Tensor], list[Tensor] | None]:
    """x translated to each class in turn, and the masks (None for generators without one)."""
    outputs, masks = [], []
    for c in range(num_classes):
        labels = torch.full((len(x),), c, device=x.device, dtype=torch.long)
        y, m = generator(x, onehot(labels, num_classes), source_onehot)
        outputs.append(y)
        if m is not None:
            masks.append(m)
    return outputs, (masks or None)


def discriminator_loss(
    discriminator: Callable[[Tensor], tuple[Tensor, Tensor]],
    x_real: Tensor,
    x_fake: Tensor,
    label_org: Tensor,
    alpha: Tensor,
    cfg: TrainConfig,
) -> tuple[Tensor, Tensor]:
    """L_D = -L_adv + lambda_cls L_cls(real) + lambda_gp L_gp, and its parts in D_KEYS order.

    `discriminator` may be DDP-wrapped: it is called twice (real+fake, then the interpolates) before the one
    backward of the total, and the penalty's gradient is taken out of place, so every parameter's gradient
    hook fires once and DDP all-reduces the full gradient, penalty included.
    """
    # One D call for real and fake: D has no batch statistics, so this equals two calls.
    src, cls = discriminator(torch.cat([x_real, x_fake]))
    src_real, src_fake = src.chunk(2)
    loss_real, loss_fake = wasserstein_critic_loss(src_real, src_fake)
    loss_cls = classification_loss(cls[: len(x_real)], label_org)
    loss_gp = gradient_penalty(lambda t: discriminator(t)[0], x_real, x_fake, alpha)
    loss = loss_real + loss_fake + cfg.lambda_cls * loss_cls + cfg.lambda_gp * loss_gp
    return loss, torch.stack([loss_real, loss_fake, loss_cls, loss_gp])


class Trainer:
    """Networks, optimisers and the two step kinds; knows nothing of run folders (bench/ uses it directly)."""

    def __init__(
        self,
        cfg: TrainConfig,
        batches: FaceBatches,
        device: torch.device,
        info: DistInfo | None = None,
        vgg: VGG19Features | None = None,
    ) -> None:
        self.cfg = cfg
        self.batches = batches
        self.device = device
        self.info = info or DistInfo()
        self.num_classes = batches.num_classes
        if cfg.batch % self.info.world_size:
            raise AnimexprError(f"batch {cfg.batch} does not divide among {self.info.world_size} processes")
        self.local_batch = cfg.batch // self.info.world_size
        self.spec = cfg.spec
        if self.spec.identity_loss == "contextual" and vgg is None:
            raise AnimexprError(f"variant {cfg.variant} needs the VGG19 feature extractor")
        self.channels_last = cfg.channels_last and device.type == "cuda"

        torch.manual_seed(cfg.seed)  # the same initial networks on every rank
        generator, discriminator = build_networks(cfg, self.num_classes)
        self.G: Generator = _placed(generator, device, self.channels_last)
        self.D = _placed(discriminator, device, self.channels_last)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False)
        self.vgg = _placed(vgg, device, self.channels_last) if vgg is not None else None
        torch.manual_seed(cfg.seed + 1000 * self.info.rank)  # different batches on every rank

        self.G_train: nn.Module = self.G
        self.D_train: nn.Module = self.D
        if self.info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.G_train = DistributedDataParallel(self.G, device_ids=ids, broadcast_buffers=False)
            self.D_train = DistributedDataParallel(self.D, device_ids=ids, broadcast_buffers=False)
        if cfg.compile:
            self._compile_forward_parts()

        self.use_graphs = (
            cfg.cuda_graphs and device.type == "cuda" and not self.info.enabled and batches.on_device
        )
        self.g_params: list[Tensor] = [p for p in self.G.parameters() if p.requires_grad]
        self.d_params: list[Tensor] = [p for p in self.D.parameters() if p.requires_grad]
        self.opt_G = self._adam(self.g_params)
        self.opt_D = self._adam(self.d_params)
        self.ema_params: list[Tensor] = list(self.G_ema.parameters())

        self.iteration = 0
        self.g_steps = 0
        self.g_keys = self._g_keys()
        self.d_sums = torch.zeros(len(D_KEYS), device=device)
        self.g_sums = torch.zeros(len(self.g_keys), device=device)
        self.d_count = 0
        self.g_count = 0
        self._lr_value: float | None = None
        self._ema_weight = torch.zeros((), device=device)
        self._graphs: IterationGraphs | None = None  # captured by prepare()

    # ------------------------------------------------------------------ setup
    def _adam(self, params: list[Tensor]) -> torch.optim.Adam:
        # Fused and capturable on CUDA: one kernel per step, and the step can live in a CUDA graph.
        on_cuda = self.device.type == "cuda"
        betas = (self.cfg.beta1, self.cfg.beta2)
        return torch.optim.Adam(params, lr=self.cfg.lr, betas=betas, fused=on_cuda, capturable=on_cuda)

    def _g_keys(self) -> tuple[str, ...]:
        identity = "G/loss_rec" if self.spec.identity_loss == "cycle" else "G/loss_cx"
        keys: tuple[str, ...] = ("G/loss_fake", "G/loss_cls", identity)
        if self.spec.attention_mask:
            keys += ("G/loss_mask", "G/mask_mean", "G/mask_std")
        return keys

    def _compile_forward_parts(self) -> None:
        # D stays eager: its gradient penalty needs a double backward, which AOTAutograd refuses.
        # Module.compile() keeps the state-dict keys (no `_orig_mod.` prefix in checkpoints).
        for part in (self.G.mapping, self.G.trans, self.G.att, self.vgg):
            if part is not None:
                part.compile()

    def parameter_counts(self) -> dict[str, int]:
        return parameter_counts(self.G, self.D)

    @property
    def images_per_iteration(self) -> int:
        return self.cfg.batch

    def generator_state(self) -> dict[str, Tensor]:
        return self.G_ema.state_dict()

    def synced_modules(self) -> list[nn.Module]:
        return [self.G, self.D]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(
            self.device.type,
            dtype=torch.bfloat16,
            enabled=self.cfg.precision == "bf16",
            cache_enabled=not self.use_graphs,  # the autocast weight cache must be off under graph capture
        )

    # ------------------------------------------------------------------ the two steps
    def _d_step(self) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.cfg
        self.opt_D.zero_grad(set_to_none=True)
        x_real, label_org, label_trg = self.batches.sample(self.local_batch)
        with self.autocast():
            with torch.no_grad():
                x_fake, _ = self.G(x_real, onehot(label_trg, self.num_classes))
            alpha = torch.rand(len(x_real), 1, 1, 1, device=self.device)
            loss, parts = discriminator_loss(self.D_train, x_real, x_fake, label_org, alpha, cfg)
        loss.backward()
        self.opt_D.step()
        self.d_sums += parts.detach()
        return x_real, label_org, label_trg

    def _g_step(self, x_real: Tensor, label_org: Tensor, label_trg: Tensor) -> None:
        cfg = self.cfg
        self.opt_G.zero_grad(set_to_none=True)
        with self.autocast():
            x_fake, mask = self.G_train(x_real, onehot(label_trg, self.num_classes))
            # The bare D: no DDP hooks, and backward(inputs=...) below skips D's weight gradients entirely.
            src, cls = self.D(x_fake)
            loss_fake = wasserstein_generator_loss(src)
            loss_cls = classification_loss(cls, label_trg)
            if self.spec.identity_loss == "cycle":
                x_rec, _ = self.G_train(x_fake, onehot(label_org, self.num_classes))
                loss_identity = cycle_reconstruction_loss(x_real, x_rec)
                identity_weight = cfg.lambda_rec
            else:
                assert self.vgg is not None
                with torch.no_grad():
                    target_features = self.vgg(x_real)
                loss_identity = contextual_loss(self.vgg(x_fake), target_features, cfg.cx_band_width)
                identity_weight = cfg.lambda_cx
            loss = loss_fake + cfg.lambda_cls * loss_cls + identity_weight * loss_identity
            values = [loss_fake, loss_cls, loss_identity]
            if mask is not None:
                loss_mask = mask_collapse_penalty(mask, cfg.mask_floor, cfg.mask_ceiling)
                loss = loss + cfg.lambda_mask * loss_mask
                values += [loss_mask, *mask_statistics(mask)]
        torch.autograd.backward(loss, inputs=self.g_params)
        self.opt_G.step()
        self._update_ema()
        self.g_sums += torch.stack([v.float() for v in values]).detach()

    @torch.no_grad()
    def _update_ema(self) -> None:
        weight: Tensor | float = self._ema_weight if self.use_graphs else ema_weight(self.cfg, self.g_steps)
        deltas = torch._foreach_sub(self.g_params, self.ema_params)
        torch._foreach_mul_(deltas, weight)
        torch._foreach_add_(self.ema_params, list(deltas))

    def _iteration_body(self, with_generator: bool) -> None:
        batch = self._d_step()
        if with_generator:
            self._g_step(*batch)

    # ------------------------------------------------------------------ CUDA graphs
    def prepare(self) -> None:
        """Capture the two iteration kinds as CUDA graphs (after any state was loaded); a no-op otherwise."""
        if not self.use_graphs or self._graphs is not None:
            return
        modules = {"G": self.G, "D": self.D, "G_ema": self.G_ema}
        optimizers = {"opt_G": self.opt_G, "opt_D": self.opt_D}
        self._graphs = IterationGraphs(self._iteration_body, self.device, modules, optimizers)
        self.d_sums.zero_()
        self.g_sums.zero_()

    # ------------------------------------------------------------------ running
    def run_iteration(self) -> None:
        lr = learning_rate(self.cfg, self.iteration)
        if lr != self._lr_value:
            set_learning_rate((self.opt_G, self.opt_D), lr)
            self._lr_value = lr
        with_generator = (self.iteration + 1) % self.cfg.n_critic == 0
        if with_generator and self.use_graphs:
            self._ema_weight.fill_(ema_weight(self.cfg, self.g_steps))
        if self._graphs is not None:
            self._graphs.replay(with_generator)
        else:
            self._iteration_body(with_generator)
        self.d_count += 1
        if with_generator:
            self.g_count += 1
            self.g_steps += 1
        self.iteration += 1

    def flush_stats(self) -> dict[str, float]:
        """Mean of each loss since the last flush (one host synchronisation); raises on NaN or inf."""
        sums = torch.cat([self.d_sums / max(self.d_count, 1), self.g_sums / max(self.g_count, 1)])
        sums = all_reduce_mean(sums, self.info)
        values = sums.tolist()
        keys = D_KEYS + self.g_keys
        stats = {k: v for k, v in zip(keys, values, strict=True) if k.startswith("D/") or self.g_count}
        self.d_sums.zero_()
        self.g_sums.zero_()
        self.d_count = self.g_count = 0
        return checked_finite(stats, self.iteration)

    @torch.no_grad()
    def translate(
        self, x: Tensor, source: Tensor | None = None, use_ema: bool = True
    ) -> tuple[list[Tensor], list[Tensor] | None]:
        """x (of classes `source`, if known) translated to every class, and the masks; fp32, no autocast."""
        generator = self.G_ema if use_ema else self.G
        source_onehot = None if source is None else onehot(source, self.num_classes)
        return translate_to_every_class(generator, x, source_onehot, self.num_classes)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "g_steps": self.g_steps,
            "config": self.cfg.to_json(),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": portable_optimizer_state(self.opt_G),
            "opt_D": portable_optimizer_state(self.opt_D),
            "rng": capture_rng(self.device),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore before `prepare()` (the graphs are captured on the restored tensors)."""
        if self._graphs is not None:
            raise RuntimeError("load the training state before capturing the CUDA graphs")
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.iteration = int(state["iteration"])
        self.g_steps = int(state["g_steps"])
        self._lr_value = None
        restore_rng(state.get("rng") or {}, self.device)


def _placed(module: ModuleT, device: torch.device, channels_last: bool) -> ModuleT:
    module = module.to(device)
    if channels_last:  # cuDNN's fast convolution kernels want NHWC
        module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return module


# ====================================================================== the run around the trainer


def train(
    cfg: TrainConfig,
    runs_root: Path,
    resume: str | None = None,
    progress: ProgressFn | None = None,
    vgg_download: bool = False,
) -> TrainResult:
    """Train (or resume) one run under `runs_root`; every rank of a torchrun job calls this."""
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, runs_root, resume, progress, vgg_download, info)
    finally:
        shutdown_distributed(info)


def _train(
    cfg: TrainConfig,
    runs_root: Path,
    resume: str | None,
    progress: ProgressFn | None,
    vgg_download: bool,
    info: DistInfo,
) -> TrainResult:
    snapshot = load_snapshot(Path(cfg.data))
    device = resolve_device(cfg.device, info.local_rank)  # before any folder is made for the run
    if cfg.is_baseline and info.enabled:
        raise AnimexprError(f"{cfg.variant} trains in one process, as its authors: run it without torchrun")
    description = f"{snapshot.name}-{cfg.variant}".replace("/", "_")
    plan: RunPlan = broadcast_object(_plan(cfg, runs_root, resume) if info.is_main else None, info)
    cfg = plan.cfg
    vgg = _load_vgg(cfg, vgg_download)  # before the run folder is made: a failed fetch leaves none behind
    if vgg is not None:  # which VGG19 the contextual loss used changes every figure: config.json says it
        cfg = dataclasses.replace(cfg, vgg_sha256=vgg.weights_sha256)
    configure_backends(cfg, device)
    batches, fixed = training_data(snapshot, cfg, device)  # a bad image stops here, before any folder
    trainer = _build_trainer(cfg, batches, device, info, vgg)
    recorded = record_run(plan, cfg, runs_root, description) if info.is_main else None
    run_dir: Path = broadcast_object(recorded, info)
    if plan.state_file is not None:
        load_checked_state(trainer, plan.state_file, snapshot.manifest_sha256, cfg.data)
        log.info("resumed %s at iteration %d", run_dir, trainer.iteration)
    if info.is_main:
        ckpt.discard_after(run_dir, trainer.iteration)  # what a killed process wrote after its checkpoint
        log_run_start(trainer, batches)
    trainer.prepare()
    classes = list(snapshot.classes)
    writer = RunWriter(run_dir, trainer, fixed, snapshot.manifest_sha256, classes) if info.is_main else None
    try:
        interrupted = _loop(trainer, writer, progress)
    except BaseException:
        if writer is not None:
            _close_after_failure(writer)
        raise
    if writer is not None:
        writer.close()  # the curves as far as training got
    return TrainResult(
        run_dir,
        trainer.iteration,
        writer.last_state if writer else None,
        writer.last_generator if writer else None,
        interrupted,
    )


def _close_after_failure(writer: RunWriter) -> None:
    """The curves as far as a failed training got; the loop's error is the one to report, never this one's."""
    try:
        writer.close()
    except Exception:
        log.exception("the training curves could not be finished")


def _plan(cfg: TrainConfig, runs_root: Path, resume: str | None) -> RunPlan:
    """The run to write (rank 0 only); a resumed run with another --iters says what its schedule becomes."""
    plan = plan_run(cfg, runs_root, resume)
    change = schedule_change(plan.saved, plan.cfg) if plan.saved is not None else None
    if change:
        log.warning("resuming %s: %s", plan.run_dir, change)
    return plan


def _load_vgg(cfg: TrainConfig, vgg_download: bool) -> VGG19Features | None:
    if cfg.is_baseline or cfg.spec.identity_loss != "contextual":
        return None
    return load_vgg19_features(
        cfg.cx_layer, cfg.vgg_weights, random_weights=cfg.vgg_random, download=vgg_download
    )


def _build_trainer(
    cfg: TrainConfig, batches: FaceBatches, device: torch.device, info: DistInfo, vgg: VGG19Features | None
) -> RunTrainer:
    if cfg.is_baseline:
        from animexpr.model.baseline_train import build_baseline_trainer  # it imports this module

        return build_baseline_trainer(cfg, batches, device, info)
    return Trainer(cfg, batches, device, info, vgg)


def _loop(trainer: RunTrainer, writer: RunWriter | None, progress: ProgressFn | None) -> bool:
    """Iterate to cfg.iters; returns True when stopped by Ctrl-C (after writing a checkpoint)."""
    cfg, info, device = trainer.cfg, trainer.info, trainer.device
    window_start = time.perf_counter()
    window_iterations = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with StopRequest() as stop:
        while trainer.iteration < cfg.iters:
            trainer.run_iteration()
            window_iterations += 1
            it = trainer.iteration
            at_log = it % cfg.log_every == 0
            at_ckpt = it % cfg.ckpt_every == 0 or it == cfg.iters
            # Under DDP every rank must stop at the same iteration: agree on it at the log points.
            stopping = any_rank(stop.requested, info, device) if (at_log or not info.enabled) else False
            stats = None
            if at_log or at_ckpt or stopping:
                stats = _checked_stats(trainer, writer)  # NaN/inf stops here, before any checkpoint
                elapsed = time.perf_counter() - window_start
                stats |= _timing(trainer, elapsed, window_iterations)
                window_start, window_iterations = time.perf_counter(), 0
                if writer is not None:
                    # how much the training G's output on the fixed inputs changes with the target class
                    stats["G/label_effect"] = label_effect(writer.translate_fixed(use_ema=False)[0])
                    kimg = it * trainer.images_per_iteration / 1000
                    writer.append_stats({"iteration": it, "kimg": kimg, **stats})
                    log.debug("iteration %d %s", it, stats)
            if writer is not None and (it % cfg.sample_every == 0 or it == cfg.iters):
                writer.save_samples()
            if at_ckpt or stopping:
                check_ranks_agree(trainer)
                rng = gather_objects(capture_rng(trainer.device), info)
                if writer is not None:
                    writer.save_checkpoint(rng)
            if progress is not None and info.is_main:
                progress(it, cfg.iters, stats)
            if stopping:
                return True
    return False


def _checked_stats(trainer: RunTrainer, writer: RunWriter | None) -> dict[str, float]:
    try:
        return trainer.flush_stats()
    except NonFiniteLossError as exc:
        last = writer.last_good_state() if writer else None
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise NonFiniteLossError(f"training stopped: {exc}; {where} (try a lower --lr)") from exc


def _timing(trainer: RunTrainer, elapsed: float, iterations: int) -> dict[str, float]:
    cfg = trainer.cfg
    ms_per_iter = 1000 * elapsed / max(iterations, 1)
    timing = {
        "lr": learning_rate(cfg, trainer.iteration - 1),
        "ms_per_iter": ms_per_iter,
        "images_per_s": trainer.images_per_iteration * 1000 / ms_per_iter if ms_per_iter > 0 else 0.0,
    }
    if trainer.device.type == "cuda":
        timing["peak_mem_mib"] = torch.cuda.max_memory_allocated(trainer.device) / 2**20
    return timing
