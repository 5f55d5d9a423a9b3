"""Frozen snapshots: exactly what a model is trained and tested on, as files that never change.

`HOME/snapshots/NAME/manifest.jsonl` lists every image (one JSON object a line: file, sha256, label,
label_index, split, post_id, crop_id, kind) and `dataset.json` summarises it; the manifest's sha256 is the
snapshot's identity, and what training reads from dataset.json is bound to it (`animexpr.snapshot_format`).
The model room reads only these two files.

- Train/test is split by source post, stratified by class: all crops of a post, and every crop that shows the
  same picture as another (near-duplicates under any label, mirrors included), fall on one side. The test side
  holds originals only; augmented images exist only of training crops.
- Only accepted crops, one per duplicate cluster, and augmented copies of training crops: with a size
  (`create --size N`), exactly N images, the split decided first and the copies planned for the training
  side only, made now where the store lacks them (`snapshot_plan`); without one, the copies of the latest
  `animexpr expand` plan, less those of test crops.
- Later review changes never alter a snapshot: the manifest copies label and split, crop and augmentation
  files are content-addressed (a file's bytes never change under its name) and nothing deletes a file a
  snapshot references (`referenced_files`).
- Every file is checked against its recorded sha256 before it is listed: a snapshot with a corrupt file is
  refused as a whole, naming the files, because a frozen snapshot must not quietly lose images.
- Nothing half-made survives a kill: `create` writes a hidden folder and renames it in the same transaction
  that records it (a kill between the two leaves a folder that the next `create` of that name adopts when its
  manifest is what it would write, else replaces); `export` writes a hidden sibling and renames it at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from animexpr import __version__
from animexpr.config import Settings
from animexpr.curate.dedup import (
    DEFAULT_MAX_DISTANCE,
    HASH_NAME,
    CropFacts,
    DedupSummary,
    eligible_crops,
    related_groups,
    update_duplicates,
)
from animexpr.curate.defaults import DEFAULT_TEST_FRACTION, Balance
from animexpr.curate.expand import (
    RECIPE_VERSION,
    ExpandError,
    latest_expansion,
    make_planned,
    plan_expansion,
    recipe_description,
)
from animexpr.curate.snapshot_plan import (
    SizedPlan,
    SnapshotError,
    SnapshotSize,
    assign_splits,
    plan_sized_snapshot,
)
from animexpr.db.models import Augmentation, Expansion, Snapshot, SnapshotItem
from animexpr.db.session import current_revision, session_scope
from animexpr.homelock import hold_home_lock
from animexpr.snapshot_format import (
    DATASET_FILE,
    HOME_FILES_ROOT,
    MANIFEST_FILE,
    LabelledLine,
    class_binding_problem,
    class_mismatch_message,
    file_path_problem,
)
from animexpr.store import (
    CorruptFileError,
    FileStore,
    UnsafePathError,
    atomic_write_bytes,
    sha256_bytes,
    sha256_file,
)

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.jsonl"
SNAPSHOTS_DIR = "snapshots"
SPLITS = ("train", "test")
KINDS = ("original", "augmented")
COUNT_KEYS = ("train_original", "train_augmented", "test_original", "total")  # per class, as dataset.json has
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PARTIAL_PREFIX = ".partial-"
_CHECK_THREADS = 4  # hashlib releases the GIL on large buffers: threads hash files in parallel
_LISTED_PROBLEMS = 5  # files named in a one-line refusal; the log names every one

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ManifestItem:
    file: str
    sha256: str
    label: str
    split: str
    post_id: int
    crop_id: int
    kind: str
    augmentation_id: int | None = None  # in the database only; the manifest does not need it
    label_index: int | None = None  # the label's position in dataset.json's classes (None: an old manifest)

    def line(self) -> str:
        record: dict[str, Any] = {"file": self.file, "sha256": self.sha256, "label": self.label}
        if self.label_index is not None:
            record["label_index"] = self.label_index
        record |= {
            "split": self.split,
            "post_id": self.post_id,
            "crop_id": self.crop_id,
            "kind": self.kind,
        }
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_line(cls, line: str) -> ManifestItem:
        record = json.loads(line)
        fields = {
            key: record[key] for key in ("file", "sha256", "label", "split", "post_id", "crop_id", "kind")
        }
        return cls(**fields, label_index=record.get("label_index"))


def manifest_bytes(items: Iterable[ManifestItem]) -> bytes:
    return "".join(item.line() + "\n" for item in items).encode("utf-8")


def read_manifest(folder: Path) -> tuple[bytes, list[ManifestItem]]:
    """The manifest's bytes and items; `SnapshotError` naming the file and line when it cannot be read."""
    path = folder / MANIFEST_FILE
    try:
        data = path.read_bytes()
        lines = data.decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{path}: cannot be read ({exc})") from exc
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            items.append(ManifestItem.from_line(line))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SnapshotError(f"{path} line {number}: not a manifest line ({exc!r})") from exc
    return data, items


def classes_problem(folder: Path, dataset: dict[str, Any], items: Sequence[ManifestItem]) -> str | None:
    """Why dataset.json's classes disagree with the manifest (they would remap labels), or None."""
    classes = dataset.get("classes")
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        return f"{folder / DATASET_FILE}: 'classes' is not a list of names"
    lines = (
        LabelledLine(number, item.label, item.label_index, item.split)
        for number, item in enumerate(items, start=1)
    )
    problem = class_binding_problem(classes, lines)
    return None if problem is None else class_mismatch_message(folder / DATASET_FILE, problem)


def path_problem(folder: Path, dataset: dict[str, Any], items: Sequence[ManifestItem]) -> str | None:
    """The first manifest path that is not of the snapshot's own shape (never to be opened), or None."""
    files_root = str(dataset.get("files_root", "."))
    for number, item in enumerate(items, start=1):
        problem = file_path_problem(item.file, files_root)
        if problem is not None:
            return f"{folder / MANIFEST_FILE} line {number}: {problem}"
    return None


# ---------------------------------------------------------------------------------------------------------
# Create


@dataclass(frozen=True)
class SnapshotContent:
    items: list[ManifestItem]
    expansion: dict[str, Any] | None
    max_distance: int
    size: int | None = None  # asked for with --size; None when the latest expansion decided
    augmented_made: int = 0  # copies of training crops this create had to make first


def _rows_for_jobs(
    session: Session, jobs: Iterable[tuple[int, int]], recipe_version: str, seed: int
) -> tuple[dict[int, list[Augmentation]], int]:
    """Crop id -> its augmentation rows among (crop id, variant index) jobs, and how many jobs have none."""
    rows = session.scalars(
        select(Augmentation).where(Augmentation.recipe_version == recipe_version, Augmentation.seed == seed)
    )
    made = {(row.crop_id, row.variant_index): row for row in rows}
    planned: dict[int, list[Augmentation]] = defaultdict(list)
    missing = 0
    for crop_id, variant_index in jobs:
        row = made.get((crop_id, variant_index))
        if row is None:
            missing += 1
        else:
            planned[crop_id].append(row)
    return planned, missing


def _planned_augmentations(
    session: Session, crops: Sequence[CropFacts], settings: Settings, expansion: Expansion
) -> dict[int, list[Augmentation]]:
    """Crop id -> its augmentations in the latest expansion plan; refuses when any is missing."""
    if expansion.recipe_version != RECIPE_VERSION:
        raise SnapshotError(
            f"the last expansion used recipe {expansion.recipe_version}, this animexpr has {RECIPE_VERSION}: "
            "run `animexpr expand` again"
        )
    balance: Balance = "equal" if expansion.balance == "equal" else "proportional"
    try:
        plan = plan_expansion(crops, settings.class_names, expansion.target, balance, expansion.seed)
    except ExpandError as exc:
        raise SnapshotError(f"the last expansion no longer fits the accepted crops ({exc})") from exc
    planned, missing = _rows_for_jobs(session, plan.jobs(), expansion.recipe_version, expansion.seed)
    if missing:
        raise SnapshotError(
            f"{missing} augmented images of the last expansion plan (target {expansion.target}, "
            f"{expansion.balance}, seed {expansion.seed}) are missing, because accepted crops changed since: "
            f"run `animexpr expand --target {expansion.target} --balance {expansion.balance} "
            f"--seed {expansion.seed}` first"
        )
    return planned


@dataclass(frozen=True)
class _Augmented:
    """The augmented images a snapshot takes, and how it came by them."""

    rows: dict[int, list[Augmentation]]  # training crop id -> its copies
    record: dict[str, Any] | None  # for dataset.json's settings
    made: int = 0


def _expansion_augmentations(
    engine: Engine, crops: Sequence[CropFacts], settings: Settings, expansion: Expansion | None
) -> _Augmented:
    """The copies of the latest `expand` plan (a snapshot made without --size)."""
    if expansion is None:
        log.warning("no expansion has been run: the snapshot holds originals only")
        return _Augmented({}, None)
    with Session(engine) as session:
        rows = _planned_augmentations(session, crops, settings, expansion)
    record = {
        "target": expansion.target,
        "balance": expansion.balance,
        "seed": expansion.seed,
        "recipe": recipe_description(),
    }
    return _Augmented(rows, record)


def _sized_augmentations(
    engine: Engine,
    store: FileStore,
    crops: Sequence[CropFacts],
    plan: SizedPlan,
    dedup: DedupSummary,
    workers: int | None,
    progress: ProgressCallback | None,
) -> _Augmented:
    """The copies of training crops a sized snapshot needs, making those the store lacks first.

    They are made here rather than by a separate `expand`, because which crops get copies depends on this
    snapshot's split: a second command would have to repeat the split's settings exactly. The images and
    rows are the ones `expand` makes for the same crop, seed and variant, so nothing is made twice.
    """
    expansion = plan.expansion_plan()
    summary = make_planned(engine, store, crops, expansion, dedup, workers, progress)
    if summary.interrupted:
        log.warning(
            "interrupted: %d augmented copies made and kept; run the same command to finish", summary.created
        )
        raise KeyboardInterrupt
    if summary.failed:
        listed = "; ".join(summary.failed[:_LISTED_PROBLEMS])
        more = "; ..." if len(summary.failed) > _LISTED_PROBLEMS else ""
        raise SnapshotError(
            f"{len(summary.failed)} training crops could not be augmented, nothing written: {listed}{more}. "
            "Restore their files or reject the crops, then create the snapshot again"
        )
    with Session(engine) as session:
        rows, missing = _rows_for_jobs(session, expansion.jobs(), RECIPE_VERSION, expansion.seed)
    if missing:  # made moments ago under the expand lock: only a store changed meanwhile gets here
        raise SnapshotError(f"{missing} augmented copies vanished while they were made: create it again")
    record = {
        "size": plan.request.size,
        "balance": plan.request.balance,
        "seed": plan.request.augment_seed,
        "recipe": recipe_description(),
    }
    return _Augmented(rows, record, summary.created)


def collect_content(
    engine: Engine,
    store: FileStore,
    settings: Settings,
    test_fraction: float,
    seed: int,
    size: SnapshotSize | None = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> SnapshotContent:
    """Every image of a new snapshot, in manifest order.

    The split is decided first; with `size`, the augmented copies are then planned for the training side only,
    so the snapshot holds exactly `size.size` images.
    """
    with Session(engine) as session:
        expansion = latest_expansion(session)
    max_distance = expansion.max_distance if expansion is not None else DEFAULT_MAX_DISTANCE
    dedup = update_duplicates(engine, store, max_distance)
    with Session(engine) as session:
        crops = eligible_crops(session, settings.class_names)
    if not crops:
        raise SnapshotError("there is no accepted crop: review some crops before making a snapshot")
    split = assign_splits(
        crops, related_groups(crops, max_distance), settings.class_names, test_fraction, seed
    )
    if size is None:
        augmented = _expansion_augmentations(engine, crops, settings, expansion)
    else:
        plan = plan_sized_snapshot(crops, split, settings.class_names, size)
        augmented = _sized_augmentations(engine, store, crops, plan, dedup, workers, progress)
    items = _manifest_items(crops, split, augmented.rows, settings.class_names)
    return SnapshotContent(
        items=items,
        expansion=augmented.record,
        max_distance=max_distance,
        size=None if size is None else size.size,
        augmented_made=augmented.made,
    )


def _manifest_items(
    crops: Sequence[CropFacts],
    split: dict[int, str],
    augmented: dict[int, list[Augmentation]],
    class_names: Sequence[str],
) -> list[ManifestItem]:
    """Every crop as an original on its side, and the copies of training crops, in manifest order."""
    class_index = {name: index for index, name in enumerate(class_names)}
    items: list[ManifestItem] = []
    for crop in crops:
        side, index = split[crop.id], class_index[crop.label]
        items.append(
            ManifestItem(
                crop.file_relpath,
                crop.sha256,
                crop.label,
                side,
                crop.post_id,
                crop.id,
                "original",
                label_index=index,
            )
        )
        if side == "train":  # the test side holds originals only
            items += [
                ManifestItem(
                    row.file_relpath,
                    row.sha256,
                    crop.label,
                    side,
                    crop.post_id,
                    crop.id,
                    "augmented",
                    row.id,
                    label_index=index,
                )
                for row in sorted(augmented.get(crop.id, []), key=lambda row: row.variant_index)
            ]
    items.sort(
        key=lambda i: (
            SPLITS.index(i.split),
            class_index[i.label],
            i.post_id,
            i.crop_id,
            KINDS.index(i.kind),
            i.file,
        )
    )
    return items


def count_items(items: Iterable[ManifestItem], class_names: Sequence[str]) -> dict[str, Any]:
    per_class = {
        name: {"train_original": 0, "train_augmented": 0, "test_original": 0, "total": 0}
        for name in class_names
    }
    split_sizes = dict.fromkeys(SPLITS, 0)
    for item in items:
        counts = per_class[item.label]
        key = f"{item.split}_{item.kind}"
        counts[key] = counts.get(key, 0) + 1
        counts["total"] += 1
        split_sizes[item.split] += 1
    return {"per_class": per_class, "split_sizes": split_sizes, "total": sum(split_sizes.values())}


def snapshot_folder(settings: Settings, name: str) -> Path:
    return settings.home / SNAPSHOTS_DIR / name


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise SnapshotError(
            f"snapshot name {name!r}: letters, digits, '.', '_' or '-' (up to 128), "
            "starting with a letter or digit"
        )


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    manifest_sha256: str
    counts: dict[str, Any]
    created_at: datetime
    folder: Path
    check_s: float = 0.0  # of the create: checking every file against its recorded sha256
    augmented_made: int = 0  # of a sized create: copies of training crops it made first


def create_snapshot(
    engine: Engine,
    store: FileStore,
    settings: Settings,
    name: str,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
    size: SnapshotSize | None = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> SnapshotInfo:
    """Freeze the current accepted, de-duplicated crops and their augmentations under NAME.

    Without `size`, the augmentations are those of the latest `expand` plan, less the copies of test crops.
    With `size`, the snapshot holds exactly `size.size` images: the split is made first and the copies of
    training crops that reach the size are made now when the store lacks them (`workers`, `progress`).
    """
    _check_name(name)
    folder = snapshot_folder(settings, name)
    # One create per home at a time: the leftovers of an interrupted one are then safe to clean.
    with hold_home_lock(settings.home, "snapshot"):
        with Session(engine) as session:
            if session.scalar(select(Snapshot.id).where(Snapshot.name == name)) is not None:
                raise SnapshotError(
                    f"snapshot {name!r} exists already; snapshots never change: pick another name"
                )
        _remove_partials(folder)
        orphan = folder.exists()
        if orphan and not _left_by_create(folder, name):
            raise SnapshotError(
                f"{folder} exists but is no snapshot animexpr left: move it away or pick another name"
            )
        content = collect_content(engine, store, settings, test_fraction, seed, size, workers, progress)
        started = time.perf_counter()
        check_stored_files(store, content.items)
        check_s = time.perf_counter() - started
        manifest = manifest_bytes(content.items)
        counts = count_items(content.items, settings.class_names)
        info = None
        if orphan:
            info = _adopt(engine, folder, manifest, content.items, counts, settings.class_names)
        if info is None:
            info = _freeze(engine, settings, folder, content, manifest, counts, test_fraction, seed)
        return dataclasses.replace(info, check_s=check_s, augmented_made=content.augmented_made)


def _freeze(
    engine: Engine,
    settings: Settings,
    folder: Path,
    content: SnapshotContent,
    manifest: bytes,
    counts: dict[str, Any],
    test_fraction: float,
    seed: int,
) -> SnapshotInfo:
    """Write the folder and the database record of a new snapshot, both or neither."""
    manifest_sha256 = sha256_bytes(manifest)
    created_at = datetime.now(UTC)
    snapshot_settings = {
        "size": content.size,
        "test_fraction": test_fraction,
        "split_seed": seed,
        "split_by": "source post; near-duplicates of any label stay together",
        "dedup": {"hash": HASH_NAME, "max_distance": content.max_distance},
        "expansion": content.expansion,
        "classes": list(settings.class_names),
        "class_tags": {spec.name: list(spec.tags) for spec in settings.classes},
        "animexpr_version": __version__,
        "schema_revision": current_revision(engine),
    }
    dataset = {
        "name": folder.name,
        "classes": list(settings.class_names),
        "counts": counts["per_class"],
        "split_sizes": counts["split_sizes"],
        "files_root": HOME_FILES_ROOT,
        "manifest_sha256": manifest_sha256,
        "settings": snapshot_settings,
        "created_at": created_at.isoformat(),
    }
    if folder.exists():
        log.warning("%s was left by an interrupted create with other images: replacing it", folder)
        _remove_tree(folder)
    partial = _write_partial(folder, manifest, dataset)
    try:
        _record(
            engine,
            folder.name,
            manifest_sha256,
            snapshot_settings,
            counts,
            created_at,
            content.items,
            partial,
        )
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info("snapshot %s: %d images, manifest %s", folder.name, counts["total"], manifest_sha256)
    return SnapshotInfo(folder.name, manifest_sha256, counts, created_at, folder)


def _record(
    engine: Engine,
    name: str,
    manifest_sha256: str,
    snapshot_settings: dict[str, Any],
    counts: dict[str, Any],
    created_at: datetime,
    items: Sequence[ManifestItem],
    partial: Path | None,
) -> None:
    """The database rows of a snapshot; `partial` is renamed into place before the commit.

    The folder appears only when the rows are in, and the rows are committed only when it is there; a kill
    between the rename and the commit leaves a folder without rows, which the next create adopts.
    """
    with session_scope(engine) as session:
        snapshot = Snapshot(
            name=name,
            manifest_sha256=manifest_sha256,
            settings=snapshot_settings,
            counts=counts,
            created_at=created_at,
        )
        session.add(snapshot)
        session.flush()
        session.execute(insert(SnapshotItem), [_item_row(snapshot.id, item) for item in items])
        if partial is not None:
            os.rename(partial, partial.parent / name)


def _left_by_create(folder: Path, name: str) -> bool:
    """Whether a folder without a database record is what an interrupted create renamed into place."""
    if not folder.is_dir() or {path.name for path in folder.iterdir()} != {MANIFEST_FILE, DATASET_FILE}:
        return False
    try:
        return read_dataset(folder).get("name") == name
    except SnapshotError:
        return False


def _adopt(
    engine: Engine,
    folder: Path,
    manifest: bytes,
    items: Sequence[ManifestItem],
    counts: dict[str, Any],
    class_names: Sequence[str],
) -> SnapshotInfo | None:
    """Record the folder an interrupted create left, when it holds exactly the snapshot wanted now."""
    try:
        dataset = read_dataset(folder)
        same = (folder / MANIFEST_FILE).read_bytes() == manifest
        created_at = datetime.fromisoformat(str(dataset["created_at"]))
        snapshot_settings = dataset["settings"]
    except (SnapshotError, OSError, KeyError, ValueError):
        return None
    manifest_sha256 = sha256_bytes(manifest)
    wanted = (manifest_sha256, list(class_names), HOME_FILES_ROOT)
    found = (dataset.get("manifest_sha256"), dataset.get("classes"), dataset.get("files_root"))
    if not same or found != wanted or not isinstance(snapshot_settings, dict):
        return None
    _record(engine, folder.name, manifest_sha256, snapshot_settings, counts, created_at, items, None)
    log.info("snapshot %s: recorded the folder an interrupted create left", folder.name)
    return SnapshotInfo(folder.name, manifest_sha256, counts, created_at, folder)


def _remove_partials(folder: Path) -> None:
    """Hidden folders of this name that a killed create left before its rename."""
    if folder.parent.is_dir():
        for partial in folder.parent.glob(f"{_PARTIAL_PREFIX}{folder.name}-*"):
            _remove_tree(partial)


def _remove_tree(folder: Path) -> None:
    folder.chmod(0o755)  # its files are read-only; the folder must be writable to empty it
    shutil.rmtree(folder)


def check_stored_files(
    store: FileStore, items: Sequence[ManifestItem], workers: int = _CHECK_THREADS
) -> None:
    """Refuse, naming them, the files that no longer have their recorded sha256 (or are not store paths)."""

    def problem(item: ManifestItem) -> str | None:
        try:
            store.read_verified(item.file, item.sha256)
        except CorruptFileError as exc:
            return f"{exc.relpath} ({exc.problem})"
        except UnsafePathError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        corrupt = [found for found in pool.map(problem, items) if found is not None]
    for found in corrupt:
        log.warning("corrupt_file: %s", found)
    if corrupt:
        listed = "; ".join(corrupt[:_LISTED_PROBLEMS]) + ("; ..." if len(corrupt) > _LISTED_PROBLEMS else "")
        raise SnapshotError(
            f"{len(corrupt)} files of the snapshot are corrupt (corrupt_file), nothing written: {listed}. "
            "Restore them from a backup, or reject their crops, then create the snapshot again"
        )


def _item_row(snapshot_id: int, item: ManifestItem) -> dict[str, Any]:
    return {
        "snapshot_id": snapshot_id,
        "crop_id": item.crop_id,
        "augmentation_id": item.augmentation_id,
        "post_id": item.post_id,
        "file_relpath": item.file,
        "sha256": item.sha256,
        "label": item.label,
        "split": item.split,
    }


def _write_partial(folder: Path, manifest: bytes, dataset: dict[str, Any]) -> Path:
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Hidden until renamed; a crash leaves a `.partial-NAME-*` folder that nothing reads.
    partial = Path(tempfile.mkdtemp(prefix=f"{_PARTIAL_PREFIX}{folder.name}-", dir=folder.parent))
    atomic_write_bytes(partial / MANIFEST_FILE, manifest)
    atomic_write_bytes(partial / DATASET_FILE, _json_bytes(dataset))
    for path in (partial / MANIFEST_FILE, partial / DATASET_FILE):
        path.chmod(0o444)  # a reminder that a snapshot is not edited: make a new one
    partial.chmod(0o755)
    return partial


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


# ---------------------------------------------------------------------------------------------------------
# List, show, verify, export


def list_snapshots(engine: Engine, settings: Settings) -> list[SnapshotInfo]:
    with Session(engine) as session:
        rows = session.scalars(select(Snapshot).order_by(Snapshot.created_at, Snapshot.id)).all()
        return [
            SnapshotInfo(r.name, r.manifest_sha256, r.counts, r.created_at, snapshot_folder(settings, r.name))
            for r in rows
        ]


def resolve_folder(settings: Settings, name_or_path: str) -> Path:
    """The snapshot NAME in the home, or a snapshot or export folder given by its path."""
    folder = snapshot_folder(settings, name_or_path) if _NAME.match(name_or_path) else None
    if folder is not None and (folder / DATASET_FILE).is_file():
        return folder
    path = Path(name_or_path).expanduser()
    if (path / DATASET_FILE).is_file():
        return path
    raise SnapshotError(
        f"no snapshot {name_or_path!r} (looked in {snapshot_folder(settings, '')} and at that path)"
    )


def read_dataset(folder: Path) -> dict[str, Any]:
    try:
        value = json.loads((folder / DATASET_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{folder / DATASET_FILE}: cannot be read ({exc})") from exc
    if not isinstance(value, dict):
        raise SnapshotError(f"{folder / DATASET_FILE}: not a JSON object")
    return value


def describe_snapshot(folder: Path) -> dict[str, Any]:
    """What `snapshot show` tells: identity, per-class counts by split and kind, totals, settings."""
    dataset = read_dataset(folder)
    per_class = {
        name: {key: int(counts.get(key, 0)) for key in COUNT_KEYS}
        for name, counts in dataset.get("counts", {}).items()
    }
    for counts in per_class.values():
        counts["total"] = sum(counts[key] for key in COUNT_KEYS if key != "total")
    sizes = {split: int(dataset.get("split_sizes", {}).get(split, 0)) for split in SPLITS}
    settings = dataset.get("settings", {})
    return {
        "name": dataset.get("name"),
        "folder": str(folder),
        "manifest_sha256": dataset.get("manifest_sha256"),
        "created_at": dataset.get("created_at"),
        "classes": dataset.get("classes"),
        "total": sum(sizes.values()),
        "size": settings.get("size"),
        "split_sizes": sizes,
        "per_class": per_class,
        "all": {key: sum(counts[key] for counts in per_class.values()) for key in COUNT_KEYS},
        "settings": settings,
        **(
            {"snapshot_manifest_sha256": exported}
            if (exported := dataset.get("snapshot_manifest_sha256"))
            else {}
        ),
    }


@dataclass
class VerifyReport:
    folder: Path
    files: int = 0
    problems: list[str] = field(default_factory=list)  # the manifest itself
    missing: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.problems or self.missing or self.modified)


def verify_snapshot(
    engine: Engine | None,
    settings: Settings,
    name_or_path: str,
    workers: int = 4,
    progress: ProgressCallback | None = None,
) -> VerifyReport:
    """Re-hash the manifest and every file it lists; compare with dataset.json and the database record."""
    folder = resolve_folder(settings, name_or_path)
    report = VerifyReport(folder)
    dataset = read_dataset(folder)
    try:
        manifest, items = read_manifest(folder)
    except SnapshotError as exc:
        report.problems.append(str(exc))
        return report
    identity = sha256_bytes(manifest)
    if identity != dataset.get("manifest_sha256"):
        report.problems.append(
            f"{MANIFEST_FILE} has sha256 {identity}, dataset.json says {dataset.get('manifest_sha256')}"
        )
    unsafe = path_problem(folder, dataset, items)
    report.problems += [found for found in (classes_problem(folder, dataset, items), unsafe) if found]
    if engine is not None and folder == snapshot_folder(settings, folder.name):
        report.problems += _record_problems(engine, folder, dataset, identity)
    if unsafe is not None:
        return report  # a path outside the snapshot's shape is never opened
    _check_files(report, folder / str(dataset.get("files_root", ".")), items, workers, progress)
    return report


def _check_files(
    report: VerifyReport,
    root: Path,
    items: list[ManifestItem],
    workers: int,
    progress: ProgressCallback | None,
) -> None:
    """Hash every listed file under `root`; record the missing and the modified in `report`."""
    report.files = len(items)

    def check(item: ManifestItem) -> tuple[ManifestItem, str | None]:
        path = root / item.file
        if not path.is_file():
            return item, "missing"
        return item, None if sha256_file(path) == item.sha256 else "modified"

    # hashlib releases the GIL on large buffers: threads hash files in parallel.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, (item, outcome) in enumerate(pool.map(check, items), start=1):
            if outcome == "missing":
                report.missing.append(item.file)
            elif outcome == "modified":
                report.modified.append(item.file)
            if progress is not None:
                progress(done, len(items))


def _record_problems(engine: Engine, folder: Path, dataset: dict[str, Any], identity: str) -> list[str]:
    """Where a home snapshot's files disagree with what the database recorded when it was made."""
    with Session(engine) as session:
        row = session.execute(
            select(Snapshot.manifest_sha256, Snapshot.settings).where(Snapshot.name == folder.name)
        ).first()
    if row is None:
        return [f"the database has no snapshot {folder.name!r}"]
    recorded, recorded_settings = row
    problems = []
    if recorded != identity:
        problems.append(f"{MANIFEST_FILE} has sha256 {identity}, the database recorded {recorded}")
    # Recorded since classes are bound to the snapshot; older records leave the check to the manifest.
    recorded_classes = (recorded_settings or {}).get("classes")
    if recorded_classes is not None and dataset.get("classes") != recorded_classes:
        problems.append(
            f"{folder / DATASET_FILE}: classes {dataset.get('classes')} differ from those recorded when the "
            f"snapshot was made, {recorded_classes}"
        )
    if dataset.get("files_root") != HOME_FILES_ROOT:
        problems.append(f"{folder / DATASET_FILE}: files_root must be {HOME_FILES_ROOT!r} in the home")
    return problems


@dataclass(frozen=True)
class ExportSummary:
    folder: Path
    files: int
    split_sizes: dict[str, int]


def export_snapshot(
    settings: Settings, name_or_path: str, out_dir: Path, progress: ProgressCallback | None = None
) -> ExportSummary:
    """Copy a snapshot to `out_dir/{train,test}/<class>/*.png` (StarGAN's RaFD layout) with metadata.

    Each split folder gets a Hugging Face ImageFolder `metadata.jsonl`; the export root gets its own
    `manifest.jsonl` and `dataset.json` (files_root "."), so the model trains from it without the home.
    Every file is checked against its sha256 while it is copied. The export is written into a hidden sibling
    folder renamed to `out_dir` at the end: a killed export leaves no folder that looks usable.
    """
    source = open_for_export(settings, name_or_path)
    out_dir = write_export_atomically(
        out_dir, lambda partial: _write_export(source.folder, source.dataset, source.items, partial, progress)
    )
    return ExportSummary(out_dir, len(source.items), split_sizes(source.items))


@dataclass(frozen=True)
class ExportSource:
    folder: Path
    dataset: dict[str, Any]
    items: list[ManifestItem]

    def read_checked(self, item: ManifestItem) -> bytes:
        """An item's bytes, refused unless they still have the manifest's sha256."""
        path = self.folder / str(self.dataset.get("files_root", ".")) / item.file
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SnapshotError(f"{path}: cannot be read ({exc}): run `snapshot verify`") from exc
        if sha256_bytes(data) != item.sha256:
            raise SnapshotError(f"{path} differs from the snapshot's sha256: run `snapshot verify`")
        return data


def open_for_export(settings: Settings, name_or_path: str) -> ExportSource:
    """A snapshot whose manifest matches its dataset.json, with classes and paths of its own shape."""
    folder = resolve_folder(settings, name_or_path)
    dataset = read_dataset(folder)
    manifest, items = read_manifest(folder)
    if sha256_bytes(manifest) != dataset.get("manifest_sha256"):
        raise SnapshotError(
            f"{folder / MANIFEST_FILE} does not match its dataset.json: run `snapshot verify`"
        )
    for problem in (classes_problem(folder, dataset, items), path_problem(folder, dataset, items)):
        if problem is not None:
            raise SnapshotError(problem)
    return ExportSource(folder, dataset, items)


def write_export_atomically(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """Run `write` on a hidden sibling of `out_dir`, then rename it to `out_dir` (new or empty folders only).

    A killed export leaves only the hidden folder, which the next export to the same place removes.
    """
    out_dir = out_dir.absolute()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SnapshotError(f"{out_dir} is not empty: export into a new or empty folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out_dir.name}{_PARTIAL_PREFIX}"
    for stale in out_dir.parent.glob(f"{prefix}*"):  # left by a killed export to the same folder
        shutil.rmtree(stale, ignore_errors=True)
    partial = Path(tempfile.mkdtemp(prefix=prefix, dir=out_dir.parent))
    try:
        write(partial)
        os.replace(partial, out_dir)  # onto a missing or empty folder
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out_dir


def split_sizes(items: Iterable[ManifestItem]) -> dict[str, int]:
    sizes = Counter(item.split for item in items)
    return {split: sizes.get(split, 0) for split in SPLITS}


def _write_export(
    folder: Path,
    dataset: dict[str, Any],
    items: Sequence[ManifestItem],
    out_dir: Path,
    progress: ProgressCallback | None,
) -> None:
    source = ExportSource(folder, dataset, list(items))
    exported: list[ManifestItem] = []
    metadata: dict[str, list[str]] = {split: [] for split in SPLITS}
    for done, item in enumerate(items, start=1):
        data = source.read_checked(item)
        file_name = f"{item.label}/{item.post_id}_{item.crop_id}_{item.sha256[:12]}{Path(item.file).suffix}"
        atomic_write_bytes(out_dir / item.split / file_name, data)
        exported.append(exported_item(item, f"{item.split}/{file_name}", dataset["classes"]))
        record = {
            "file_name": file_name,
            "label": item.label,
            "kind": item.kind,
            "post_id": item.post_id,
            "crop_id": item.crop_id,
            "sha256": item.sha256,
        }
        metadata[item.split].append(json.dumps(record, ensure_ascii=False))
        if progress is not None:
            progress(done, len(items))
    for split, lines in metadata.items():
        if lines:
            atomic_write_bytes(out_dir / split / METADATA_FILE, ("\n".join(lines) + "\n").encode("utf-8"))
    write_export_manifest(out_dir, dataset, exported)


def exported_item(item: ManifestItem, file: str, classes: Sequence[str]) -> ManifestItem:
    """A manifest line of an export: the item at its path inside the export folder."""
    return dataclasses.replace(
        item, file=file, augmentation_id=None, label_index=list(classes).index(item.label)
    )


def write_export_manifest(out_dir: Path, dataset: dict[str, Any], exported: Sequence[ManifestItem]) -> None:
    """The export's own manifest.jsonl and dataset.json (files_root "."), to verify and train on its own."""
    export_manifest = manifest_bytes(exported)
    atomic_write_bytes(out_dir / MANIFEST_FILE, export_manifest)
    export_dataset = {
        **dataset,
        "files_root": ".",
        "manifest_sha256": sha256_bytes(export_manifest),
        "snapshot_manifest_sha256": dataset.get("manifest_sha256"),
        "exported_at": datetime.now(UTC).isoformat(),
    }
    atomic_write_bytes(out_dir / DATASET_FILE, _json_bytes(export_dataset))


def referenced_files(session: Session) -> set[str]:
    """Store paths that some snapshot lists: whatever cleans the store must keep them."""
    return set(session.scalars(select(SnapshotItem.file_relpath).distinct()))
