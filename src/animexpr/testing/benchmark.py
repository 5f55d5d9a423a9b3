"""The synthetic benchmark: train on rendered faces, score every translation against the true rendering.

No real data set says what a face looks like in another expression; the renderer (`testing.faces`) does. The
benchmark draws three disjoint sets of identities:

- training identities, each in ONE expression (balanced over the four), so that training is unpaired as it is
  on real data;
- test identities, each in all four expressions: every test face is translated from each expression to every
  other one (12 pairs per identity) and compared with the true rendering of the same identity;
- classifier identities, in all four expressions, to train the expression classifier of `model.classifier`
  on renders only (its own accuracy on the test identities' true renderings is reported beside the scores).

Scores per translation, averaged over all pairs:

- expression accuracy: the classifier assigns the translation to its target;
- identity error against the truth: L1 (pixels in [0, 1]) and SSIM, on the whole face and outside the
  expression region, where a perfect translation changes nothing (SSIM outside the region is taken on the
  translation with the true region pasted in, so that only differences outside it count);
- mask quality, for variants with a mask: IoU of the mask thresholded at 0.5 with the true region, and the
  mean mask value outside it;
- FID and KID of the translations into each target against the true renderings of that target (mean over
  targets), when the Inception weights are on this machine;
- the training's median ms per iteration.

Two reference rows set the scale: "identity (input unchanged)" and "truth" (zero error by construction).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from animexpr.errors import AnimexprError
from animexpr.model.classifier import ClassifierConfig, TrainedClassifier, train_classifier
from animexpr.model.config import VARIANTS, TrainConfig
from animexpr.model.data import to_model_input, write_folder_snapshot
from animexpr.model.device import resolve_device
from animexpr.model.evaluate import median_ms_per_iteration
from animexpr.model.grid import save_png, to_uint8_images
from animexpr.model.inception import InceptionError, InceptionFeatures, resolve_inception
from animexpr.model.metrics import fid, identity_measures, kid, ssim
from animexpr.model.run import config_for_run
from animexpr.model.train import ProgressFn, train
from animexpr.model.transform import load_generator
from animexpr.model.vgg import WeightsMissingError, resolve_vgg19_weights
from animexpr.store import atomic_write_bytes
from animexpr.testing.faces import EXPRESSIONS, FaceIdentity, random_identity, render

log = logging.getLogger(__name__)

# The small configuration: TrainConfig overrides sized for a 2-core CPU (stargan and ours together within
# about 15 minutes). The demo trains with it too. At the paper's lr of 1e-4 these small networks learn too
# slowly for such a budget: D's classifier, slowed by the adversarial terms, was still at chance (ln 4) after
# 700 iterations, so G had nothing to learn the expressions from (expression accuracy 0.02 after 600
# iterations). At 3e-4 D classifies by iteration 400 and `ours` reaches 0.45 at 500 iterations. The rate
# decays linearly to 0 over the second half, as the paper's schedule does.
SMALL_CONFIG: Mapping[str, Any] = MappingProxyType(
    {
        "iters": 2000,
        "decay_start": 1000,
        "lr": 3e-4,
        "image_size": 64,
        "batch": 16,
        "g_conv_dim": 16,
        "g_res_blocks": 2,
        "att_res_blocks": 2,
        "d_conv_dim": 16,
        "d_repeat_num": 4,
        "mapping_dim": 64,
        "style_dim": 16,
        "precision": "fp32",
    }
)
# The paper's configuration (TrainConfig's defaults are the paper's widths and schedule): for a GPU.
FULL_CONFIG: Mapping[str, Any] = MappingProxyType({"iters": 200_000, "image_size": 128})
DEFAULT_VARIANTS = ("stargan", "ours")
FULL_VARIANTS = tuple(VARIANTS)
# The renders are clean and the expressions drawn boldly: a quarter of the default network, a few epochs.
RENDER_CLASSIFIER = ClassifierConfig(width=16, blocks_per_stage=1, epochs=6, max_shift=4)

# Identity seeds of the three sets, far apart so that they never overlap.
TRAIN_SEED_BASE = 0
TEST_SEED_BASE = 10_000_000
CLASSIFIER_SEED_BASE = 20_000_000

FORMAT = "animexpr-synthetic-benchmark-1"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
FIGURE_PNG = "figure.png"
IDENTITY_ROW = "identity (input unchanged)"
TRUTH_ROW = "truth"
METRICS = (
    "expression_accuracy",
    "l1",
    "l1_outside",
    "ssim",
    "ssim_outside",
    "mask_iou",
    "mask_outside",
    "fid",
    "kid",
    "ms_per_iter",
)

# A generator's call: x (B, 3, H, W) in [-1, 1] and one-hot targets (B, C) -> y* in [-1, 1] and the mask.
Translator = Callable[[Tensor, Tensor], tuple[Tensor, Tensor | None]]
StageProgress = Callable[[str], None]
FeatureFn = Callable[[Tensor], np.ndarray]  # (N, H, W, 3) uint8 images -> (N, D) Inception features


class BenchmarkError(AnimexprError):
    pass


# ====================================================================== the rendered sets


@dataclass(frozen=True)
class TruthSet:
    """Identities rendered in all four expressions: the inputs and the answers."""

    identities: tuple[FaceIdentity, ...]
    images: Tensor  # (N, 4, H, W, 3) uint8, in EXPRESSIONS order
    regions: Tensor  # (N, H, W) bool, the expression region of each identity

    @property
    def image_size(self) -> int:
        return int(self.images.shape[2])

    def flat(self) -> tuple[Tensor, Tensor]:
        """Every image (N * 4, H, W, 3) and its expression index."""
        count = len(self.identities) * len(EXPRESSIONS)
        labels = torch.arange(len(EXPRESSIONS)).repeat(len(self.identities))
        return self.images.reshape(count, *self.images.shape[2:]), labels


def identities(base: int, count: int) -> tuple[FaceIdentity, ...]:
    return tuple(random_identity(base + i) for i in range(count))


def render_truth(faces: Sequence[FaceIdentity], image_size: int) -> TruthSet:
    images = np.empty((len(faces), len(EXPRESSIONS), image_size, image_size, 3), dtype=np.uint8)
    regions = np.empty((len(faces), image_size, image_size), dtype=bool)
    for n, identity in enumerate(faces):
        for e, expression in enumerate(EXPRESSIONS):
            rendered = render(identity, expression, image_size)
            images[n, e] = rendered.image
        regions[n] = rendered.region  # the same for all four expressions
    return TruthSet(tuple(faces), torch.from_numpy(images), torch.from_numpy(regions))


def training_expressions(count: int, seed: int = 0) -> list[str]:
    """One expression per training identity: balanced over the four, in a seeded random order."""
    drawn = [EXPRESSIONS[i % len(EXPRESSIONS)] for i in range(count)]
    random.Random(seed).shuffle(drawn)
    return drawn


def write_benchmark_snapshot(
    out: Path, train_faces: Sequence[FaceIdentity], test_faces: Sequence[FaceIdentity], image_size: int
) -> Path:
    """An export-style snapshot: training identities in one expression each, test identities in all four."""
    with tempfile.TemporaryDirectory(prefix="animexpr-renders-") as scratch:
        class_root = Path(scratch)
        for expression in EXPRESSIONS:
            (class_root / expression).mkdir()
        # "test-" sorts before "train-", and write_folder_snapshot puts the first files of a class in the test
        # split.
        for identity in test_faces:
            for expression in EXPRESSIONS:
                _save_render(identity, expression, image_size, class_root, "test")
        for identity, expression in zip(train_faces, training_expressions(len(train_faces)), strict=True):
            _save_render(identity, expression, image_size, class_root, "train")
        return write_folder_snapshot(class_root, out, test_per_class=len(test_faces))


def _save_render(
    identity: FaceIdentity, expression: str, image_size: int, class_root: Path, split: str
) -> None:
    image = render(identity, expression, image_size).image
    Image.fromarray(image).save(class_root / expression / f"{split}-{identity.seed:08d}.png")


# ====================================================================== the classifier


def train_render_classifier(
    faces: Sequence[FaceIdentity],
    image_size: int,
    device: torch.device,
    config: ClassifierConfig = RENDER_CLASSIFIER,
    test: TruthSet | None = None,
) -> TrainedClassifier:
    """The expression classifier trained on renders of `faces` (a tenth held out to pick the epoch), with
    its accuracy on `test` (every expression of every test identity)."""
    if len(faces) < 2:
        raise BenchmarkError("the expression classifier needs at least two identities")
    held = max(1, round(len(faces) * config.validation_share))
    train_images, train_labels = render_truth(faces[held:], image_size).flat()
    validation = render_truth(faces[:held], image_size).flat()
    network, validation_accuracy, best_epoch = train_classifier(
        train_images, train_labels, EXPRESSIONS, config, device, validation
    )
    trained = TrainedClassifier(
        network,
        EXPRESSIONS,
        image_size,
        config,
        None,
        dict.fromkeys(EXPRESSIONS),
        validation_accuracy,
        best_epoch,
    )
    if test is not None:
        test_images, test_labels = test.flat()
        right = trained.predict(test_images) == test_labels
        trained.test_accuracy = float(right.float().mean())
        trained.per_class_test_accuracy = {
            name: float(right[test_labels == c].float().mean()) for c, name in enumerate(EXPRESSIONS)
        }
    return trained


# ====================================================================== scoring


@dataclass(frozen=True)
class TranslationScores:
    """Means over every (identity, source, target) pair; mask scores are None without a mask, FID/KID
    without Inception features."""

    pairs: int
    expression_accuracy: float
    l1: float
    l1_outside: float
    ssim: float
    ssim_outside: float
    mask_iou: float | None = None
    mask_outside: float | None = None
    fid: float | None = None
    kid: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def quantise(y: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 on the CPU: the pixels a saved PNG holds."""
    return torch.from_numpy(to_uint8_images(y))


def to_input(images_u8: Tensor, device: torch.device) -> Tensor:
    return to_model_input(images_u8.to(device), channels_last=False)


def mask_iou(mask: Tensor, region: Tensor) -> Tensor:
    """Per image: IoU of mask > 0.5 with the true region; mask (B, 1, H, W), region (B, H, W) bool."""
    chosen = mask[:, 0].cpu() > 0.5
    union = (chosen | region).flatten(1).sum(1).clamp_min(1)
    return (chosen & region).flatten(1).sum(1) / union


def mask_outside(mask: Tensor, region: Tensor) -> Tensor:
    """Per image: the mean mask value outside the true region."""
    outside = (~region).float()
    return (mask[:, 0].cpu().float() * outside).flatten(1).sum(1) / outside.flatten(1).sum(1).clamp_min(1)


def _unit(images_u8: Tensor) -> Tensor:
    return images_u8.permute(0, 3, 1, 2).double() / 255.0


def _mean(values: Tensor) -> float:
    return float(values.double().mean())


def translation_pairs(count: int) -> tuple[Tensor, Tensor, Tensor]:
    """Identity, source and target expression of every pair with source != target (12 per identity)."""
    classes = len(EXPRESSIONS)
    pairs = [(n, s, t) for n in range(count) for s in range(classes) for t in range(classes) if s != t]
    who, source, target = torch.tensor(pairs, dtype=torch.long).unbind(1)
    return who, source, target


def score_translator(
    translator: Translator,
    truth: TruthSet,
    classifier: TrainedClassifier,
    device: str | torch.device = "cpu",
    inception: FeatureFn | None = None,
    batch: int = 64,
) -> TranslationScores:
    """Translate every test identity from each expression to every other one and score against the truth."""
    if classifier.image_size != truth.image_size:
        raise BenchmarkError(
            f"the classifier sees {classifier.image_size} px faces, "
            f"the test renders are {truth.image_size} px"
        )
    target_device = resolve_device(device)
    who, source, target = translation_pairs(len(truth.identities))
    outputs, masks = [], []
    for start in range(0, len(who), batch):
        chosen = slice(start, start + batch)
        x = to_input(truth.images[who[chosen], source[chosen]], target_device)
        onehot = F.one_hot(target[chosen].to(target_device), len(EXPRESSIONS)).float()
        with torch.inference_mode():
            y, mask = translator(x, onehot)
        outputs.append(quantise(y))
        if mask is not None:
            masks.append(mask.float().cpu())
    y_u8 = torch.cat(outputs)
    answer = truth.images[who, target]
    region = truth.regions[who]
    measures = identity_measures(answer, y_u8, region[:, None].double())
    assert measures.l1_outside_mask is not None
    # Only differences outside the region count: paste the true region into the translation.
    pasted = torch.where(region[..., None], answer, y_u8)
    mask_all = torch.cat(masks) if masks else None
    fid_value, kid_value = (
        _distribution_scores(inception, y_u8, target, truth) if inception is not None else (None, None)
    )
    return TranslationScores(
        pairs=len(who),
        expression_accuracy=_mean(classifier.predict(y_u8) == target),
        l1=_mean(measures.l1),
        l1_outside=_mean(measures.l1_outside_mask),
        ssim=_mean(measures.ssim),
        ssim_outside=_mean(ssim(_unit(pasted), _unit(answer))),
        mask_iou=_mean(mask_iou(mask_all, region)) if mask_all is not None else None,
        mask_outside=_mean(mask_outside(mask_all, region)) if mask_all is not None else None,
        fid=fid_value,
        kid=kid_value,
    )


def _distribution_scores(
    inception: FeatureFn, y_u8: Tensor, target: Tensor, truth: TruthSet
) -> tuple[float | None, float | None]:
    """FID and KID, mean over targets: the translations into a target against their true renderings (each
    identity's truth once per source expression, so that a perfect translator scores 0)."""
    if len(truth.identities) < 2:
        log.warning("FID/KID need at least two test identities; skipped")
        return None, None
    fids, kids = [], []
    for t in range(len(EXPRESSIONS)):
        fake = inception(y_u8[target == t])
        real = np.tile(inception(truth.images[:, t]), (len(EXPRESSIONS) - 1, 1))
        fids.append(fid(real, fake))
        kids.append(kid(real, fake, seed=t).mean)
    return float(np.mean(fids)), float(np.mean(kids))


def score_run(
    run_dir: Path,
    test_identities: Sequence[FaceIdentity],
    classifier: TrainedClassifier,
    device: str | torch.device = "cpu",
    inception: FeatureFn | None = None,
) -> TranslationScores:
    """Score the newest generator of a trained run on held-out renders of `test_identities`."""
    loaded = load_generator(run_dir, device)
    if tuple(loaded.classes) != EXPRESSIONS:
        raise BenchmarkError(
            f"{run_dir}: trained on the classes {list(loaded.classes)}, not {list(EXPRESSIONS)}"
        )
    truth = render_truth(test_identities, loaded.config.image_size)
    return score_translator(loaded.generator, truth, classifier, loaded.device, inception)


def identity_translator(x: Tensor, onehot: Tensor) -> tuple[Tensor, Tensor | None]:
    """The input unchanged, whatever the target: the reference that keeps everything and changes nothing."""
    return x, None


def truth_translator(truth: TruthSet) -> Translator:
    """The true rendering of the input's identity in the target expression, with the true region as mask."""
    owner = {
        truth.images[n, e].numpy().tobytes(): n
        for n in range(len(truth.identities))
        for e in range(len(EXPRESSIONS))
    }

    def translate(x: Tensor, onehot: Tensor) -> tuple[Tensor, Tensor | None]:
        who = [owner[face.numpy().tobytes()] for face in quantise(x)]
        targets = onehot.argmax(1).cpu()
        answer = truth.images[who, targets]
        mask = truth.regions[who][:, None].float()
        return to_input(answer, x.device), mask.to(x.device)

    return translate


# ====================================================================== the benchmark


@dataclass(frozen=True)
class BenchmarkOptions:
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    seeds: int = 1
    # TrainConfig overrides, iterations and image size included
    config: Mapping[str, Any] = dataclasses.field(default_factory=lambda: dict(SMALL_CONFIG))
    train_identities: int = 2000
    test_identities: int = 50
    classifier_identities: int = 300
    classifier: ClassifierConfig = RENDER_CLASSIFIER
    device: str = "auto"
    fid: bool = True  # FID/KID when the Inception weights are on this machine (never fetched)
    figure_identities: int = 4
    preset: str = "small"

    def train_config(self, data: Path, variant: str, seed: int, vgg: dict[str, Any]) -> TrainConfig:
        # One checkpoint, at the last iteration (a run always writes one there).
        settings = {"ckpt_every": 10**9, "keep_ckpts": 1, **self.config}
        return config_for_run(data, **settings, variant=variant, seed=seed, device=self.device, **vgg)

    def check(self) -> None:
        """Every bad setting as one error, before anything is rendered or written."""
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise BenchmarkError(f"--variants: unknown {unknown[:1] or 'none'}; known: {', '.join(VARIANTS)}")
        if self.seeds < 1:
            raise BenchmarkError("--seeds: must be at least 1")
        if self.train_identities < len(EXPRESSIONS):
            raise BenchmarkError(f"--train-identities: at least {len(EXPRESSIONS)} (one per expression)")
        if self.test_identities < 2:
            raise BenchmarkError("--test-identities: at least 2")
        if self.classifier_identities < 2:
            raise BenchmarkError("--classifier-identities: at least 2")
        for variant in self.variants:
            self.train_config(Path("."), variant, 0, {"vgg_random": True})  # raises ConfigError on bad values
        resolve_device(self.device)


def vgg_settings() -> tuple[dict[str, Any], str]:
    """ImageNet VGG19 weights when this machine has them, else random ones; and the sentence that says so."""
    try:
        path = resolve_vgg19_weights()
    except WeightsMissingError:
        return {"vgg_random": True}, "random VGG19 weights (no ImageNet weights on this machine)"
    return {"vgg_weights": str(path)}, f"ImageNet VGG19 weights from {path}"


class RememberedFeatures:
    """Inception features, each distinct image computed once: the true renderings recur in every row, and
    the reference rows translate into them."""

    def __init__(self, extractor: FeatureFn) -> None:
        self.extractor = extractor
        self.known: dict[bytes, np.ndarray] = {}

    def __call__(self, images_u8: Tensor) -> np.ndarray:
        keys = [image.numpy().tobytes() for image in images_u8]
        missing = sorted({i for i, key in enumerate(keys) if key not in self.known})
        if missing:
            for i, row in zip(missing, self.extractor(images_u8[missing]), strict=True):
                self.known[keys[i]] = row
        return np.stack([self.known[key] for key in keys])


def inception_or_reason(wanted: bool, device: torch.device) -> tuple[FeatureFn | None, str]:
    if not wanted:
        return None, "FID/KID not computed (--no-fid)"
    try:
        resolve_inception(fetch=False)
    except InceptionError as exc:
        return None, f"FID/KID skipped: {exc}"
    extractor = InceptionFeatures(None, device, fetch=False)
    return RememberedFeatures(extractor), "FID/KID on Inception pool3 features"


def next_benchmark_dir(root: Path) -> Path:
    """ROOT/synthetic-NNNNN, one past the highest number there, created (never an existing folder)."""
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name.rpartition("-")[2]) for p in root.glob("synthetic-*") if p.name[10:].isdigit()]
    number = max(numbers, default=0) + 1
    while True:
        folder = root / f"synthetic-{number:05d}"
        try:
            folder.mkdir()
        except FileExistsError:
            number += 1
            continue
        return folder


def prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BenchmarkError(f"--out {out}: exists and is not an empty folder; name a new one")
    out.mkdir(parents=True, exist_ok=True)


class BenchmarkInterrupted(BenchmarkError):
    pass


def run_benchmark(
    out: Path,
    options: BenchmarkOptions,
    stage: StageProgress | None = None,
    training_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Render, train every variant and seed, score, and write report.json, report.md and figure.png."""
    options.check()
    started = time.perf_counter()
    say = stage or (lambda text: log.info("%s", text))
    device = resolve_device(options.device)
    image_size = int(options.config["image_size"])
    train_faces = identities(TRAIN_SEED_BASE, options.train_identities)
    test_faces = identities(TEST_SEED_BASE, options.test_identities)
    say(f"rendering {len(train_faces)} training and {len(test_faces)} test identities at {image_size} px")
    snapshot = write_benchmark_snapshot(out / "snapshot", train_faces, test_faces, image_size)
    truth = render_truth(test_faces, image_size)
    say(f"training the expression classifier on {options.classifier_identities} rendered identities")
    classifier = train_render_classifier(
        identities(CLASSIFIER_SEED_BASE, options.classifier_identities),
        image_size,
        device,
        options.classifier,
        truth,
    )
    inception, fid_note = inception_or_reason(options.fid, device)
    vgg, vgg_note = vgg_settings()
    rows: list[dict[str, Any]] = []
    runs: dict[str, list[Path]] = {}
    for variant in options.variants:
        per_seed = []
        for seed in range(options.seeds):
            say(f"training {variant}, seed {seed}")
            cfg = options.train_config(snapshot, variant, seed, vgg)
            result = train(cfg, out / "runs", progress=training_progress)
            if result.interrupted:
                raise BenchmarkInterrupted(
                    f"interrupted while training {result.run_dir}; {out} has no report"
                )
            say(f"scoring {variant}, seed {seed}")
            scores = score_run(result.run_dir, test_faces, classifier, device, inception).as_dict()
            scores["ms_per_iter"] = median_ms_per_iteration(result.run_dir)
            per_seed.append({"seed": seed, "run": result.run_dir.name, **scores})
            runs.setdefault(variant, []).append(result.run_dir)
        rows.append({"name": variant, "kind": "variant", "per_seed": per_seed, "mean": _spread(per_seed)})
    for name, translator in ((IDENTITY_ROW, identity_translator), (TRUTH_ROW, truth_translator(truth))):
        scores = score_translator(translator, truth, classifier, device, inception).as_dict()
        rows.append({"name": name, "kind": "reference", "per_seed": [scores], "mean": _spread([scores])})
    say("drawing the figure")
    save_png(benchmark_figure(truth, runs, device, options.figure_identities), out / FIGURE_PNG)
    report = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "preset": options.preset,
        "config": dict(options.config),
        "variants": list(options.variants),
        "seeds": options.seeds,
        "identities": {
            "train": options.train_identities,
            "test": options.test_identities,
            "classifier": options.classifier_identities,
            "pairs_per_variant": len(test_faces) * len(EXPRESSIONS) * (len(EXPRESSIONS) - 1),
        },
        "classes": list(EXPRESSIONS),
        "device": str(device),
        "vgg": vgg_note,
        "fid": fid_note,
        "classifier": classifier.summary(),
        "snapshot": snapshot.name,
        "rows": rows,
        "total_s": round(time.perf_counter() - started, 1),
    }
    atomic_write_bytes(out / REPORT_MD, report_markdown(report).encode("utf-8"))
    atomic_write_bytes(out / REPORT_JSON, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    return report


def _spread(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean and sample standard deviation over seeds of each metric (std None with one seed)."""
    summary: dict[str, dict[str, float | None]] = {}
    for key in METRICS:
        values = [float(row[key]) for row in per_seed if row.get(key) is not None]
        mean = statistics.fmean(values) if values else None
        std = statistics.stdev(values) if len(values) >= 2 else None
        summary[key] = {"mean": mean, "std": std}
    return summary


# ====================================================================== the report


COLUMNS = (
    ("expr. acc.", "expression_accuracy", ".3f", 1.0),
    ("L1", "l1", ".4f", 1.0),
    ("L1 outside", "l1_outside", ".4f", 1.0),
    ("SSIM", "ssim", ".3f", 1.0),
    ("SSIM outside", "ssim_outside", ".3f", 1.0),
    ("mask IoU", "mask_iou", ".3f", 1.0),
    ("mask outside", "mask_outside", ".3f", 1.0),
    ("FID", "fid", ".1f", 1.0),
    ("KID ×1e3", "kid", ".2f", 1e3),
    ("ms/iter", "ms_per_iter", ".0f", 1.0),
)


def cell(summary: Mapping[str, float | None], spec: str, scale: float) -> str:
    if summary.get("mean") is None:
        return "-"
    text = format(scale * float(summary["mean"] or 0.0), spec)
    std = summary.get("std")
    return text if std is None else f"{text} ± {format(scale * std, spec)}"


def table_rows(report: Mapping[str, Any]) -> list[list[str]]:
    return [
        [row["name"], str(len(row["per_seed"]) if row["kind"] == "variant" else "-")]
        + [cell(row["mean"][key], spec, scale) for _, key, spec, scale in COLUMNS]
        for row in report["rows"]
    ]


def report_markdown(report: Mapping[str, Any]) -> str:
    config = report["config"]
    ids = report["identities"]
    accuracy = report["classifier"]["test_accuracy"]
    header = ["variant", "seeds", *(title for title, *_ in COLUMNS)]
    lines = [
        f"# Synthetic benchmark ({report['preset']} configuration)",
        "",
        f"Rendered faces at {config['image_size']} px; {ids['train']} training identities (one expression "
        f"each), {ids['test']} test identities translated from each expression to every other one "
        f"({ids['pairs_per_variant']} pairs per run) and scored against their true renderings. "
        f"{config['iters']} iterations, batch {config.get('batch', 16)}, on {report['device']}; "
        f"mean ± standard deviation over {report['seeds']} seed(s).",
        "",
        f"Expression classifier trained on {ids['classifier']} other rendered identities: accuracy "
        f"{'-' if accuracy is None else f'{accuracy:.3f}'} on the test identities' true renderings.",
        f"Contextual loss: {report['vgg']}. {report['fid']}.",
        "",
        "Identity error: L1 (pixels in [0, 1]) and SSIM against the true target rendering, on the whole face "
        "and outside the expression region; mask IoU: mask > 0.5 against the true region.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    lines += [
        "",
        f"Configuration: `{json.dumps(config, sort_keys=True)}`; {report['total_s']:.0f} s in all.",
        "",
    ]
    return "\n".join(lines)


# ====================================================================== the figure


TILE_MIN = 64  # px: small renders are enlarged (nearest) so that the figure shows the pixels scored
LABEL_WIDTH = 150
GAP = 2


@torch.no_grad()
def benchmark_figure(
    truth: TruthSet, runs: Mapping[str, Sequence[Path]], device: torch.device, count: int
) -> np.ndarray:
    """For a few test identities: the input and the truth for each target, then each variant's outputs
    (its first seed's run) and masks. The input of identity i is its expression i mod 4."""
    rows: list[tuple[str, np.ndarray]] = []
    generators = {variant: load_generator(paths[0], device) for variant, paths in runs.items()}
    blank = np.full((truth.image_size, truth.image_size, 3), 255, dtype=np.uint8)
    for n in range(min(count, len(truth.identities))):
        source = n % len(EXPRESSIONS)
        face = truth.images[n, source]
        rows.append(
            (f"truth ({EXPRESSIONS[source]} in)", np.concatenate([face.numpy(), *truth.images[n].numpy()], 1))
        )
        for variant, loaded in generators.items():
            x = to_input(face[None].repeat(len(EXPRESSIONS), 1, 1, 1), loaded.device)
            y, mask = loaded.generator(x, torch.eye(len(EXPRESSIONS), device=loaded.device))
            rows.append((variant, np.concatenate([blank, *to_uint8_images(y)], axis=1)))
            if mask is not None:
                rows.append((f"{variant} mask", np.concatenate([blank, *to_uint8_images(mask)], axis=1)))
    return _layout(rows, truth.image_size)


def _layout(rows: Sequence[tuple[str, np.ndarray]], image_size: int) -> np.ndarray:
    """Rows of tiles (input, then one per target) under a header, each with its label on the left."""
    scale = max(1, math.ceil(TILE_MIN / image_size))
    tile = image_size * scale
    header = 20
    titles = ("input", *EXPRESSIONS)
    canvas = Image.new(
        "RGB", (LABEL_WIDTH + len(titles) * (tile + GAP), header + len(rows) * (tile + GAP)), (255, 255, 255)
    )
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=12)
    for c, title in enumerate(titles):
        draw.text((LABEL_WIDTH + c * (tile + GAP) + 2, 4), title, fill=(0, 0, 0), font=font)
    for r, (label, strip) in enumerate(rows):
        top = header + r * (tile + GAP)
        draw.text((4, top + tile // 2 - 6), label, fill=(0, 0, 0), font=font)
        picture = Image.fromarray(strip)
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
        for c in range(picture.width // tile):
            canvas.paste(
                picture.crop((c * tile, 0, (c + 1) * tile, tile)), (LABEL_WIDTH + c * (tile + GAP), top)
            )
    return np.asarray(canvas)
