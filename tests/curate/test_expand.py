"""The expander: exact totals, balance, monotone plans, byte-identical files, idempotence, recorded params."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from expand_data import CLASSES, Face, add_crops, decode, faces, settings_for
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from animexpr.config import Settings
from animexpr.curate.dedup import CropFacts, eligible_crops
from animexpr.curate.expand import (
    RECIPE_VERSION,
    ExpandError,
    apply_recipe,
    apportion,
    build_recipe,
    expand,
    item_seed,
    plan_expansion,
)
from animexpr.db.models import Augmentation, Crop, Expansion
from animexpr.db.session import open_db
from animexpr.store import FileStore, sha256_file


def fake_crops(counts: dict[str, int]) -> list[CropFacts]:
    crops, next_id = [], 1
    for label, count in counts.items():
        for _ in range(count):
            crops.append(
                CropFacts(
                    next_id, next_id, None, f"{next_id:064x}", "", label, "accepted", None, 0, 0, 100, None
                )
            )
            next_id += 1
    return crops


PAPER = {"angry": 1615, "sad": 1138, "smile": 3370, "surprised": 1183}  # the paper's cleaned counts


def test_proportional_apportionment_hits_the_target_and_keeps_shares() -> None:
    extra = apportion(PAPER, 11_612, "proportional")
    totals = {name: PAPER[name] + extra[name] for name in PAPER}
    assert sum(totals.values()) == 11_612
    for name, count in PAPER.items():
        assert abs(totals[name] - count * 11_612 / sum(PAPER.values())) <= 1


def test_equal_apportionment_evens_out_what_it_can() -> None:
    extra = apportion({"a": 10, "b": 2, "c": 0, "d": 5}, 30, "equal")
    assert extra == {"a": 0, "b": 8, "c": 0, "d": 5}  # a keeps its 10; c has nothing to augment
    assert apportion({"a": 3, "b": 3}, 7, "equal") == {"a": 1, "b": 0}  # ties go to the first class


def test_target_below_the_originals_is_refused() -> None:
    with pytest.raises(ExpandError, match="below the 7306"):
        apportion(PAPER, 7000, "proportional")


@pytest.mark.parametrize("balance", ["proportional", "equal"])
def test_plan_only_grows_with_the_target(balance: str) -> None:
    crops = fake_crops({"a": 7, "b": 3, "c": 5})
    previous = plan_expansion(crops, ["a", "b", "c"], 15, balance, seed=0)  # type: ignore[arg-type]
    for target in range(16, 80):
        plan = plan_expansion(crops, ["a", "b", "c"], target, balance, seed=0)  # type: ignore[arg-type]
        assert plan.total == target
        assert set(previous.jobs()) <= set(plan.jobs())
        assert len(set(plan.jobs()) - set(previous.jobs())) == 1
        previous = plan


def test_plan_spreads_copies_evenly_and_depends_on_the_seed() -> None:
    crops = fake_crops({"a": 4, "b": 4})
    plan = plan_expansion(crops, ["a", "b"], 14, "proportional", seed=0)
    assert sorted(plan.variants.values()) == [0, 0, 1, 1, 1, 1, 1, 1]
    other = plan_expansion(crops, ["a", "b"], 14, "proportional", seed=1)
    assert other.variants != plan.variants


def test_recipe_seeds_are_independent_per_item_and_reproducible() -> None:
    image = decode(faces(1)[0].png)
    recipe = build_recipe()
    first, applied = apply_recipe(recipe, image, item_seed(0, "ab" * 32, 0))
    apply_recipe(recipe, image, 12345)  # whatever ran in between
    again, applied_again = apply_recipe(recipe, image, item_seed(0, "ab" * 32, 0))
    assert np.array_equal(first, again)
    assert applied == applied_again
    assert item_seed(0, "ab" * 32, 0) != item_seed(0, "ab" * 32, 1) != item_seed(1, "ab" * 32, 0)


def test_flip_and_brightness_are_not_drawn_from_the_same_numbers() -> None:
    image = decode(faces(1)[0].png)
    recipe = build_recipe()
    outcomes = set()
    for seed in range(60):
        _, applied = apply_recipe(recipe, image, seed)
        names = {step["transform"] for step in applied}
        outcomes.add(("HorizontalFlip" in names, "RandomBrightnessContrast" in names))
    # Per-transform generators seeded alike would make "flipped" imply "brightness changed" (p 0.5 < 0.8).
    assert (True, False) in outcomes
    assert len(outcomes) == 4


def test_recorded_parameters_reproduce_the_image() -> None:
    """Rebuild the augmented image from what was recorded, with plain OpenCV: the record is what happened."""
    image = decode(faces(1)[0].png)
    for seed in range(8):
        augmented, applied = apply_recipe(build_recipe(), image, seed)
        assert {step["transform"] for step in applied} <= {
            "HorizontalFlip",
            "Affine",
            "RandomBrightnessContrast",
        }
        rebuilt = image
        for step in applied:
            if step["transform"] == "HorizontalFlip":
                rebuilt = np.ascontiguousarray(rebuilt[:, ::-1])
            elif step["transform"] == "Affine":
                matrix = np.array(step["matrix"], dtype=np.float64)[:2]
                side = rebuilt.shape[1], rebuilt.shape[0]
                rebuilt = cv2.warpAffine(rebuilt, matrix, side, flags=step["interpolation"], borderMode=4)
            else:
                lut = np.clip(np.arange(256) * step["alpha"] + step["beta"], 0, 255).astype(np.uint8)
                rebuilt = cv2.LUT(rebuilt, lut)
        difference = np.abs(rebuilt.astype(int) - augmented.astype(int))
        assert difference.mean() < 0.5
        assert difference.max() <= 3
        assert not np.array_equal(augmented, image)


# ---------------------------------------------------------------------------------------------------------
# Against a store


@pytest.fixture
def crop_settings(home: Path) -> Settings:
    return settings_for(home)


def augmentation_files(engine: Engine) -> dict[tuple[str, int], str]:
    """(source crop sha256, variant index) -> augmented file sha256."""
    with Session(engine) as session:
        rows = session.execute(
            select(Crop.sha256, Augmentation.variant_index, Augmentation.sha256).join(
                Crop, Augmentation.crop_id == Crop.id
            )
        ).all()
    return {(crop, variant): sha for crop, variant, sha in rows}


@pytest.mark.parametrize("balance", ["proportional", "equal"])
def test_expand_reaches_the_target_exactly(
    engine: Engine, store: FileStore, crop_settings: Settings, balance: str
) -> None:
    sample = faces(4)
    extra = [
        Face(f"{i}" * 32, "calli", face.png) for i, face in enumerate(faces(2)[:2], start=1)
    ]  # 2 duplicates
    add_crops(engine, store, sample[:13] + extra)  # calli 4 (+2 duplicates), gura 4, ina 4, kiara 1
    summary = expand(engine, store, crop_settings, target=41, balance=balance, workers=1)  # type: ignore[arg-type]

    counts = summary.plan.per_class
    assert [counts[name].originals for name in CLASSES] == [4, 4, 4, 1]  # duplicates left out
    assert sum(c.total for c in counts.values()) == 41
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Augmentation)) == 41 - 13 == summary.created
        made = session.execute(
            select(Crop.label, func.count())
            .join(Augmentation, Augmentation.crop_id == Crop.id)
            .group_by(Crop.label)
        ).all()
        assert dict(made) == {n: c.augmented for n, c in counts.items() if c.augmented}
        expansion = session.scalars(select(Expansion)).one()
        assert (expansion.target, expansion.balance, expansion.recipe_version) == (
            41,
            balance,
            RECIPE_VERSION,
        )
    if balance == "equal":
        assert [counts[name].total for name in CLASSES] == [11, 10, 10, 10]
    else:
        # 41 x (4, 4, 4, 1) / 13 = (12.6, 12.6, 12.6, 3.2): Webster rounding, ties to the class listed first
        assert [counts[name].total for name in CLASSES] == [13, 13, 12, 3]


def test_expand_again_adds_nothing_and_a_higher_target_only_what_is_missing(
    engine: Engine, store: FileStore, crop_settings: Settings
) -> None:
    add_crops(engine, store, faces(3))
    first = expand(engine, store, crop_settings, target=30, workers=1)
    before = augmentation_files(engine)
    mtimes = {path: path.stat().st_mtime_ns for path in (store.home / "augmented").rglob("*.png")}
    again = expand(engine, store, crop_settings, target=30, workers=1)
    assert (first.created, again.created, again.already_there) == (18, 0, 18)
    assert augmentation_files(engine) == before
    assert {path: path.stat().st_mtime_ns for path in (store.home / "augmented").rglob("*.png")} == mtimes

    higher = expand(engine, store, crop_settings, target=37, workers=1)
    after = augmentation_files(engine)
    assert higher.created == 7
    assert len(after) == 25
    assert {key: after[key] for key in before} == before  # nothing made before was changed
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Expansion)) == 2  # the same plan again: no row


def test_two_homes_and_worker_counts_give_identical_files(tmp_path: Path) -> None:
    sample = faces(3)
    results = []
    for name, workers in (("one", 1), ("two", 2)):
        home = tmp_path / name
        settings = settings_for(home)
        engine = open_db(settings.db_url)
        store = FileStore(home)
        store.create_areas()
        add_crops(engine, store, sample)
        expand(engine, store, settings, target=40, seed=7, workers=workers)
        results.append(augmentation_files(engine))
        for path in (home / "augmented").rglob("*.png"):
            assert sha256_file(path) == path.stem  # every file is whole and content-addressed
        engine.dispose()
    assert len(results[0]) == 28
    assert results[0] == results[1]


def test_every_augmentation_records_its_source_recipe_seed_and_parameters(
    engine: Engine, store: FileStore, crop_settings: Settings
) -> None:
    add_crops(engine, store, faces(1))
    expand(engine, store, crop_settings, target=8, seed=3, workers=1)
    recipe = build_recipe()
    with Session(engine) as session:
        rows = session.execute(select(Augmentation, Crop).join(Crop, Augmentation.crop_id == Crop.id)).all()
        assert len(rows) == 4
        for augmentation, crop in rows:
            assert (augmentation.recipe_version, augmentation.seed) == (RECIPE_VERSION, 3)
            assert augmentation.params["item_seed"] == item_seed(3, crop.sha256, augmentation.variant_index)
            assert "Affine" in {step["transform"] for step in augmentation.params["applied"]}
            source = decode(store.abspath(crop.file_relpath).read_bytes())
            image, applied = apply_recipe(recipe, source, augmentation.params["item_seed"])
            assert applied == augmentation.params["applied"]
            assert np.array_equal(decode(store.abspath(augmentation.file_relpath).read_bytes()), image)


def test_a_broken_crop_is_reported_and_the_rest_is_made(
    engine: Engine, store: FileStore, crop_settings: Settings
) -> None:
    ids = add_crops(engine, store, faces(2))
    with Session(engine) as session:
        broken = session.get_one(Crop, ids[0])
        plan = plan_expansion(eligible_crops(session, CLASSES), CLASSES, 24, "proportional", 0)
    store.abspath(broken.file_relpath).unlink()
    summary = expand(engine, store, crop_settings, target=24, workers=2)
    assert len(summary.failed) == 1
    assert summary.created == 16 - plan.variants[ids[0]]
    with Session(engine) as session:
        assert (
            session.scalar(select(func.count()).select_from(Expansion)) == 0
        )  # incomplete: not a plan to use


def test_put_many_stores_like_put_bytes_with_shared_fsyncs(store: FileStore) -> None:
    """The store call the expander writes through (added to store.py for it)."""
    blobs = [(b"first", "png"), (b"second", "png"), (b"first", "png")]
    existing = store.put_bytes("augmented", b"second", "png")
    stored = store.put_many("augmented", blobs)
    assert [s.relpath for s in stored] == [
        store.put_bytes("augmented", data, ext).relpath for data, ext in blobs
    ]
    assert stored[1] == existing
    for item, (data, _) in zip(stored, blobs, strict=True):
        assert store.abspath(item.relpath).read_bytes() == data
        assert store.verify(item.relpath, item.sha256)
    assert not list((store.home / "augmented").rglob(".tmp-*"))
    assert store.put_many("augmented", []) == []
