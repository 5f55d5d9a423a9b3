"""Shapes and arithmetic of the networks (F, AdaIN, G_trans, G_att, G, D)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from animexpr.model.config import VARIANTS, TrainConfig
from animexpr.model.networks import (
    AdaIN,
    AttentionNetwork,
    Discriminator,
    Generator,
    MappingNetwork,
    TranslationNetwork,
    blend,
    build_networks,
    parameter_counts,
)

TINY = {"g_conv_dim": 8, "d_conv_dim": 8, "d_repeat_num": 4, "mapping_dim": 16, "style_dim": 8}


def tiny_cfg(variant: str = "ours", **overrides: object) -> TrainConfig:
    return TrainConfig(data="", variant=variant, image_size=32, **(TINY | overrides))  # type: ignore[arg-type]


def test_mapping_network_is_nine_linear_layers_each_followed_by_relu() -> None:
    mapping = MappingNetwork(num_classes=4, hidden_dim=32, style_dim=8)
    layers = list(mapping.net)
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    assert len(linears) == 9
    assert [type(m) for m in layers] == [nn.Linear, nn.ReLU] * 9
    assert (linears[0].in_features, linears[-1].out_features) == (4, 8)
    k = mapping(torch.eye(4))
    assert k.shape == (4, 8)
    assert bool((k >= 0).all())  # a ReLU after the last layer too


@pytest.mark.parametrize(("init", "low", "high"), [("he", 1e-2, 1.0), ("torch", 0.0, 1e-3)])
def test_the_label_reaches_the_decoder_controlled_generator_at_initialisation(
    init: str, low: float, high: float
) -> None:
    # PyTorch's default init shrinks the signal through F's nine layers: G then ignores the label at first.
    torch.manual_seed(0)
    generator = Generator(
        4, VARIANTS["stargan-dc"], tiny_cfg("stargan-dc", mapping_init=init, mapping_dim=64)
    )
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        y0, _ = generator(x, torch.eye(4)[[0] * 4])
        y1, _ = generator(x, torch.eye(4)[[1] * 4])
    assert low <= float((y0 - y1).abs().mean()) < high


def test_adain_is_one_plus_gamma_times_plain_instance_norm_plus_beta() -> None:
    torch.manual_seed(0)
    adain = AdaIN(style_dim=3, num_features=2)
    assert not any(p is not None for p in (adain.norm.weight, adain.norm.bias))  # IN has no affine of its own
    x = torch.randn(2, 2, 5, 5)
    k = torch.randn(2, 3)
    h = adain.fc(k)
    gamma, beta = h[:, :2, None, None], h[:, 2:, None, None]
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    expected = (1 + gamma) * (x - mean) / torch.sqrt(var + 1e-5) + beta
    torch.testing.assert_close(adain(x, k), expected, rtol=1e-5, atol=1e-5)


def test_adain_with_zero_control_is_plain_instance_norm() -> None:
    adain = AdaIN(style_dim=3, num_features=2)
    nn.init.zeros_(adain.fc.weight)
    nn.init.zeros_(adain.fc.bias)
    x = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(adain(x, torch.ones(1, 3)), nn.functional.instance_norm(x))


@pytest.mark.parametrize("decoder_control", [True, False])
def test_translation_network_keeps_the_image_shape(decoder_control: bool) -> None:
    net = TranslationNetwork(4, conv_dim=8, res_blocks=3, style_dim=8, decoder_control=decoder_control)
    label = torch.rand(2, 8) if decoder_control else torch.eye(4)[:2]
    y = net(torch.rand(2, 3, 32, 32) * 2 - 1, label)
    assert y.shape == (2, 3, 32, 32)
    assert float(y.detach().abs().max()) <= 1.0  # tanh


def test_decoder_control_puts_adain_after_every_decoder_conv_but_the_last() -> None:
    net = TranslationNetwork(4, conv_dim=8, res_blocks=3, style_dim=8, decoder_control=True)
    adains = [m for m in net.decode.modules() if isinstance(m, AdaIN)]
    convs = [m for m in net.decode.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert len(convs) == 3 * 2 + 2 + 1  # two per bottleneck, two up-sampling, the output conv
    assert len(adains) == len(convs) - 1
    assert not any(isinstance(m, AdaIN) for m in net.encode.modules())


def test_attention_network_has_six_bottlenecks_and_a_one_channel_sigmoid() -> None:
    att = AttentionNetwork(conv_dim=8, res_blocks=6)
    blocks = [m for m in att.modules() if type(m).__name__ == "ResidualBlock"]
    assert len(blocks) == 6
    mask = att(torch.randn(2, 3, 32, 32))
    assert mask.shape == (2, 1, 32, 32)
    assert bool(((mask >= 0) & (mask <= 1)).all())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_generator_of_every_variant(variant: str) -> None:
    cfg = tiny_cfg(variant)
    generator, discriminator = build_networks(cfg, num_classes=4)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    y, mask = generator(x, torch.eye(4)[:3])
    assert y.shape == x.shape
    assert (mask is not None) == cfg.spec.attention_mask
    if mask is not None:
        assert mask.shape == (3, 1, 32, 32)
    assert (generator.mapping is not None) == cfg.spec.decoder_control
    src, cls = discriminator(x)
    assert src.shape == (3, 1, 2, 2)
    assert cls.shape == (3, 4)


def test_mask_zero_returns_the_input_exactly() -> None:
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    y = torch.rand(2, 3, 8, 8) * 2 - 1
    assert torch.equal(blend(y, x, torch.zeros(2, 1, 8, 8)), x)
    assert torch.equal(blend(y, x, torch.ones(2, 1, 8, 8)), y)

    generator = Generator(4, VARIANTS["ours"], tiny_cfg())
    assert generator.att is not None
    generator.att.forward = lambda t: torch.zeros(len(t), 1, *t.shape[2:])  # type: ignore[method-assign]
    with torch.no_grad():
        out, mask = generator(x, torch.eye(4)[:2])
    assert mask is not None
    assert torch.equal(out, x)


def test_full_size_stargan_matches_the_official_parameter_counts() -> None:
    generator, discriminator = build_networks(TrainConfig(data="", variant="stargan"), num_classes=4)
    counts = parameter_counts(generator, discriminator)
    # yunjey/stargan Generator(64, c_dim=4, repeat_num=6) and Discriminator(128, 64, 4, 6)
    assert counts["G"] == 8_427_392
    assert counts["D"] == 44_753_856


def test_discriminator_class_head_sees_the_whole_image() -> None:
    d = Discriminator(image_size=64, num_classes=3, conv_dim=4, repeat_num=5)
    src, cls = d(torch.randn(2, 3, 64, 64))
    assert src.shape == (2, 1, 2, 2)
    assert cls.shape == (2, 3)
