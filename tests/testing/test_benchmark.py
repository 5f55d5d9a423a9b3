"""The synthetic benchmark: its scores on translators whose answer is known, and one tiny run end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.model.classifier import TrainedClassifier
from animexpr.model.inception import InceptionError, InceptionFeatures, resolve_inception
from animexpr.testing.benchmark import (
    CLASSIFIER_SEED_BASE,
    IDENTITY_ROW,
    RENDER_CLASSIFIER,
    TEST_SEED_BASE,
    TRUTH_ROW,
    BenchmarkError,
    RememberedFeatures,
    TruthSet,
    identities,
    identity_translator,
    mask_iou,
    mask_outside,
    render_truth,
    score_translator,
    train_render_classifier,
    training_expressions,
    truth_translator,
)
from animexpr.testing.faces import EXPRESSIONS

SIZE = 32
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def truth() -> TruthSet:
    return render_truth(identities(TEST_SEED_BASE, 3), SIZE)


@pytest.fixture(scope="module")
def classifier(truth: TruthSet) -> TrainedClassifier:
    """A quickly trained classifier: these tests check the identity and mask scores, not its quality."""
    config = dataclasses.replace(RENDER_CLASSIFIER, epochs=1)
    return train_render_classifier(identities(CLASSIFIER_SEED_BASE, 8), SIZE, CPU, config, truth)


def constant_translator(x: Tensor, onehot: Tensor) -> tuple[Tensor, Tensor | None]:
    """Mid grey whatever the input: keeps nothing of the identity."""
    return torch.zeros_like(x), None


def all_ones_mask(truth: TruthSet):  # type: ignore[no-untyped-def]
    """The true answer, but a mask that claims the whole picture."""
    answer = truth_translator(truth)

    def translate(x: Tensor, onehot: Tensor) -> tuple[Tensor, Tensor | None]:
        y, mask = answer(x, onehot)
        assert mask is not None
        return y, torch.ones_like(mask)

    return translate


def test_the_truth_has_no_identity_error(truth: TruthSet, classifier: TrainedClassifier) -> None:
    scores = score_translator(truth_translator(truth), truth, classifier)
    assert scores.pairs == len(truth.identities) * 12
    assert scores.l1 == 0.0
    assert scores.l1_outside == 0.0
    assert scores.ssim == pytest.approx(1.0)
    assert scores.ssim_outside == pytest.approx(1.0)
    # Each true image is the answer to three pairs: the classifier's accuracy on the truth is its own.
    assert scores.expression_accuracy == pytest.approx(classifier.test_accuracy)


def test_the_unchanged_input_keeps_everything_outside_the_region_and_nothing_inside(
    truth: TruthSet, classifier: TrainedClassifier
) -> None:
    scores = score_translator(identity_translator, truth, classifier)
    assert scores.l1_outside == 0.0
    assert scores.ssim_outside == pytest.approx(1.0)
    # The whole-face L1 is the mean difference between the two true expressions, over the 12 pairs.
    images = truth.images.double() / 255.0
    expected = np.mean(
        [float((images[:, s] - images[:, t]).abs().mean()) for s in range(4) for t in range(4) if s != t]
    )
    assert scores.l1 == pytest.approx(expected)
    assert 0.005 < scores.l1 < 0.2
    assert scores.ssim < 1.0
    assert scores.mask_iou is None
    assert scores.mask_outside is None


def test_a_constant_image_gets_a_large_identity_error(truth: TruthSet, classifier: TrainedClassifier) -> None:
    unchanged = score_translator(identity_translator, truth, classifier)
    constant = score_translator(constant_translator, truth, classifier)
    assert constant.l1 > 0.15
    assert constant.l1_outside > 0.15
    assert constant.l1 > 3 * unchanged.l1
    assert constant.ssim < 0.3
    assert constant.ssim_outside < 0.7  # the true region pasted in is a third of the face


def test_mask_iou_is_one_for_the_true_region_and_low_for_an_all_ones_mask(
    truth: TruthSet, classifier: TrainedClassifier
) -> None:
    exact = score_translator(truth_translator(truth), truth, classifier)
    assert exact.mask_iou == pytest.approx(1.0)
    assert exact.mask_outside == 0.0
    everything = score_translator(all_ones_mask(truth), truth, classifier)
    region_share = float(truth.regions.float().mean())
    assert everything.mask_iou == pytest.approx(region_share)
    assert everything.mask_iou < 0.5
    assert everything.mask_outside == pytest.approx(1.0)


def test_mask_scores_per_image() -> None:
    region = torch.zeros(2, 4, 4, dtype=torch.bool)
    region[:, :2] = True  # the top half
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, :2] = 0.9  # the region exactly
    mask[1, 0, :, :2] = 0.7  # the left half: a quarter of the picture is shared
    assert mask_iou(mask, region).tolist() == pytest.approx([1.0, 4 / 12])
    assert mask_outside(mask, region).tolist() == pytest.approx([0.0, 0.35])


def test_remembered_features_compute_each_distinct_image_once(truth: TruthSet) -> None:
    computed: list[int] = []

    def mean_colour(images: Tensor) -> np.ndarray:
        computed.append(len(images))
        return images.double().mean(dim=(1, 2)).numpy()

    features = RememberedFeatures(mean_colour)
    first = features(truth.images[:, 0])
    again = features(torch.cat([truth.images[:, 1], truth.images[:, 0]]))
    assert computed == [3, 3]
    np.testing.assert_array_equal(again[3:], first)
    np.testing.assert_array_equal(again[:3], mean_colour(truth.images[:, 1]))


def test_training_identities_get_one_expression_each_balanced() -> None:
    drawn = training_expressions(10)
    assert len(drawn) == 10
    assert sorted(drawn.count(name) for name in EXPRESSIONS) == [2, 2, 3, 3]
    assert drawn == training_expressions(10)
    assert drawn != [EXPRESSIONS[i % 4] for i in range(10)]


def test_the_benchmark_runs_end_to_end_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        app,
        ["--home", str(tmp_path / "home"), "benchmark", "synthetic", "--out", str(out),
         "--image-size", "32", "--iters", "6", "--train-identities", "8", "--test-identities", "2",
         "--classifier-identities", "8", "--classifier-epochs", "1", "--device", "cpu", "--no-fid"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    names = [row["name"] for row in report["rows"]]
    assert names == ["stargan", "ours", IDENTITY_ROW, TRUTH_ROW]
    by_name = {row["name"]: row for row in report["rows"]}
    assert by_name[TRUTH_ROW]["mean"]["l1"]["mean"] == 0.0
    assert by_name[IDENTITY_ROW]["mean"]["l1_outside"]["mean"] == 0.0
    assert by_name["ours"]["mean"]["mask_iou"]["mean"] is not None
    assert by_name["stargan"]["mean"]["mask_iou"]["mean"] is None
    assert by_name["ours"]["mean"]["ms_per_iter"]["mean"] > 0
    assert by_name["ours"]["per_seed"][0]["pairs"] == 2 * 12
    assert "FID/KID not computed" in report["fid"]
    table = (out / "report.md").read_text()
    for name in names:
        assert f"| {name} |" in table
    with Image.open(out / "figure.png") as figure:
        # 2 identities: truth, stargan, ours, ours mask; tiles enlarged to 64 px.
        assert figure.height > 2 * 4 * 64
        assert figure.width > 5 * 64
    assert len(list((out / "runs").iterdir())) == 2


def test_bad_settings_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        app,
        ["--home", str(tmp_path / "home"), "benchmark", "synthetic", "--out", str(out), "--variants", "nope"],
    )
    assert isinstance(result.exception, BenchmarkError)
    assert "--variants" in str(result.exception)
    assert "stargan" in str(result.exception)
    assert not out.exists()
    result = CliRunner().invoke(
        app,
        ["--home", str(tmp_path / "home"), "benchmark", "synthetic", "--out", str(out), "--image-size", "40"],
    )
    assert "image_size" in str(result.exception)
    assert not out.exists()


@pytest.mark.slow
def test_the_classifier_tells_the_four_expressions_apart_on_renders() -> None:
    """The default classifier at the small configuration's 64 px (about a minute on 2 cores)."""
    test = render_truth(identities(TEST_SEED_BASE, 50), 64)
    trained = train_render_classifier(identities(CLASSIFIER_SEED_BASE, 300), 64, CPU, RENDER_CLASSIFIER, test)
    assert trained.test_accuracy is not None
    assert trained.test_accuracy >= 0.95


@pytest.mark.slow
def test_fid_of_the_truth_is_near_zero_and_of_the_unchanged_input_larger(
    truth: TruthSet, classifier: TrainedClassifier
) -> None:
    try:
        resolve_inception(fetch=False)
    except InceptionError as exc:
        pytest.skip(f"Inception weights not found ({exc})")
    inception = InceptionFeatures(None, CPU, fetch=False)
    exact = score_translator(truth_translator(truth), truth, classifier, inception=inception)
    unchanged = score_translator(identity_translator, truth, classifier, inception=inception)
    assert exact.fid is not None
    assert unchanged.fid is not None
    assert abs(exact.fid) < 1e-2
    assert unchanged.fid > 1.0
