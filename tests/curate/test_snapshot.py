"""Snapshots: split without leakage, exact counts, immutability, verify, export, the commands."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import cv2
import pytest
import typer
from expand_data import (
    CLASSES,
    Face,
    add_crops,
    decode,
    encode,
    faces,
    generated_image,
    set_state,
    settings_for,
)
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from animexpr.cli_common import AppState
from animexpr.config import Settings, load_settings
from animexpr.curate import cli as curate_cli
from animexpr.curate.expand import expand
from animexpr.curate.snapshot import (
    SnapshotError,
    create_snapshot,
    export_snapshot,
    list_snapshots,
    referenced_files,
    verify_snapshot,
)
from animexpr.db.models import Augmentation, CropState, Snapshot, SnapshotItem
from animexpr.db.session import open_db
from animexpr.store import FileStore, sha256_bytes, sha256_file


@pytest.fixture
def crop_settings(home: Path) -> Settings:
    return settings_for(home)


def variant_of(face: Face, md5: str, label: str) -> Face:
    """The same drawing posted again with another expression tag (here: re-encoded at another size)."""
    image = decode(face.png)
    side = image.shape[0]
    smaller = cv2.resize(image, (side * 3 // 4, side * 3 // 4))
    return Face(md5, label, encode(cv2.resize(smaller, (side, side))))


def populate(engine: Engine, store: FileStore) -> dict[str, Any]:
    """24 different faces, a post with faces of two classes, a picture posted again under another label."""
    sample = faces(6)
    second_face = Face(sample[0].md5, CLASSES[2], encode(generated_image("second face")))
    related = variant_of(sample[7], "9" * 32, CLASSES[3])
    ids = add_crops(engine, store, [*sample, second_face, related])
    return {"ids": ids, "two_face_post": ids[0], "second_face": ids[24], "variant_pair": (ids[7], ids[25])}


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def test_split_by_post_and_related_pictures_with_originals_only_in_test(
    engine: Engine, store: FileStore, crop_settings: Settings
) -> None:
    made = populate(engine, store)
    expand(engine, store, crop_settings, target=80, workers=1)
    info = create_snapshot(engine, store, crop_settings, "s1", test_fraction=0.25, seed=0)

    folder = crop_settings.home / "snapshots" / "s1"
    rows = read_manifest(folder)
    dataset = json.loads((folder / "dataset.json").read_text())
    sides_of_post: dict[int, set[str]] = defaultdict(set)
    for row in rows:
        sides_of_post[row["post_id"]].add(row["split"])
    assert all(len(sides) == 1 for sides in sides_of_post.values())  # no post on both sides
    test_rows = [r for r in rows if r["split"] == "test"]
    assert test_rows
    assert {r["kind"] for r in test_rows} == {"original"}
    train_originals = {r["crop_id"] for r in rows if r["split"] == "train" and r["kind"] == "original"}
    augmented = [r for r in rows if r["kind"] == "augmented"]
    assert {r["crop_id"] for r in augmented} <= train_originals  # no augmented copy of a test face
    side = {r["crop_id"]: r["split"] for r in rows if r["kind"] == "original"}
    first, variant = made["variant_pair"]
    assert side[first] == side[variant]  # the same picture under two labels stays on one side
    assert side[made["two_face_post"]] == side[made["second_face"]]
    for label in CLASSES:  # stratified: every class is tested, every class is trained on
        assert {r["split"] for r in rows if r["label"] == label} == {"train", "test"}

    # Exact counts: every accepted crop once, plus the planned augmentations of the training crops.
    assert len({r["crop_id"] for r in rows}) == 26
    assert len(rows) == info.counts["total"] == 80 - _augmentations_of_test_crops(engine, rows)
    for label in CLASSES:
        counts = dataset["counts"][label]
        assert counts["train_original"] == sum(
            1 for r in rows if (r["label"], r["split"], r["kind"]) == (label, "train", "original")
        )
        assert counts["test_original"] == sum(1 for r in test_rows if r["label"] == label)
        assert counts["total"] == sum(1 for r in rows if r["label"] == label)
    assert dataset["split_sizes"] == {"train": len(rows) - len(test_rows), "test": len(test_rows)}
    assert dataset["classes"] == list(CLASSES)
    assert (
        dataset["manifest_sha256"]
        == sha256_bytes((folder / "manifest.jsonl").read_bytes())
        == info.manifest_sha256
    )
    for row in rows:  # files_root leads from the snapshot folder to the home's files
        assert sha256_file(folder / dataset["files_root"] / row["file"]) == row["sha256"]
    assert list(rows[0]) == ["file", "sha256", "label", "label_index", "split", "post_id", "crop_id", "kind"]
    assert all(row["label_index"] == CLASSES.index(row["label"]) for row in rows)


def _augmentations_of_test_crops(engine: Engine, rows: list[dict[str, Any]]) -> int:
    test_crops = [r["crop_id"] for r in rows if r["split"] == "test"]
    with Session(engine) as session:
        return session.scalar(select(func.count()).where(Augmentation.crop_id.in_(test_crops))) or 0


def snapshot_items(engine: Engine, name: str) -> list[tuple[object, ...]]:
    with Session(engine) as session:
        rows = session.execute(
            select(SnapshotItem.crop_id, SnapshotItem.file_relpath, SnapshotItem.label, SnapshotItem.split)
            .join(Snapshot, SnapshotItem.snapshot_id == Snapshot.id)
            .where(Snapshot.name == name)
            .order_by(SnapshotItem.id)
        ).all()
    return [tuple(row) for row in rows]


def test_snapshot_never_changes_after_later_review(
    engine: Engine, store: FileStore, crop_settings: Settings
) -> None:
    made = populate(engine, store)
    expand(engine, store, crop_settings, target=60, workers=1)
    info = create_snapshot(engine, store, crop_settings, "before", test_fraction=0.2)
    folder = info.folder
    manifest, dataset = (folder / "manifest.jsonl").read_bytes(), (folder / "dataset.json").read_bytes()
    items_before = snapshot_items(engine, "before")

    rejected, relabelled = made["ids"][1], made["ids"][2]
    set_state(engine, rejected, state=CropState.REJECTED)
    set_state(engine, relabelled, label=CLASSES[3])
    add_crops(engine, store, [Face("7" * 32, CLASSES[1], encode(generated_image("late arrival")))])
    expand(engine, store, crop_settings, target=60, workers=1)
    after = create_snapshot(engine, store, crop_settings, "after", test_fraction=0.2)

    assert (folder / "manifest.jsonl").read_bytes() == manifest
    assert (folder / "dataset.json").read_bytes() == dataset
    assert verify_snapshot(engine, crop_settings, "before").ok
    assert snapshot_items(engine, "before") == items_before
    with Session(engine) as session:
        kept = referenced_files(session)
    rejected_rows = [r for r in read_manifest(folder) if r["crop_id"] == rejected]
    assert rejected_rows
    assert all(r["file"] in kept and (crop_settings.home / r["file"]).is_file() for r in rejected_rows)
    assert rejected not in {r["crop_id"] for r in read_manifest(after.folder)}
    assert after.manifest_sha256 != info.manifest_sha256
    with pytest.raises(SnapshotError, match="exists already"):
        create_snapshot(engine, store, crop_settings, "before")
    assert [s.name for s in list_snapshots(engine, crop_settings)] == ["before", "after"]


def test_verify_catches_a_modified_a_missing_file_and_an_edited_manifest(
    engine: Engine, store: FileStore, crop_settings: Settings
) -> None:
    populate(engine, store)
    expand(engine, store, crop_settings, target=50, workers=1)
    info = create_snapshot(engine, store, crop_settings, "s")
    assert verify_snapshot(engine, crop_settings, "s").ok
    rows = read_manifest(info.folder)
    augmented = next(r for r in rows if r["kind"] == "augmented")
    original = next(r for r in rows if r["kind"] == "original")
    path = crop_settings.home / augmented["file"]
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    (crop_settings.home / original["file"]).unlink()

    report = verify_snapshot(engine, crop_settings, "s")
    assert not report.ok
    assert report.modified == [augmented["file"]]
    assert report.missing == [original["file"]]
    assert report.files == len(rows)

    manifest = info.folder / "manifest.jsonl"
    manifest.chmod(0o644)
    manifest.write_text(manifest.read_text().replace('"split":"test"', '"split":"train"', 1))
    problems = verify_snapshot(engine, crop_settings, "s").problems
    assert any("dataset.json says" in p for p in problems)
    assert any("database recorded" in p for p in problems)


def test_export_has_the_stargan_layout_and_trains_without_the_home(
    engine: Engine, store: FileStore, crop_settings: Settings, tmp_path: Path
) -> None:
    populate(engine, store)
    expand(engine, store, crop_settings, target=50, workers=1)
    info = create_snapshot(engine, store, crop_settings, "s")
    out = tmp_path / "export"
    summary = export_snapshot(crop_settings, "s", out)

    rows = read_manifest(info.folder)
    assert summary.files == len(rows)
    for split in ("train", "test"):
        for label in CLASSES:
            expected = sum(1 for r in rows if (r["split"], r["label"]) == (split, label))
            assert len(list((out / split / label).glob("*.png"))) == expected
    metadata = [json.loads(line) for line in (out / "train" / "metadata.jsonl").read_text().splitlines()]
    assert all((out / "train" / m["file_name"]).is_file() for m in metadata)
    exported = json.loads((out / "dataset.json").read_text())
    assert exported["files_root"] == "."
    assert exported["snapshot_manifest_sha256"] == info.manifest_sha256
    assert exported["manifest_sha256"] == sha256_bytes((out / "manifest.jsonl").read_bytes())
    assert sorted((r["sha256"], r["split"]) for r in read_manifest(out)) == sorted(
        (r["sha256"], r["split"]) for r in rows
    )
    assert verify_snapshot(None, crop_settings, str(out)).ok  # the export checks out on its own
    with pytest.raises(SnapshotError, match="not empty"):
        export_snapshot(crop_settings, "s", out)


def test_snapshot_refuses_a_plan_that_no_longer_matches_the_crops(
    engine: Engine, store: FileStore, crop_settings: Settings
) -> None:
    populate(engine, store)
    expand(engine, store, crop_settings, target=80, workers=1)  # about two copies of every crop
    add_crops(engine, store, [Face("8" * 32, CLASSES[0], encode(generated_image("accepted later")))])
    with pytest.raises(SnapshotError, match="run `animexpr expand --target 80"):
        create_snapshot(engine, store, crop_settings, "s")
    assert not (crop_settings.home / "snapshots" / "s").exists()
    expand(engine, store, crop_settings, target=80, workers=1)
    rows = read_manifest(create_snapshot(engine, store, crop_settings, "s", test_fraction=0).folder)
    assert len(rows) == 80


def test_without_expansion_a_snapshot_holds_the_originals(
    engine: Engine, store: FileStore, crop_settings: Settings
) -> None:
    populate(engine, store)
    info = create_snapshot(engine, store, crop_settings, "plain", test_fraction=0)
    rows = read_manifest(info.folder)
    assert len(rows) == 26
    assert {(r["kind"], r["split"]) for r in rows} == {("original", "train")}


def test_same_inputs_give_the_same_manifest_in_two_homes(tmp_path: Path) -> None:
    hashes = []
    for name in ("one", "two"):
        settings = settings_for(tmp_path / name)
        engine = open_db(settings.db_url)
        store = FileStore(settings.home)
        store.create_areas()
        populate(engine, store)
        expand(engine, store, settings, target=50, workers=1 if name == "one" else 2)
        hashes.append(create_snapshot(engine, store, settings, "s", seed=3).manifest_sha256)
        engine.dispose()
    assert hashes[0] == hashes[1]


def test_bad_names_and_fractions_are_refused(
    engine: Engine, store: FileStore, crop_settings: Settings
) -> None:
    populate(engine, store)
    with pytest.raises(SnapshotError, match="snapshot name"):
        create_snapshot(engine, store, crop_settings, "../escape")
    with pytest.raises(SnapshotError, match="test-fraction"):
        create_snapshot(engine, store, crop_settings, "s", test_fraction=1.0)


# ---------------------------------------------------------------------------------------------------------
# Commands


def command_app() -> typer.Typer:
    """The commands on a root that takes --home and --classes, as the real root does."""
    app = typer.Typer()

    @app.callback()
    def root(
        ctx: typer.Context, home: Annotated[Path, typer.Option()], classes: Annotated[str, typer.Option()]
    ) -> None:
        ctx.obj = AppState(load_settings(home=home, classes=classes, environ={}))

    curate_cli.register(app)
    return app


def test_commands_from_dedup_to_export(
    engine: Engine, store: FileStore, crop_settings: Settings, tmp_path: Path
) -> None:
    populate(engine, store)
    app, runner = command_app(), CliRunner()
    base = ["--home", str(crop_settings.home), "--classes", ",".join(CLASSES)]

    def run(*args: str) -> Any:
        return runner.invoke(app, [*base, *args], catch_exceptions=True, env={"COLUMNS": "200"})

    dedup = run("dedup")
    assert dedup.exit_code == 0, dedup.output
    assert "26 crops, 26 hashed now" in dedup.output
    expanded = run("expand", "--target", "60", "--balance", "equal", "--workers", "2")
    assert expanded.exit_code == 0, expanded.output
    assert "34 augmented images made" in expanded.output
    assert "60" in expanded.output
    assert "0 augmented images made" in run("expand", "--target", "60", "--balance", "equal").output
    created = run("snapshot", "create", "first", "--test-fraction", "0.2")
    assert created.exit_code == 0, created.output
    assert "snapshot first" in created.output
    assert "first" in run("snapshot", "list").output
    assert "equal" in run("snapshot", "show", "first").output
    assert run("snapshot", "verify", "first").exit_code == 0
    exported = run("snapshot", "export", "first", str(tmp_path / "out"))
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "out" / "train").is_dir()

    row = read_manifest(crop_settings.home / "snapshots" / "first")[0]
    (crop_settings.home / row["file"]).write_bytes(b"changed")
    failed = run("snapshot", "verify", "first")
    assert failed.exit_code == 1
    assert "1 modified" in str(failed.exception)
    assert run("expand", "--balance", "sideways").exit_code == 2  # a usage error, checked by the command line


def test_the_root_command_line_offers_the_commands(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "NO_ALBUMENTATIONS_UPDATE": "1", "COLUMNS": "160"}
    result = subprocess.run(
        [sys.executable, "-m", "animexpr", "--home", str(tmp_path / "home"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for command in ("dedup", "expand", "snapshot"):
        assert f"│ {command} " in result.stdout


def test_dedup_expand_and_snapshot_on_each_database(any_db_url: str, home: Path) -> None:
    settings = load_settings(home=home, db=any_db_url, classes=",".join(CLASSES), environ={})
    engine = open_db(settings.db_url)
    store = FileStore(home)
    store.create_areas()
    try:
        made = populate(engine, store)
        [duplicate] = add_crops(engine, store, [Face("6" * 32, CLASSES[0], faces(1)[0].png)])
        summary = expand(engine, store, settings, target=60, workers=2)
        assert summary.dedup.clusters == 1
        assert summary.plan.total == 60
        info = create_snapshot(engine, store, settings, "s", test_fraction=0.2)
        rows = read_manifest(info.folder)
        assert duplicate not in {r["crop_id"] for r in rows}
        assert made["ids"][0] in {r["crop_id"] for r in rows}
        assert verify_snapshot(engine, settings, "s").ok
        assert [s.name for s in list_snapshots(engine, settings)] == ["s"]
    finally:
        engine.dispose()


def test_snapshot_says_so_when_the_crops_outgrew_the_last_expansion(
    engine: Engine, store: FileStore, crop_settings: Settings
) -> None:
    populate(engine, store)
    expand(engine, store, crop_settings, target=27, workers=1)
    late = [Face(f"{i}" * 32, CLASSES[1], encode(generated_image(f"late {i}"))) for i in range(1, 3)]
    add_crops(engine, store, late)
    with pytest.raises(SnapshotError, match=r"no longer fits .* below the 28"):
        create_snapshot(engine, store, crop_settings, "s")
