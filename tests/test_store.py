"""The content-addressed store: atomic writes, verification, no file without completion."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import func, select

from animexpr.db.models import Post, PostState
from animexpr.db.session import session_scope
from animexpr.store import (
    CorruptFileError,
    FileStore,
    UnsafePathError,
    atomic_write_bytes,
    is_store_relpath,
    sha256_bytes,
)


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_put_bytes_is_content_addressed_and_idempotent(store: FileStore) -> None:
    first = store.put_bytes("crops", b"pixels", "png")
    second = store.put_bytes("crops", b"pixels", ".PNG")
    assert first == second
    assert first.relpath == f"crops/{first.sha256[:2]}/{first.sha256}.png"
    assert first.sha256 == sha256_bytes(b"pixels")
    assert store.abspath(first.relpath).read_bytes() == b"pixels"
    assert len(_all_files(store.home / "crops")) == 1


def test_verify_catches_a_modified_file(store: FileStore) -> None:
    stored = store.put_bytes("augmented", b"original bytes", "png")
    assert store.verify(stored.relpath, stored.sha256)
    store.abspath(stored.relpath).write_bytes(b"tampered bytes")
    assert not store.verify(stored.relpath, stored.sha256)
    store.abspath(stored.relpath).unlink()
    assert not store.verify(stored.relpath, stored.sha256)


def test_a_damaged_file_at_the_target_is_rewritten(store: FileStore) -> None:
    stored = store.put_original("d" * 32, b"full download", "jpg")
    store.abspath(stored.relpath).write_bytes(b"full dow")
    store.put_original("d" * 32, b"full download", "jpg")
    assert store.abspath(stored.relpath).read_bytes() == b"full download"


def test_failure_mid_write_leaves_no_file_and_no_row(
    store: FileStore, engine, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    def failing_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"), session_scope(engine) as session:  # noqa: PT012
        session.add(Post(id=1, md5="e" * 32, state=PostState.FOUND))
        stored = store.put_original("e" * 32, b"x" * 10_000, "png")  # fails before the rename
        session.get(Post, 1).file_relpath = stored.relpath  # type: ignore[union-attr]
    assert _all_files(store.home / "originals") == []
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Post)) == 0


def test_atomic_write_never_exposes_a_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")
    real_replace = os.replace

    def crash_before_rename(src: str, dst: str) -> None:
        assert Path(src).read_bytes() == b"new content"  # the temporary holds everything
        assert target.read_bytes() == b"old"  # while the target is still the old file
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash_before_rename)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new content")
    monkeypatch.setattr(os, "replace", real_replace)
    assert target.read_bytes() == b"old"
    assert _all_files(tmp_path) == [target]


def test_stale_temporaries_are_removed(store: FileStore) -> None:
    leftover = store.home / "crops" / "ab" / ".tmp-crash"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half")
    assert store.remove_stale_temporaries() == 1
    assert not leftover.exists()


def test_paths_outside_the_store_are_refused(store: FileStore) -> None:
    with pytest.raises(UnsafePathError, match="not a path of the store"):
        store.abspath("../../etc/passwd")
    with pytest.raises(UnsafePathError, match="unknown store area"):
        store.relpath_for("elsewhere", "ab" * 16, "png")


MD5 = "0123456789abcdef" * 2
SHA = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "relpath",
    [
        "originals/./../animexpr.toml",
        "originals/.././snapshots/s1/manifest.jsonl",
        f"originals/01/{MD5}.toml",  # not an image extension
        f"originals/ab/{MD5}.jpg",  # prefix is not the key's
        f"originals/01/{MD5.upper()}.jpg",
        f"originals/01/{MD5}.jpg/../../x",
        f"crops/01/{MD5}.png",  # crops are keyed by sha256 only
        f"snapshots/01/{SHA}.png",
        f"/originals/01/{MD5}.jpg",
        f"originals/01/{MD5}.jpg\n",
        "animexpr.toml",
        "",
    ],
)
def test_only_the_shapes_the_store_generates_are_accepted(store: FileStore, relpath: str) -> None:
    assert not is_store_relpath(relpath)
    with pytest.raises(UnsafePathError):
        store.abspath(relpath)


@pytest.mark.parametrize(
    ("area", "key", "ext"),
    [
        ("originals", "./../animexpr", "toml"),
        ("originals", "./../snapshots/s1/manifest", "jpg"),
        ("originals", MD5, "toml"),
        ("originals", MD5, "jp/g"),
        ("originals", MD5[:31], "jpg"),
        ("originals", MD5 + "0", "jpg"),
        ("crops", MD5, "png"),
        ("snapshots", SHA, "png"),
    ],
)
def test_keys_and_extensions_of_other_shapes_are_refused(
    store: FileStore, area: str, key: str, ext: str
) -> None:
    with pytest.raises(UnsafePathError):
        store.relpath_for(area, key, ext)
    if area == "originals":
        with pytest.raises(UnsafePathError):
            store.put_original(key, b"x", ext)
    assert _all_files(store.home) == []


def test_generated_shapes_round_trip(store: FileStore) -> None:
    for stored in (
        store.put_original(MD5, b"a", "JPG"),
        store.put_bytes("originals", b"sample bytes", "webp"),  # a sample, stored under its sha256
        store.put_bytes("crops", b"c", "png"),
    ):
        assert is_store_relpath(stored.relpath)
        assert store.abspath(stored.relpath).is_file()


def test_read_verified_names_a_changed_or_missing_file(store: FileStore) -> None:
    stored = store.put_bytes("crops", b"pixels", "png")
    assert store.read_verified(stored.relpath, stored.sha256) == b"pixels"
    store.abspath(stored.relpath).write_bytes(b"pixelz")
    with pytest.raises(CorruptFileError, match=stored.relpath) as caught:
        store.read_verified(stored.relpath, stored.sha256)
    assert caught.value.reason == "corrupt_file"
    store.abspath(stored.relpath).unlink()
    with pytest.raises(CorruptFileError, match="missing"):
        store.read_verified(stored.relpath, stored.sha256)
