"""Loss functions: WGAN-GP, classification, cycle reconstruction, the contextual loss and the mask guard.

All are pure functions of tensors. Precision-sensitive parts (the gradient norm of the penalty, the contextual
similarities) run in fp32 whatever autocast is active.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def gradient_penalty(
    critic: Callable[[Tensor], Tensor], x_real: Tensor, x_fake: Tensor, alpha: Tensor
) -> Tensor:
    """WGAN-GP: mean over samples of (||grad critic(x_hat)||_2 - 1)^2, x_hat = a x_real + (1 - a) x_fake.

    `alpha` has shape (B, 1, 1, 1). The gradient comes from `autograd.grad(create_graph=True)`, out of place,
    so under DDP it stays per process and the penalty joins the one ordinary backward (whose parameter
    gradients DDP all-reduces). Under autocast the critic may run in bf16; the norm is taken in fp32.
    """
    x_hat = (alpha * x_real.detach() + (1 - alpha) * x_fake.detach()).requires_grad_(True)
    out = critic(x_hat)
    (grad,) = torch.autograd.grad(out.float().sum(), x_hat, create_graph=True)
    norm = grad.float().flatten(1).norm(2, dim=1)
    return ((norm - 1) ** 2).mean()


def wasserstein_critic_loss(src_real: Tensor, src_fake: Tensor) -> tuple[Tensor, Tensor]:
    """D's two adversarial terms (D maximises real - fake): -mean(D(x)), +mean(D(G(x)))."""
    return -src_real.float().mean(), src_fake.float().mean()


def wasserstein_generator_loss(src_fake: Tensor) -> Tensor:
    return -src_fake.float().mean()


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), labels)


def cycle_reconstruction_loss(x_real: Tensor, x_reconstructed: Tensor) -> Tensor:
    """StarGAN's ||x - G(G(x, c_t), c_o)||_1."""
    return (x_real.float() - x_reconstructed.float()).abs().mean()


def contextual_loss(generated: Tensor, target: Tensor, band_width: float = 0.5, eps: float = 1e-5) -> Tensor:
    """Mechrez et al. 2018 contextual loss between feature maps (B, C, H, W), computed in fp32.

    Centre both on the target's channel mean (over batch and positions), cosine distance of every generated
    position i to every target position j, relative distance d_ij / (min_k d_ik + eps), similarity
    exp((1 - d~)/h) normalised over j, max over generated positions i, mean over j, then -log, batch mean.
    """
    gen = generated.float()
    tgt = target.float()
    mean = tgt.mean(dim=(0, 2, 3), keepdim=True)
    gen = F.normalize((gen - mean).flatten(2), dim=1)  # (B, C, N_gen)
    tgt = F.normalize((tgt - mean).flatten(2), dim=1)  # (B, C, N_tgt)
    cosine = torch.bmm(gen.transpose(1, 2), tgt)  # (B, N_gen, N_tgt)
    distance = ((1 - cosine) / 2).clamp_min(0)
    relative = distance / (distance.amin(dim=2, keepdim=True) + eps)
    # softmax over j of (1 - d~)/h is exp((1 - d~)/h) / sum_j exp(...), without overflow
    similarity = torch.softmax((1 - relative) / band_width, dim=2)
    per_image = similarity.amax(dim=1).mean(dim=1)  # max over generated i, mean over target j
    return -torch.log(per_image + eps).mean()


def mask_collapse_penalty(mask: Tensor, floor: float, ceiling: float) -> Tensor:
    """Hinge on each image's mean mask: zero inside [floor, ceiling], linear outside.

    A mask that collapses to 0 turns G into the identity (the contextual/reconstruction losses pull that way);
    one that saturates at 1 makes the mask pointless. A healthy mask never feels this term.
    """
    mean = mask.float().flatten(1).mean(dim=1)
    return (F.relu(floor - mean) + F.relu(mean - ceiling)).mean()


def mask_statistics(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of the mask and its spread (standard deviation over all pixels of the batch)."""
    values = mask.detach().float()
    return values.mean(), values.std()
