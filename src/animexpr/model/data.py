"""Snapshot manifests in, one uint8 image tensor out; batches are drawn from it on the device.

The model room reads only `dataset.json` and `manifest.jsonl` (never the database), so an exported snapshot
trains on a machine that has nothing else. What it reads from dataset.json is checked against the manifest,
whose sha256 is the snapshot's identity (`animexpr.snapshot_format`): a reordered class list or a file path
outside the snapshot's shape is refused, never used.

Every image is decoded once; a training step only indexes the tensor, flips at random and draws random target
labels, all on the device, without host synchronisation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from animexpr.errors import AnimexprError
from animexpr.images import ImageDecodeError, decode_image
from animexpr.snapshot_format import (
    DATASET_FILE,
    MANIFEST_FILE,
    LabelledLine,
    class_binding_problem,
    class_mismatch_message,
    file_path_problem,
)
from animexpr.store import sha256_bytes, sha256_file

log = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 40_000_000  # snapshot crops are small; anything this large is not one


class SnapshotError(AnimexprError):
    pass


@dataclass(frozen=True)
class ManifestRecord:
    file: str
    sha256: str
    label: str
    split: str
    post_id: int | None = None
    crop_id: int | None = None
    kind: str = "original"


@dataclass(frozen=True)
class Snapshot:
    folder: Path
    name: str
    classes: tuple[str, ...]
    files_root: Path
    records: tuple[ManifestRecord, ...]
    manifest_sha256: str

    def split(self, name: str) -> list[ManifestRecord]:
        return [r for r in self.records if r.split == name]

    def path_of(self, record: ManifestRecord) -> Path:
        return self.files_root / record.file


def resolve_snapshot(spec: str | Path, home: Path | None) -> Path:
    """A snapshot or export folder given by path, else the snapshot NAME in HOME/snapshots."""
    path = Path(spec).expanduser()
    if (path / DATASET_FILE).is_file():
        return path
    if home is not None and (home / "snapshots" / str(spec) / DATASET_FILE).is_file():
        return home / "snapshots" / str(spec)
    where = f" or {home / 'snapshots' / str(spec)}" if home is not None else ""
    raise SnapshotError(
        f"no snapshot at {path}{where} (a snapshot folder holds {DATASET_FILE} and {MANIFEST_FILE})"
    )


def load_snapshot(folder: Path) -> Snapshot:
    """Read and check dataset.json and manifest.jsonl (hash of the manifest, labels known, fields present)."""
    try:
        dataset = json.loads((folder / DATASET_FILE).read_text(encoding="utf-8"))
        manifest_bytes = (folder / MANIFEST_FILE).read_bytes()
    except (OSError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{folder}: cannot read the snapshot ({exc})") from exc
    expected = dataset.get("manifest_sha256")
    if expected and sha256_bytes(manifest_bytes) != expected:
        raise SnapshotError(
            f"{folder / MANIFEST_FILE}: its sha256 differs from dataset.json's manifest_sha256"
        )
    classes = dataset.get("classes") or ()
    if not isinstance(classes, list | tuple) or not all(isinstance(name, str) for name in classes):
        raise SnapshotError(f"{folder / DATASET_FILE}: 'classes' must be a list of names")
    if len(classes) < 2:
        raise SnapshotError(f"{folder / DATASET_FILE}: needs a 'classes' list of at least two names")
    files_root = str(dataset.get("files_root", "."))
    records, lines = _read_records(folder, manifest_bytes, tuple(classes), files_root)
    problem = class_binding_problem(classes, lines)
    if problem is not None:
        raise SnapshotError(class_mismatch_message(folder / DATASET_FILE, problem))
    name = str(dataset.get("name", folder.name))
    return Snapshot(
        folder,
        name,
        tuple(classes),
        (folder / files_root).resolve(),
        tuple(records),
        sha256_bytes(manifest_bytes),
    )


def _read_records(
    folder: Path, manifest_bytes: bytes, classes: tuple[str, ...], files_root: str
) -> tuple[list[ManifestRecord], list[LabelledLine]]:
    """The manifest's records, and what the class binding checks of each line."""
    try:
        text = manifest_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SnapshotError(f"{folder / MANIFEST_FILE}: not UTF-8 ({exc})") from exc
    records: list[ManifestRecord] = []
    lines: list[LabelledLine] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            record = ManifestRecord(
                file=row["file"],
                sha256=row["sha256"],
                label=row["label"],
                split=row.get("split", "train"),
                post_id=row.get("post_id"),
                crop_id=row.get("crop_id"),
                kind=row.get("kind", "original"),
            )
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise SnapshotError(f"{folder / MANIFEST_FILE} line {number}: {exc!r}") from exc
        if record.label not in classes:
            raise SnapshotError(f"{folder / MANIFEST_FILE} line {number}: unknown label {record.label!r}")
        unsafe = file_path_problem(record.file, files_root)
        if unsafe is not None:
            raise SnapshotError(f"{folder / MANIFEST_FILE} line {number}: {unsafe}")
        records.append(record)
        lines.append(LabelledLine(number, record.label, row.get("label_index"), record.split))
    return records, lines


def decode_face(data: bytes, image_size: int, source: str = "image") -> np.ndarray:
    """Decode one crop to RGB uint8 (image_size, image_size, 3), resampled with Lanczos when needed."""
    try:
        rgb = decode_image(data, max_pixels=MAX_IMAGE_PIXELS).rgb
    except ImageDecodeError as exc:
        raise SnapshotError(f"{source}: {exc}") from exc
    return resize_square(rgb, image_size)


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize RGB uint8 to size x size (Lanczos; a non-square crop is stretched, as a face crop is square)."""
    if rgb.shape[:2] == (size, size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def decode_records(
    snapshot: Snapshot,
    records: Sequence[ManifestRecord],
    image_size: int,
    verify: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Decode every record once: uint8 images (N, H, W, 3) and int64 labels (N,), on the CPU."""
    images = np.empty((len(records), image_size, image_size, 3), dtype=np.uint8)
    labels = np.empty(len(records), dtype=np.int64)
    class_index = {name: i for i, name in enumerate(snapshot.classes)}
    for i, record in enumerate(records):
        path = snapshot.path_of(record)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SnapshotError(f"{path}: listed in the manifest but cannot be read ({exc})") from exc
        if verify and sha256_bytes(data) != record.sha256:
            raise SnapshotError(f"{path}: its sha256 differs from the manifest's")
        images[i] = decode_face(data, image_size, str(path))
        labels[i] = class_index[record.label]
        if progress is not None:
            progress(i + 1, len(records))
    return torch.from_numpy(images), torch.from_numpy(labels)


def to_model_input(images_u8: Tensor, channels_last: bool = True) -> Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]; the permuted view is already channels-last."""
    x = images_u8.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class FaceBatches:
    """The decoded training set on one device, and the sampler that draws batches from it.

    Images are sorted by label so that class-balanced sampling is arithmetic (class offset + uniform index),
    which keeps every draw on the device and capturable in a CUDA graph.
    """

    def __init__(
        self,
        images_u8: Tensor,
        labels: Tensor,
        num_classes: int,
        device: torch.device,
        balanced: bool = False,
        channels_last: bool = True,
        storage: torch.device | None = None,
    ) -> None:
        if len(images_u8) == 0:
            raise SnapshotError("the training split is empty")
        # Where the images live: the training device when they fit (the usual case), else the CPU.
        self.storage = storage or device
        order = torch.argsort(labels, stable=True)
        self.images = images_u8[order].to(self.storage)
        self.labels = labels[order].to(self.storage)
        if self.storage.type == "cpu" and device.type == "cuda":
            self.images = self.images.pin_memory()
        self.num_classes = num_classes
        self.device = device
        self.balanced = balanced
        self.channels_last = channels_last
        counts = torch.bincount(labels, minlength=num_classes)
        if balanced and bool((counts == 0).any()):
            missing = int(torch.nonzero(counts == 0)[0])
            raise SnapshotError(
                f"balanced sampling needs every class in the training split; class {missing} has none"
            )
        self.class_counts = counts.to(self.storage)
        self.class_offsets = (torch.cumsum(counts, 0) - counts).to(self.storage)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def on_device(self) -> bool:
        """True when sampling runs entirely on the training device (and can be captured in a graph)."""
        return self.storage == self.device

    def sample(self, batch: int) -> tuple[Tensor, Tensor, Tensor]:
        """(x in [-1, 1] with random horizontal flips, source labels, random target labels)."""
        where = self.storage
        if self.balanced:
            classes = torch.randint(0, self.num_classes, (batch,), device=where)
            within = torch.rand(batch, device=where) * self.class_counts[classes]
            index = self.class_offsets[classes] + within.long().clamp_max(self.class_counts[classes] - 1)
        else:
            index = torch.randint(0, len(self.images), (batch,), device=where)
        faces = self.images[index]
        flip = torch.rand(batch, device=where) < 0.5
        faces = torch.where(flip[:, None, None, None], faces.flip(2), faces)
        target = torch.randint(0, self.num_classes, (batch,), device=where)
        source = self.labels[index]
        if not self.on_device:
            faces, source, target = (t.to(self.device, non_blocking=True) for t in (faces, source, target))
        return to_model_input(faces, self.channels_last), source, target


def fits_on_device(num_bytes: int, device: torch.device, fraction: float = 0.3) -> bool:
    """Whether the dataset may live in GPU memory (at most `fraction` of what is free)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return num_bytes <= fraction * free


def fixed_sample_indices(labels: Tensor, count: int, num_classes: int) -> list[int]:
    """A deterministic pick of `count` images spread over the classes (round robin), for the sample grid."""
    per_class = [torch.nonzero(labels == c).flatten().tolist() for c in range(num_classes)]
    picked: list[int] = []
    position = 0
    while len(picked) < min(count, len(labels)):
        for members in per_class:
            if position < len(members) and len(picked) < count:
                picked.append(members[position])
        position += 1
    return picked


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def write_folder_snapshot(
    class_root: Path, out: Path, test_per_class: int = 0, limit: int | None = None
) -> Path:
    """An export-style snapshot (files_root ".") from a folder of class sub-folders, files copied into `out`.

    For using the model without the curate pipeline (benchmarks, tests, stand-in classes); class names are
    the sub-folder names in sorted order, the first `test_per_class` files of each go to the test split.
    """
    import shutil

    classes = sorted(p.name for p in class_root.iterdir() if p.is_dir())
    lines = []
    for label in classes:
        files = sorted(p for p in (class_root / label).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for i, source in enumerate(files[:limit]):
            relative = f"files/{label}/{source.name}"
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, out / relative)
            split = "test" if i < test_per_class else "train"
            sha = sha256_file(source)
            record = {
                "file": relative,
                "sha256": sha,
                "label": label,
                "label_index": classes.index(label),
                "split": split,
                "post_id": i,
                "crop_id": i,
            }
            lines.append(json.dumps(record | {"kind": "original"}))
    manifest = ("\n".join(lines) + "\n").encode("utf-8")
    (out / MANIFEST_FILE).write_bytes(manifest)
    dataset = {
        "name": out.name,
        "classes": classes,
        "files_root": ".",
        "manifest_sha256": sha256_bytes(manifest),
        "counts": {c: sum(f'"label": "{c}"' in line for line in lines) for c in classes},
    }
    (out / DATASET_FILE).write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    return out
