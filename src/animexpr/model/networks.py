"""The networks of Rao et al.: mapping network F, G_trans with AdaIN decoder control, G_att, and StarGAN's D.

One generator class covers every ablation: `decoder_control` swaps StarGAN's tiled-label input for F + AdaIN,
`attention_mask` adds G_att and the blend y* = M * y + (1 - M) * x.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from animexpr.model.config import MappingInit, TrainConfig, VariantSpec


class MappingNetwork(nn.Module):
    """F: one-hot label -> control information k (9 linear layers, a ReLU after each, the last included).

    `init="he"` draws the weights for ReLU (Kaiming normal, zero biases). PyTorch's default init ("torch")
    shrinks the signal by about sqrt(6) per layer, so after nine layers k hardly depends on the label: at
    initialisation G(x, c) then changes by 3e-5 between classes against 9e-2 for StarGAN's tiled label, half
    of k's units are dead for every class, and in short runs G learns class-independent colour casts. With
    He init the label moves G's output as much as StarGAN's does (about 0.1).
    """

    def __init__(
        self,
        num_classes: int,
        hidden_dim: int = 512,
        style_dim: int = 64,
        num_layers: int = 9,
        init: MappingInit = "he",
    ) -> None:
        super().__init__()
        dims = [num_classes] + [hidden_dim] * (num_layers - 1) + [style_dim]
        layers: list[nn.Module] = []
        for dim_in, dim_out in itertools.pairwise(dims):
            linear = nn.Linear(dim_in, dim_out)
            if init == "he":
                nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
                nn.init.zeros_(linear.bias)
            layers += [linear, nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, onehot: Tensor) -> Tensor:
        return self.net(onehot)


class AdaIN(nn.Module):
    """AdaIN(X, k) = (1 + f(k)_1) * IN(X) + f(k)_2, with IN carrying no learnable affine of its own."""

    def __init__(self, style_dim: int, num_features: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(num_features, affine=False, track_running_stats=False)
        self.fc = nn.Linear(style_dim, 2 * num_features)

    def forward(self, x: Tensor, k: Tensor) -> Tensor:
        gamma, beta = self.fc(k)[:, :, None, None].chunk(2, dim=1)
        return (1 + gamma) * self.norm(x) + beta


def instance_norm(channels: int) -> nn.InstanceNorm2d:
    # Running statistics off: with them on, eval() would switch IN to batch statistics (stargan issue #140).
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)


class ResidualBlock(nn.Module):
    """StarGAN's bottleneck: conv3-IN-ReLU-conv3-IN plus the identity."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False),
            instance_norm(dim),
            nn.ReLU(),
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False),
            instance_norm(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.main(x)


class AdaINResidualBlock(nn.Module):
    """The decoder bottleneck: each conv followed by AdaIN, so k is injected twice per block."""

    def __init__(self, dim: int, style_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, 1, 1, bias=False)
        self.norm1 = AdaIN(style_dim, dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, 1, 1, bias=False)
        self.norm2 = AdaIN(style_dim, dim)

    def forward(self, x: Tensor, k: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(x), k))
        return x + self.norm2(self.conv2(h), k)


def encoder(in_channels: int, conv_dim: int, res_blocks: int) -> nn.Sequential:
    """conv7 in, two stride-2 down-sampling convs, then bottlenecks: all with IN and ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, conv_dim, 7, 1, 3, bias=False),
        instance_norm(conv_dim),
        nn.ReLU(),
    ]
    dim = conv_dim
    for _ in range(2):
        layers += [nn.Conv2d(dim, dim * 2, 4, 2, 1, bias=False), instance_norm(dim * 2), nn.ReLU()]
        dim *= 2
    layers += [ResidualBlock(dim) for _ in range(res_blocks)]
    return nn.Sequential(*layers)


def plain_decoder(conv_dim: int, res_blocks: int, out_channels: int) -> nn.Sequential:
    """Bottlenecks, two stride-2 transposed convs and conv7 out, with IN (StarGAN's second half)."""
    dim = conv_dim * 4
    layers: list[nn.Module] = [ResidualBlock(dim) for _ in range(res_blocks)]
    for _ in range(2):
        layers += [nn.ConvTranspose2d(dim, dim // 2, 4, 2, 1, bias=False), instance_norm(dim // 2), nn.ReLU()]
        dim //= 2
    layers.append(nn.Conv2d(dim, out_channels, 7, 1, 3, bias=False))
    return nn.Sequential(*layers)


class ControlledDecoder(nn.Module):
    """The decoder of G_trans under decoder control: AdaIN after every conv but the last."""

    def __init__(self, conv_dim: int, res_blocks: int, style_dim: int, out_channels: int = 3) -> None:
        super().__init__()
        dim = conv_dim * 4
        self.blocks = nn.ModuleList(AdaINResidualBlock(dim, style_dim) for _ in range(res_blocks))
        self.ups = nn.ModuleList()
        self.up_norms = nn.ModuleList()
        for _ in range(2):
            self.ups.append(nn.ConvTranspose2d(dim, dim // 2, 4, 2, 1, bias=False))
            self.up_norms.append(AdaIN(style_dim, dim // 2))
            dim //= 2
        self.to_rgb = nn.Conv2d(dim, out_channels, 7, 1, 3, bias=False)

    def forward(self, h: Tensor, k: Tensor) -> Tensor:
        for block in self.blocks:
            h = block(h, k)
        for up, norm in zip(self.ups, self.up_norms, strict=True):
            h = F.relu(norm(up(h), k))
        return self.to_rgb(h)


class TranslationNetwork(nn.Module):
    """G_trans: the expression region colouring y, conditioned by decoder control or by the tiled label."""

    def __init__(
        self, num_classes: int, conv_dim: int, res_blocks: int, style_dim: int, decoder_control: bool
    ):
        super().__init__()
        self.decoder_control = decoder_control
        in_channels = 3 if decoder_control else 3 + num_classes
        self.encode = encoder(in_channels, conv_dim, res_blocks)
        self.decode: nn.Module
        if decoder_control:
            self.decode = ControlledDecoder(conv_dim, res_blocks, style_dim)
        else:
            self.decode = plain_decoder(conv_dim, res_blocks, 3)

    def forward(self, x: Tensor, label: Tensor) -> Tensor:
        """`label` is k (decoder control) or the one-hot target label (tiled into the input)."""
        if self.decoder_control:
            return torch.tanh(self.decode(self.encode(x), label))
        tiled = label[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3]).to(x.dtype)
        h = self.encode(torch.cat([x, tiled], dim=1))
        return torch.tanh(self.decode(h))


class AttentionNetwork(nn.Module):
    """G_att: the same skeleton with IN throughout, 6 bottlenecks and a one-channel sigmoid; sees x only."""

    def __init__(self, conv_dim: int, res_blocks: int) -> None:
        super().__init__()
        self.encode = encoder(3, conv_dim, res_blocks)
        self.decode = plain_decoder(conv_dim, 0, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.decode(self.encode(x)))


class Generator(nn.Module):
    """G(x, c) = M * G_trans(x, F(c)) + (1 - M) * x, or a variant of it without F and/or without M."""

    def __init__(self, num_classes: int, spec: VariantSpec, cfg: TrainConfig) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.mapping = (
            MappingNetwork(num_classes, cfg.mapping_dim, cfg.style_dim, init=cfg.mapping_init)
            if spec.decoder_control
            else None
        )
        self.trans = TranslationNetwork(
            num_classes, cfg.g_conv_dim, cfg.g_res_blocks, cfg.style_dim, spec.decoder_control
        )
        self.att = AttentionNetwork(cfg.g_conv_dim, cfg.att_res_blocks) if spec.attention_mask else None

    # Every generator a run builds takes (x, target one-hot, source one-hot or None); the pair-model baselines
    # need the source class, this one ignores it.
    needs_source = False

    def forward(
        self, x: Tensor, target_onehot: Tensor, source_onehot: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Returns y* and the mask M (None for the variants without one)."""
        label = self.mapping(target_onehot) if self.mapping is not None else target_onehot
        y = self.trans(x, label)
        if self.att is None:
            return y, None
        mask = self.att(x)
        return blend(y, x, mask), mask


def blend(y: Tensor, x: Tensor, mask: Tensor) -> Tensor:
    """y* = M * y + (1 - M) * x, written so that M = 0 gives x bit for bit."""
    return x + mask * (y - x)


class Discriminator(nn.Module):
    """StarGAN's D: shared stride-2 convs with LeakyReLU, a PatchGAN real/fake head and a class head."""

    def __init__(self, image_size: int, num_classes: int, conv_dim: int = 64, repeat_num: int = 6) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, conv_dim, 4, 2, 1), nn.LeakyReLU(0.01)]
        dim = conv_dim
        for _ in range(1, repeat_num):
            layers += [nn.Conv2d(dim, dim * 2, 4, 2, 1), nn.LeakyReLU(0.01)]
            dim *= 2
        self.main = nn.Sequential(*layers)
        self.src_head = nn.Conv2d(dim, 1, 3, 1, 1, bias=False)
        self.cls_head = nn.Conv2d(dim, num_classes, image_size // 2**repeat_num, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the real/fake patch map (B, 1, h, w) and the class logits (B, num_classes)."""
        h = self.main(x)
        return self.src_head(h), self.cls_head(h).flatten(1)


def build_networks(cfg: TrainConfig, num_classes: int) -> tuple[Generator, Discriminator]:
    generator = Generator(num_classes, cfg.spec, cfg)
    discriminator = Discriminator(cfg.image_size, num_classes, cfg.d_conv_dim, cfg.d_repeat_num)
    return generator, discriminator


def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def parameter_counts(generator: Generator, discriminator: Discriminator) -> dict[str, int]:
    """Parameters of each part, for the run log and the CLI."""
    counts = {
        "F": count_parameters(generator.mapping),
        "G_trans": count_parameters(generator.trans),
        "G_att": count_parameters(generator.att),
        "D": count_parameters(discriminator),
    }
    counts["G"] = counts["F"] + counts["G_trans"] + counts["G_att"]
    return counts
