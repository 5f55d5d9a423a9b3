"""Evaluate a trained generator: every test face into every other class, scored per target class and averaged.

For each target class t, the generated set is every test image of another class translated to t, and the real
set is the snapshot's original images of class t (both splits by default, never augmentations), decoded at the
model's resolution the same way training decodes them. Scores:

- FID and KID (metrics.py) on Inception features (inception.py) of the generated images as saved: quantised to
  uint8, as in the PNG files written beside the report.
- Expression accuracy: the share of translations that the snapshot's independent classifier (classifier.py)
  assigns to t, next to that classifier's own accuracy on the real test images (the ceiling).
- Identity keeping: mean absolute change of the pixels (in [0, 1]), the same weighted by 1 - M for the
  variants with a mask (the change where the model says it keeps the input), and SSIM of output to input.

Writes `eval.json` and `eval.md` into the run folder, the PNGs under `eval/<generator>/`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from animexpr.config import user_cache_dir as default_cache_dir
from animexpr.errors import AnimexprError
from animexpr.model.checkpoint import STATS_FILE
from animexpr.model.classifier import ClassifierConfig, TrainedClassifier, snapshot_classifier
from animexpr.model.data import ManifestRecord, Snapshot, decode_records, load_snapshot, to_model_input
from animexpr.model.device import resolve_device
from animexpr.model.grid import save_png
from animexpr.model.inception import FEATURE_PIPELINE, INCEPTION_SHA256, InceptionFeatures
from animexpr.model.metrics import FeatureCache, fid, identity_measures, kid
from animexpr.model.networks import Discriminator, parameter_counts
from animexpr.model.transform import LoadedGenerator, load_generator
from animexpr.store import atomic_write_bytes

log = logging.getLogger(__name__)

EVAL_JSON = "eval.json"
EVAL_TABLE = "eval.md"
EVAL_DIR = "eval"
INPUTS_DIR = "inputs"
FORMAT = "animexpr-eval-1"
Reference = Literal["all", "train", "test"]
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


class EvaluationError(AnimexprError):
    pass


@dataclass(frozen=True)
class EvalOptions:
    reference: Reference = "all"  # which real images of the target class FID/KID compare against
    batch: int = 32
    device: str = "auto"
    save_images: bool = True
    inception: Path | None = None  # the TorchScript (else $ANIMEXPR_INCEPTION, the cache, a fetch)
    cache_dir: Path | None = None  # real features and classifiers [default: the user cache]
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    kid_subsets: int = 100
    kid_max_subset_size: int = 1000
    seed: int = 0


@dataclass
class _TargetAccumulator:
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


def reference_records(snapshot: Snapshot, reference: Reference) -> list[ManifestRecord]:
    splits = ("train", "test") if reference == "all" else (reference,)
    return [r for r in snapshot.records if r.kind == "original" and r.split in splits]


def median_ms_per_iteration(run_dir: Path) -> float | None:
    """Median of the logged windows of a run, without the first (it holds compilation and graph capture)."""
    path = run_dir / STATS_FILE
    if not path.is_file():
        return None
    values = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            value = json.loads(line).get("ms_per_iter")
        except json.JSONDecodeError:
            continue
        if isinstance(value, int | float):
            values.append(float(value))
    if len(values) >= 3:
        values = values[1:]
    return statistics.median(values) if values else None


def _real_features(
    snapshot: Snapshot,
    records: list[ManifestRecord],
    image_size: int,
    extractor: InceptionFeatures,
    cache_folder: Path,
) -> np.ndarray:
    key = {
        "manifest_sha256": snapshot.manifest_sha256,
        "image_size": image_size,
        "pipeline": FEATURE_PIPELINE,
    }
    cache = FeatureCache(cache_folder, key)

    def compute(indices: list[int]) -> np.ndarray:
        chunks = []
        for start in range(0, len(indices), 256):  # decode in chunks: a large snapshot need not fit in memory
            chosen = [records[i] for i in indices[start : start + 256]]
            images, _ = decode_records(snapshot, chosen, image_size)
            chunks.append(extractor(images))
        return np.concatenate(chunks)

    return cache.features([r.sha256 for r in records], compute)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _warm_up(loaded: LoadedGenerator, images_u8: Tensor) -> None:
    """One untimed batch first: cuDNN's algorithm search and lazy CUDA set-up are not generation time."""
    x = to_model_input(images_u8.to(loaded.device), channels_last=False)
    onehot = torch.zeros(len(x), len(loaded.classes), device=loaded.device)
    onehot[:, 0] = 1
    with torch.inference_mode():
        loaded.generator(x, onehot)
    _synchronise(loaded.device)


def _translate_all(
    loaded: LoadedGenerator,
    records: list[ManifestRecord],
    images: Tensor,
    labels: Tensor,
    classifier: TrainedClassifier,
    extractor: InceptionFeatures,
    options: EvalOptions,
    images_dir: Path | None,
    progress: Progress | None,
) -> tuple[list[_TargetAccumulator], dict[str, float]]:
    num_classes = len(loaded.classes)
    device = loaded.device
    results = [_TargetAccumulator() for _ in range(num_classes)]
    timing = {"generation_s": 0.0, "features_s": 0.0, "classifier_s": 0.0, "write_s": 0.0}
    total = len(records)
    _warm_up(loaded, images[: options.batch])
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
            onehot = F.one_hot(torch.full((len(keep),), target, device=device), num_classes).float()
            with torch.inference_mode():
                y, mask = loaded.generator(x_all[keep.to(device)], onehot)
                y_u8 = _quantise(y)
            _synchronise(device)
            timing["generation_s"] += time.perf_counter() - tick
            acc = results[target]
            tick = time.perf_counter()
            acc.features.append(extractor(y_u8))
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


def _score_target(
    acc: _TargetAccumulator, real: np.ndarray, options: EvalOptions, seed: int
) -> dict[str, float | int | None]:
    fake = np.concatenate(acc.features) if acc.features else np.empty((0, 0), np.float32)
    scores: dict[str, float | int | None] = {"n_generated": len(fake), "n_real": len(real)}
    if len(fake) >= 2 and len(real) >= 2:
        kid_result = kid(real, fake, options.kid_subsets, options.kid_max_subset_size, seed=seed)
        scores |= {
            "fid": fid(real, fake),
            "kid_mean": kid_result.mean,
            "kid_std": kid_result.std,
            "kid_subset_size": kid_result.subset_size,
        }
    else:
        log.warning("too few images for FID/KID (%d generated, %d real)", len(fake), len(real))
        scores |= {"fid": None, "kid_mean": None, "kid_std": None, "kid_subset_size": None}
    scores |= {
        "expression_accuracy": _mean(acc.correct),
        "l1": _mean(acc.l1),
        "l1_outside_mask": _mean(acc.l1_outside),
        "ssim": _mean(acc.ssim),
        "mask_mean": _mean(acc.mask_mean),
    }
    return scores


def _average(per_class: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Unweighted mean over target classes of each metric (None where a class has none)."""
    mean: dict[str, float | None] = {}
    for key in METRIC_KEYS:
        values = [scores[key] for scores in per_class.values() if scores.get(key) is not None]
        mean[key] = float(np.mean(values)) if values and len(values) == len(per_class) else None
    return mean


def _generator_parameters(loaded: LoadedGenerator) -> dict[str, int]:
    cfg = loaded.config
    discriminator = Discriminator(cfg.image_size, len(loaded.classes), cfg.d_conv_dim, cfg.d_repeat_num)
    return parameter_counts(loaded.generator, discriminator)


def evaluate_run(
    run: Path,
    checkpoint: Path | None = None,
    snapshot_folder: Path | None = None,
    options: EvalOptions | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score the newest generator of `run` (or `checkpoint`); writes eval.json and eval.md."""
    options = options or EvalOptions()
    started = time.perf_counter()
    run_dir = resolve_run_dir(run)
    device = resolve_device(options.device)
    loaded = load_generator(checkpoint or run, device)
    snapshot = load_snapshot(snapshot_folder or Path(loaded.config.data))
    if tuple(snapshot.classes) != tuple(loaded.classes):
        raise EvaluationError(
            f"the snapshot's classes {list(snapshot.classes)} differ from "
            f"the generator's {list(loaded.classes)}"
        )
    test_records = [r for r in snapshot.split("test") if r.kind == "original"]
    if not test_records:
        raise EvaluationError(f"snapshot {snapshot.name} has no test images to translate")
    image_size = loaded.config.image_size
    cache_root = options.cache_dir or default_cache_dir()
    test_images, test_labels = decode_records(snapshot, test_records, image_size)

    classifier = snapshot_classifier(
        snapshot,
        snapshot.manifest_sha256,
        image_size,
        device,
        cache_root / "classifiers",
        options.classifier,
        test_images=(test_images, test_labels),
        progress=(lambda done, total: progress("classifier", done, total)) if progress else None,
    )
    extractor = InceptionFeatures(options.inception, device, batch_size=max(options.batch, 32))
    images_dir = run_dir / EVAL_DIR / loaded.source.stem if options.save_images else None
    accumulators, timing = _translate_all(
        loaded, test_records, test_images, test_labels, classifier, extractor, options, images_dir, progress
    )
    references = reference_records(snapshot, options.reference)
    tick = time.perf_counter()
    real_all = _real_features(snapshot, references, image_size, extractor, cache_root / "features")
    timing["real_features_s"] = time.perf_counter() - tick
    class_index = {name: i for i, name in enumerate(snapshot.classes)}
    reference_labels = np.array([class_index[r.label] for r in references])
    per_class: dict[str, dict[str, Any]] = {}
    for target, name in enumerate(snapshot.classes):
        if progress is not None:
            progress("score", target, len(snapshot.classes))
        per_class[name] = _score_target(
            accumulators[target], real_all[reference_labels == target], options, options.seed + target
        )
    generated = sum(acc.count for acc in accumulators)
    elapsed = time.perf_counter() - started
    report: dict[str, Any] = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "run": run_dir.name,
        "generator": loaded.source.name,
        "iteration": loaded.iteration,
        "variant": loaded.config.variant,
        "classes": list(snapshot.classes),
        "snapshot": {
            "name": snapshot.name,
            "manifest_sha256": snapshot.manifest_sha256,
            "trained_on": str(loaded.config.data),
        },
        "image_size": image_size,
        "reference": options.reference,
        "feature_pipeline": FEATURE_PIPELINE,
        "inception_sha256": INCEPTION_SHA256,
        "kid": {
            "subsets": options.kid_subsets,
            "max_subset_size": options.kid_max_subset_size,
            "kernel": "poly3",
        },
        "classifier": classifier.summary(),
        "test_images": len(test_records),
        "generated_images": generated,
        "per_class": per_class,
        "mean": _average(per_class),
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
        "options": _options_summary(options),
    }
    write_report(run_dir, report)
    return report


def _options_summary(options: EvalOptions) -> dict[str, Any]:
    values = dataclasses.asdict(options)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items() if k not in ("classifier",)}


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    atomic_write_bytes(run_dir / EVAL_JSON, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    atomic_write_bytes(run_dir / EVAL_TABLE, report_markdown(report).encode("utf-8"))


def load_report(run_dir: Path) -> dict[str, Any]:
    path = run_dir / EVAL_JSON
    try:
        report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EvaluationError(
            f"{run_dir}: no readable {EVAL_JSON}; run `animexpr evaluate {run_dir}` ({exc})"
        ) from exc
    if report.get("format") != FORMAT:
        raise EvaluationError(f"{path}: unknown format {report.get('format')!r}")
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
    rows = []
    for name, s in [*report["per_class"].items(), ("mean", report["mean"])]:
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


def report_markdown(report: dict[str, Any]) -> str:
    c = report["classifier"]
    t = report["timing"]
    lines = [
        f"# Evaluation of {report['run']} "
        f"({report['variant']}, {report['generator']}, iteration {report['iteration']})",
        "",
        f"Snapshot {report['snapshot']['name']} ({report['snapshot']['manifest_sha256'][:12]}), "
        f"{report['test_images']} test images at {report['image_size']} px, "
        f"{report['generated_images']} translations. "
        f"Real reference: originals of the target class ({report['reference']} splits). "
        f"Features: {report['feature_pipeline']}. "
        f"KID: polynomial kernel, {report['kid']['subsets']} subsets of "
        f"min(N, {report['kid']['max_subset_size']}).",
        "",
        f"Expression classifier: test accuracy {fmt(c['test_accuracy'], '.3f')} on real test images "
        f"({c['parameters']:,} parameters, best epoch {c['best_epoch']}).",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    lines += [
        "",
        f"Time on {t['device']}: {t['generation_ms_per_1000']:.0f} ms per 1,000 generated images "
        "(generator only), "
        f"{t['translate_and_score_ms_per_1000']:.0f} ms with features, classifier and PNG writing; "
        f"{t['total_s']:.1f} s in all.",
        "",
    ]
    return "\n".join(lines)
