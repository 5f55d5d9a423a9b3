"""The trainer of the Table 2 baselines, CycleGAN and ComboGAN, in the training loop of every other variant.

`train.train()` runs these trainers like the StarGAN family's: the same run folders, config.json, stats.jsonl
(with G/label_effect), sample grids, both checkpoint kinds, exact resume, Ctrl-C and the NaN stop. What
differs is inside one iteration, which follows the authors' `optimize_parameters`: one generator step on a
pair of classes, then one step of the two discriminators of that pair, at batch 1 (`--batch`), LSGAN losses,
Adam 2e-4 with beta1 0.5, an image pool of 50 per discriminator and random horizontal flips.

How `--iters` is spent. One iteration trains one class pair (a, b) for one step: CycleGAN visits the
K (K - 1) / 2 pair models in turn (round robin, so each gets iters / 6 steps with 4 classes); ComboGAN draws
two distinct classes at random for every iteration, as its data loader does. Each step translates one batch
of class a into b and one of b into a. The default of 3,840,000 iterations for 4 classes gives every CycleGAN
generator 640,000 images, as many as the StarGAN family's single generator sees in its 200,000 iterations
(40,000 G steps of 16 images); ComboGAN under the same budget makes as many translations in all (each of its
encoders sees 1,920,000 images, half the iterations). With the authors' 100 + 100 epochs on the paper's
11,612 images the CycleGAN pair models would take about 4.6 million steps together, the same order. The
learning rate stays constant for the first half and decays linearly to 0 over the second, as their epochs do.

Not done as the authors do: their random 256 px crops of 286 px images (the images here are decoded once at
`image_size`, with flips only, as for the StarGAN family); their per-model Adam optimisers are one Adam here,
which is the same thing because only the parameters of the pair in use receive gradients. The baselines run
eager (no CUDA graphs, no torch.compile), in one process (DDP does not fit batch-1 pair steps), and keep no
EMA: the generator file holds the trained weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from animexpr.errors import AnimexprError
from animexpr.model.baselines import (
    ComboGANGenerators,
    CycleGANGenerators,
    ImagePool,
    PairTranslator,
    SourceClassError,
    baseline_parameter_counts,
    build_baseline_discriminators,
    build_baseline_generator,
    class_pairs,
    combogan_identity_loss,
    discriminator_name,
    lsgan_loss,
    multiscale_lsgan_loss,
)
from animexpr.model.config import TrainConfig
from animexpr.model.data import FaceBatches, to_model_input
from animexpr.model.distributed import DistInfo
from animexpr.model.run import capture_rng, restore_rng
from animexpr.model.train import (
    _placed,
    checked_finite,
    learning_rate,
    onehot,
    translate_to_every_class,
)

D_KEYS = ("D/loss_real", "D/loss_fake")  # means over the two discriminators of the step
G_KEYS = ("G/loss_fake", "G/loss_rec", "G/loss_idt")  # means over the two directions of the step


@dataclass
class _Judged:
    """What one discriminator sees in a D step: its class's real batch and the fakes made into it."""

    discriminator: nn.Module
    pool: ImagePool
    real: Tensor
    fake: Tensor


class BaselineTrainer:
    """Networks, optimisers, image pools and the pair step of a baseline; knows nothing of run folders."""

    use_graphs = False  # eager, as the authors

    def __init__(
        self, cfg: TrainConfig, batches: FaceBatches, device: torch.device, info: DistInfo | None = None
    ) -> None:
        self.cfg = cfg
        self.batches = batches
        self.device = device
        self.info = info or DistInfo()
        if self.info.enabled:
            raise AnimexprError(
                f"{cfg.variant} trains in one process, as its authors: run it without torchrun"
            )
        self.num_classes = batches.num_classes
        self.class_sizes: list[int] = batches.class_counts.tolist()
        self.class_starts: list[int] = batches.class_offsets.tolist()
        empty = [c for c, size in enumerate(self.class_sizes) if size == 0]
        if empty:
            raise AnimexprError(
                f"{cfg.variant} trains on every pair of classes: class {empty[0]} has no training image"
            )
        self.channels_last = cfg.channels_last and device.type == "cuda"

        torch.manual_seed(cfg.seed)
        generator = build_baseline_generator(cfg, self.num_classes)
        self.G: PairTranslator = _placed(generator, device, self.channels_last)
        self.D = _placed(build_baseline_discriminators(cfg, self.num_classes), device, self.channels_last)
        torch.manual_seed(cfg.seed)  # the batches do not depend on how many numbers the init drew
        # Pair choices and pool swaps are drawn on the host, from a generator saved with the state.
        self.host_rng = torch.Generator().manual_seed(cfg.seed)
        self.pools = {name: ImagePool(cfg.pool_size) for name in self.D}
        on_cuda = device.type == "cuda"
        betas = (cfg.beta1, cfg.beta2)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=betas, fused=on_cuda)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=betas, fused=on_cuda)
        self._lr_value: float | None = None

        self.iteration = 0
        self.g_steps = 0
        assert cfg.lambda_identity is not None  # TrainConfig fills it in for the baselines
        self.lambda_identity: float = cfg.lambda_identity
        self.d_sums = torch.zeros(len(D_KEYS), device=device)
        self.g_sums = torch.zeros(len(G_KEYS), device=device)
        self.count = 0

    # ------------------------------------------------------------------ what the loop uses
    @property
    def images_per_iteration(self) -> int:
        return 2 * self.cfg.batch  # a batch of each class of the pair

    def prepare(self) -> None:
        """Nothing to capture: the baselines run eager."""

    def parameter_counts(self) -> dict[str, int]:
        return baseline_parameter_counts(self.G, self.D)

    def generator_state(self) -> dict[str, Tensor]:
        """The weights the generator file holds: every generator (no EMA, as the authors)."""
        return self.G.state_dict()

    def synced_modules(self) -> list[nn.Module]:
        return [self.G, self.D]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")

    def run_iteration(self) -> None:
        lr = learning_rate(self.cfg, self.iteration)
        if lr != self._lr_value:
            for opt in (self.opt_G, self.opt_D):
                for group in opt.param_groups:
                    group["lr"] = lr
            self._lr_value = lr
        self._step()
        self.count += 1
        self.g_steps += 1
        self.iteration += 1

    def flush_stats(self) -> dict[str, float]:
        """Mean of each loss since the last flush; raises NonFiniteLossError on NaN or inf."""
        values = (torch.cat([self.d_sums, self.g_sums]) / max(self.count, 1)).tolist()
        stats = dict(zip(D_KEYS + G_KEYS, values, strict=True)) if self.count else {}
        self.d_sums.zero_()
        self.g_sums.zero_()
        self.count = 0
        return checked_finite(stats, self.iteration)

    @torch.no_grad()
    def translate(
        self, x: Tensor, source: Tensor | None = None, use_ema: bool = True
    ) -> tuple[list[Tensor], list[Tensor] | None]:
        """x (of the classes `source`) translated to every class; without an EMA `use_ema` changes nothing."""
        if source is None:
            raise SourceClassError(f"{self.cfg.variant} needs the source class of the images it translates")
        return translate_to_every_class(self.G, x, onehot(source, self.num_classes), self.num_classes)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "g_steps": self.g_steps,
            "config": self.cfg.to_json(),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "pools": {name: pool.state() for name, pool in self.pools.items()},
            "host_rng": self.host_rng.get_state(),
            "rng": capture_rng(self.device),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        if set(state["pools"]) != set(self.pools):
            raise KeyError(f"image pools {sorted(state['pools'])} instead of {sorted(self.pools)}")
        for name, images in state["pools"].items():
            self.pools[name].load(images, self.device)
        self.host_rng.set_state(state["host_rng"])
        self.iteration = int(state["iteration"])
        self.g_steps = int(state["g_steps"])
        self._lr_value = None
        restore_rng(state.get("rng") or {}, self.device)

    # ------------------------------------------------------------------ one iteration
    def _step(self) -> None:
        raise NotImplementedError

    def _gan_loss(self, prediction: Any, real: bool) -> Tensor:
        """The discriminators' LSGAN loss (ComboGAN's weighs its several scales)."""
        return lsgan_loss(prediction, real)

    def _sample(self, cls: int) -> Tensor:
        """A batch of class `cls`, uniform within the class, flipped at random (the authors' default)."""
        where = self.batches.storage
        within = torch.randint(self.class_sizes[cls], (self.cfg.batch,), device=where)
        faces = self.batches.images[self.class_starts[cls] + within]
        flip = torch.rand(self.cfg.batch, device=where) < 0.5
        faces = torch.where(flip[:, None, None, None], faces.flip(2), faces)
        if not self.batches.on_device:
            faces = faces.to(self.device, non_blocking=True)
        return to_model_input(faces, self.channels_last)

    def _generator_step(self, loss: Tensor, networks: Iterable[nn.Module]) -> None:
        self.opt_G.zero_grad(set_to_none=True)
        # Only the step's generators: the discriminators get no gradient from the generator loss.
        params = [p for network in networks for p in network.parameters()]
        torch.autograd.backward(loss, inputs=params)
        self.opt_G.step()

    def _discriminator_step(self, judged: list[_Judged]) -> None:
        """Each D: 0.5 * (LSGAN(real, 1) + LSGAN(pooled fake, 0)), both Ds in one optimiser step."""
        self.opt_D.zero_grad(set_to_none=True)
        loss_real = torch.zeros((), device=self.device)
        loss_fake = torch.zeros((), device=self.device)
        with self.autocast():
            for item in judged:
                shown = item.pool.query(item.fake, self.host_rng)
                loss_real = loss_real + self._gan_loss(item.discriminator(item.real), True)
                loss_fake = loss_fake + self._gan_loss(item.discriminator(shown), False)
        (0.5 * (loss_real + loss_fake)).backward()
        self.opt_D.step()
        self.d_sums += torch.stack([loss_real, loss_fake]).detach() / len(judged)

    def _record_generator(self, loss_fake: Tensor, loss_rec: Tensor, loss_idt: Tensor) -> None:
        self.g_sums += torch.stack([loss_fake, loss_rec, loss_idt]).detach().float() / 2


class CycleGANTrainer(BaselineTrainer):
    """CycleGAN's `optimize_parameters` on the pair models in turn."""

    def __init__(
        self, cfg: TrainConfig, batches: FaceBatches, device: torch.device, info: DistInfo | None = None
    ) -> None:
        super().__init__(cfg, batches, device, info)
        assert isinstance(self.G, CycleGANGenerators)
        self.generators: CycleGANGenerators = self.G
        self.pairs = class_pairs(self.num_classes)

    def _step(self) -> None:
        pair = self.pairs[self.iteration % len(self.pairs)]
        a, b = pair
        real_a, real_b = self._sample(a), self._sample(b)
        g_ab, g_ba = self.generators.direction(a, b), self.generators.direction(b, a)
        d_a, d_b = (self.D[discriminator_name(pair, c)] for c in pair)
        with self.autocast():
            fake_b, fake_a = g_ab(real_a), g_ba(real_b)
            loss_fake = lsgan_loss(d_b(fake_b), True) + lsgan_loss(d_a(fake_a), True)
            loss_rec = _l1(g_ba(fake_b), real_a) + _l1(g_ab(fake_a), real_b)
            loss_idt = torch.zeros((), device=self.device)
            if self.lambda_identity > 0:  # G_ab(b) should be b: keeps colours (the authors' lambda_identity)
                loss_idt = _l1(g_ab(real_b), real_b) + _l1(g_ba(real_a), real_a)
            weight = self.cfg.lambda_rec
            loss = loss_fake + weight * loss_rec + weight * self.lambda_identity * loss_idt
        self._generator_step(loss, (g_ab, g_ba))
        # D_A of the authors judges class b, D_B class a; their pools are queried in that order.
        self._discriminator_step(
            [
                _Judged(d_b, self.pools[discriminator_name(pair, b)], real_b, fake_b),
                _Judged(d_a, self.pools[discriminator_name(pair, a)], real_a, fake_a),
            ]
        )
        self._record_generator(loss_fake, loss_rec, loss_idt)


class ComboGANTrainer(BaselineTrainer):
    """ComboGAN's `optimize_parameters`: two random classes per iteration."""

    def __init__(
        self, cfg: TrainConfig, batches: FaceBatches, device: torch.device, info: DistInfo | None = None
    ) -> None:
        super().__init__(cfg, batches, device, info)
        assert isinstance(self.G, ComboGANGenerators)
        self.generators: ComboGANGenerators = self.G

    def _gan_loss(self, prediction: Any, real: bool) -> Tensor:
        return multiscale_lsgan_loss(prediction, real)

    def _step(self) -> None:
        a, b = torch.randperm(self.num_classes, generator=self.host_rng)[:2].tolist()
        real_a, real_b = self._sample(a), self._sample(b)
        enc_a, enc_b = self.generators.encoders[a], self.generators.encoders[b]
        dec_a, dec_b = self.generators.decoders[a], self.generators.decoders[b]
        d_a, d_b = self.D[str(a)], self.D[str(b)]
        with self.autocast():
            h_a, h_b = enc_a(real_a), enc_b(real_b)
            loss_idt = torch.zeros((), device=self.device)
            if self.lambda_identity > 0:  # off by default (the authors' lambda_identity 0)
                loss_idt = combogan_identity_loss(dec_a(h_a), real_a) + combogan_identity_loss(
                    dec_b(h_b), real_b
                )
            fake_b, fake_a = dec_b(h_a), dec_a(h_b)
            loss_fake = multiscale_lsgan_loss(d_b(fake_b), True) + multiscale_lsgan_loss(d_a(fake_a), True)
            # The authors' cycle criterion is smooth L1 (nn.SmoothL1Loss), not L1.
            loss_rec = _smooth_l1(dec_a(enc_b(fake_b)), real_a) + _smooth_l1(dec_b(enc_a(fake_a)), real_b)
            loss = loss_fake + self.cfg.lambda_rec * loss_rec + self.lambda_identity * loss_idt
        self._generator_step(loss, (enc_a, dec_a, enc_b, dec_b))
        self._discriminator_step(
            [
                _Judged(d_b, self.pools[str(b)], real_b, fake_b),
                _Judged(d_a, self.pools[str(a)], real_a, fake_a),
            ]
        )
        self._record_generator(loss_fake, loss_rec, loss_idt)


def _l1(output: Tensor, target: Tensor) -> Tensor:
    return F.l1_loss(output.float(), target.float())


def _smooth_l1(output: Tensor, target: Tensor) -> Tensor:
    return F.smooth_l1_loss(output.float(), target.float())


def build_baseline_trainer(
    cfg: TrainConfig, batches: FaceBatches, device: torch.device, info: DistInfo | None = None
) -> BaselineTrainer:
    trainers: dict[str, type[BaselineTrainer]] = {"cyclegan": CycleGANTrainer, "combogan": ComboGANTrainer}
    if cfg.variant not in trainers:
        raise AnimexprError(f"variant {cfg.variant} is not a baseline")
    return trainers[cfg.variant](cfg, batches, device, info)
