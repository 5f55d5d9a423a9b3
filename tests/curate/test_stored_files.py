"""Every stage checks a stored file against its recorded sha256 before using it: corrupt or empty files are a
recorded, counted `corrupt_file` named in one line, never used and never a traceback."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from expand_data import CLASSES, add_crops, faces, settings_for
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from test_crop_stage import PostFile, add_posts, attempts, crops, drawn_picture

from animexpr.config import Settings
from animexpr.curate.crop import CropSettings, crop_posts, make_detector_spec
from animexpr.curate.dedup import UNREADABLE, update_duplicates
from animexpr.curate.expand import expand
from animexpr.curate.snapshot import SnapshotError, create_snapshot
from animexpr.db.models import Augmentation, Crop, Post, Snapshot
from animexpr.db.session import session_scope
from animexpr.homelock import HomeBusyError, hold_home_lock
from animexpr.store import CORRUPT_FILE, FileStore


@pytest.fixture
def crop_settings(home: Path) -> Settings:
    return settings_for(home)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def crop_file(engine: Engine, store: FileStore, crop_id: int) -> Path:
    with Session(engine) as session:
        return store.abspath(session.get_one(Crop, crop_id).file_relpath)


# Crop: originals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_crop_records_an_original_that_is_not_what_was_harvested_as_corrupt(
    engine: Engine, store: FileStore, workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    add_posts(engine, store, [PostFile(i, drawn_picture(i, 200, 200), "jpg", "smile", "") for i in (1, 2, 3)])
    with Session(engine) as session:
        relpath = {post.id: post.file_relpath for post in session.scalars(select(Post))}
    # Post 1's file overwritten with post 3's bytes (a valid picture of another post); post 2 one bit off.
    store.abspath(relpath[1]).write_bytes(store.abspath(relpath[3]).read_bytes())
    flip_a_byte(store.abspath(relpath[2]))

    settings = CropSettings(detector=make_detector_spec("whole"))
    with caplog.at_level(logging.WARNING):
        summary = crop_posts(engine, store, settings, workers=workers)

    assert dict(summary.outcomes) == {"corrupt_file": 2, "cropped": 1}
    recorded = attempts(engine)
    assert {post_id: a.outcome for post_id, a in recorded.items()} == {
        1: "corrupt_file",
        2: "corrupt_file",
        3: "cropped",
    }
    assert relpath[1] in (recorded[1].detail or "")
    assert [c.post_id for c in crops(engine)] == [
        3
    ]  # nothing cropped into post 1's class from post 3's picture
    assert f"post 1: corrupt_file: {relpath[1]}" in caplog.text


def test_crop_refuses_a_stored_path_outside_the_store_shape(
    engine: Engine, store: FileStore, home: Path
) -> None:
    secret = home / "animexpr.toml"
    secret.write_text('db = "sqlite:///elsewhere"\n')
    with session_scope(engine) as session:
        session.add(
            Post(id=1, md5="a" * 32, class_name="smile", state="downloaded", file_relpath="../animexpr.toml")
        )
    summary = crop_posts(engine, store, CropSettings(detector=make_detector_spec("whole")), workers=1)
    assert dict(summary.outcomes) == {"corrupt_file": 1}
    assert "not a path of the store" in (attempts(engine)[1].detail or "")


# Dedup, expand and snapshot: crops and augmentations -----------------------------------------------------


def test_dedup_leaves_out_and_counts_a_corrupt_or_empty_crop(
    engine: Engine, store: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    ids = add_crops(engine, store, faces(2))
    flip_a_byte(crop_file(engine, store, ids[0]))
    crop_file(engine, store, ids[1]).write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        summary = update_duplicates(engine, store)
    assert (summary.hashed, summary.unreadable, summary.corrupt) == (len(ids) - 2, 2, 2)
    with Session(engine) as session:
        for crop_id in ids[:2]:
            crop = session.get_one(Crop, crop_id)
            assert crop.phash is None
            assert f"corrupt_file: crop {crop.file_relpath} left out of dedup" in caplog.text


def test_a_stored_file_that_is_not_an_image_is_one_line_not_a_traceback(
    engine: Engine, store: FileStore, crop_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    [face] = faces(1)[:1]
    [good] = add_crops(engine, store, [face])
    # Recorded with the hash of its own bytes, so the check passes and the decoder must say what is wrong.
    for data in (b"", b"this is not a PNG"):
        stored = store.put_bytes("crops", data, "png")
        with session_scope(engine) as session:
            crop = session.get_one(Crop, good)
            crop.sha256, crop.file_relpath, crop.phash = stored.sha256, stored.relpath, None
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            dedup = update_duplicates(engine, store)
            summary = expand(engine, store, crop_settings, target=3, workers=1)
        assert (dedup.unreadable, dedup.corrupt) == (1, 0)
        assert f"cannot hash crop {stored.relpath}" in caplog.text
        assert summary.failed == [
            f"{UNREADABLE}: {stored.relpath}: "
            + ("the file is empty (0 bytes)" if not data else "not a decodable image")
        ]
        assert summary.corrupt == 0


@pytest.mark.parametrize("damage", ["flipped byte", "empty file"])
def test_expand_leaves_out_counts_and_names_a_corrupt_crop(
    engine: Engine,
    store: FileStore,
    crop_settings: Settings,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ids = add_crops(engine, store, faces(2))
    update_duplicates(engine, store)  # hashed while intact: expand reads the file again afterwards
    path = crop_file(engine, store, ids[0])
    if damage == "empty file":
        path.write_bytes(b"")
    else:
        flip_a_byte(path)
    with caplog.at_level(logging.WARNING):
        summary = expand(engine, store, crop_settings, target=24, workers=2)
    relpath = path.relative_to(store.home.resolve()).as_posix()
    assert summary.corrupt == 1
    assert len(summary.failed) == 1
    assert summary.failed[0].startswith(f"{CORRUPT_FILE}: {relpath}: sha256 ")
    assert f"corrupt_file: crop {ids[0]} left out: {relpath}" in caplog.text
    with Session(engine) as session:
        made = {row.crop_id for row in session.scalars(select(Augmentation))}
    assert ids[0] not in made
    assert len(made) == len(ids) - 1


@pytest.mark.parametrize("which", ["crop", "augmentation", "empty crop"])
def test_snapshot_create_refuses_corrupt_files_naming_them_and_writes_nothing(
    engine: Engine, store: FileStore, crop_settings: Settings, which: str
) -> None:
    ids = add_crops(engine, store, faces(2))
    expand(engine, store, crop_settings, target=16, workers=1)
    with Session(engine) as session:
        if which == "augmentation":
            relpath = session.scalars(select(Augmentation.file_relpath).limit(1)).one()
        else:
            relpath = session.get_one(Crop, ids[3]).file_relpath
    if which == "empty crop":
        store.abspath(relpath).write_bytes(b"")
    else:
        flip_a_byte(store.abspath(relpath))

    with pytest.raises(
        SnapshotError, match=r"^1 files of the snapshot are corrupt \(corrupt_file\)"
    ) as caught:
        create_snapshot(engine, store, crop_settings, "s")
    assert "\n" not in str(caught.value)
    assert relpath in str(caught.value)
    assert not (crop_settings.home / "snapshots" / "s").exists()
    assert [p.name for p in (crop_settings.home / "snapshots").iterdir()] == []
    with Session(engine) as session:
        assert session.scalars(select(Snapshot)).all() == []


# One expand per home ----------------------------------------------------------------------------------------


def test_a_second_expand_on_the_same_home_is_refused_in_one_line(
    engine: Engine, store: FileStore, crop_settings: Settings
) -> None:
    add_crops(engine, store, faces(1))
    with hold_home_lock(store.home, "expand"):
        with pytest.raises(HomeBusyError, match="another expand is running"):
            expand(engine, store, crop_settings, target=8, workers=1)
        env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "COLUMNS": "200"}
        result = subprocess.run(
            [sys.executable, "-m", "animexpr", "--home", str(store.home), "--classes", ",".join(CLASSES),
             "expand", "--target", "8", "--workers", "1"],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "another expand is running" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # Once the first expand is over, the same command runs.
    assert expand(engine, store, crop_settings, target=8, workers=1).plan.total == 8
