"""Files the store and the stages write get the mode the umask gives (0644 under umask 022), not 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine

from animexpr.config import Settings
from animexpr.curate.review import ReviewQueue
from animexpr.curate.review_csv import export_csv
from animexpr.store import FileStore, atomic_write_bytes


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_022")
def test_store_files_are_0644(store: FileStore) -> None:
    crop = store.put_bytes("crops", b"a crop", "png")
    original = store.put_original("0" * 32, b"an original", "jpg")
    augmented = store.put_many("augmented", [(b"one", "png"), (b"two", "png")])
    for stored in (crop, original, *augmented):
        assert _mode(store.abspath(stored.relpath)) == 0o644, stored.relpath


@pytest.mark.usefixtures("umask_022")
def test_a_sample_grid_and_a_review_export_are_0644(
    tmp_path: Path, engine: Engine, settings: Settings
) -> None:
    from animexpr.model.grid import save_png

    sample = tmp_path / "run" / "samples" / "000100.png"
    save_png(np.zeros((8, 8, 3), dtype=np.uint8), sample)
    export = tmp_path / "queue.csv"
    export_csv(ReviewQueue(engine, settings.class_names), export)
    assert _mode(sample) == 0o644
    assert _mode(export) == 0o644


def test_a_stricter_umask_is_respected_too(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        atomic_write_bytes(tmp_path / "private.txt", b"for the owner only")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "private.txt") == 0o600


@pytest.mark.usefixtures("umask_022")
def test_rewriting_a_file_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert [path.name for path in tmp_path.iterdir()] == ["report.md"]
