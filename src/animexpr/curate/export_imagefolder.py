"""`snapshot export NAME DIR --format imagefolder`: a snapshot as Hugging Face's `datasets` library loads it.

`load_dataset("imagefolder", data_dir=DIR)` reads `DIR/train/` and `DIR/test/`, each holding its images and a
`metadata.csv` whose `file_name` column names them; every other column becomes a column of the dataset. The
columns carry each image's provenance, from the home's database as it stood when the snapshot was made: the
Danbooru post (id, page, md5 of the original), the crop (its box and square in the original, the detector),
the reviewer whose decision accepted it, and for an augmented image the crop it was made from with the
recipe and the parameters actually applied. `README.md` is the dataset card. The folder also holds its own
`manifest.jsonl` and `dataset.json`, so `snapshot verify DIR` and `train --snapshot DIR` work on it as on a
StarGAN-layout export.

Every column has a value in every row (originals say `none` and `{}` where an augmented image has a recipe and
parameters): the library infers each column's type per split, and a column that is empty throughout the test
split would get another type there than in the training split, which it refuses to load.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, Select, select
from sqlalchemy.orm import Session

from animexpr.config import Settings
from animexpr.curate.snapshot import (
    SPLITS,
    ExportSource,
    ExportSummary,
    ManifestItem,
    ProgressCallback,
    SnapshotError,
    atomic_write_bytes,
    exported_item,
    open_for_export,
    snapshot_folder,
    split_sizes,
    write_export_atomically,
    write_export_manifest,
)
from animexpr.db.models import Augmentation, Crop, CropState, Post, ReviewEvent, Snapshot, SnapshotItem

METADATA_CSV = "metadata.csv"
CARD_FILE = "README.md"
DANBOORU_URL = "https://danbooru.donmai.us"
NOT_RECORDED = "unknown"  # a value the database does not hold (crops accepted before review events existed)
NO_AUGMENTATION = "none"
COLUMNS = (
    "file_name",
    "label",
    "label_index",
    "kind",
    "sha256",
    "post_id",
    "post_url",
    "post_md5",
    "crop_id",
    "crop_sha256",
    "box_x",
    "box_y",
    "box_w",
    "box_h",
    "crop_x",
    "crop_y",
    "crop_size",
    "detector",
    "detection_score",
    "reviewer",
    "augmentation_recipe",
    "augmentation_params",
)
COLUMN_DOCS = {
    "file_name": "the image, relative to its split folder",
    "label": "the expression class",
    "label_index": "the class's position in the classes of dataset.json",
    "kind": "`original` (a reviewed face crop) or `augmented` (a copy of a training crop)",
    "sha256": "of the image file",
    "post_id": "the Danbooru post the face comes from",
    "post_url": "that post's page",
    "post_md5": "md5 of the post's original file, as Danbooru lists it",
    "crop_id": "the crop: the image itself, or for an augmented image the crop it was made from",
    "crop_sha256": "of that crop's file",
    "box_x, box_y, box_w, box_h": "the detector's face box in the original, in pixels",
    "crop_x, crop_y, crop_size": "the square cut out of the original around the box, in pixels",
    "detector": "the face detector that found the box",
    "detection_score": "its confidence, empty when the detector gives none",
    "reviewer": "who accepted the crop (the last decision before the snapshot was made)",
    "augmentation_recipe": "the recipe version of an augmented image; `none` for an original",
    "augmentation_params": "JSON: seed, variant index, the image's own seed and each transform's applied "
    "parameters; `{}` for an original",
}


@dataclass(frozen=True)
class Provenance:
    """Where one crop came from and who accepted it."""

    post_url: str
    post_md5: str
    crop_sha256: str
    box: tuple[int, int, int, int]  # x, y, w, h
    square: tuple[int, int, int]  # x, y, size
    detector: str
    detection_score: float | None
    reviewer: str


@dataclass(frozen=True)
class SnapshotProvenance:
    crops: dict[int, Provenance]
    augmentations: dict[str, Augmentation]  # store path of an augmented image -> its row


def export_imagefolder(
    engine: Engine,
    settings: Settings,
    name: str,
    out_dir: Path,
    progress: ProgressCallback | None = None,
) -> ExportSummary:
    """Write snapshot NAME of the home to `out_dir` in the ImageFolder layout with provenance and a card.

    Only a snapshot of this home can be exported so: the provenance is in its database. The export is
    written into a hidden sibling folder renamed to `out_dir` at the end, like the StarGAN export.
    """
    source = open_for_export(settings, name)
    if source.folder != snapshot_folder(settings, source.folder.name):
        raise SnapshotError(
            f"{name}: the imagefolder export takes a snapshot of this home by its name (its provenance is in "
            "the home's database), not a folder; `--format stargan` exports any snapshot folder"
        )
    provenance = load_provenance(engine, source)
    out_dir = write_export_atomically(
        out_dir, lambda partial: _write_imagefolder(source, provenance, partial, progress)
    )
    return ExportSummary(out_dir, len(source.items), split_sizes(source.items))


# ---------------------------------------------------------------------------------------------------------
# Provenance


def post_page_url(post_id: int, file_url: str | None) -> str:
    """The post's page. Danbooru serves files from other hosts of donmai.us than its pages; any other server
    (a Danbooru-compatible one) is taken to serve its pages where it serves its files."""
    parts = urlsplit(file_url or "")
    host = parts.hostname or ""
    if not host or host == "donmai.us" or host.endswith(".donmai.us"):
        return f"{DANBOORU_URL}/posts/{post_id}"
    return f"{parts.scheme}://{parts.netloc}/posts/{post_id}"


def load_provenance(engine: Engine, source: ExportSource) -> SnapshotProvenance:
    """The database rows behind a home snapshot, refused when the record does not match the manifest."""
    name = source.folder.name
    with Session(engine) as session:
        snapshot = session.scalars(select(Snapshot).where(Snapshot.name == name)).first()
        if snapshot is None or snapshot.manifest_sha256 != source.dataset.get("manifest_sha256"):
            raise SnapshotError(
                f"snapshot {name}: the database records another manifest or none: "
                f"run `snapshot verify {name}`"
            )
        in_snapshot = select(SnapshotItem.crop_id).where(SnapshotItem.snapshot_id == snapshot.id)
        reviewers = _reviewers(session, in_snapshot, snapshot.created_at)
        rows = session.execute(
            select(Crop, Post.md5, Post.file_url)
            .join(Post, Crop.post_id == Post.id)
            .where(Crop.id.in_(in_snapshot))
        ).all()
        crops = {crop.id: _provenance(crop, md5, url, reviewers.get(crop.id)) for crop, md5, url in rows}
        copies = session.execute(
            select(SnapshotItem.file_relpath, Augmentation)
            .join(Augmentation, SnapshotItem.augmentation_id == Augmentation.id)
            .where(SnapshotItem.snapshot_id == snapshot.id)
        )
        augmentations = dict(copies.all())
        session.expunge_all()
    missing = {item.crop_id for item in source.items} - set(crops)
    if missing:
        raise SnapshotError(f"snapshot {name}: the database has no crop {min(missing)} of its manifest")
    return SnapshotProvenance(crops, augmentations)


def _reviewers(session: Session, crop_ids: Select[Any], made_at: datetime) -> dict[int, str]:
    """Crop id -> the reviewer of its last decision that left it accepted before the snapshot was made."""
    events = session.execute(
        select(ReviewEvent.crop_id, ReviewEvent.reviewer)
        .where(
            ReviewEvent.crop_id.in_(crop_ids),
            ReviewEvent.state_after == CropState.ACCEPTED,
            ReviewEvent.created_at <= made_at,
        )
        .order_by(ReviewEvent.id)
    )
    return dict(events.all())  # a later event overwrites an earlier one


def _provenance(crop: Crop, md5: str | None, file_url: str | None, reviewer: str | None) -> Provenance:
    return Provenance(
        post_url=post_page_url(crop.post_id, file_url),
        post_md5=md5 or NOT_RECORDED,
        crop_sha256=crop.sha256,
        box=(crop.box_x, crop.box_y, crop.box_w, crop.box_h),
        square=(crop.crop_x, crop.crop_y, crop.crop_size),
        detector=crop.detector,
        detection_score=crop.detection_score,
        reviewer=reviewer or NOT_RECORDED,
    )


# ---------------------------------------------------------------------------------------------------------
# Writing


def image_file_name(item: ManifestItem) -> str:
    """Unique in its split: a crop's copies differ in their bytes, and a snapshot lists a crop once."""
    return f"{item.label}-{item.post_id}-{item.crop_id}-{item.sha256[:12]}{Path(item.file).suffix}"


def metadata_row(item: ManifestItem, provenance: SnapshotProvenance, label_index: int) -> dict[str, Any]:
    crop = provenance.crops[item.crop_id]
    recipe, params = NO_AUGMENTATION, "{}"
    if item.kind == "augmented":
        augmentation = provenance.augmentations.get(item.file)
        if augmentation is None:
            raise SnapshotError(f"{item.file}: the database holds no augmentation of this snapshot for it")
        recipe = augmentation.recipe_version
        applied = {
            "seed": augmentation.seed,
            "variant_index": augmentation.variant_index,
            **augmentation.params,
        }
        params = json.dumps(applied, ensure_ascii=False, separators=(",", ":"))
    return {
        "file_name": image_file_name(item),
        "label": item.label,
        "label_index": label_index,
        "kind": item.kind,
        "sha256": item.sha256,
        "post_id": item.post_id,
        "post_url": crop.post_url,
        "post_md5": crop.post_md5,
        "crop_id": item.crop_id,
        "crop_sha256": crop.crop_sha256,
        "box_x": crop.box[0],
        "box_y": crop.box[1],
        "box_w": crop.box[2],
        "box_h": crop.box[3],
        "crop_x": crop.square[0],
        "crop_y": crop.square[1],
        "crop_size": crop.square[2],
        "detector": crop.detector,
        "detection_score": "" if crop.detection_score is None else crop.detection_score,
        "reviewer": crop.reviewer,
        "augmentation_recipe": recipe,
        "augmentation_params": params,
    }


def _csv_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _write_imagefolder(
    source: ExportSource,
    provenance: SnapshotProvenance,
    out_dir: Path,
    progress: ProgressCallback | None,
) -> None:
    classes = list(source.dataset["classes"])
    rows: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    exported: list[ManifestItem] = []
    for done, item in enumerate(source.items, start=1):
        row = metadata_row(item, provenance, classes.index(item.label))
        atomic_write_bytes(out_dir / item.split / row["file_name"], source.read_checked(item))
        exported.append(exported_item(item, f"{item.split}/{row['file_name']}", classes))
        rows[item.split].append(row)
        if progress is not None:
            progress(done, len(source.items))
    for split, split_rows in rows.items():
        if split_rows:
            atomic_write_bytes(out_dir / split / METADATA_CSV, _csv_bytes(split_rows))
    write_export_manifest(out_dir, source.dataset, exported)
    atomic_write_bytes(out_dir / CARD_FILE, dataset_card(source, rows).encode("utf-8"))


# ---------------------------------------------------------------------------------------------------------
# The dataset card


def _size_category(total: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if total < limit:
            return name
    return "100K<n<1M"


def _front_matter(name: str, total: int, splits: Sequence[str]) -> list[str]:
    """The card's YAML header: what the Hub shows, and where `load_dataset(DIR)` finds each split."""
    lines = [
        "---",
        f"pretty_name: {json.dumps(name)}",
        "license: other",  # the pictures' rights stay with their artists (see the card)
        "task_categories:",
        "- image-classification",
        "tags:",
        "- anime",
        "- facial-expression",
        "- danbooru",
        "size_categories:",
        f"- {_size_category(total)}",
        "configs:",
        "- config_name: default",
        "  data_files:",
    ]
    for split in splits:
        lines += [f"  - split: {split}", f'    path: "{split}/*"']
    return [*lines, "---", ""]


def _counts_table(classes: Sequence[str], rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    counts = Counter(
        (row["label"], split, row["kind"]) for split, split_rows in rows.items() for row in split_rows
    )
    header = ["| class | train originals | train augmented | test | total |", "|---|---:|---:|---:|---:|"]
    body = []
    columns = (("train", "original"), ("train", "augmented"), ("test", "original"))
    for name in [*classes, None]:
        cells = [
            sum(counts[(label, split, kind)] for label in ([name] if name else classes))
            for split, kind in columns
        ]
        body.append(f"| {name or '**all**'} | " + " | ".join(str(c) for c in [*cells, sum(cells)]) + " |")
    return [*header, *body]


def _how_it_was_made(
    dataset: dict[str, Any], rows: dict[str, list[dict[str, Any]]], augmented: int
) -> list[str]:
    settings = dataset.get("settings", {})
    all_rows = [row for split_rows in rows.values() for row in split_rows]
    originals = [row for row in all_rows if row["kind"] == "original"]
    tags = settings.get("class_tags", {})
    detectors = Counter(row["detector"] for row in originals)
    reviewers = Counter(row["reviewer"] for row in originals)
    dedup = settings.get("dedup", {})
    expansion = settings.get("expansion") or {}
    recipe = (expansion.get("recipe") or {}).get("version", NO_AUGMENTATION)
    return [
        "- **Collected**: Danbooru posts found by tag, one search per class: "
        + "; ".join(f"{name}: {', '.join(f'`{tag}`' for tag in found)}" for name, found in tags.items())
        + ". Posts tagged with more than one class were left out.",
        "- **Filtered**: faces cut out of each post by "
        + ", ".join(f"`{name}` ({count})" for name, count in sorted(detectors.items()))
        + f"; near-duplicate pictures (perceptual hash `{dedup.get('hash')}`, within "
        f"{dedup.get('max_distance')} bits, mirrors included) kept once.",
        "- **Reviewed**: only crops accepted in review, under the label review gave them; the decisions "
        "that accepted them were made by "
        + ", ".join(f"{name} ({count})" for name, count in reviewers.most_common())
        + ".",
        f"- **Split**: by source post, stratified by class, test fraction {settings.get('test_fraction')}, "
        f"seed {settings.get('split_seed')}; crops of one post, and pictures near-identical under any label, "
        "fall on one side. The test side holds originals only.",
        f"- **Expanded**: {augmented} augmented copies of training crops, recipe `{recipe}` "
        "(horizontal flip, a small similarity transform, mild brightness and contrast; no colour change), "
        f"seed {expansion.get('seed')}"
        + (f", to exactly {settings['size']} images" if settings.get("size") else "")
        + ". Each copy's `augmentation_params` say what was applied.",
    ]


def dataset_card(source: ExportSource, rows: dict[str, list[dict[str, Any]]]) -> str:
    """The card: counts, how the images were collected, filtered, reviewed, split and expanded, identity,
    how to load them, the columns, and whose pictures they are."""
    dataset = source.dataset
    name = str(dataset.get("name", source.folder.name))
    classes = list(dataset["classes"])
    total = sum(len(split_rows) for split_rows in rows.values())
    splits = [split for split in SPLITS if rows[split]]
    augmented = sum(1 for split_rows in rows.values() for row in split_rows if row["kind"] == "augmented")
    lines = [
        *_front_matter(name, total, splits),
        f"# {name}: anime facial expressions from Danbooru",
        "",
        f"{total} face crops of anime characters in {len(classes)} expression classes "
        f"({', '.join(classes)}), made with animexpr {dataset.get('settings', {}).get('animexpr_version')} "
        "for expression transformation (Rao, Min, Deng and Liu, *Facial expression transformation for "
        "anime-style image based on decoder control and attention mask*).",
        "",
        "## Counts",
        "",
        *_counts_table(classes, rows),
        "",
        "## How it was made",
        "",
        *_how_it_was_made(dataset, rows, augmented),
        f"- **Identity**: snapshot `{name}`, manifest sha256 `{dataset.get('manifest_sha256')}`, made "
        f"{dataset.get('created_at')}. `manifest.jsonl` and `dataset.json` here list every file with "
        "its sha256; `animexpr snapshot verify DIR` checks them.",
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'faces = load_dataset("imagefolder", data_dir="path/to/this/folder")',
        "```",
        "",
        "## Columns of metadata.csv",
        "",
        *(f"- `{column}`: {doc}" for column, doc in COLUMN_DOCS.items()),
        "",
        "## Rights",
        "",
        "The pictures belong to their artists. They come from Danbooru (danbooru.donmai.us), an image board "
        "that does not own them; each row's `post_url` leads to the post, which names the artist and the "
        "source. This dataset is shared for research on facial expressions; ask the artists before any other "
        "use, and remove an artist's pictures when they ask.",
        "",
    ]
    return "\n".join(lines)
