"""The evaluation protocols (pooled `paper`, `per-class`), `evaluate --images`, and what a report records.

Fast: the generator is an untrained tiny one written straight into a run folder, and the features are a
stand-in for Inception (4 x 4 mean colours), named by their own pipeline. The tests with the real Inception
network are in test_evaluate.py (slow).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from model_fixtures import build_test_snapshot, tiny_config
from PIL import Image
from torch import Tensor
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.model import evaluate as evaluate_module
from animexpr.model.checkpoint import CONFIG_FILE, generator_path, save_generator
from animexpr.model.classifier import ClassifierConfig
from animexpr.model.data import load_snapshot
from animexpr.model.evaluate import (
    EVAL_JSON,
    FORMAT,
    EvalOptions,
    EvaluationError,
    FeatureExtractor,
    TargetAccumulator,
    classifier_warnings,
    evaluate_images,
    evaluate_run,
    load_report,
    real_set_sha256,
    reference_splits,
    score_protocol,
    training_record,
)
from animexpr.model.inception import InceptionError
from animexpr.model.metrics import fid, kid
from animexpr.model.networks import Generator

CLASSIFIER = ClassifierConfig(width=8, blocks_per_stage=1, epochs=1, batch=16)
TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 2
FEATURE_PIPELINE = "test/mean-colour-4x4"


def mean_colours(images_u8: Tensor) -> np.ndarray:
    """Stand-in features: the mean colour of each cell of a 4 x 4 grid (48 values per image)."""
    x = images_u8.permute(0, 3, 1, 2).float() / 255.0
    return F.adaptive_avg_pool2d(x, 4).flatten(1).numpy().astype(np.float32)


FEATURES = FeatureExtractor(mean_colours, FEATURE_PIPELINE)


def options(cache_dir: Path, **changes: Any) -> EvalOptions:
    return dataclasses.replace(
        EvalOptions(device="cpu", batch=4, cache_dir=cache_dir, classifier=CLASSIFIER), **changes
    )


def untrained_run(snapshot: Path, runs_root: Path, variant: str = "ours", iteration: int = 4) -> Path:
    """A run folder holding config.json and an untrained tiny generator file, as training leaves them."""
    cfg = tiny_config(snapshot.resolve(), variant=variant)
    classes = load_snapshot(snapshot).classes
    run_dir = runs_root / f"{len(list(runs_root.glob('*'))):05d}-{variant}"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / CONFIG_FILE).write_text(cfg.to_json(), encoding="utf-8")
    torch.manual_seed(0)
    generator = Generator(len(classes), cfg.spec, cfg)
    metadata = {"config": cfg.to_json(), "classes": json.dumps(list(classes)), "iteration": str(iteration)}
    save_generator(generator_path(run_dir, iteration), generator.state_dict(), metadata)
    return run_dir


def read_pngs(paths: list[Path]) -> Tensor:
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB")))
    return torch.from_numpy(np.stack(arrays))


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_snapshot(tmp_path_factory.mktemp("snap"), TRAIN_PER_CLASS, TEST_PER_CLASS)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def evaluated_run(snapshot: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An `ours` run evaluated under the paper protocol, its translations saved."""
    run_dir = untrained_run(snapshot, tmp_path_factory.mktemp("runs"))
    evaluate_run(run_dir, options=options(cache_dir), features=FEATURES)
    return run_dir


def report_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / EVAL_JSON).read_text(encoding="utf-8"))


# --- the pooled protocol against a hand computation ---


def hand_fid(real: np.ndarray, fake: np.ndarray) -> float:
    """FID by its formula, with scipy's matrix square root (as pytorch-fid computes it)."""
    mu_r, mu_f = real.mean(0), fake.mean(0)
    s_r, s_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = scipy.linalg.sqrtm(s_r @ s_f).real
    return float(np.sum((mu_r - mu_f) ** 2) + np.trace(s_r + s_f - 2 * root))


def hand_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 on two whole sets of equal size."""
    d, m = x.shape[1], len(x)
    k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / m**2)


def _feature_sets() -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(7)
    real = [rng.normal(c, 1.0, (40, 8)) for c in range(3)]
    fake = [rng.normal(c + 0.5, 1.3, (40, 8)) for c in range(3)]
    return real, fake


def _accumulators(fake: list[np.ndarray], right: list[int]) -> list[TargetAccumulator]:
    """Each class's features in two batches, and `right[t]` of its 40 translations classified as t."""
    return [
        TargetAccumulator(features=[f[:25], f[25:]], correct=[torch.arange(40) < r])
        for f, r in zip(fake, right, strict=True)
    ]


def test_paper_protocol_pools_every_class_against_the_whole_real_set() -> None:
    real, fake = _feature_sets()
    labels = np.repeat(np.arange(3), 40)
    # Every subset holds all 120 images of each side (in another order): KID is then the full-set MMD^2.
    chosen = EvalOptions(protocol="paper", kid_subsets=3, kid_max_subset_size=1000)
    per_class, pooled = score_protocol(
        _accumulators(fake, [40, 20, 10]), np.concatenate(real), labels, ("a", "b", "c"), chosen
    )
    assert pooled is not None
    all_real, all_fake = np.concatenate(real), np.concatenate(fake)
    assert pooled["fid"] == pytest.approx(hand_fid(all_real, all_fake), rel=1e-6)
    assert pooled["kid_mean"] == pytest.approx(hand_mmd2(all_real, all_fake), rel=1e-9)
    assert pooled["kid_std"] == pytest.approx(0.0, abs=1e-12)
    assert (pooled["n_generated"], pooled["n_real"], pooled["kid_subset_size"]) == (120, 120, 120)
    assert pooled["expression_accuracy"] == pytest.approx(70 / 120)
    for t, name in enumerate("abc"):
        assert per_class[name]["fid"] == pytest.approx(hand_fid(real[t], fake[t]), rel=1e-6)
        assert per_class[name]["kid_mean"] == pytest.approx(hand_mmd2(real[t], fake[t]), rel=1e-9)
        assert per_class[name]["n_real"] == 40
    # Pooling is not averaging: the class means differ, so the pooled sets are spread wider.
    assert pooled["fid"] != pytest.approx(np.mean([s["fid"] for s in per_class.values()]), rel=1e-2)


def test_per_class_protocol_has_no_pooled_figures() -> None:
    real, fake = _feature_sets()
    labels = np.repeat(np.arange(3), 40)
    per_class, pooled = score_protocol(
        _accumulators(fake, [40, 40, 40]),
        np.concatenate(real),
        labels,
        ("a", "b", "c"),
        EvalOptions(protocol="per-class"),
    )
    assert pooled is None
    assert per_class["b"]["fid"] == pytest.approx(fid(real[1], fake[1]))


def test_protocol_and_reference_are_checked() -> None:
    assert reference_splits(EvalOptions()) == ("test",)
    assert reference_splits(EvalOptions(protocol="per-class")) == ("train", "test")
    assert reference_splits(EvalOptions(protocol="per-class", reference="train")) == ("train",)
    with pytest.raises(EvaluationError, match="--reference applies to --protocol per-class"):
        reference_splits(EvalOptions(reference="all"))
    with pytest.raises(EvaluationError, match="--protocol: expected paper or per-class"):
        reference_splits(EvalOptions(protocol="pooled"))  # type: ignore[arg-type]


def test_the_real_set_hash_names_the_images_and_their_classes(snapshot: Path) -> None:
    records = [r for r in load_snapshot(snapshot).records if r.split == "test"]
    assert real_set_sha256(records) == real_set_sha256(list(reversed(records)))
    assert real_set_sha256(records) != real_set_sha256(records[1:])
    other = next(r.label for r in records if r.label != records[0].label)
    relabelled = [dataclasses.replace(records[0], label=other), *records[1:]]
    assert real_set_sha256(relabelled) != real_set_sha256(records)


# --- what a report records ---


def test_training_record_of_an_older_run_fills_what_it_trained_with() -> None:
    old = {"variant": "ours", "iters": 2000, "decay_start": 1000, "vgg_random": True, "ema_beta": 0.999}
    record = training_record(old, 2000)
    assert record["mapping_init"] == "torch"  # F's init before the option existed
    assert record["lr_schedule"] == "linear"
    assert (record["lambda_mask"], record["mask_floor"], record["mask_ceiling"]) == (1.0, 0.05, 0.95)
    assert record["vgg_weights"] == "random"
    assert record["cx_layer"] == "relu4_2"
    assert "mapping_init" in record["absent_from_config"]
    assert "iters" not in record["absent_from_config"]


def test_training_record_leaves_out_what_a_variant_does_not_use() -> None:
    record = training_record({"variant": "stargan", "ema_beta": 0.0, "mapping_init": "he"}, 10)
    assert record["ema_beta"] == 0.0
    assert record["cx_layer"] is None
    assert record["vgg_weights"] is None
    assert record["lambda_mask"] is None
    assert record["mapping_init"] is None
    baseline = training_record({"variant": "cyclegan", "resnet_blocks": 9, "lambda_identity": 0.5}, 10)
    assert baseline["resnet_blocks"] == 9
    assert baseline["lambda_identity"] == 0.5
    assert baseline["mapping_init"] is None
    assert baseline["lambda_mask"] is None


def test_vgg_weights_are_recorded_by_their_file_hash(tmp_path: Path) -> None:
    weights = tmp_path / "vgg19.pth"
    weights.write_bytes(b"not really weights")
    record = training_record({"variant": "ours", "vgg_weights": str(weights)}, 1)
    assert record["vgg_weights"] == hashlib.sha256(b"not really weights").hexdigest()
    missing = training_record({"variant": "ours", "vgg_weights": str(tmp_path / "gone.pth")}, 1)
    assert missing["vgg_weights"].startswith("unknown")


# --- evaluate on a run ---


def test_paper_protocol_on_a_run_matches_the_saved_images(evaluated_run: Path, snapshot: Path) -> None:
    """Pooled and per-class FID/KID, recomputed from the PNGs written beside the report, match it."""
    report = report_of(evaluated_run)
    snap = load_snapshot(snapshot)
    classes = list(snap.classes)
    assert report["format"] == FORMAT
    assert (report["protocol"], report["reference"], report["kind"]) == ("paper", "test", "run")
    assert report["feature_pipeline"] == FEATURE_PIPELINE
    test_records = [r for r in snap.records if r.split == "test"]
    assert report["real_set"] == {"count": 8, "sha256": real_set_sha256(test_records), "splits": ["test"]}
    assert report["generated_images"] == 4 * TEST_PER_CLASS * 3
    images_dir = evaluated_run / report["images"]
    # evaluate translates in the order of the PNG names (KID's random subsets depend on the order).
    pngs = {c: sorted((images_dir / c).glob("*.png")) for c in classes}
    fake = {c: mean_colours(read_pngs(pngs[c])) for c in classes}
    real_paths = {c: [snap.path_of(r) for r in test_records if r.label == c] for c in classes}
    real = {c: mean_colours(_resized(real_paths[c], 32)) for c in classes}
    all_fake = np.concatenate([fake[c] for c in classes])
    all_real = np.concatenate([real[c] for c in classes])
    pooled = report["pooled"]
    assert (pooled["n_generated"], pooled["n_real"]) == (24, 8)
    assert pooled["fid"] == pytest.approx(fid(all_real, all_fake), rel=1e-5)
    assert pooled["kid_mean"] == pytest.approx(kid(all_real, all_fake, seed=len(classes)).mean, rel=1e-4)
    for t, c in enumerate(classes):
        scores = report["per_class"][c]
        assert (scores["n_generated"], scores["n_real"]) == (6, 2)
        assert scores["fid"] == pytest.approx(fid(real[c], fake[c]), rel=1e-5)
        assert scores["kid_mean"] == pytest.approx(kid(real[c], fake[c], seed=t).mean, rel=1e-4, abs=1e-9)
    assert 0 <= pooled["expression_accuracy"] <= 1
    assert 0 < pooled["l1"] < 1
    assert 0 < pooled["mask_mean"] < 1
    table = (evaluated_run / "eval.md").read_text(encoding="utf-8")
    assert f"| pooled | 24 | 8 | {pooled['fid']:.2f} |" in table
    assert "Protocol paper" in table


def _resized(paths: list[Path], size: int) -> Tensor:
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)))
    return torch.from_numpy(np.stack(arrays))


def test_the_report_records_what_changes_a_figure(evaluated_run: Path) -> None:
    report = report_of(evaluated_run)
    training = report["training"]
    assert training["variant"] == "ours"
    assert training["iteration"] == 4
    for key in ("iters", "lr_schedule", "decay_start", "ema_beta", "cx_layer", "mapping_init"):
        assert training[key] == report["config"][key], key
    assert training["vgg_weights"] == "random"
    assert (training["lambda_mask"], training["mask_floor"], training["mask_ceiling"]) == (1.0, 0.05, 0.95)
    assert training["absent_from_config"] == []
    assert report["options"]["protocol"] == "paper"


def test_per_class_protocol_compares_with_the_reference_originals(
    evaluated_run: Path, snapshot: Path, cache_dir: Path
) -> None:
    report = evaluate_run(
        evaluated_run,
        options=options(cache_dir, protocol="per-class", reference="all", save_images=False),
        features=FEATURES,
    )
    assert report["protocol"] == "per-class"
    assert report["reference"] == "all"
    assert report["pooled"] is None
    assert report["real_set"]["count"] == 4 * (TRAIN_PER_CLASS + TEST_PER_CLASS)
    for scores in report["per_class"].values():
        assert scores["n_real"] == TRAIN_PER_CLASS + TEST_PER_CLASS
    assert report["mean"]["fid"] == pytest.approx(np.mean([s["fid"] for s in report["per_class"].values()]))
    evaluate_run(evaluated_run, options=options(cache_dir), features=FEATURES)  # the paper report back


class RecordingGenerator(torch.nn.Module):
    """A generator that notes the class one-hots of every call, then runs the real one."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[Tensor, Tensor | None]] = []

    def forward(self, x: Tensor, target: Tensor, source: Tensor | None = None) -> Any:
        self.calls.append((target, source))
        return self.inner(x, target, source)


def test_the_generator_always_gets_the_source_class(
    evaluated_run: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    recorders: list[RecordingGenerator] = []
    load = evaluate_module.load_generator

    def recording_load(*args: Any, **kwargs: Any) -> Any:
        loaded = load(*args, **kwargs)
        recorders.append(RecordingGenerator(loaded.generator))
        return dataclasses.replace(loaded, generator=recorders[-1])

    monkeypatch.setattr(evaluate_module, "load_generator", recording_load)
    copy = tmp_path / evaluated_run.name
    shutil.copytree(evaluated_run, copy)
    evaluate_run(copy, options=options(cache_dir, save_images=False), features=FEATURES)
    calls = recorders[0].calls
    assert len(calls) > 1
    for target, source in calls:
        assert source is not None
        assert source.shape == target.shape
        assert not (source.argmax(1) == target.argmax(1)).any()  # never into its own class


def test_a_snapshot_without_a_test_split_is_refused_under_the_paper_protocol(
    evaluated_run: Path, tmp_path: Path
) -> None:
    folder = build_test_snapshot(tmp_path, TRAIN_PER_CLASS, test_per_class=0)
    with pytest.raises(EvaluationError, match=r"no test split: .* --snapshot with a test split"):
        evaluate_run(evaluated_run, snapshot_folder=folder, options=EvalOptions(device="cpu"))
    images = evaluated_run / report_of(evaluated_run)["images"]
    with pytest.raises(EvaluationError, match=r"no test split: .*use --protocol per-class"):
        evaluate_images(images, folder, tmp_path / "out.json", options=EvalOptions(device="cpu"))


# --- evaluate --images ---


def test_a_runs_saved_images_scored_as_a_folder_give_the_runs_figures(
    evaluated_run: Path, snapshot: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """The same images, decoded the same way, against the same real set: the same FID, KID and accuracy."""
    run_report = report_of(evaluated_run)
    images = evaluated_run / run_report["images"]
    out = tmp_path / "folder.json"
    report = evaluate_images(
        images,
        snapshot,
        out,
        method="ours-again",
        image_size=32,
        options=options(cache_dir),
        features=FEATURES,
    )
    assert load_report(out) == report
    assert (tmp_path / "folder.md").is_file()
    assert (report["kind"], report["method"], report["training"]) == ("images", "ours-again", None)
    assert report["real_set"] == run_report["real_set"]
    assert report["generated_images"] == run_report["generated_images"]
    assert report["decoding"]["resized"] == 0
    for key in ("fid", "kid_mean", "kid_std", "expression_accuracy"):
        assert report["pooled"][key] == pytest.approx(run_report["pooled"][key], rel=1e-6), key
        for c in run_report["classes"]:
            assert report["per_class"][c][key] == pytest.approx(run_report["per_class"][c][key], rel=1e-6)
    assert report["pooled"]["l1"] is None  # which input an image came from is not known


def test_images_of_another_size_are_resized_like_the_real_images(
    evaluated_run: Path, snapshot: Path, cache_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "big"
    for c in report_of(evaluated_run)["classes"]:
        (folder / c).mkdir(parents=True)
        for i in range(3):
            pixels = np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / c / f"{i}.png")
    report = evaluate_images(folder, snapshot, image_size=32, options=options(cache_dir), features=FEATURES)
    assert report["decoding"]["resized"] == 12
    assert report["method"] == "big"
    assert (folder / EVAL_JSON).is_file()  # the default place of the report


def _folder_with(tmp_path: Path, classes: list[str]) -> Path:
    folder = tmp_path / "made-elsewhere"
    for c in classes:
        (folder / c).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(folder / c / "0.png")
    return folder


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            "unknown-class",
            r"made-elsewhere/sleepy: 'sleepy' is not a class of the snapshot; expected .*<class>",
        ),
        ("missing-class", r"/{first}: no such folder; expected .*<class>/\*\.png for each class"),
        ("empty-class", r"/{first}: no images \(\.png"),
        ("unreadable", r"/{first}/0\.png: not a readable image"),
        ("out-not-json", r"--out .*report\.md: the report is JSON"),
    ],
)
def test_a_bad_folder_of_images_is_one_clear_line(
    snapshot: Path, cache_dir: Path, tmp_path: Path, damage: str, message: str
) -> None:
    classes = list(load_snapshot(snapshot).classes)
    folder = _folder_with(tmp_path, classes)
    out = None
    if damage == "unknown-class":
        (folder / "sleepy").mkdir()
    elif damage == "missing-class":
        shutil.rmtree(folder / classes[0])
    elif damage == "empty-class":
        (folder / classes[0] / "0.png").unlink()
        (folder / classes[0] / "notes.txt").write_text("not an image", encoding="utf-8")
    elif damage == "unreadable":
        (folder / classes[0] / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    else:
        out = tmp_path / "report.md"
    with pytest.raises(EvaluationError, match=message.format(first=classes[0])) as caught:
        evaluate_images(folder, snapshot, out, image_size=32, options=options(cache_dir), features=FEATURES)
    assert "\n" not in str(caught.value)
    assert not (folder / EVAL_JSON).exists()


# --- the command ---


def _use_stand_in_features(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate_module, "inception_extractor", lambda options, device: FEATURES)


def test_evaluate_images_command(
    evaluated_run: Path, snapshot: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_stand_in_features(monkeypatch)
    images = evaluated_run / report_of(evaluated_run)["images"]
    out = tmp_path / "cyclegan.json"
    arguments = ["--home", str(tmp_path), "evaluate", "--images", str(images), "--snapshot", str(snapshot)]
    arguments += ["--method", "cyclegan", "--image-size", "32", "--out", str(out), "--device", "cpu"]
    arguments += ["--cache-dir", str(cache_dir), "--classifier-epochs", "1"]
    # The CLI's classifier is the default width: its own cache entry, trained once here.
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    report = load_report(out)
    assert report["method"] == "cyclegan"
    assert report["protocol"] == "paper"
    assert f"written to {out}" in result.stdout.replace("\n", "")
    assert "pooled" in result.stdout
    assert "warning: the expression classifier trained on" in result.stdout  # 3 faces a class


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--images", "{images}"], "--images needs --snapshot"),
        (["{run}", "--images", "{images}", "--snapshot", "{snapshot}"], "give a run folder or --images"),
        (["{run}", "--reference", "all"], "goes with --protocol per-class"),
        (["{run}", "--protocol", "pooled"], "'pooled' is not one of 'paper', 'per-class'"),
        (["{run}", "--method", "x"], "go with --images only"),
    ],
)
def test_evaluate_command_argument_errors(
    evaluated_run: Path, snapshot: Path, tmp_path: Path, arguments: list[str], message: str
) -> None:
    images = evaluated_run / report_of(evaluated_run)["images"]
    filled = [a.format(run=evaluated_run, images=images, snapshot=snapshot) for a in arguments]
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "evaluate", *filled, "--device", "cpu"])
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())


# --- what is needed first, and how far the classifier can be trusted ---


def test_inception_is_resolved_before_the_classifier_trains(
    snapshot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def no_inception(options: EvalOptions, device: torch.device) -> FeatureExtractor:
        calls.append("inception")
        raise InceptionError("no Inception weights for FID/KID (offline)")

    def classifier(*args: Any, **kwargs: Any) -> Any:
        calls.append("classifier")
        raise AssertionError("the classifier must not train before the Inception weights are there")

    monkeypatch.setattr(evaluate_module, "inception_extractor", no_inception)
    monkeypatch.setattr(evaluate_module, "snapshot_classifier", classifier)
    run_dir = untrained_run(snapshot, tmp_path / "runs")
    with pytest.raises(InceptionError, match="offline"):
        evaluate_run(run_dir, options=options(tmp_path / "cache"))
    images = tmp_path / "images"
    for name in load_snapshot(snapshot).classes:
        (images / name).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(images / name / "a.png")
    with pytest.raises(InceptionError, match="offline"):
        evaluate_images(images, snapshot, image_size=32, options=options(tmp_path / "cache"))
    assert calls == ["inception", "inception"]


def test_a_missing_inception_is_announced_before_it_is_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []

    def not_cached(path: Path | None, fetch: bool = True) -> Path:
        events.append(f"resolve fetch={fetch}")
        raise InceptionError("not in the cache")

    class Fetched:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            events.append("fetch")

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            events.append(record.getMessage())

    monkeypatch.setattr(evaluate_module, "resolve_inception", not_cached)
    monkeypatch.setattr(evaluate_module, "InceptionFeatures", Fetched)
    recorder = Recorder()
    evaluate_module.log.addHandler(recorder)
    monkeypatch.setattr(evaluate_module.log, "level", logging.INFO)
    try:
        evaluate_module.inception_extractor(EvalOptions(), torch.device("cpu"))
    finally:
        evaluate_module.log.removeHandler(recorder)
    assert events[0] == "resolve fetch=False"
    assert events[1].startswith(
        "the Inception weights for FID/KID are not on this machine: fetching them first"
    )
    assert events[2] == "fetch"


def test_classifier_warnings_flag_a_weak_or_thinly_trained_classifier() -> None:
    enough = {"angry": 60, "sad": 50, "smile": 70}
    assert classifier_warnings({"test_accuracy": 0.8, "train_originals_per_class": enough}) == []
    weak = classifier_warnings({"test_accuracy": 0.45, "train_originals_per_class": enough})
    assert weak == [
        "the expression classifier's own test accuracy is 0.450, below 0.6: the expression accuracy of the "
        "translations means little"
    ]
    thin = classifier_warnings({"test_accuracy": 0.9, "train_originals_per_class": enough | {"sad": 12}})
    assert thin == [
        "the expression classifier trained on 142 original images, 12 of them sad (fewer than 50 per class): "
        "too few for its verdict to mean much; use a larger snapshot"
    ]
    assert "no test accuracy" in classifier_warnings({"test_accuracy": None})[0]


def test_the_report_warns_that_a_classifier_of_a_tiny_snapshot_means_little(evaluated_run: Path) -> None:
    report = report_of(evaluated_run)
    assert report["classifier"]["train_images"] == TRAIN_PER_CLASS * 4
    assert set(report["classifier"]["train_originals_per_class"].values()) == {TRAIN_PER_CLASS}
    assert report["warnings"] == classifier_warnings(report["classifier"])
    assert any("fewer than 50 per class" in warning for warning in report["warnings"])
    markdown = (evaluated_run / "eval.md").read_text(encoding="utf-8")
    assert f"**Warning:** {report['warnings'][0]}." in markdown


def test_evaluate_json_prints_only_the_report_on_standard_output(
    evaluated_run: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_stand_in_features(monkeypatch)
    arguments = ["--home", str(tmp_path), "evaluate", str(evaluated_run), "--device", "cpu", "--json"]
    arguments += ["--cache-dir", str(cache_dir), "--classifier-epochs", "1", "--batch", "4"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)  # progress goes to standard error, never into the JSON
    assert printed["warnings"] == report_of(evaluated_run)["warnings"] != []
