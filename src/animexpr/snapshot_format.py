"""The snapshot folder's format, checked the same way by `snapshot verify` (curate) and by training (model).

A snapshot is `manifest.jsonl` (one image a line) and `dataset.json` (classes, counts, settings). The
manifest's sha256 is the snapshot's identity, so whatever training reads must be bound to it:

- the class order: each manifest line carries `label_index`, the position of its label in dataset.json's
  `classes`, so reordering or renaming classes in dataset.json no longer matches the manifest. Manifests
  written before `label_index` existed are still accepted when their order agrees with the classes: every
  snapshot animexpr wrote lists each split sorted by class position, so a reordered `classes` shows;
- every file path: a snapshot in the home lists store paths (`crops/ab/<sha256>.png`, resolved from
  `files_root` "../.."), an export lists plain relative paths inside its own folder. Nothing else (`..`,
  absolute paths, backslashes, hidden names) is ever opened.

This module needs neither the database nor torch, so both rooms use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from animexpr.store import FILE_EXTENSIONS, is_store_relpath

MANIFEST_FILE = "manifest.jsonl"
DATASET_FILE = "dataset.json"
HOME_FILES_ROOT = "../.."  # from HOME/snapshots/NAME to HOME, where a home snapshot's paths start
# One component of an export path: no separators, no "." or ".." and no hidden name.
_PLAIN_COMPONENT = re.compile(r"[^./\\:\x00][^/\\:\x00]*")


@dataclass(frozen=True)
class LabelledLine:
    """What the class binding needs of one manifest line (its number counts from 1)."""

    number: int
    label: str
    label_index: object  # None when the manifest predates label_index; else it must be the class's position
    split: str


def file_path_problem(file: object, files_root: str) -> str | None:
    """Why a manifest's `file` must not be opened, or None when it has the shape its snapshot writes."""
    if not isinstance(file, str):
        return f"file {file!r} is not a string"
    if files_root == HOME_FILES_ROOT:
        if is_store_relpath(file):
            return None
        return f"file {file!r} is not a store path (AREA/ab/KEY.EXT)"
    parts = file.split("/")
    if len(parts) < 2 or not all(_PLAIN_COMPONENT.fullmatch(part) for part in parts):
        return f"file {file!r} is not a plain relative path inside the snapshot folder"
    if parts[-1].rpartition(".")[2].lower() not in FILE_EXTENSIONS:
        return f"file {file!r} is not an image ({', '.join(FILE_EXTENSIONS)})"
    return None


def class_binding_problem(classes: Sequence[str], lines: Iterable[LabelledLine]) -> str | None:
    """Why dataset.json's `classes` disagree with the manifest, or None when they agree."""
    position = {name: index for index, name in enumerate(classes)}
    last_in_split: dict[str, int] = {}
    indexed: bool | None = None
    for line in lines:
        if line.label not in position:
            return f"line {line.number}: label {line.label!r} is not one of the classes {list(classes)}"
        if indexed is None:
            indexed = line.label_index is not None
        elif indexed != (line.label_index is not None):
            return f"line {line.number}: some lines have a label_index and others not"
        if line.label_index is not None:
            if type(line.label_index) is not int or line.label_index != position[line.label]:
                return (
                    f"line {line.number}: {line.label!r} is class {line.label_index!r} in the manifest but "
                    f"class {position[line.label]} in the classes {list(classes)}"
                )
        elif position[line.label] < last_in_split.get(line.split, 0):
            return (
                f"line {line.number}: the manifest lists its {line.split} images by class, and "
                f"{line.label!r} comes after a later class of {list(classes)}"
            )
        last_in_split[line.split] = position[line.label]
    return None


def class_mismatch_message(dataset_path: object, problem: str) -> str:
    """The one-line refusal when dataset.json's classes do not match the manifest."""
    return (
        f"{dataset_path}: its classes do not match {MANIFEST_FILE} ({problem}); labels would be remapped: "
        "restore the snapshot's dataset.json, or make or export the snapshot again"
    )
