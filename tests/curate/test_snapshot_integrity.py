"""Snapshots: what training reads is bound to the manifest, paths keep their shape, and a killed create or
export completes on rerun or leaves nothing."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from expand_data import CLASSES, add_crops, faces, set_state, settings_for
from sqlalchemy import Engine, update

from animexpr.config import Settings
from animexpr.curate.snapshot import (
    SnapshotError,
    create_snapshot,
    export_snapshot,
    list_snapshots,
    verify_snapshot,
)
from animexpr.db.models import CropState, Snapshot
from animexpr.db.session import session_scope
from animexpr.model.data import SnapshotError as DataSnapshotError
from animexpr.model.data import load_snapshot
from animexpr.store import FileStore, sha256_bytes


@pytest.fixture
def crop_settings(home: Path) -> Settings:
    return settings_for(home)


@pytest.fixture
def crop_ids(engine: Engine, store: FileStore) -> list[int]:
    return add_crops(engine, store, faces(3))


def lines_of(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def rewrite(folder: Path, rows: list[dict[str, Any]] | None = None, **dataset_changes: Any) -> None:
    """Edit a snapshot's files as a careless user would, keeping dataset.json's manifest_sha256 consistent."""
    for name in ("manifest.jsonl", "dataset.json"):
        (folder / name).chmod(0o644)
    dataset = json.loads((folder / "dataset.json").read_text())
    if rows is not None:
        manifest = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows).encode()
        (folder / "manifest.jsonl").write_bytes(manifest)
        dataset["manifest_sha256"] = sha256_bytes(manifest)
    dataset.update(dataset_changes)
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))


def swapped(classes: list[str]) -> list[str]:
    return [classes[1], classes[0], *classes[2:]]


# Class order ---------------------------------------------------------------------------------------------


def test_verify_and_training_refuse_a_reordered_class_list(
    engine: Engine, store: FileStore, crop_settings: Settings, crop_ids: list[int], tmp_path: Path
) -> None:
    info = create_snapshot(engine, store, crop_settings, "s")
    export = tmp_path / "export"
    export_snapshot(crop_settings, "s", export)
    assert load_snapshot(export).classes == CLASSES
    for folder in (info.folder, export):
        rewrite(folder, classes=swapped(list(CLASSES)))
        with pytest.raises(
            DataSnapshotError, match=r"dataset\.json: its classes do not match manifest\.jsonl"
        ):
            load_snapshot(folder)
        problems = verify_snapshot(engine, crop_settings, str(folder)).problems
        assert any(f"{folder / 'dataset.json'}: its classes do not match" in p for p in problems)
    home_problems = verify_snapshot(engine, crop_settings, "s").problems
    assert any("differ from those recorded when the snapshot was made" in p for p in home_problems)


def test_snapshots_made_before_label_index_still_verify_and_train(
    engine: Engine, store: FileStore, crop_settings: Settings, crop_ids: list[int]
) -> None:
    info = create_snapshot(engine, store, crop_settings, "s")
    old_rows = [{k: v for k, v in row.items() if k != "label_index"} for row in lines_of(info.folder)]
    rewrite(info.folder, old_rows)
    old_identity = json.loads((info.folder / "dataset.json").read_text())["manifest_sha256"]
    with session_scope(engine) as session:  # the record as older versions wrote it
        settings = {k: v for k, v in info_settings(engine).items() if k != "classes"}
        session.execute(update(Snapshot).values(manifest_sha256=old_identity, settings=settings))

    assert verify_snapshot(engine, crop_settings, "s").ok
    assert load_snapshot(info.folder).classes == CLASSES
    # Their class order is still checked: every such manifest lists each split by class position.
    rewrite(info.folder, classes=swapped(list(CLASSES)))
    with pytest.raises(DataSnapshotError, match="comes after a later class"):
        load_snapshot(info.folder)
    assert not verify_snapshot(engine, crop_settings, "s").ok


def info_settings(engine: Engine) -> dict[str, Any]:
    with session_scope(engine) as session:
        [row] = session.query(Snapshot).all()
        return dict(row.settings)


# Paths ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "file", ["../../animexpr.toml", "/etc/passwd", "crops/../../animexpr.toml", "crops/ab/not-a-hash.png"]
)
def test_a_manifest_path_outside_the_snapshot_shape_is_never_opened(
    engine: Engine, store: FileStore, crop_settings: Settings, crop_ids: list[int], file: str, tmp_path: Path
) -> None:
    info = create_snapshot(engine, store, crop_settings, "s")
    rows = lines_of(info.folder)
    rows[0]["file"] = file
    rewrite(info.folder, rows)
    report = verify_snapshot(None, crop_settings, "s")
    assert any(f"line 1: file {file!r} is not a store path" in p for p in report.problems)
    assert (report.missing, report.modified, report.files) == ([], [], 0)  # nothing was opened
    with pytest.raises(DataSnapshotError, match=r"line 1: file .* is not a store path"):
        load_snapshot(info.folder)
    with pytest.raises(SnapshotError, match="is not a store path"):
        export_snapshot(crop_settings, "s", tmp_path / "out")


@pytest.mark.parametrize(
    "file", ["../outside.png", "/tmp/x.png", "train/.hidden/x.png", "train/a/x.toml", "x.png"]
)
def test_an_export_lists_only_plain_paths_inside_its_folder(
    engine: Engine, store: FileStore, crop_settings: Settings, crop_ids: list[int], tmp_path: Path, file: str
) -> None:
    create_snapshot(engine, store, crop_settings, "s")
    export = tmp_path / "export"
    export_snapshot(crop_settings, "s", export)
    rows = lines_of(export)
    rows[0]["file"] = file
    rewrite(export, rows)
    with pytest.raises(DataSnapshotError, match=r"line 1: file .* is not"):
        load_snapshot(export)
    assert not verify_snapshot(None, crop_settings, str(export)).ok


# Killed create and export ---------------------------------------------------------------------------------

KILLER = """
import os, signal, sys
from pathlib import Path
from animexpr.config import load_settings
from animexpr.curate import snapshot
from animexpr.db.session import open_db
from animexpr.store import FileStore

home, point, classes = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
settings = load_settings(home=home, classes=classes, environ={})
engine, store = open_db(settings.db_url), FileStore(home)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if point == "create after rename":  # the folder is in place, the database transaction not committed
    real_rename = os.rename
    def rename_then_die(source, target):
        real_rename(source, target)
        die()
    os.rename = rename_then_die
    snapshot.create_snapshot(engine, store, settings, "s")
elif point in ("create before rename", "export midway"):
    real_write, written = snapshot.atomic_write_bytes, []
    def write_then_die(path, data):
        real_write(path, data)
        written.append(path)
        if len(written) == 3 if point == "export midway" else 1:
            die()
    snapshot.atomic_write_bytes = write_then_die
    if point == "export midway":
        snapshot.export_snapshot(settings, "s", Path(sys.argv[4]))
    else:
        snapshot.create_snapshot(engine, store, settings, "s")
"""


def killed(home: Path, point: str, *extra: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", KILLER, str(home), point, ",".join(CLASSES), *extra],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == -9, result.stderr[-3000:]


def test_create_killed_after_its_rename_is_adopted_by_the_next_create(
    engine: Engine, store: FileStore, crop_settings: Settings, crop_ids: list[int]
) -> None:
    killed(crop_settings.home, "create after rename")
    folder = crop_settings.home / "snapshots" / "s"
    assert (folder / "manifest.jsonl").is_file()
    assert list_snapshots(engine, crop_settings) == []  # the kill left a folder without its record
    left = (folder / "manifest.jsonl").read_bytes()
    created_at = json.loads((folder / "dataset.json").read_text())["created_at"]

    info = create_snapshot(engine, store, crop_settings, "s")
    assert [s.name for s in list_snapshots(engine, crop_settings)] == ["s"]
    assert info.created_at.isoformat() == created_at  # the same snapshot, recorded now
    assert (folder / "manifest.jsonl").read_bytes() == left
    assert verify_snapshot(engine, crop_settings, "s").ok


def test_create_killed_after_its_rename_is_replaced_when_the_crops_changed(
    engine: Engine,
    store: FileStore,
    crop_settings: Settings,
    crop_ids: list[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    killed(crop_settings.home, "create after rename")
    set_state(engine, crop_ids[0], CropState.REJECTED)
    with caplog.at_level(logging.WARNING):
        info = create_snapshot(engine, store, crop_settings, "s")
    assert "left by an interrupted create with other images: replacing it" in caplog.text
    assert crop_ids[0] not in {row["crop_id"] for row in lines_of(info.folder)}
    assert verify_snapshot(engine, crop_settings, "s").ok
    assert sorted(p.name for p in (crop_settings.home / "snapshots").iterdir()) == ["s"]


def test_create_killed_before_its_rename_leaves_nothing_the_next_create_keeps(
    engine: Engine, store: FileStore, crop_settings: Settings, crop_ids: list[int]
) -> None:
    killed(crop_settings.home, "create before rename")
    snapshots = crop_settings.home / "snapshots"
    assert [p.name.startswith(".partial-s-") for p in snapshots.iterdir()] == [True]
    create_snapshot(engine, store, crop_settings, "s")
    assert sorted(p.name for p in snapshots.iterdir()) == ["s"]
    assert verify_snapshot(engine, crop_settings, "s").ok


def test_a_folder_animexpr_did_not_leave_is_not_taken(
    engine: Engine, store: FileStore, crop_settings: Settings, crop_ids: list[int]
) -> None:
    folder = crop_settings.home / "snapshots" / "s"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(SnapshotError, match="exists but is no snapshot animexpr left"):
        create_snapshot(engine, store, crop_settings, "s")
    assert (folder / "notes.txt").read_text() == "mine"


def test_export_killed_midway_leaves_no_folder_and_a_rerun_completes(
    engine: Engine, store: FileStore, crop_settings: Settings, crop_ids: list[int], tmp_path: Path
) -> None:
    create_snapshot(engine, store, crop_settings, "s")
    out = tmp_path / "exports" / "faces"
    killed(crop_settings.home, "export midway", str(out))
    assert not out.exists()  # nothing that looks usable
    assert [p.name.startswith(".faces.partial-") for p in out.parent.iterdir()] == [True]

    summary = export_snapshot(crop_settings, "s", out)
    assert [p.name for p in out.parent.iterdir()] == ["faces"]
    assert summary.files == len(lines_of(out))
    assert verify_snapshot(None, crop_settings, str(out)).ok
    assert load_snapshot(out).classes == CLASSES
