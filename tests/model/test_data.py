"""Snapshot manifests in, device batches out."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from animexpr.store import sha256_bytes


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


def _rewrite(folder: Path, edit_row: Callable[[dict[str, Any]], dict[str, Any]], **changes: Any) -> None:
    """Edit every manifest line and dataset.json, keeping dataset.json's manifest_sha256 consistent."""
    rows = [edit_row(json.loads(line)) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    manifest = "".join(json.dumps(row) + "\n" for row in rows).encode()
    (folder / "manifest.jsonl").write_bytes(manifest)
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset |= {"manifest_sha256": sha256_bytes(manifest), **changes}
    (folder / "dataset.json").write_text(json.dumps(dataset))


def _swapped(folder: Path) -> list[str]:
    classes = json.loads((folder / "dataset.json").read_text())["classes"]
    return [classes[1], classes[0], *classes[2:]]


def test_a_reordered_class_list_is_refused_naming_dataset_json(snapshot_dir: Path) -> None:
    assert load_snapshot(snapshot_dir).classes  # bound: every line says where its label stands
    _rewrite(snapshot_dir, lambda row: row, classes=_swapped(snapshot_dir))
    with pytest.raises(SnapshotError, match=r"dataset\.json: its classes do not match manifest\.jsonl"):
        load_snapshot(snapshot_dir)


def test_a_snapshot_without_label_index_still_loads_and_its_class_order_is_still_checked(
    snapshot_dir: Path,
) -> None:
    _rewrite(snapshot_dir, lambda row: {k: v for k, v in row.items() if k != "label_index"})
    assert len(load_snapshot(snapshot_dir).records) == 24
    _rewrite(snapshot_dir, lambda row: row, classes=_swapped(snapshot_dir))
    with pytest.raises(SnapshotError, match="comes after a later class"):
        load_snapshot(snapshot_dir)


@pytest.mark.parametrize("file", ["../outside.png", "/etc/passwd", "files/../../x.png", "files\\x.png"])
def test_a_path_outside_the_snapshot_folder_is_refused(snapshot_dir: Path, file: str) -> None:
    _rewrite(snapshot_dir, lambda row: row | {"file": file})
    with pytest.raises(SnapshotError, match=r"manifest\.jsonl line 1: file .* is not"):
        load_snapshot(snapshot_dir)


def test_an_empty_image_file_is_one_line(snapshot_dir: Path) -> None:
    snapshot = load_snapshot(snapshot_dir)
    record = snapshot.split("train")[0]
    snapshot.path_of(record).write_bytes(b"")
    with pytest.raises(SnapshotError, match="sha256") as checked:
        decode_records(snapshot, [record], image_size=32)
    with pytest.raises(SnapshotError, match="empty_file") as unchecked:
        decode_records(snapshot, [record], image_size=32, verify=False)
    assert "\n" not in str(checked.value) + str(unchecked.value)
