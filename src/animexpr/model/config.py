"""The training configuration: one frozen dataclass, saved as JSON in every run folder.

The paper's variants (VARIANTS) share one set of defaults. The two baselines of Table 2 (BASELINES:
CycleGAN and ComboGAN) train with their authors' defaults instead (batch 1, Adam 2e-4, no EMA, ...):
`TrainConfig.for_variant` applies them under whatever the caller sets, and the fields that only the
baselines read default to None, which `__post_init__` turns into the variant's own value.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

from animexpr.errors import ConfigError

Precision = Literal["fp32", "tf32", "bf16"]
IdentityLoss = Literal["cycle", "contextual"]
MappingInit = Literal["he", "torch"]
LrSchedule = Literal["linear", "stargan"]


@dataclass(frozen=True)
class VariantSpec:
    """What distinguishes the paper's ablations (Table 1) from each other."""

    decoder_control: bool  # F + AdaIN in the decoder; otherwise the label is tiled into the input (StarGAN)
    attention_mask: bool  # G_att and y* = M * y + (1 - M) * x
    identity_loss: IdentityLoss  # cycle reconstruction (StarGAN) or the contextual loss (the paper)


VARIANTS: dict[str, VariantSpec] = {
    "stargan": VariantSpec(decoder_control=False, attention_mask=False, identity_loss="cycle"),
    "stargan-dc": VariantSpec(decoder_control=True, attention_mask=False, identity_loss="cycle"),
    "stargan-am": VariantSpec(decoder_control=False, attention_mask=True, identity_loss="cycle"),
    "ours-no-cx": VariantSpec(decoder_control=True, attention_mask=True, identity_loss="cycle"),
    "ours": VariantSpec(decoder_control=True, attention_mask=True, identity_loss="contextual"),
}

# The baselines of the paper's Table 2, trained as their authors ship them (see model/baselines.py).
BASELINES: tuple[str, ...] = ("cyclegan", "combogan")
ALL_VARIANTS: tuple[str, ...] = (*VARIANTS, *BASELINES)

# The baselines' fields that differ from the paper's defaults above; `TrainConfig.for_variant` applies them
# wherever the caller does not set the field. Four classes make six class pairs, and one iteration is one
# step of one pair: 3,840,000 iterations give each CycleGAN generator 640,000 steps of one image, as many
# images as the StarGAN family's generator sees (40,000 G steps of 16) in its 200,000 iterations. The rate
# stays constant for the first half and decays linearly to 0 over the second, as the authors' 100 + 100
# epochs do: decay_start is half of iters unless the caller sets it (see `for_variant`).
_BASELINE_COMMON: dict[str, Any] = {
    "iters": 3_840_000,
    "batch": 1,
    "lr": 2e-4,
    "beta1": 0.5,
    "beta2": 0.999,
    "n_critic": 1,  # G and the Ds are updated once per iteration
    "ema_beta": 0.0,  # the authors keep no EMA: the generator file holds the trained weights
    "lambda_rec": 10.0,  # lambda_cyc (CycleGAN: lambda_A = lambda_B = 10; ComboGAN: lambda_cycle = 10)
    "cuda_graphs": False,  # the baselines run eager
    "log_every": 1000,
    "sample_every": 20_000,
    "ckpt_every": 100_000,  # a CycleGAN state is about 2 GB (12 generators, 12 Ds, Adam moments, pools)
}
VARIANT_DEFAULTS: dict[str, dict[str, Any]] = {
    "cyclegan": dict(_BASELINE_COMMON),
    "combogan": dict(_BASELINE_COMMON),
}
# The baseline-only fields when left at None: ResNet blocks per generator, PatchGAN layers, identity weight.
_BASELINE_ARCHITECTURE: dict[str, dict[str, Any]] = {
    "cyclegan": {"resnet_blocks": 9, "patch_layers": 3, "lambda_identity": 0.5},
    "combogan": {"resnet_blocks": 9, "patch_layers": 4, "lambda_identity": 0.0},
}

# What `--device` accepts in every model command (checked by model.device.resolve_device).
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"

# Fields that only say how a run executes, not what it learns: a resumed run may change them.
RUNTIME_FIELDS = frozenset(
    {
        "iters",
        "device",
        "log_every",
        "sample_every",
        "ckpt_every",
        "keep_ckpts",
        "cuda_graphs",
        "compile",
        "vgg_weights",
        "vgg_sha256",
        "data",
    }
)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. Defaults are the paper's (and StarGAN's where the paper is silent)."""

    data: str  # snapshot folder (holds dataset.json and manifest.jsonl)
    variant: str = "ours"
    # Schedule (paper section 5.1)
    iters: int = 200_000  # discriminator iterations; G is updated every n_critic of them
    batch: int = 16  # global batch; divided between processes under DDP
    image_size: int = 128  # px
    n_critic: int = 5
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    decay_start: int = 100_000  # lr decays linearly from here to 0 at `iters` (none if >= iters)
    # "linear": the true linear decay above. "stargan": what StarGAN's official code does (subtract
    # lr / (iters - decay_start) every 1,000 iterations), which ends at 99.9 % of lr at the paper's settings.
    lr_schedule: LrSchedule = "linear"
    # Loss weights
    lambda_cx: float = 0.1
    lambda_cls: float = 1.0
    lambda_gp: float = 10.0
    lambda_rec: float = 10.0  # cycle reconstruction (StarGAN's value), for the variants without CX
    # Mask collapse guard: a hinge on each image's mean mask, zero while the mean stays inside
    # [mask_floor, mask_ceiling], so it leaves a healthy mask alone (see losses.mask_collapse_penalty).
    # The paper has no mask regulariser; this one only acts on a collapse. In a 4,000-iteration run of `ours`
    # (600 real crops, 4 stand-in classes, random VGG) the mask mean stayed between 0.10 and 0.36 (spread
    # 0.09-0.28) and the guard never fired, so the default changes nothing on a healthy run.
    lambda_mask: float = 1.0
    mask_floor: float = 0.05
    mask_ceiling: float = 0.95
    # Contextual loss
    cx_layer: str = "relu4_2"
    cx_band_width: float = 0.5
    vgg_weights: str | None = None  # torchvision vgg19 state dict; None: cache, then pinned download
    vgg_random: bool = False  # random VGG weights: only for tests and speed runs
    vgg_sha256: str | None = None  # set by training: "random" or the sha256 of the weights file it loaded
    # Widths (the defaults are the paper's; tiny values make CPU runs possible)
    g_conv_dim: int = 64
    g_res_blocks: int = 3  # bottlenecks on each side of G_trans (3 + 3)
    att_res_blocks: int = 6  # bottlenecks of G_att
    d_conv_dim: int = 64
    d_repeat_num: int = 6
    mapping_dim: int = 512
    style_dim: int = 64  # N, the size of the control information k
    # F's initial weights: "he" (Kaiming, zero biases) lets the label through at the start; "torch" (PyTorch's
    # default) leaves k nearly independent of the label (see networks.MappingNetwork). The paper does not say.
    mapping_init: MappingInit = "he"
    # The baselines only (cyclegan, combogan). None: the variant's own value, filled in by __post_init__.
    # g_conv_dim and d_conv_dim are their ngf and ndf (64), lambda_rec their lambda_cyc (10).
    # ResNet blocks of a generator: 9 (ComboGAN: 4 in the encoder, 5 in the decoder)
    resnet_blocks: int | None = None
    patch_layers: int | None = None  # stride-2 convs of the PatchGAN discriminator: CycleGAN 3, ComboGAN 4
    lambda_identity: float | None = None  # CycleGAN 0.5 (times lambda_rec), ComboGAN 0
    pool_size: int = 50  # earlier fakes kept per discriminator (the image pool of both baselines)
    # Training state
    # EMA of G's weights, per G step with a warm-up (see train.ema_weight); transform and evaluate use it.
    # 0 turns it off (G_ema is then G), as the baselines' authors ran them.
    ema_beta: float = 0.999
    balanced: bool = False  # draw classes uniformly instead of by their frequency
    seed: int = 0
    # Execution
    device: str = "auto"
    precision: Precision = "tf32"
    channels_last: bool = True
    cuda_graphs: bool = True  # capture each step as a CUDA graph (single process on CUDA only)
    compile: bool = False  # torch.compile G's parts and VGG (never D: its penalty needs double backward)
    log_every: int = 100
    sample_every: int = 1000
    ckpt_every: int = 10_000
    keep_ckpts: int = 3
    sample_count: int = 8  # rows of the fixed sample grid

    def __post_init__(self) -> None:
        _check(
            self.variant in ALL_VARIANTS,
            f"variant: expected one of {', '.join(ALL_VARIANTS)}, got {self.variant!r}",
        )
        _check(self.precision in ("fp32", "tf32", "bf16"), f"precision: unknown {self.precision!r}")
        _check(self.mapping_init in ("he", "torch"), f"mapping_init: he or torch, got {self.mapping_init!r}")
        _check(
            self.lr_schedule in ("linear", "stargan"),
            f"lr_schedule: linear or stargan, got {self.lr_schedule!r}",
        )
        for name in ("iters", "batch", "image_size", "n_critic", "log_every", "sample_every", "ckpt_every"):
            _check(getattr(self, name) > 0, f"{name}: must be positive")
        _check(self.keep_ckpts >= 1, "keep_ckpts: must be at least 1")
        _check(self.decay_start >= 0, "decay_start: must not be negative (at or past iters: no decay)")
        _check(self.lr > 0, "lr: must be positive")
        _check(0.0 <= self.ema_beta < 1.0, "ema_beta: must lie in [0, 1)")
        _check(
            0.0 <= self.mask_floor < self.mask_ceiling <= 1.0,
            "mask_floor/mask_ceiling: need 0 <= floor < ceiling <= 1",
        )
        _check(
            self.cx_layer in ("relu3_2", "relu4_2"), f"cx_layer: relu3_2 or relu4_2, got {self.cx_layer!r}"
        )
        if self.is_baseline:
            self._check_baseline()
            return
        baseline_only = [
            name for name in _BASELINE_ARCHITECTURE[BASELINES[0]] if getattr(self, name) is not None
        ]
        _check(not baseline_only, f"{', '.join(baseline_only)}: only for {' and '.join(BASELINES)}")
        downsample = 2**self.d_repeat_num
        _check(
            self.image_size % downsample == 0 and self.image_size % 4 == 0,
            f"image_size: {self.image_size} px must be a multiple of 2**d_repeat_num = {downsample}",
        )

    def _check_baseline(self) -> None:
        for name, value in _BASELINE_ARCHITECTURE[self.variant].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)  # frozen: filled in once, at construction
        how = "build its config with TrainConfig.for_variant (the CLI does)"
        _check(self.n_critic == 1, f"n_critic: {self.variant} updates G and D every iteration (1); {how}")
        _check(self.ema_beta == 0.0, f"ema_beta: {self.variant} keeps no EMA of G, as its authors (0); {how}")
        _check(self.lr_schedule == "linear", f"lr_schedule: {self.variant} decays linearly, as its authors")
        _check(not self.compile, f"compile: {self.variant} trains eager, as its authors")
        # filled in above
        assert self.resnet_blocks is not None
        assert self.patch_layers is not None
        assert self.lambda_identity is not None
        _check(self.resnet_blocks >= 0, "resnet_blocks: must not be negative")
        _check(self.patch_layers >= 1, "patch_layers: must be at least 1")
        _check(self.lambda_identity >= 0, "lambda_identity: must not be negative")
        _check(self.pool_size >= 0, "pool_size: must not be negative (0: no pool)")
        _check(self.image_size % 4 == 0, f"image_size: {self.image_size} px must be a multiple of 4")
        # CycleGAN's PatchGAN pads its 4x4 convs by 1: after the stride-2 convs two stride-1 convs take
        # 1 px each, so the map must still be 3 px wide (ComboGAN pads by 2 and never shrinks below that).
        smallest = 3 * 2**self.patch_layers
        _check(
            self.variant != "cyclegan" or self.image_size >= smallest,
            f"image_size: {self.image_size} px is too small for a {self.patch_layers}-layer PatchGAN "
            f"(at least {smallest} px)",
        )

    @property
    def is_baseline(self) -> bool:
        """CycleGAN or ComboGAN: pair models with their own trainer, not a variant of the paper's G."""
        return self.variant in BASELINES

    @property
    def spec(self) -> VariantSpec:
        if self.is_baseline:
            raise ConfigError(f"variant {self.variant} is a baseline, not a variant of the paper's generator")
        return VARIANTS[self.variant]

    @classmethod
    def for_variant(cls, data: str, variant: str = "ours", **overrides: Any) -> TrainConfig:
        """`variant`'s config: its own defaults (the baselines' differ from the paper's), then `overrides`.

        A baseline's learning rate decays over the second half of its iterations, whatever --iters is,
        unless `decay_start` is given.
        """
        values = {**VARIANT_DEFAULTS.get(variant, {}), **overrides}
        if variant in BASELINES and "decay_start" not in overrides:
            values["decay_start"] = values["iters"] // 2
        return cls(data=data, variant=variant, **values)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"training config: unknown key {unknown[0]!r}")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))

    def with_runtime(self, other: TrainConfig) -> TrainConfig:
        """This config with the runtime fields of `other` (what a resumed run may change)."""
        return dataclasses.replace(self, **{name: getattr(other, name) for name in RUNTIME_FIELDS})

    def learning_differences(self, other: TrainConfig) -> list[str]:
        """Names of the fields that change what is learned, where the two configs differ."""
        return [
            f.name
            for f in dataclasses.fields(self)
            if f.name not in RUNTIME_FIELDS and getattr(self, f.name) != getattr(other, f.name)
        ]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# The choices of `evaluate` (model/evaluate.py) and `compare` (model/compare.py). They are named here, in a
# module without torch, so that the command modules offer the library's own names without `--help` waiting
# for torch.
EvalProtocol = Literal["paper", "per-class"]
PROTOCOLS: tuple[EvalProtocol, ...] = get_args(EvalProtocol)
Reference = Literal["all", "train", "test"]  # the per-class protocol's real images: originals of these splits
TableChoice = Literal["1", "2", "both"]  # the paper's Table 1 (ablations), Table 2 (methods) or both
TABLE_CHOICES: tuple[TableChoice, ...] = get_args(TableChoice)

# How `transform` treats its pictures: auto crops the non-square ones, always crops every one, never none.
# With auto or always, a picture where no face is found is transformed by its centre square.
CropMode = Literal["auto", "always", "never"]
