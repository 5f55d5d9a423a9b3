"""Snapshots of an exact size: the split first, then copies of training crops only, to exactly N images."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from expand_data import CLASSES, Face, add_crops, encode, faces, generated_image, settings_for
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from test_snapshot import populate

from animexpr.config import Settings
from animexpr.curate import expand as expand_stage
from animexpr.curate.expand import apportion, expand
from animexpr.curate.snapshot import SnapshotError, create_snapshot, verify_snapshot
from animexpr.curate.snapshot_plan import SnapshotSize
from animexpr.db.models import Augmentation
from animexpr.store import FileStore


@pytest.fixture
def crop_settings(home: Path) -> Settings:
    return settings_for(home)


def manifest(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def augmented_rows(engine: Engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(Augmentation)) or 0


def class_totals(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = Counter(row["label"] for row in rows)
    return {label: counts[label] for label in CLASSES}


def originals_per_class(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = Counter(row["label"] for row in rows if row["kind"] == "original")
    return {label: counts[label] for label in CLASSES}


def test_a_sized_snapshot_holds_exactly_n_and_a_larger_n_only_adds_copies(
    engine: Engine, store: FileStore, crop_settings: Settings
) -> None:
    made = populate(engine, store)  # 26 crops: a post with two classes, a picture under two labels
    small = create_snapshot(engine, store, crop_settings, "s80", 0.25, 0, size=SnapshotSize(80), workers=1)
    rows = manifest(small.folder)
    assert len(rows) == small.counts["total"] == 80
    assert small.augmented_made == 80 - 26 == augmented_rows(engine)  # made what it needed, nothing more

    test_rows = [r for r in rows if r["split"] == "test"]
    assert test_rows
    assert {r["kind"] for r in test_rows} == {"original"}
    train_crops = {r["crop_id"] for r in rows if r["split"] == "train" and r["kind"] == "original"}
    assert {r["crop_id"] for r in rows if r["kind"] == "augmented"} <= train_crops
    sides_of_post: dict[int, set[str]] = defaultdict(set)
    for row in rows:
        sides_of_post[row["post_id"]].add(row["split"])
    assert all(len(sides) == 1 for sides in sides_of_post.values())
    side = {r["crop_id"]: r["split"] for r in rows if r["kind"] == "original"}
    first, variant = made["variant_pair"]
    assert side[first] == side[variant]  # a picture under two labels: one side
    # Per class: the balance's share of the whole size, whatever the test side took.
    originals = originals_per_class(rows)
    extra = apportion(originals, 80, "proportional")
    assert class_totals(rows) == {label: originals[label] + extra[label] for label in CLASSES}

    dataset = json.loads((small.folder / "dataset.json").read_text())
    assert dataset["settings"]["size"] == 80
    assert dataset["settings"]["expansion"]["size"] == 80
    assert sum(dataset["split_sizes"].values()) == 80

    large = create_snapshot(engine, store, crop_settings, "s120", 0.25, 0, size=SnapshotSize(120), workers=1)
    large_rows = manifest(large.folder)
    assert len(large_rows) == 120
    assert large.augmented_made == 40
    assert {r["crop_id"] for r in large_rows if r["split"] == "test"} == {
        r["crop_id"] for r in test_rows
    }  # the same split
    copies = {r["file"] for r in rows if r["kind"] == "augmented"}
    assert copies <= {r["file"] for r in large_rows if r["kind"] == "augmented"}
    assert {r["kind"] for r in large_rows if r["split"] == "test"} == {"original"}


def test_same_inputs_give_the_same_snapshot_and_a_grown_store_a_new_one(
    engine: Engine, store: FileStore, crop_settings: Settings
) -> None:
    populate(engine, store)
    size = SnapshotSize(70, "equal", augment_seed=5)
    first = create_snapshot(engine, store, crop_settings, "a", 0.2, 3, size=size, workers=1)
    again = create_snapshot(engine, store, crop_settings, "b", 0.2, 3, size=size, workers=1)
    assert again.manifest_sha256 == first.manifest_sha256
    assert again.augmented_made == 0
    rows = manifest(first.folder)
    originals = originals_per_class(rows)
    extra = apportion(originals, 70, "equal")
    assert class_totals(rows) == {label: originals[label] + extra[label] for label in CLASSES}

    before = (first.folder / "manifest.jsonl").read_bytes()
    late = [Face(f"{i}" * 32, CLASSES[1], encode(generated_image(f"late {i}"))) for i in range(1, 4)]
    add_crops(engine, store, late)
    grown = create_snapshot(engine, store, crop_settings, "c", 0.2, 3, size=size, workers=1)
    assert grown.manifest_sha256 != first.manifest_sha256
    assert len(manifest(grown.folder)) == 70
    assert (first.folder / "manifest.jsonl").read_bytes() == before  # never a changed one
    assert verify_snapshot(engine, crop_settings, "a").ok
    with pytest.raises(SnapshotError, match="exists already"):
        create_snapshot(engine, store, crop_settings, "a", 0.2, 3, size=size)


def test_without_a_test_side_the_size_takes_the_copies_expand_made(
    engine: Engine, store: FileStore, crop_settings: Settings
) -> None:
    populate(engine, store)
    expand(engine, store, crop_settings, target=60, workers=1)
    plain = create_snapshot(engine, store, crop_settings, "plain", test_fraction=0)
    sized = create_snapshot(engine, store, crop_settings, "sized", 0, 0, size=SnapshotSize(60), workers=1)
    assert sized.augmented_made == 0
    assert sized.manifest_sha256 == plain.manifest_sha256


def test_a_size_below_the_originals_and_an_unknown_balance_are_refused(
    engine: Engine, store: FileStore, crop_settings: Settings
) -> None:
    populate(engine, store)
    with pytest.raises(
        SnapshotError, match=r"--size 20 is below the 26 de-duplicated accepted crops .*--size 26"
    ):
        create_snapshot(engine, store, crop_settings, "s", size=SnapshotSize(20))
    with pytest.raises(SnapshotError, match="--balance must be one of"):
        create_snapshot(engine, store, crop_settings, "s", size=SnapshotSize(40, "sideways"))  # type: ignore[arg-type]
    assert not (crop_settings.home / "snapshots" / "s").exists()
    exact = create_snapshot(engine, store, crop_settings, "s", size=SnapshotSize(26))
    assert exact.augmented_made == 0
    assert {r["kind"] for r in manifest(exact.folder)} == {"original"}


def test_an_interrupted_sized_create_keeps_the_copies_and_a_rerun_finishes(
    engine: Engine, store: FileStore, crop_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_crops(engine, store, faces(3))
    real_run_jobs = expand_stage.run_jobs

    def interrupted_after_the_first_batch(*args: Any, **kwargs: Any) -> Any:
        for number, result in enumerate(real_run_jobs(*args, **kwargs)):
            if number == 4:
                raise KeyboardInterrupt
            yield result

    monkeypatch.setattr(expand_stage, "run_jobs", interrupted_after_the_first_batch)
    with pytest.raises(KeyboardInterrupt):
        create_snapshot(engine, store, crop_settings, "s", size=SnapshotSize(40), workers=1)
    kept = augmented_rows(engine)
    assert 0 < kept < 40 - 12
    assert not (crop_settings.home / "snapshots" / "s").exists()

    monkeypatch.setattr(expand_stage, "run_jobs", real_run_jobs)
    info = create_snapshot(engine, store, crop_settings, "s", size=SnapshotSize(40), workers=1)
    assert info.augmented_made == 40 - 12 - kept
    assert len(manifest(info.folder)) == 40


def test_a_corrupt_training_crop_is_named_and_nothing_is_written(
    engine: Engine, store: FileStore, crop_settings: Settings
) -> None:
    ids = add_crops(engine, store, faces(3))
    info = create_snapshot(engine, store, crop_settings, "first", test_fraction=0)
    victim = next(r for r in manifest(info.folder) if r["crop_id"] == ids[0])
    (crop_settings.home / victim["file"]).write_bytes(b"not the crop")
    with pytest.raises(SnapshotError, match=rf"could not be augmented.*{victim['file']}"):
        create_snapshot(engine, store, crop_settings, "second", test_fraction=0, size=SnapshotSize(30))
    assert not (crop_settings.home / "snapshots" / "second").exists()
