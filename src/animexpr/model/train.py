"""The training loop: one code path for every variant, on the CPU, one GPU (CUDA graphs) or several (DDP).

Per iteration: one discriminator step (WGAN-GP + classification on real images); every n_critic-th iteration
also one generator step (adversarial + classification on fakes + cycle or contextual loss + mask guard) and
the EMA update. On a single GPU both kinds of iteration are captured once as CUDA graphs (sampling, forward,
backward and the fused Adam step), which removes the kernel-launch overhead that dominates at batch 16.

The baselines of Table 2 (CycleGAN, ComboGAN) bring their own trainer (model/baseline_train.py); the run
around it (folders, stats, samples, checkpoints, resume, Ctrl-C, NaN stop) is this module's for both, through
the `RunTrainer` protocol.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from animexpr.errors import AnimexprError
from animexpr.model import checkpoint as ckpt
from animexpr.model.config import TrainConfig
from animexpr.model.data import (
    FaceBatches,
    decode_records,
    fits_on_device,
    fixed_sample_indices,
    load_snapshot,
    to_model_input,
)
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
from animexpr.model.grid import grid_labels, save_png, translation_grid
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


def capture_rng(device: torch.device) -> dict[str, Tensor]:
    """The torch RNG states a training state holds (CPU, and the device's on CUDA)."""
    rng = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng(rng: dict[str, Tensor], device: torch.device) -> None:
    if "cpu" in rng:
        torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)


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
        self._graphs: dict[str, torch.cuda.CUDAGraph] = {}

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
        if not self.use_graphs or self._graphs:
            return
        for opt in (self.opt_G, self.opt_D):
            for group in opt.param_groups:  # a device tensor, so that changing it needs no re-capture
                group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
        saved = self._clone_state()
        rng = torch.cuda.get_rng_state(self.device)
        # Warm up on a side stream (cuDNN autotuning, optimiser state allocation), as capture requires.
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._iteration_body(with_generator=True)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        for name, with_generator in (("d", False), ("dg", True)):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._iteration_body(with_generator)
            self._graphs[name] = graph
        torch.cuda.synchronize(self.device)
        # Warm-up trained for real: put everything back, in place (the graphs hold these addresses).
        self._restore_state_in_place(saved)
        torch.cuda.set_rng_state(rng, self.device)
        self.d_sums.zero_()
        self.g_sums.zero_()

    def _clone_state(self) -> dict[str, Any]:
        return {
            "G": {k: v.clone() for k, v in self.G.state_dict().items()},
            "D": {k: v.clone() for k, v in self.D.state_dict().items()},
            "G_ema": {k: v.clone() for k, v in self.G_ema.state_dict().items()},
            "opt_G": _clone_optimizer_state(self.opt_G),
            "opt_D": _clone_optimizer_state(self.opt_D),
        }

    def _restore_state_in_place(self, saved: dict[str, Any]) -> None:
        self.G.load_state_dict(saved["G"])  # load_state_dict copies into the existing tensors
        self.D.load_state_dict(saved["D"])
        self.G_ema.load_state_dict(saved["G_ema"])
        _restore_optimizer_state(self.opt_G, saved["opt_G"])
        _restore_optimizer_state(self.opt_D, saved["opt_D"])

    # ------------------------------------------------------------------ running
    def _set_lr(self, value: float) -> None:
        for opt in (self.opt_G, self.opt_D):
            for group in opt.param_groups:
                if isinstance(group["lr"], Tensor):
                    group["lr"].fill_(value)
                else:
                    group["lr"] = value

    def run_iteration(self) -> None:
        lr = learning_rate(self.cfg, self.iteration)
        if lr != self._lr_value:
            self._set_lr(lr)
            self._lr_value = lr
        with_generator = (self.iteration + 1) % self.cfg.n_critic == 0
        if with_generator and self.use_graphs:
            self._ema_weight.fill_(ema_weight(self.cfg, self.g_steps))
        if self.use_graphs:
            self._graphs["dg" if with_generator else "d"].replay()
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
            "opt_G": _portable_optimizer_state(self.opt_G),
            "opt_D": _portable_optimizer_state(self.opt_D),
            "rng": capture_rng(self.device),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore before `prepare()` (the graphs are captured on the restored tensors)."""
        if self._graphs:
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


def _portable_optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    state = opt.state_dict()
    state["param_groups"] = [
        {k: (float(v) if k == "lr" and isinstance(v, Tensor) else v) for k, v in group.items()}
        for group in state["param_groups"]
    ]
    return state


def _clone_optimizer_state(opt: torch.optim.Optimizer) -> dict[int, dict[str, Tensor]]:
    return {
        i: {k: v.clone() for k, v in opt.state[p].items() if isinstance(v, Tensor)}
        for i, p in enumerate(_optimizer_params(opt))
        if p in opt.state
    }


def _restore_optimizer_state(opt: torch.optim.Optimizer, saved: dict[int, dict[str, Tensor]]) -> None:
    for i, p in enumerate(_optimizer_params(opt)):
        for key, value in opt.state.get(p, {}).items():
            if isinstance(value, Tensor):
                if i in saved and key in saved[i]:
                    value.copy_(saved[i][key])
                else:
                    value.zero_()  # state created by the warm-up: a fresh optimiser has none


def _optimizer_params(opt: torch.optim.Optimizer) -> Iterator[Tensor]:
    for group in opt.param_groups:
        yield from group["params"]


# ====================================================================== the run around the trainer


class _StopRequest:
    """First Ctrl-C: finish the iteration, write a checkpoint, stop. Second Ctrl-C: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopRequest:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
            self._previous = None
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this iteration and writing a checkpoint (Ctrl-C again to stop at once)")

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _newest_run_of(runs_root: Path, cfg: TrainConfig) -> Path | None:
    """The newest run folder of this snapshot and variant, with or without a checkpoint."""
    for run_dir in reversed(ckpt.run_dirs(runs_root)):
        try:
            saved = ckpt.read_run_config(run_dir)
        except ckpt.CheckpointError:
            continue
        if _same_data_and_variant(saved, cfg):
            return run_dir
    return None


def _same_data_and_variant(saved: dict[str, Any], cfg: TrainConfig) -> bool:
    same_data = Path(str(saved.get("data", ""))).resolve() == Path(cfg.data).resolve()
    return same_data and saved.get("variant") == cfg.variant


def _resume_target(cfg: TrainConfig, runs_root: Path, resume: str | None) -> tuple[Path | None, Path | None]:
    """The run folder named by --resume (None: a new run) and the state file it names, if it names one."""
    if resume is None:
        return None, None
    if resume == "auto":
        return _newest_run_of(runs_root, cfg), None
    path = Path(resume)
    if path.is_file():
        if path.parent.name != ckpt.CHECKPOINT_DIR:
            raise AnimexprError(f"--resume {resume}: not in the {ckpt.CHECKPOINT_DIR}/ folder of a run")
        return path.parent.parent, path
    if path.is_dir():
        return path, None
    raise AnimexprError(f"--resume {resume}: neither 'auto', a run folder nor a state file")


def _resolve_run(
    cfg: TrainConfig, runs_root: Path, resume: str | None, description: str
) -> tuple[Path, TrainConfig, Path | None]:
    """Decide the run folder, the effective config and the state file to resume from (rank 0 only).

    A run without a checkpoint has learned nothing that was kept: resuming it starts it again from
    iteration 0 in the same folder, with the settings given now.
    """
    run_dir, state_file = _resume_target(cfg, runs_root, resume)
    if run_dir is None:
        return ckpt.new_run_dir(runs_root, description, cfg.to_json()), cfg, None
    saved_values = ckpt.read_run_config(run_dir)  # a folder without config.json is no run
    if state_file is None:
        states = ckpt.training_states(run_dir)
        if not states:
            if not _same_data_and_variant(saved_values, cfg):
                raise AnimexprError(
                    f"{run_dir}: a run of {saved_values.get('variant')} on {saved_values.get('data')} "
                    "without a checkpoint; start a new run instead"
                )
            log.info("%s has no checkpoint yet: starting it again from iteration 0", run_dir)
            ckpt.write_run_config(run_dir, cfg.to_json())
            return run_dir, cfg, None
        state_file = states[-1][1]
    saved = TrainConfig.from_dict(saved_values)
    ignored = saved.learning_differences(cfg)
    if ignored:
        log.warning("resuming %s with its saved settings; ignoring changed %s", run_dir, ", ".join(ignored))
    effective = saved.with_runtime(cfg)
    change = schedule_change(saved, effective)
    if change:
        log.warning("resuming %s: %s", run_dir, change)
    ckpt.write_run_config(run_dir, effective.to_json())
    return run_dir, effective, state_file


def _load_vgg(cfg: TrainConfig, vgg_download: bool) -> VGG19Features | None:
    if cfg.is_baseline or cfg.spec.identity_loss != "contextual":
        return None
    return load_vgg19_features(
        cfg.cx_layer, cfg.vgg_weights, random_weights=cfg.vgg_random, download=vgg_download
    )


class _RunWriter:
    """Rank 0's outputs: stats.jsonl, sample grids and checkpoints."""

    def __init__(
        self,
        run_dir: Path,
        trainer: RunTrainer,
        fixed: tuple[Tensor, Tensor],
        manifest_sha256: str,
        classes: list[str],
    ):
        self.run_dir = run_dir
        self.trainer = trainer
        self.fixed_inputs, self.fixed_labels = fixed
        self.manifest_sha256 = manifest_sha256
        self.classes = classes
        self.last_state: Path | None = None
        self.last_generator: Path | None = None

    def append_stats(self, record: dict[str, Any]) -> None:
        with (self.run_dir / ckpt.STATS_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def label_effect(self) -> float:
        """How much the training G's output on the fixed inputs changes with the target class."""
        outputs, _ = self.trainer.translate(self.fixed_inputs, self.fixed_labels, use_ema=False)
        return label_effect(outputs)

    def save_samples(self) -> Path:
        outputs, masks = self.trainer.translate(self.fixed_inputs, self.fixed_labels)
        path = self.run_dir / ckpt.SAMPLES_DIR / f"{self.trainer.iteration:07d}.png"
        save_png(translation_grid(self.fixed_inputs, outputs, masks, grid_labels(self.classes)), path)
        return path

    def save_checkpoint(self, rng_by_rank: list[Any]) -> None:
        trainer = self.trainer
        state = trainer.state_dict()
        state["rng_by_rank"] = rng_by_rank
        state["manifest_sha256"] = self.manifest_sha256
        state["classes"] = self.classes
        self.last_state = ckpt.state_path(self.run_dir, trainer.iteration)
        ckpt.save_training_state(self.last_state, state)
        self.last_generator = ckpt.generator_path(self.run_dir, trainer.iteration)
        metadata = {
            "config": trainer.cfg.to_json(),
            "classes": json.dumps(self.classes),
            "iteration": str(trainer.iteration),
            "format": "animexpr-generator-1",
        }
        ckpt.save_generator(self.last_generator, trainer.generator_state(), metadata)
        ckpt.prune_checkpoints(self.run_dir, trainer.cfg.keep_ckpts)
        log.info("checkpoint %s", self.last_state)


def _restore_rank_rng(state: dict[str, Any], trainer: RunTrainer) -> None:
    by_rank = state.get("rng_by_rank") or []
    if trainer.info.world_size == len(by_rank) and trainer.info.world_size > 1:
        restore_rng(by_rank[trainer.info.rank], trainer.device)


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
    manifest_sha256 = snapshot.manifest_sha256
    device = resolve_device(cfg.device, info.local_rank)  # before any folder is made for the run
    if cfg.is_baseline and info.enabled:
        raise AnimexprError(f"{cfg.variant} trains in one process, as its authors: run it without torchrun")
    decision = None
    if info.is_main:
        description = f"{snapshot.name}-{cfg.variant}".replace("/", "_")
        decision = _resolve_run(cfg, runs_root, resume, description)
    run_dir, cfg, state_file = broadcast_object(decision, info)
    configure_backends(cfg, device)

    train_records = snapshot.split("train")
    images, labels = decode_records(snapshot, train_records, cfg.image_size)
    storage = device if fits_on_device(images.numel(), device) else torch.device("cpu")
    batches = FaceBatches(
        images, labels, len(snapshot.classes), device, cfg.balanced, cfg.channels_last, storage
    )
    fixed_records = snapshot.split("test") or train_records
    fixed_images, fixed_labels = decode_records(snapshot, fixed_records, cfg.image_size)
    picks = fixed_sample_indices(fixed_labels, cfg.sample_count, len(snapshot.classes))
    fixed_inputs = to_model_input(fixed_images[picks], channels_last=False).to(device)
    fixed_labels = torch.as_tensor(fixed_labels[picks], dtype=torch.long, device=device)

    vgg = _load_vgg(cfg, vgg_download)
    if vgg is not None:  # which VGG19 the contextual loss used changes every figure: config.json says it
        cfg = dataclasses.replace(cfg, vgg_sha256=vgg.weights_sha256)
        if info.is_main:
            ckpt.write_run_config(run_dir, cfg.to_json())
    trainer = _build_trainer(cfg, batches, device, info, vgg)
    if state_file is not None:
        _load_checked_state(trainer, state_file, manifest_sha256, cfg)
        log.info("resumed %s at iteration %d", run_dir, trainer.iteration)
    if info.is_main:
        ckpt.discard_after(run_dir, trainer.iteration)  # what a killed process wrote after its checkpoint
        counts = trainer.parameter_counts()
        log.info(
            "%s: %d training images, %d classes, parameters %s, device %s, %s%s",
            cfg.variant,
            len(batches),
            batches.num_classes,
            ", ".join(f"{k} {v:,}" for k, v in counts.items()),
            device,
            cfg.precision,
            _execution_note(trainer),
        )
    trainer.prepare()
    writer = (
        _RunWriter(run_dir, trainer, (fixed_inputs, fixed_labels), manifest_sha256, list(snapshot.classes))
        if info.is_main
        else None
    )
    interrupted = _loop(trainer, writer, progress)
    return TrainResult(
        run_dir,
        trainer.iteration,
        writer.last_state if writer else None,
        writer.last_generator if writer else None,
        interrupted,
    )


def _build_trainer(
    cfg: TrainConfig, batches: FaceBatches, device: torch.device, info: DistInfo, vgg: VGG19Features | None
) -> RunTrainer:
    if cfg.is_baseline:
        from animexpr.model.baseline_train import build_baseline_trainer  # it imports this module

        return build_baseline_trainer(cfg, batches, device, info)
    return Trainer(cfg, batches, device, info, vgg)


def _execution_note(trainer: RunTrainer) -> str:
    if trainer.cfg.is_baseline:
        return ", eager (no CUDA graphs for the baselines), no EMA (the generator file holds the trained G)"
    return ", CUDA graphs" if trainer.use_graphs else ""


def _load_checked_state(
    trainer: RunTrainer, state_file: Path, manifest_sha256: str, cfg: TrainConfig
) -> None:
    state = ckpt.load_training_state(state_file)
    if state.get("manifest_sha256") != manifest_sha256:
        raise AnimexprError(f"{state_file} was trained on another snapshot than {cfg.data}")
    try:
        trainer.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise ckpt.unusable(state_file, "does not fit the networks of its run's config.json", exc) from exc
    _restore_rank_rng(state, trainer)


def _loop(trainer: RunTrainer, writer: _RunWriter | None, progress: ProgressFn | None) -> bool:
    """Iterate to cfg.iters; returns True when stopped by Ctrl-C (after writing a checkpoint)."""
    cfg, info, device = trainer.cfg, trainer.info, trainer.device
    window_start = time.perf_counter()
    window_iterations = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with _StopRequest() as stop:
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
                    stats["G/label_effect"] = writer.label_effect()
                    kimg = it * trainer.images_per_iteration / 1000
                    writer.append_stats({"iteration": it, "kimg": kimg, **stats})
                    log.debug("iteration %d %s", it, stats)
            if writer is not None and (it % cfg.sample_every == 0 or it == cfg.iters):
                writer.save_samples()
            if at_ckpt or stopping:
                _check_ranks_agree(trainer)
                rng = gather_objects(capture_rng(trainer.device), info)
                if writer is not None:
                    writer.save_checkpoint(rng)
            if progress is not None and info.is_main:
                progress(it, cfg.iters, stats)
            if stopping:
                return True
    return False


def _check_ranks_agree(trainer: RunTrainer) -> None:
    """Under DDP every rank holds the same networks (the same all-reduced updates): check before saving."""
    if not trainer.info.enabled:
        return
    with torch.no_grad():
        checksum = [float(sum(p.double().sum() for p in m.parameters())) for m in trainer.synced_modules()]
    sums = gather_objects(checksum, trainer.info)
    if any(s != sums[0] for s in sums):
        raise AnimexprError(f"DDP ranks hold different networks (parameter sums {sums}); not saving")


def _checked_stats(trainer: RunTrainer, writer: _RunWriter | None) -> dict[str, float]:
    try:
        return trainer.flush_stats()
    except NonFiniteLossError as exc:
        last = writer.last_state if writer else None
        if writer is not None and last is None and ckpt.training_states(writer.run_dir):
            last = ckpt.training_states(writer.run_dir)[-1][1]
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


def config_for_run(data: Path, **overrides: Any) -> TrainConfig:
    """A TrainConfig for a snapshot folder: the variant's defaults, then any fields overridden."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise AnimexprError(f"unknown training setting {sorted(unknown)[0]!r}")
    return TrainConfig.for_variant(str(data.resolve()), **overrides)
