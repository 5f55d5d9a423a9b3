"""The baselines of the paper's Table 2, built as their authors ship them: CycleGAN and ComboGAN.

CycleGAN (junyanz/pytorch-CycleGAN-and-pix2pix, `resnet_9blocks` + `basic` D): a ResNet generator (reflection
padding, instance norm without affine, ReLU, no dropout, 3x3 stride-2 down-sampling and transposed convs with
output padding) and the 70x70 PatchGAN (4x4 convs padded by 1, LeakyReLU 0.2, instance norm but on the first
layer). It translates between two domains only, so K classes need K (K - 1) / 2 pair models, each with its
two generators and its two discriminators.

ComboGAN (AAnoosheh/ComboGAN, models/networks.py): one encoder and one decoder per domain, the 9 ResNet blocks
split 4 / 5 between them, PReLU activations, 3x3 stride-2 down-sampling and 4x4 transposed convs; translating
a -> b is decoder_b(encoder_a(x)). Its per-domain PatchGAN has two branches, one on the luminance and one on
the image blurred by the authors' "5x5 Gaussian of sigma 3" (scipy's filter of a 5x5 impulse: with that sigma
nearly a 5x5 box filter), with 4x4 convs padded by 2, PReLU, an extra channel per layer that is read out as a
prediction map at that scale, and an LSGAN loss weighted over the scales.

Both initialise every conv with N(0, 0.02) and zero biases, use LSGAN (MSE against 1 for real, 0 for fake),
and show the discriminators earlier fakes from a pool of 50. The generator wrappers below follow the contract
of every generator in animexpr: `generator(x, target_onehot, source_onehot) -> (y, None)`. They need the
source class (`needs_source`); a sample whose target is its own class comes back unchanged, since neither
baseline has a generator from a class to itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from animexpr.errors import AnimexprError
from animexpr.model.config import TrainConfig

Activation = Callable[[], nn.Module]
INIT_STD = 0.02  # both baselines: conv weights ~ N(0, 0.02), biases 0
COMBOGAN_BLUR_SIZE = 5  # ComboGAN's util.gkern_2d(size=5, sigma=3)
COMBOGAN_BLUR_SIGMA = 3.0
LUMINANCE = (0.299, 0.587, 0.114)  # ComboGAN's gray_fn


class SourceClassError(AnimexprError):
    pass


def instance_norm(channels: int) -> nn.InstanceNorm2d:
    # Both baselines: no affine, no running statistics (CycleGAN's `norm='instance'`).
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def init_weights(module: nn.Module) -> None:
    """Conv and transposed-conv weights ~ N(0, 0.02), biases 0 (both authors' `init_weights`)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(layer.weight, 0.0, INIT_STD)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def prelu() -> nn.Module:
    return nn.PReLU()


class ResnetBlock(nn.Module):
    """pad-conv3-IN-act-pad-conv3-IN plus the identity, reflection padded (both baselines)."""

    def __init__(self, dim: int, activation: Activation) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3),
            instance_norm(dim),
            activation(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3),
            instance_norm(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def _down_layers(ngf: int, activation: Activation) -> list[nn.Module]:
    """conv7 in, then two 3x3 stride-2 convs doubling the width (both baselines' generators)."""
    layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), instance_norm(ngf), activation()]
    for mult in (1, 2):
        layers += [
            nn.Conv2d(ngf * mult, ngf * mult * 2, 3, 2, 1),
            instance_norm(ngf * mult * 2),
            activation(),
        ]
    return layers


def _out_layers(ngf: int) -> list[nn.Module]:
    return [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]


class ResnetGenerator(nn.Module):
    """CycleGAN's `resnet_9blocks` generator for one direction (11,378,179 parameters at ngf 64)."""

    def __init__(self, ngf: int = 64, blocks: int = 9) -> None:
        super().__init__()
        layers = _down_layers(ngf, nn.ReLU)
        layers += [ResnetBlock(ngf * 4, nn.ReLU) for _ in range(blocks)]
        for mult in (4, 2):
            layers += [
                nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, 2, 1, output_padding=1),
                instance_norm(ngf * mult // 2),
                nn.ReLU(),
            ]
        self.model = nn.Sequential(*layers, *_out_layers(ngf))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """CycleGAN's 70x70 PatchGAN (`basic`, n_layers 3: 2,764,737 parameters at ndf 64)."""

    def __init__(self, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            previous, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last widening conv keeps the resolution
            layers += [nn.Conv2d(ndf * previous, ndf * mult, 4, stride, 1), instance_norm(ndf * mult)]
            layers.append(nn.LeakyReLU(0.2))
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class ComboEncoder(nn.Module):
    """ComboGAN's per-domain encoder: conv7, two stride-2 convs, the first half of the ResNet blocks."""

    def __init__(self, ngf: int = 64, blocks: int = 4) -> None:
        super().__init__()
        layers = _down_layers(ngf, prelu) + [ResnetBlock(ngf * 4, prelu) for _ in range(blocks)]
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class ComboDecoder(nn.Module):
    """ComboGAN's per-domain decoder: the other ResNet blocks, two 4x4 transposed convs, conv7 out."""

    def __init__(self, ngf: int = 64, blocks: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = [ResnetBlock(ngf * 4, prelu) for _ in range(blocks)]
        for mult in (4, 2):
            layers += [
                nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 4, 2, 1),
                instance_norm(ngf * mult // 2),
            ]
            layers.append(nn.PReLU())
        self.model = nn.Sequential(*layers, *_out_layers(ngf))
        init_weights(self)

    def forward(self, h: Tensor) -> Tensor:
        return self.model(h)


def gaussian_kernel_1d(size: int = COMBOGAN_BLUR_SIZE, sigma: float = COMBOGAN_BLUR_SIGMA) -> np.ndarray:
    """What scipy's gaussian_filter makes of a centred 1-D impulse of `size` (ComboGAN's gkern_2d, per axis).

    scipy truncates the Gaussian at 4 sigma and reflects at the borders ("reflect": d c b a | a b c d), so
    with a 5-tap support the 25-tap filter folds back onto it: the result is flatter than a sampled
    Gaussian and still sums to 1.
    """
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    kernel = np.zeros(size)
    centre = size // 2
    for i in range(size):
        for offset, weight in zip(offsets, weights, strict=True):
            j = (i - offset) % (2 * size)  # the reflected signal repeats every 2 * size samples
            source = j if j < size else 2 * size - 1 - j
            if source == centre:
                kernel[i] += weight
    return kernel


class ComboDiscriminator(nn.Module):
    """ComboGAN's per-domain PatchGAN: a luminance branch and a blurred-RGB branch, a prediction per scale.

    Every stride-2 layer but the first emits one channel more than it passes on; that channel (after the
    layer's norm and PReLU, as in the authors' code) is the prediction map at that scale, and the last
    layer's single output channel is the final one. Each prediction concatenates the two branches' maps.
    """

    def __init__(self, ndf: int = 64, n_layers: int = 4) -> None:
        super().__init__()
        self.gray_branch = self._branch(1, ndf, n_layers)
        self.rgb_branch = self._branch(3, ndf, n_layers)
        kernel = np.outer(gaussian_kernel_1d(), gaussian_kernel_1d())
        self.blur_kernel: Tensor
        self.luminance: Tensor
        blur = torch.tensor(kernel, dtype=torch.float32).expand(3, 1, *kernel.shape).clone()
        self.register_buffer("blur_kernel", blur, persistent=False)  # a constant, not a weight
        self.register_buffer("luminance", torch.tensor(LUMINANCE).view(1, 3, 1, 1), persistent=False)
        init_weights(self)

    @staticmethod
    def _branch(in_channels: int, ndf: int, n_layers: int) -> nn.ModuleList:
        stages = [nn.Sequential(nn.Conv2d(in_channels, ndf, 4, 2, 2), nn.PReLU())]
        mult = 1
        for n in range(1, n_layers):
            previous, mult = mult, min(2**n, 8)
            width = ndf * mult + 1  # + the prediction channel of this scale
            stages.append(
                nn.Sequential(nn.Conv2d(ndf * previous, width, 4, 2, 2), instance_norm(width), nn.PReLU())
            )
        previous, mult = mult, min(2**n_layers, 8)
        stages.append(
            nn.Sequential(
                nn.Conv2d(ndf * previous, ndf * mult, 4, 1, 2),
                instance_norm(ndf * mult),
                nn.PReLU(),
                nn.Conv2d(ndf * mult, 1, 4, 1, 2),
            )
        )
        return nn.ModuleList(stages)

    @staticmethod
    def _predictions(branch: nn.ModuleList, x: Tensor) -> Iterator[Tensor]:
        h = branch[0](x)
        for stage in branch[1:]:
            out = stage(h)
            yield out[:, -1:]
            h = out[:, :-1]

    def forward(self, x: Tensor) -> list[Tensor]:
        """One (B, 2, h, w) prediction map per scale, coarsest last."""
        gray = (x * self.luminance.to(x.dtype)).sum(dim=1, keepdim=True)
        blurred = F.conv2d(x, self.blur_kernel.to(x.dtype), padding=COMBOGAN_BLUR_SIZE // 2, groups=3)
        pairs = zip(
            self._predictions(self.gray_branch, gray),
            self._predictions(self.rgb_branch, blurred),
            strict=True,
        )
        return [torch.cat(pair, dim=1) for pair in pairs]


# ---------------------------------------------------------------------------------------------- losses


def lsgan_loss(prediction: Tensor, real: bool) -> Tensor:
    """LSGAN: mean squared distance of the patch map to 1 (real) or 0 (fake), in fp32."""
    prediction = prediction.float()
    target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
    return F.mse_loss(prediction, target)


def multiscale_lsgan_loss(predictions: list[Tensor], real: bool) -> Tensor:
    """ComboGAN's GANLoss over its scales: weights 1, 2, ..., n - 1, n + 1, divided by sum(weights) * n."""
    weights = list(range(1, len(predictions) + 1))
    weights[-1] += 1
    total = weights[0] * lsgan_loss(predictions[0], real)
    for weight, prediction in zip(weights[1:], predictions[1:], strict=True):
        total = total + weight * lsgan_loss(prediction, real)
    return total / (sum(weights) * len(predictions))


def combogan_identity_loss(output: Tensor, target: Tensor) -> Tensor:
    """ComboGAN's optional identity term: smooth L1 between 3x3 stride-2 average-pooled images."""
    return F.smooth_l1_loss(F.avg_pool2d(output.float(), 3, 2), F.avg_pool2d(target.float(), 3, 2))


class ImagePool:
    """The fake-image history of both baselines (Shrivastava et al. 2017), per discriminator.

    Until the pool is full every fake goes in and is returned; afterwards each fake is, with probability
    1/2, swapped for a random stored one (which is returned instead), else returned as it is. Random draws
    come from the caller's generator, so that a resumed run repeats them.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.images: list[Tensor] = []

    def query(self, fakes: Tensor, rng: torch.Generator) -> Tensor:
        if self.size == 0:
            return fakes.detach()
        shown = []
        for fake in fakes.detach().split(1):
            if len(self.images) < self.size:
                self.images.append(fake)
                shown.append(fake)
            elif float(torch.rand((), generator=rng)) > 0.5:
                index = int(torch.randint(self.size, (), generator=rng))
                shown.append(self.images[index])
                self.images[index] = fake
            else:
                shown.append(fake)
        return torch.cat(shown)

    def state(self) -> list[Tensor]:
        return [image.cpu() for image in self.images]

    def load(self, images: list[Tensor], device: torch.device) -> None:
        self.images = [image.to(device) for image in images]


# ------------------------------------------------------------------------------------ generator wrappers


def class_pairs(num_classes: int) -> list[tuple[int, int]]:
    """The unordered class pairs a < b, in the order the trainer visits them."""
    return list(itertools.combinations(range(num_classes), 2))


def _indices(onehot: Tensor) -> Tensor:
    return onehot.argmax(dim=1)


def _checked_source(variant: str, source_onehot: Tensor | None) -> Tensor:
    if source_onehot is None:
        raise SourceClassError(f"{variant} translates from a known class: pass the source class")
    return _indices(source_onehot)


class PairTranslator(nn.Module):
    """Routes every sample of a batch to the network of its (source, target) pair; same class: unchanged."""

    needs_source = True
    variant = ""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def translate_pair(self, x: Tensor, source: int, target: int) -> Tensor:
        raise NotImplementedError

    def forward(
        self, x: Tensor, target_onehot: Tensor, source_onehot: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        sources = _checked_source(self.variant, source_onehot)
        targets = _indices(target_onehot)
        routes = torch.unique(torch.stack([sources, targets], dim=1), dim=0).tolist()
        if len(routes) == 1:  # the usual case: one source class and one target for the whole batch
            source, target = routes[0]
            return (x if source == target else self.translate_pair(x, source, target)), None
        y = x.clone()
        for source, target in routes:
            if source == target:
                continue
            chosen = ((sources == source) & (targets == target)).nonzero().flatten()
            y[chosen] = self.translate_pair(x[chosen], source, target).to(y.dtype)
        return y, None


def direction_name(source: int, target: int) -> str:
    return f"{source}_to_{target}"


class CycleGANGenerators(PairTranslator):
    """The 2 * K (K - 1) / 2 generators of CycleGAN's pair models, one per ordered class pair."""

    variant = "cyclegan"

    def __init__(self, num_classes: int, ngf: int = 64, blocks: int = 9) -> None:
        super().__init__(num_classes)
        self.directions = nn.ModuleDict(
            {
                direction_name(s, t): ResnetGenerator(ngf, blocks)
                for a, b in class_pairs(num_classes)
                for s, t in ((a, b), (b, a))
            }
        )

    def direction(self, source: int, target: int) -> nn.Module:
        return self.directions[direction_name(source, target)]

    def translate_pair(self, x: Tensor, source: int, target: int) -> Tensor:
        return self.direction(source, target)(x)


class ComboGANGenerators(PairTranslator):
    """ComboGAN's K encoders and K decoders: a -> b is decoders[b](encoders[a](x))."""

    variant = "combogan"

    def __init__(self, num_classes: int, ngf: int = 64, blocks: int = 9) -> None:
        super().__init__(num_classes)
        encoder_blocks = blocks // 2  # the authors' split: n // 2 in the encoder, the rest in the decoder
        self.encoders = nn.ModuleList(ComboEncoder(ngf, encoder_blocks) for _ in range(num_classes))
        self.decoders = nn.ModuleList(ComboDecoder(ngf, blocks - encoder_blocks) for _ in range(num_classes))

    def translate_pair(self, x: Tensor, source: int, target: int) -> Tensor:
        return self.decoders[target](self.encoders[source](x))


def discriminator_name(pair: tuple[int, int], judged: int) -> str:
    """The key of CycleGAN's discriminator of class `judged` in the pair model `pair`."""
    return f"pair_{pair[0]}_{pair[1]}_class_{judged}"


def build_baseline_generator(cfg: TrainConfig, num_classes: int) -> PairTranslator:
    assert cfg.resnet_blocks is not None  # TrainConfig fills the baselines' fields in
    if cfg.variant == "cyclegan":
        return CycleGANGenerators(num_classes, cfg.g_conv_dim, cfg.resnet_blocks)
    if cfg.variant == "combogan":
        return ComboGANGenerators(num_classes, cfg.g_conv_dim, cfg.resnet_blocks)
    raise AnimexprError(f"variant {cfg.variant} is not a baseline")


def build_baseline_discriminators(cfg: TrainConfig, num_classes: int) -> nn.ModuleDict:
    """CycleGAN: two per pair model (one per class of the pair); ComboGAN: one per class."""
    assert cfg.patch_layers is not None
    if cfg.variant == "cyclegan":
        return nn.ModuleDict(
            {
                discriminator_name(pair, judged): PatchDiscriminator(cfg.d_conv_dim, cfg.patch_layers)
                for pair in class_pairs(num_classes)
                for judged in pair
            }
        )
    return nn.ModuleDict(
        {str(c): ComboDiscriminator(cfg.d_conv_dim, cfg.patch_layers) for c in range(num_classes)}
    )


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def baseline_parameter_counts(generator: PairTranslator, discriminators: nn.ModuleDict) -> dict[str, int]:
    """Parameters of one network of each kind and of all of them together, for the log and the CLI."""
    first_d = next(iter(discriminators.values()))
    if isinstance(generator, CycleGANGenerators):
        counts = {"G (one direction)": _count(next(iter(generator.directions.values())))}
    else:
        assert isinstance(generator, ComboGANGenerators)
        counts = {"encoder": _count(generator.encoders[0]), "decoder": _count(generator.decoders[0])}
    counts |= {"D (one)": _count(first_d), "G": _count(generator), "D": _count(discriminators)}
    return counts
