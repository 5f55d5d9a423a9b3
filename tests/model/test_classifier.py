"""The independent expression classifier: it learns, predicts, round-trips, and is cached per snapshot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from animexpr.model import classifier as classifier_module
from animexpr.model.classifier import (
    ClassifierConfig,
    ExpressionClassifier,
    TrainedClassifier,
    load_classifier,
    save_classifier,
    snapshot_classifier,
    train_classifier,
)
from animexpr.model.data import ManifestRecord, load_snapshot

TINY = ClassifierConfig(width=8, blocks_per_stage=1, epochs=12, batch=16, lr=5e-3, max_shift=2, dropout=0.0)
CLASSES = ("angry", "sad", "smile")


def coloured_squares(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """24 px noisy images whose class is the colour channel of a square placed at random."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 90, (count, 24, 24, 3), generator=generator, dtype=torch.uint8)
    labels = torch.arange(count) % len(CLASSES)
    corners = torch.randint(0, 14, (count, 2), generator=generator)
    for i in range(count):
        top, left = corners[i].tolist()
        images[i, top : top + 10, left : left + 10, int(labels[i])] = 250
    return images, labels


def test_the_network_maps_images_to_class_logits() -> None:
    network = ExpressionClassifier(num_classes=4, width=8, blocks_per_stage=1)
    assert network(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    assert network(torch.zeros(2, 3, 128, 128)).shape == (2, 4)


def test_augmentation_flips_and_shifts_within_bounds() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    unshifted = classifier_module._augment(x, 0, generator)
    assert all(torch.equal(u, x[i]) or torch.equal(u, x[i].flip(2)) for i, u in enumerate(unshifted))
    shifted = classifier_module._augment(x, 2, generator)
    assert shifted.shape == x.shape
    assert set(shifted.unique().tolist()) <= set(x.unique().tolist())  # reflect padding invents no values


def test_classifier_learns_tiny_cpu_data_and_predicts() -> None:
    train_images, train_labels = coloured_squares(48, seed=1)
    test_images, test_labels = coloured_squares(30, seed=2)
    validation = coloured_squares(12, seed=3)
    network, validation_accuracy, best_epoch = train_classifier(
        train_images, train_labels, CLASSES, TINY, torch.device("cpu"), validation
    )
    assert validation_accuracy is not None
    assert 1 <= best_epoch <= TINY.epochs
    trained = TrainedClassifier(network, CLASSES, 24, TINY, None, {}, validation_accuracy, best_epoch)
    predicted = trained.predict(test_images, batch=7)
    assert predicted.shape == (30,)
    assert predicted.dtype == torch.long
    accuracy = float((predicted == test_labels).float().mean())
    assert accuracy >= 0.8, f"chance is 0.33; the colour of the square decides the class (got {accuracy:.2f})"


def test_saved_classifier_predicts_the_same(tmp_path: Path) -> None:
    images, labels = coloured_squares(12, seed=4)
    config = ClassifierConfig(width=8, blocks_per_stage=1, epochs=1, batch=6)
    network, _, epoch = train_classifier(images, labels, CLASSES, config, torch.device("cpu"))
    trained = TrainedClassifier(
        network, CLASSES, 24, config, 0.5, {"angry": 1.0, "sad": 0.0, "smile": None}, None, epoch
    )
    path = tmp_path / "classifier.safetensors"
    save_classifier(path, trained)
    loaded = load_classifier(path, torch.device("cpu"))
    assert torch.equal(loaded.predict(images), trained.predict(images))
    assert loaded.summary()["test_accuracy"] == 0.5
    assert loaded.per_class_test_accuracy == {"angry": 1.0, "sad": 0.0, "smile": None}
    assert loaded.config == config


def test_validation_split_is_by_post_and_holds_originals_only() -> None:
    records = [
        ManifestRecord(file=f"{i}.png", sha256=str(i), label="sad", split="train", post_id=i // 3, kind=kind)
        for i, kind in enumerate(["original", "augmented", "augmented"] * 10)
    ]
    train, validation = classifier_module._split_validation(records, 0.3, seed=0)
    held_posts = {records[i].post_id for i in validation}
    assert len(held_posts) == 3
    assert all(records[i].kind == "original" for i in validation)
    assert not held_posts & {records[i].post_id for i in train}
    assert len(train) + len(validation) == 30 - 2 * 3  # the held-out posts' augmentations are used nowhere


def test_snapshot_classifier_trains_once_then_comes_from_the_cache(
    snapshot_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = load_snapshot(snapshot_dir)
    config = ClassifierConfig(width=8, blocks_per_stage=1, epochs=2, batch=8)
    cache = tmp_path / "classifiers"
    first = snapshot_classifier(snapshot, snapshot.manifest_sha256, 32, torch.device("cpu"), cache, config)
    assert first.path is not None
    assert first.path.is_file()
    assert first.test_accuracy is not None
    assert 0.0 <= first.test_accuracy <= 1.0
    assert set(first.per_class_test_accuracy) == set(snapshot.classes)

    def must_not_train(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached classifier should have been used")

    monkeypatch.setattr(classifier_module, "train_classifier", must_not_train)
    again = snapshot_classifier(snapshot, snapshot.manifest_sha256, 32, torch.device("cpu"), cache, config)
    assert again.path == first.path
    assert again.test_accuracy == first.test_accuracy
    with pytest.raises(AssertionError, match="cached"):  # another image size is another classifier
        snapshot_classifier(snapshot, snapshot.manifest_sha256, 64, torch.device("cpu"), cache, config)
