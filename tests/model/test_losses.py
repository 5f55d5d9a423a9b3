"""Gradient penalty on functions with known gradients; contextual loss properties; the mask guard."""

from __future__ import annotations

import pytest
import torch

from animexpr.model.losses import contextual_loss, gradient_penalty, mask_collapse_penalty, mask_statistics


def test_gradient_penalty_of_a_linear_critic_is_known() -> None:
    # critic(x) = <w, x> per sample: the gradient is w everywhere, so GP = (||w|| - 1)^2 exactly.
    torch.manual_seed(0)
    w = torch.randn(3, 4, 4)
    critic = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731
    x_real, x_fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    gp = gradient_penalty(critic, x_real, x_fake, torch.rand(5, 1, 1, 1))
    torch.testing.assert_close(gp, (w.norm() - 1) ** 2)


def test_gradient_penalty_of_a_quadratic_critic_uses_the_interpolates() -> None:
    # critic(x) = 0.5 ||x||^2: the gradient at x_hat is x_hat itself.
    x_real, x_fake = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    alpha = torch.rand(4, 1, 1, 1)
    critic = lambda x: 0.5 * (x**2).flatten(1).sum(1)  # noqa: E731
    x_hat = alpha * x_real + (1 - alpha) * x_fake
    expected = ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean()
    torch.testing.assert_close(gradient_penalty(critic, x_real, x_fake, alpha), expected)


def test_gradient_penalty_reaches_the_critic_parameters() -> None:
    # The penalty must train D: its value depends on D's weights through the double backward.
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 1, 3)
    gp = gradient_penalty(
        lambda x: conv(x).sum((1, 2, 3)),
        torch.randn(2, 3, 6, 6),
        torch.randn(2, 3, 6, 6),
        torch.rand(2, 1, 1, 1),
    )
    gp.backward()
    assert conv.weight.grad is not None
    assert float(conv.weight.grad.abs().sum()) > 0


def test_gradient_penalty_under_bf16_autocast_matches_fp32() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.LeakyReLU(0.01), torch.nn.Conv2d(8, 1, 3))
    x_real, x_fake, alpha = torch.randn(4, 3, 12, 12), torch.randn(4, 3, 12, 12), torch.rand(4, 1, 1, 1)
    reference = gradient_penalty(conv, x_real, x_fake, alpha)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = gradient_penalty(conv, x_real, x_fake, alpha)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, rtol=0.05, atol=1e-3)


def _features(seed: int, batch: int = 2, channels: int = 16, size: int = 5) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def test_contextual_loss_of_identical_features_is_minimal() -> None:
    x = _features(0)
    same = contextual_loss(x, x)
    assert float(same) < 1e-3  # CX = 1 at best, so -log CX >= 0
    assert float(contextual_loss(_features(1), x)) > float(same) + 0.1
    assert float(contextual_loss(x + 0.3 * _features(2), x)) > float(same)


def test_contextual_loss_ignores_where_features_are() -> None:
    generated, target = _features(3), _features(4)
    loss = contextual_loss(generated, target)
    b, c, h, w = generated.shape
    shuffled_gen = generated.flatten(2)[:, :, torch.randperm(h * w)].view(b, c, h, w)
    shuffled_tgt = target.flatten(2)[:, :, torch.randperm(h * w)].view(b, c, h, w)
    torch.testing.assert_close(contextual_loss(shuffled_gen, target), loss)
    torch.testing.assert_close(contextual_loss(generated, shuffled_tgt), loss)


def test_contextual_loss_is_computed_in_fp32_and_differentiable() -> None:
    generated = _features(5).bfloat16().requires_grad_(True)
    loss = contextual_loss(generated, _features(6).bfloat16())
    assert loss.dtype == torch.float32
    loss.backward()
    assert generated.grad is not None
    assert bool(torch.isfinite(generated.grad.float()).all())


def test_contextual_loss_matches_a_direct_transcription_of_the_definition() -> None:
    generated, target, h, eps = (
        _features(7, batch=1, channels=4, size=3),
        _features(8, batch=1, channels=4, size=3),
        0.5,
        1e-5,
    )
    mu = target.mean(dim=(0, 2, 3))
    gen = [(generated[0, :, i, j] - mu) for i in range(3) for j in range(3)]
    tgt = [(target[0, :, i, j] - mu) for i in range(3) for j in range(3)]
    d = torch.tensor(
        [[(1 - torch.nn.functional.cosine_similarity(g, t, dim=0)) / 2 for t in tgt] for g in gen]
    )
    d_rel = d / (d.min(dim=1, keepdim=True).values + eps)
    w = torch.exp((1 - d_rel) / h)
    cx = w / w.sum(dim=1, keepdim=True)
    expected = -torch.log(cx.max(dim=0).values.mean() + eps)
    torch.testing.assert_close(contextual_loss(generated, target, h, eps), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("value", "expected"), [(0.5, 0.0), (0.05, 0.0), (0.0, 0.05), (1.0, 0.05)])
def test_mask_guard_is_zero_for_a_healthy_mask(value: float, expected: float) -> None:
    mask = torch.full((2, 1, 4, 4), value)
    torch.testing.assert_close(mask_collapse_penalty(mask, 0.05, 0.95), torch.tensor(expected))


def test_mask_statistics_report_mean_and_spread() -> None:
    mask = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    mean, spread = mask_statistics(mask)
    assert float(mean) == pytest.approx(0.5)
    assert float(spread) == pytest.approx(0.5345, abs=1e-3)
