"""An expression classifier independent of the GAN, to measure whether a translation reached its target class.

StarGAN measured expression control with a ResNet-18 trained on the real training images (Choi et al. 2018,
section 5.3); this is the same idea at a size that trains in about a minute on one GPU: a ResNet with basic
blocks (by default widths 32-64-128-256, two blocks per stage, 2.8 M parameters), BatchNorm, global average
pooling, dropout and a linear head. It is trained from scratch on the snapshot's training split (originals and
augmentations) with random flips and translations, AdamW and a cosine schedule, and the epoch with the best
accuracy on held-out training posts is kept. Its own accuracy on the test split is reported with every
evaluation: an expression accuracy of translated images means little beyond that ceiling.

Trained classifiers are cached per snapshot, image size and settings as safetensors with their metadata.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import save as safetensors_save
from torch import Tensor, nn

from animexpr.errors import AnimexprError
from animexpr.model.checkpoint import read_safetensors
from animexpr.model.data import ManifestRecord, Snapshot, decode_records, to_model_input
from animexpr.store import atomic_write_bytes

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


class ClassifierError(AnimexprError):
    pass


@dataclass(frozen=True)
class ClassifierConfig:
    width: int = 32
    blocks_per_stage: int = 2
    epochs: int = 30
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    dropout: float = 0.2
    max_shift: int = 8  # px of random translation (reflect padding, then a random crop)
    validation_share: float = 0.1  # of the training posts, held out to pick the best epoch
    seed: int = 0


class BasicBlock(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim_in, dim_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(dim_out)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or dim_in != dim_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(dim_in, dim_out, 1, stride, bias=False), nn.BatchNorm2d(dim_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ExpressionClassifier(nn.Module):
    """A small ResNet: stride-2 stem, four stages (the last three halve the size), pooled linear head."""

    def __init__(
        self, num_classes: int, width: int = 32, blocks_per_stage: int = 2, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers: list[nn.Module] = []
        dim = width
        for stage in range(4):
            dim_out = width * 2**stage
            for block in range(blocks_per_stage):
                layers.append(BasicBlock(dim, dim_out, 2 if stage > 0 and block == 0 else 1))
                dim = dim_out
        self.stages = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) in [-1, 1] -> class logits (B, num_classes)."""
        h = self.stages(self.stem(x)).mean(dim=(2, 3))
        return self.head(self.dropout(h))


@dataclass
class TrainedClassifier:
    network: ExpressionClassifier
    classes: tuple[str, ...]
    image_size: int
    config: ClassifierConfig
    test_accuracy: float | None  # on the snapshot's test split; None when it has none
    per_class_test_accuracy: dict[str, float | None]
    validation_accuracy: float | None
    best_epoch: int
    path: Path | None = None

    @torch.inference_mode()
    def predict(self, images_u8: Tensor, batch: int = 256) -> Tensor:
        """Class indices (N,) on the CPU for (N, H, W, 3) uint8 images at the classifier's image size."""
        device = next(self.network.parameters()).device
        self.network.eval()
        out = [
            self.network(to_model_input(images_u8[i : i + batch].to(device), channels_last=False))
            .argmax(1)
            .cpu()
            for i in range(0, len(images_u8), batch)
        ]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

    def summary(self) -> dict[str, Any]:
        return {
            "architecture": "resnet-basic",
            "parameters": sum(p.numel() for p in self.network.parameters()),
            "config": dataclasses.asdict(self.config),
            "image_size": self.image_size,
            "test_accuracy": self.test_accuracy,
            "per_class_test_accuracy": self.per_class_test_accuracy,
            "validation_accuracy": self.validation_accuracy,
            "best_epoch": self.best_epoch,
            "path": str(self.path) if self.path else None,
        }


def _augment(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Random horizontal flips and shifts by up to max_shift px (reflect padding), drawn per image."""
    batch = len(x)
    flip = torch.rand(batch, generator=generator, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if max_shift <= 0:
        return x
    size = x.shape[-1]
    padded = F.pad(x, (max_shift,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, batch), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(size, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(size, device=x.device))[:, None, None, :]
    index = torch.arange(batch, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[index, channel, rows, cols]


def _split_validation(records: list[ManifestRecord], share: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of training and validation records, split by source post; validation holds originals only."""
    posts = sorted({r.post_id if r.post_id is not None else -1 - i for i, r in enumerate(records)})
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(posts)[: int(len(posts) * share)].tolist()) if share > 0 else set()

    def post_of(i: int) -> int:
        post = records[i].post_id
        return post if post is not None else -1 - i

    train = [i for i in range(len(records)) if post_of(i) not in held]
    validation = [i for i in range(len(records)) if post_of(i) in held and records[i].kind == "original"]
    return train, validation


def _accuracy(network: nn.Module, images: Tensor, labels: Tensor, device: torch.device) -> Tensor:
    """Per image: 1 when the prediction is right (CPU bool tensor)."""
    network.eval()
    right = []
    with torch.inference_mode():
        for i in range(0, len(images), 256):
            x = to_model_input(images[i : i + 256].to(device), channels_last=False)
            right.append((network(x).argmax(1) == labels[i : i + 256].to(device)).cpu())
    return torch.cat(right) if right else torch.empty(0, dtype=torch.bool)


def train_classifier(
    train_images: Tensor,
    train_labels: Tensor,
    classes: tuple[str, ...],
    config: ClassifierConfig,
    device: torch.device,
    validation: tuple[Tensor, Tensor] | None = None,
    progress: Progress | None = None,
) -> tuple[ExpressionClassifier, float | None, int]:
    """Train on uint8 (N, H, W, 3) images; returns the network of the best validation epoch, its accuracy
    on the validation images (None without them) and that epoch."""
    if len(train_images) < 2:
        raise ClassifierError("the classifier needs at least two training images")
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    network = ExpressionClassifier(len(classes), config.width, config.blocks_per_stage, config.dropout).to(
        device
    )
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_images) / config.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.15
    )
    images, labels = train_images.to(device), train_labels.to(device)
    best: tuple[float, int, dict[str, Tensor]] | None = None
    for epoch in range(config.epochs):
        network.train()
        order = torch.randperm(len(images), generator=generator, device=device)
        for step in range(steps_per_epoch):
            index = order[step * config.batch : (step + 1) * config.batch]
            if len(index) < 2:  # BatchNorm needs two images
                continue
            x = _augment(to_model_input(images[index], channels_last=False), config.max_shift, generator)
            loss = F.cross_entropy(network(x), labels[index], label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if validation is not None and len(validation[0]) > 0:
            score = float(_accuracy(network, validation[0], validation[1], device).float().mean())
            log.debug("classifier epoch %d: validation accuracy %.3f", epoch + 1, score)
            if best is None or score > best[0]:
                best = (score, epoch + 1, {k: v.detach().clone() for k, v in network.state_dict().items()})
        if progress is not None:
            progress(epoch + 1, config.epochs)
    if best is None:
        return network.eval(), None, config.epochs
    network.load_state_dict(best[2])
    return network.eval(), best[0], best[1]


def per_class_accuracy(right: Tensor, labels: Tensor, classes: tuple[str, ...]) -> dict[str, float | None]:
    return {
        name: (float(right[labels == c].float().mean()) if bool((labels == c).any()) else None)
        for c, name in enumerate(classes)
    }


def classifier_cache_path(
    folder: Path, manifest_sha256: str, image_size: int, config: ClassifierConfig
) -> Path:
    settings = json.dumps(dataclasses.asdict(config), sort_keys=True)
    digest = hashlib.sha256(f"{manifest_sha256}/{image_size}/{settings}".encode()).hexdigest()[:16]
    return folder / f"classifier-{digest}.safetensors"


def save_classifier(path: Path, trained: TrainedClassifier) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in trained.network.state_dict().items()}
    metadata = {
        "classes": json.dumps(list(trained.classes)),
        "image_size": str(trained.image_size),
        "config": json.dumps(dataclasses.asdict(trained.config)),
        "test_accuracy": json.dumps(trained.test_accuracy),
        "per_class_test_accuracy": json.dumps(trained.per_class_test_accuracy),
        "validation_accuracy": json.dumps(trained.validation_accuracy),
        "best_epoch": str(trained.best_epoch),
    }
    atomic_write_bytes(path, safetensors_save(tensors, metadata=metadata))


def load_classifier(path: Path, device: torch.device) -> TrainedClassifier:
    try:
        tensors, meta = read_safetensors(path)
        config = ClassifierConfig(**json.loads(meta["config"]))
        classes = tuple(json.loads(meta["classes"]))
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise ClassifierError(f"{path}: not an animexpr classifier ({exc})") from exc
    network = ExpressionClassifier(len(classes), config.width, config.blocks_per_stage, config.dropout)
    network.load_state_dict(tensors)
    return TrainedClassifier(
        network=network.to(device).eval(),
        classes=classes,
        image_size=int(meta["image_size"]),
        config=config,
        test_accuracy=json.loads(meta["test_accuracy"]),
        per_class_test_accuracy=json.loads(meta["per_class_test_accuracy"]),
        validation_accuracy=json.loads(meta["validation_accuracy"]),
        best_epoch=int(meta["best_epoch"]),
        path=path,
    )


def snapshot_classifier(
    snapshot: Snapshot,
    manifest_sha256: str,
    image_size: int,
    device: torch.device,
    cache_folder: Path | None,
    config: ClassifierConfig | None = None,
    test_images: tuple[Tensor, Tensor] | None = None,
    progress: Progress | None = None,
) -> TrainedClassifier:
    """The classifier of this snapshot: from the cache when trained before, else trained now and cached.

    `test_images` (uint8 images and labels of the test split) saves decoding them a second time.
    """
    config = config or ClassifierConfig()
    path = classifier_cache_path(cache_folder, manifest_sha256, image_size, config) if cache_folder else None
    if path is not None and path.is_file():
        try:
            cached = load_classifier(path, device)
        except ClassifierError as exc:
            log.warning("retraining: %s", exc)
        else:
            log.info("expression classifier from the cache (%s)", path)
            return cached
    records = snapshot.split("train")
    if not records:
        raise ClassifierError(f"snapshot {snapshot.name}: no training images for the expression classifier")
    train_index, validation_index = _split_validation(records, config.validation_share, config.seed)
    images, labels = decode_records(snapshot, records, image_size)
    log.info(
        "training the expression classifier on %d images (%d held out) for %d epochs",
        len(train_index),
        len(validation_index),
        config.epochs,
    )
    validation = (images[validation_index], labels[validation_index]) if validation_index else None
    network, validation_accuracy, best_epoch = train_classifier(
        images[train_index], labels[train_index], snapshot.classes, config, device, validation, progress
    )
    if test_images is None:
        test_records = [r for r in snapshot.split("test") if r.kind == "original"]
        test_images = decode_records(snapshot, test_records, image_size) if test_records else None
    test_accuracy: float | None = None
    per_class: dict[str, float | None] = dict.fromkeys(snapshot.classes)
    if test_images is not None and len(test_images[0]) > 0:
        right = _accuracy(network, test_images[0], test_images[1], device)
        test_accuracy = float(right.float().mean())
        per_class = per_class_accuracy(right, test_images[1], snapshot.classes)
    trained = TrainedClassifier(
        network,
        snapshot.classes,
        image_size,
        config,
        test_accuracy,
        per_class,
        validation_accuracy,
        best_epoch,
    )
    if path is not None:
        save_classifier(path, trained)
        trained.path = path
    return trained
