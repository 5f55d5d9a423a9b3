"""Snapshot manifests in, device batches out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from animexpr.model.data import (
    FaceBatches,
    SnapshotError,
    decode_records,
    fixed_sample_indices,
    load_snapshot,
    resolve_snapshot,
)


def test_snapshot_loads_classes_splits_and_files(snapshot_dir: Path) -> None:
    snapshot = load_snapshot(snapshot_dir)
    assert len(snapshot.classes) == 4
    assert len(snapshot.split("test")) == 4
    assert len(snapshot.split("train")) == 20
    assert all(snapshot.path_of(r).is_file() for r in snapshot.records)
    images, labels = decode_records(snapshot, snapshot.split("train"), image_size=32)
    assert images.shape == (20, 32, 32, 3)
    assert images.dtype == torch.uint8
    assert sorted(set(labels.tolist())) == [0, 1, 2, 3]


def test_snapshot_is_found_by_name_in_the_home_or_by_path(snapshot_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "snapshots").mkdir(parents=True)
    (home / "snapshots" / "v1").symlink_to(snapshot_dir)
    assert resolve_snapshot("v1", home) == home / "snapshots" / "v1"
    assert resolve_snapshot(str(snapshot_dir), home) == snapshot_dir
    with pytest.raises(SnapshotError, match="no snapshot"):
        resolve_snapshot("missing", home)


def test_a_changed_manifest_is_refused(snapshot_dir: Path) -> None:
    manifest = snapshot_dir / "manifest.jsonl"
    manifest.write_text(manifest.read_text() + "\n")
    with pytest.raises(SnapshotError, match="sha256"):
        load_snapshot(snapshot_dir)


def test_a_changed_image_is_refused(snapshot_dir: Path) -> None:
    snapshot = load_snapshot(snapshot_dir)
    record = snapshot.split("train")[0]
    path = snapshot.path_of(record)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SnapshotError, match="sha256"):
        decode_records(snapshot, [record], image_size=32)


def test_unknown_label_is_refused(snapshot_dir: Path) -> None:
    dataset = json.loads((snapshot_dir / "dataset.json").read_text())
    dataset["classes"] = dataset["classes"][:3]
    dataset.pop("manifest_sha256")
    (snapshot_dir / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(SnapshotError, match="unknown label"):
        load_snapshot(snapshot_dir)


def _batches(balanced: bool) -> FaceBatches:
    # 90 images of class 0, 10 of class 1; white on the left half, black on the right, to see flips.
    images = torch.zeros(100, 4, 4, 3, dtype=torch.uint8)
    images[:, :, :2] = 255
    labels = torch.tensor([0] * 90 + [1] * 10)
    return FaceBatches(images, labels, 2, torch.device("cpu"), balanced=balanced, channels_last=False)


def test_batches_are_in_range_with_random_flips_and_targets() -> None:
    torch.manual_seed(0)
    batches = _batches(balanced=False)
    x, source, target = batches.sample(256)
    assert x.shape == (256, 3, 4, 4)
    assert float(x.min()) >= -1
    assert float(x.max()) <= 1
    as_stored = (x[:, :, :, :2] == 1).all(dim=(1, 2, 3)) & (x[:, :, :, 2:] == -1).all(dim=(1, 2, 3))
    flipped = (x[:, :, :, :2] == -1).all(dim=(1, 2, 3)) & (x[:, :, :, 2:] == 1).all(dim=(1, 2, 3))
    assert bool((as_stored | flipped).all())
    assert 90 < int(flipped.sum()) < 166  # about half
    assert set(target.tolist()) == {0, 1}
    assert set(source.tolist()) == {0, 1}


def test_balanced_sampling_draws_classes_evenly() -> None:
    torch.manual_seed(0)
    _, plain_source, _ = _batches(balanced=False).sample(4000)
    _, balanced_source, _ = _batches(balanced=True).sample(4000)
    assert float(plain_source.float().mean()) == pytest.approx(0.1, abs=0.03)
    assert float(balanced_source.float().mean()) == pytest.approx(0.5, abs=0.03)


def test_fixed_sample_picks_every_class_in_turn() -> None:
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    assert fixed_sample_indices(labels, 4, 3) == [0, 3, 4, 1]
