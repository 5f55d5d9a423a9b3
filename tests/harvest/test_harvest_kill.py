"""`kill -9` in the middle of downloads, then the same command again: the store ends exact and consistent."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from animexpr.db.models import Post, PostState
from animexpr.store import TEMP_PREFIX
from animexpr.testing.fakebooru import CorpusCounts, FakeDanbooru, FakePost


def harvest_command(home: Path, booru: FakeDanbooru) -> list[str]:
    return [
        sys.executable,
        "-m",
        "animexpr",
        "--home",
        str(home),
        "harvest",
        "--api-url",
        booru.url,
        "--per-class",
        "4",
        "--rate",
        "100",
        "--download-rate",
        "100",
        "--downloads",
        "3",
    ]


def clean_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith(("ANIMEXPR_", "DANBOORU_"))}


def wait_for_mid_download(
    booru: FakeDanbooru, process: subprocess.Popen[bytes], timeout: float = 60.0
) -> None:
    """Until some files are complete and at least one is still being sent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the harvest ended before it could be killed"
        records = booru.file_records()
        complete = sum(record.complete for record in records)
        sending = sum(not record.finished for record in records)
        if complete >= 3 and sending >= 1:
            return
        time.sleep(0.02)
    raise AssertionError("the harvest never got to downloading")


def check_consistent(home: Path, rows: dict[int, Post]) -> set[str]:
    """Every downloaded row has its complete file; every stored file is complete. Returns the stored md5s."""
    stored = set()
    for path in (home / "originals").rglob("*"):
        if path.is_file() and not path.name.startswith(TEMP_PREFIX):
            md5 = path.name.split(".")[0]
            assert hashlib.md5(path.read_bytes()).hexdigest() == md5, f"partial file {path}"
            stored.add(md5)
    for row in rows.values():
        if row.state == PostState.DOWNLOADED:
            assert row.file_relpath is not None
            assert (home / row.file_relpath).is_file(), f"row {row.id} points at a missing file"
    return stored


def test_kill_9_mid_download_then_rerun_completes_exactly(
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    post_rows: Callable[[], dict[int, Post]],
    home: Path,
) -> None:
    corpus = make_corpus(CorpusCounts(keep=4, deleted=1, excluded=1))
    keepers = {post.md5: post for post in corpus if post.kind == "keep"}
    booru = booru_factory(corpus, file_trickle=1.0)  # each file takes a second to arrive

    process = subprocess.Popen(
        harvest_command(home, booru),
        env=clean_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_mid_download(booru, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    rows = post_rows()
    stored_after_kill = check_consistent(home, rows)
    downloaded_after_kill = {row.md5 for row in rows.values() if row.state == PostState.DOWNLOADED}
    assert 1 <= len(downloaded_after_kill) < len(keepers)
    assert any(row.state == PostState.FOUND for row in rows.values())  # work left half done
    requests_before_rerun = len(booru.file_records())

    booru.file_trickle = 0.0
    rerun = subprocess.run(
        harvest_command(home, booru), env=clean_environment(), capture_output=True, text=True, timeout=120
    )
    assert rerun.returncode == 0, rerun.stderr

    rows = post_rows()
    assert check_consistent(home, rows) == set(keepers)
    files = sorted(
        path.relative_to(home).as_posix() for path in (home / "originals").rglob("*") if path.is_file()
    )
    assert files == sorted(f"originals/{md5[:2]}/{md5}.{post.file_ext}" for md5, post in keepers.items())
    assert Counter(row.state for row in rows.values()) == {PostState.DOWNLOADED: 16, PostState.SKIPPED: 8}
    # Nothing already downloaded was fetched again; a file cut off by the kill was fetched once more.
    fetched_again = {
        record.path.rsplit("/", 1)[-1].split(".")[0]
        for record in booru.file_records()[requests_before_rerun:]
    }
    assert not fetched_again & downloaded_after_kill
    assert not fetched_again & stored_after_kill  # stored but not yet recorded: adopted from disk
