"""Frozen snapshots: exactly what a model is trained and tested on, as files that never change.

`HOME/snapshots/NAME/manifest.jsonl` lists every image (one JSON object a line: file, sha256, label,
split, post_id, crop_id, kind) and `dataset.json` summarises it; the manifest's sha256 is the snapshot's
identity.
The model room reads only these two files.

- Train/test is split by source post, stratified by class: all crops of a post, and every crop that shows the
  same picture as another (near-duplicates under any label, mirrors included), fall on one side. The test side
  holds originals only; augmented images exist only of training crops.
- Only accepted crops, one per duplicate cluster, and the augmentations of the latest `animexpr expand` plan.
- Later review changes never alter a snapshot: the manifest copies label and split, crop and augmentation
  files are content-addressed (a file's bytes never change under its name) and nothing deletes a file a
  snapshot references (`referenced_files`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
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
from animexpr.curate.augment import (
    RECIPE_VERSION,
    Balance,
    ExpandError,
    latest_expansion,
    plan_expansion,
    recipe_description,
)
from animexpr.curate.dedup import (
    DEFAULT_MAX_DISTANCE,
    HASH_NAME,
    CropFacts,
    eligible_crops,
    related_groups,
    update_duplicates,
)
from animexpr.db.models import Augmentation, Expansion, Snapshot, SnapshotItem
from animexpr.db.session import current_revision, session_scope
from animexpr.errors import AnimexprError
from animexpr.store import FileStore, atomic_write_bytes, sha256_bytes, sha256_file

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.jsonl"
DATASET_FILE = "dataset.json"
METADATA_FILE = "metadata.jsonl"
SNAPSHOTS_DIR = "snapshots"
HOME_FILES_ROOT = "../.."  # from HOME/snapshots/NAME to HOME, where the manifest's paths start
DEFAULT_TEST_FRACTION = 0.1
SPLITS = ("train", "test")
KINDS = ("original", "augmented")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PARTIAL_PREFIX = ".partial-"

ProgressCallback = Callable[[int, int], None]


class SnapshotError(AnimexprError):
    pass


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

    def line(self) -> str:
        record = {
            "file": self.file,
            "sha256": self.sha256,
            "label": self.label,
            "split": self.split,
            "post_id": self.post_id,
            "crop_id": self.crop_id,
            "kind": self.kind,
        }
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_line(cls, line: str) -> ManifestItem:
        record = json.loads(line)
        return cls(
            **{key: record[key] for key in ("file", "sha256", "label", "split", "post_id", "crop_id", "kind")}
        )


def manifest_bytes(items: Iterable[ManifestItem]) -> bytes:
    return "".join(item.line() + "\n" for item in items).encode("utf-8")


def read_manifest(folder: Path) -> tuple[bytes, list[ManifestItem]]:
    data = (folder / MANIFEST_FILE).read_bytes()
    items = [ManifestItem.from_line(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    return data, items


# ---------------------------------------------------------------------------------------------------------
# Split


def _seeded_key(seed: int, key: int) -> bytes:
    return hashlib.sha256(f"{seed}/{key}".encode()).digest()


def assign_splits(
    crops: Sequence[CropFacts],
    group_of: dict[int, int],
    class_names: Sequence[str],
    test_fraction: float,
    seed: int,
) -> dict[int, str]:
    """Crop id -> "train" or "test", whole groups at a time, stratified by class.

    A group counts for its most common label. In each class, groups are taken in a seeded order until the
    test side holds round(test_fraction x the class's crops); a class with two groups or more gets at least
    one test group when the fraction is above zero, and always keeps one group for training.
    """
    if not 0 <= test_fraction < 1:
        raise SnapshotError(f"--test-fraction must be at least 0 and below 1, not {test_fraction}")
    members: dict[int, list[CropFacts]] = defaultdict(list)
    for crop in crops:
        members[group_of[crop.id]].append(crop)
    class_index = {name: index for index, name in enumerate(class_names)}
    strata: dict[str, list[int]] = defaultdict(list)
    for key, group in members.items():
        labels = Counter(crop.label for crop in group)
        strata[min(labels, key=lambda name: (-labels[name], class_index[name]))].append(key)
    split = {crop.id: "train" for crop in crops}
    for keys in strata.values():
        keys.sort(key=lambda key: _seeded_key(seed, key))
        wanted = math.floor(test_fraction * sum(len(members[key]) for key in keys) + 0.5)
        if test_fraction > 0 and len(keys) >= 2:
            wanted = max(wanted, 1)
        taken = 0
        for key in keys[:-1]:
            if taken >= wanted:
                break
            for crop in members[key]:
                split[crop.id] = "test"
            taken += len(members[key])
    return split


# ---------------------------------------------------------------------------------------------------------
# Create


@dataclass(frozen=True)
class SnapshotContent:
    items: list[ManifestItem]
    expansion: dict[str, Any] | None
    max_distance: int


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
    rows = session.scalars(
        select(Augmentation).where(
            Augmentation.recipe_version == expansion.recipe_version, Augmentation.seed == expansion.seed
        )
    )
    made = {(row.crop_id, row.variant_index): row for row in rows}
    planned: dict[int, list[Augmentation]] = defaultdict(list)
    missing = 0
    for crop_id, variant_index in plan.jobs():
        row = made.get((crop_id, variant_index))
        if row is None:
            missing += 1
        else:
            planned[crop_id].append(row)
    if missing:
        raise SnapshotError(
            f"{missing} augmented images of the last expansion plan (target {expansion.target}, "
            f"{expansion.balance}, seed {expansion.seed}) are missing, because accepted crops changed since: "
            f"run `animexpr expand --target {expansion.target} --balance {expansion.balance} "
            f"--seed {expansion.seed}` first"
        )
    return planned


def collect_content(
    engine: Engine, store: FileStore, settings: Settings, test_fraction: float, seed: int
) -> SnapshotContent:
    """Every image of a new snapshot, in manifest order."""
    with Session(engine) as session:
        expansion = latest_expansion(session)
    max_distance = expansion.max_distance if expansion is not None else DEFAULT_MAX_DISTANCE
    update_duplicates(engine, store, max_distance)
    with Session(engine) as session:
        crops = eligible_crops(session, settings.class_names)
        if not crops:
            raise SnapshotError("there is no accepted crop: review some crops before making a snapshot")
        planned: dict[int, list[Augmentation]] = {}
        expansion_record: dict[str, Any] | None = None
        if expansion is None:
            log.warning("no expansion has been run: the snapshot holds originals only")
        else:
            planned = _planned_augmentations(session, crops, settings, expansion)
            expansion_record = {
                "target": expansion.target,
                "balance": expansion.balance,
                "seed": expansion.seed,
                "recipe": recipe_description(),
            }
    split = assign_splits(
        crops, related_groups(crops, max_distance), settings.class_names, test_fraction, seed
    )
    items: list[ManifestItem] = []
    for crop in crops:
        side = split[crop.id]
        items.append(
            ManifestItem(crop.file_relpath, crop.sha256, crop.label, side, crop.post_id, crop.id, "original")
        )
        if side == "train":
            items += [
                ManifestItem(
                    row.file_relpath, row.sha256, crop.label, side, crop.post_id, crop.id, "augmented", row.id
                )
                for row in sorted(planned.get(crop.id, []), key=lambda row: row.variant_index)
            ]
    class_index = {name: index for index, name in enumerate(settings.class_names)}
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
    return SnapshotContent(items=items, expansion=expansion_record, max_distance=max_distance)


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


def create_snapshot(
    engine: Engine,
    store: FileStore,
    settings: Settings,
    name: str,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> SnapshotInfo:
    """Freeze the current accepted, de-duplicated crops and their planned augmentations under NAME."""
    _check_name(name)
    folder = snapshot_folder(settings, name)
    with Session(engine) as session:
        if session.scalar(select(Snapshot.id).where(Snapshot.name == name)) is not None:
            raise SnapshotError(
                f"snapshot {name!r} exists already; snapshots never change: pick another name"
            )
    if folder.exists():
        raise SnapshotError(
            f"{folder} exists but the database has no snapshot {name!r} (left by an interrupted create?): "
            "remove the folder or pick another name"
        )
    content = collect_content(engine, store, settings, test_fraction, seed)
    manifest = manifest_bytes(content.items)
    manifest_sha256 = sha256_bytes(manifest)
    counts = count_items(content.items, settings.class_names)
    created_at = datetime.now(UTC)
    snapshot_settings = {
        "test_fraction": test_fraction,
        "split_seed": seed,
        "split_by": "source post; near-duplicates of any label stay together",
        "dedup": {"hash": HASH_NAME, "max_distance": content.max_distance},
        "expansion": content.expansion,
        "class_tags": {spec.name: list(spec.tags) for spec in settings.classes},
        "animexpr_version": __version__,
        "schema_revision": current_revision(engine),
    }
    dataset = {
        "name": name,
        "classes": list(settings.class_names),
        "counts": counts["per_class"],
        "split_sizes": counts["split_sizes"],
        "files_root": HOME_FILES_ROOT,
        "manifest_sha256": manifest_sha256,
        "settings": snapshot_settings,
        "created_at": created_at.isoformat(),
    }
    partial = _write_partial(folder, manifest, dataset)
    try:
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
            session.execute(insert(SnapshotItem), [_item_row(snapshot.id, item) for item in content.items])
            # The folder appears only when the rows are in; the rows are committed only when it is there.
            os.rename(partial, folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info("snapshot %s: %d images, manifest %s", name, counts["total"], manifest_sha256)
    return SnapshotInfo(name, manifest_sha256, counts, created_at, folder)


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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        report.problems.append(f"{MANIFEST_FILE} cannot be read: {exc}")
        return report
    identity = sha256_bytes(manifest)
    if identity != dataset.get("manifest_sha256"):
        report.problems.append(
            f"{MANIFEST_FILE} has sha256 {identity}, dataset.json says {dataset.get('manifest_sha256')}"
        )
    if engine is not None and folder == snapshot_folder(settings, folder.name):
        with Session(engine) as session:
            recorded = session.scalar(select(Snapshot.manifest_sha256).where(Snapshot.name == folder.name))
        if recorded is None:
            report.problems.append(f"the database has no snapshot {folder.name!r}")
        elif recorded != identity:
            report.problems.append(f"{MANIFEST_FILE} has sha256 {identity}, the database recorded {recorded}")
    root = folder / str(dataset.get("files_root", "."))
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
    return report


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
    Every file is checked against its sha256 while it is copied.
    """
    folder = resolve_folder(settings, name_or_path)
    dataset = read_dataset(folder)
    manifest, items = read_manifest(folder)
    if sha256_bytes(manifest) != dataset.get("manifest_sha256"):
        raise SnapshotError(
            f"{folder / MANIFEST_FILE} does not match its dataset.json: run `snapshot verify`"
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SnapshotError(f"{out_dir} is not empty: export into a new or empty folder")
    root = folder / str(dataset.get("files_root", "."))
    exported: list[ManifestItem] = []
    metadata: dict[str, list[str]] = {split: [] for split in SPLITS}
    for done, item in enumerate(items, start=1):
        data = (root / item.file).read_bytes()
        if sha256_bytes(data) != item.sha256:
            raise SnapshotError(
                f"{root / item.file} differs from the snapshot's sha256: run `snapshot verify`"
            )
        file_name = f"{item.label}/{item.post_id}_{item.crop_id}_{item.sha256[:12]}{Path(item.file).suffix}"
        atomic_write_bytes(out_dir / item.split / file_name, data)
        exported.append(
            ManifestItem(
                f"{item.split}/{file_name}",
                item.sha256,
                item.label,
                item.split,
                item.post_id,
                item.crop_id,
                item.kind,
            )
        )
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
    sizes = Counter(item.split for item in items)
    return ExportSummary(out_dir, len(items), {split: sizes.get(split, 0) for split in SPLITS})


def referenced_files(session: Session) -> set[str]:
    """Store paths that some snapshot lists: whatever cleans the store must keep them."""
    return set(session.scalars(select(SnapshotItem.file_relpath).distinct()))
