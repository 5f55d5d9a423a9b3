"""A hostile Danbooru-compatible server: no post field may name a path, break a column or stop the run.

The server is the real fake Danbooru on 127.0.0.1, serving posts whose JSON carries path-shaped md5s, bad
extensions and ids no column holds, beside good posts on the same page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.config import Settings
from animexpr.db.models import CrawlCursor, Post, PostState
from animexpr.db.session import open_db
from animexpr.harvest.client import ClientPolicy, DanbooruClient
from animexpr.harvest.crawl import SAMPLE_MARK, CrawlSummary, crawl
from animexpr.harvest.policy import HarvestOptions, Variant
from animexpr.harvest.reasons import HarvestReason
from animexpr.store import FileStore, is_store_relpath, sha256_bytes, sha256_file
from animexpr.testing.fakebooru import FakeDanbooru, FakePost, generated_png

BAD = (PostState.SKIPPED, HarvestReason.BAD_METADATA)
DOWNLOADED = (PostState.DOWNLOADED, None)
UNUSABLE_IDS: tuple[Any, ...] = (2**63, 2**64, -1, 0, "12", 1.5, True)
DATABASE_FILES = (
    "animexpr.sqlite3",
    "animexpr.sqlite3-wal",
    "animexpr.sqlite3-shm",
    "animexpr.sqlite3-journal",
)
USER_SETTINGS = b"# my settings: nothing a harvest may touch\n"
FROZEN_MANIFEST = b'{"file": "crops/ab/abc.png", "sha256": "0", "label": "smile"}\n'


@dataclass(frozen=True)
class Hostile:
    """A post of the hostile server and what must become of it with each variant."""

    post: FakePost
    original: tuple[PostState, HarvestReason | None]
    sample: tuple[PostState, HarvestReason | None]

    def expected(self, variant: Variant) -> tuple[PostState, HarvestReason | None]:
        return self.original if variant == "original" else self.sample


def smile_post(post_id: int, **fields: Any) -> FakePost:
    return FakePost(id=post_id, tags=("smile", "solo"), content=generated_png(post_id), **fields)


def hostile_server_posts() -> tuple[list[Hostile], list[FakePost]]:
    """Recordable posts with their expected outcomes, and posts whose id cannot be recorded at all.

    Ids interleave, so that good and bad posts share the one page the crawler asks for.
    """
    md5_of = {post_id: smile_post(post_id).md5 for post_id in range(100, 140)}
    bad_md5s: list[tuple[Any, str]] = [
        ("./../animexpr", "toml"),
        ("./../snapshots/s1/manifest", "jsonl"),
        ("../../../outside", "png"),
        (md5_of[103].upper(), "jpg"),
        (md5_of[104][:31], "jpg"),
        (md5_of[105] + "0", "jpg"),
        (int(md5_of[106][:12], 16), "jpg"),
        ([md5_of[107]], "jpg"),
    ]
    recorded = [
        Hostile(smile_post(100 + offset, sample_ext=ext, json_overrides={"md5": md5}), BAD, BAD)
        for offset, (md5, ext) in enumerate(bad_md5s)
    ]
    recorded += [
        Hostile(smile_post(110, json_overrides={"file_ext": "../x"}), BAD, BAD),
        Hostile(smile_post(111, json_overrides={"file_ext": ""}), BAD, BAD),
        Hostile(smile_post(112, json_overrides={"file_ext": 7}), BAD, BAD),
        Hostile(smile_post(113, json_overrides={"file_url": "file:///etc/passwd"}), BAD, BAD),
        # A well-formed type we do not decode keeps its own reason.
        Hostile(
            smile_post(114, json_overrides={"file_ext": "toml"}),
            (PostState.SKIPPED, HarvestReason.UNSUPPORTED_TYPE),
            (PostState.SKIPPED, HarvestReason.UNSUPPORTED_TYPE),
        ),
        # The sample URL's extension matters only when the sample is what gets fetched.
        Hostile(smile_post(115, sample_ext="toml"), DOWNLOADED, BAD),
        # Numbers no INTEGER column holds are dropped, not fatal.
        Hostile(
            smile_post(116, json_overrides={"score": 2**70, "image_width": -5, "file_size": "big"}),
            DOWNLOADED,
            DOWNLOADED,
        ),
        Hostile(smile_post(117), DOWNLOADED, DOWNLOADED),
        Hostile(smile_post(118, sample_ext="jpg"), DOWNLOADED, DOWNLOADED),
    ]
    unrecordable = [
        smile_post(120 + offset, json_overrides={"id": value}) for offset, value in enumerate(UNUSABLE_IDS)
    ]
    return recorded, unrecordable


def every_file(root: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}


def plant_user_files(home: Path) -> None:
    """What a harvest must leave alone: the settings file and a frozen snapshot's manifest."""
    (home / "animexpr.toml").write_bytes(USER_SETTINGS)
    manifest = home / "snapshots" / "s1" / "manifest.jsonl"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_bytes(FROZEN_MANIFEST)


def assert_only_store_files_were_written(root: Path, home: Path, before: dict[Path, bytes]) -> None:
    """Files there before are unchanged byte for byte; each new one is HOME/originals/<ab>/<key>.<ext>."""
    after = every_file(root)
    for path, data in before.items():
        if path.name not in DATABASE_FILES:
            assert after.get(path) == data, path
    for path in set(after) - set(before):
        if path.parent == home and (path.name in DATABASE_FILES or path.name.endswith(".lock")):
            continue
        relpath = path.relative_to(home).as_posix()
        assert relpath.startswith("originals/"), path
        assert is_store_relpath(relpath), path
    assert (home / "animexpr.toml").read_bytes() == USER_SETTINGS
    assert (home / "snapshots" / "s1" / "manifest.jsonl").read_bytes() == FROZEN_MANIFEST


@pytest.fixture
def crawl_on(
    settings: Settings, store: FileStore, fast_policy: ClientPolicy
) -> Iterator[Callable[..., CrawlSummary]]:
    """Crawl the class smile of a server into the database at a URL (SQLite or PostgreSQL)."""
    engines: list[Engine] = []

    def run(db_url: str, booru: FakeDanbooru, **option_fields: Any) -> CrawlSummary:
        engine = open_db(db_url)
        engines.append(engine)
        options = HarvestOptions(downloads=3, **option_fields)
        with DanbooruClient(booru.url, fast_policy) as client:
            return crawl(engine, store, settings, client, options, ["smile"])

    yield run
    for engine in engines:
        engine.dispose()


def rows_at(db_url: str) -> dict[int, Post]:
    engine = open_db(db_url)
    try:
        with Session(engine) as session:
            return {row.id: row for row in session.scalars(select(Post))}
    finally:
        engine.dispose()


@pytest.mark.parametrize("variant", ["original", "sample"])
def test_hostile_posts_are_bad_metadata_and_write_nothing_outside_the_store(
    variant: Variant,
    any_db_url: str,
    booru_factory: Callable[..., FakeDanbooru],
    crawl_on: Callable[..., CrawlSummary],
    home: Path,
    tmp_path: Path,
) -> None:
    recorded, unrecordable = hostile_server_posts()
    booru = booru_factory([hostile.post for hostile in recorded] + unrecordable)
    plant_user_files(home)
    before = every_file(tmp_path)  # the home and everything beside it

    summary = crawl_on(any_db_url, booru, per_class=50, variant=variant)

    assert_only_store_files_were_written(tmp_path, home, before)
    rows = rows_at(any_db_url)
    assert set(rows) == {hostile.post.id for hostile in recorded}  # nothing under an unusable id
    for hostile in recorded:
        row = rows[hostile.post.id]
        assert (row.state, row.reason) == hostile.expected(variant), (hostile.post.json_overrides, row.detail)
        if row.reason == HarvestReason.BAD_METADATA:
            assert row.detail
            assert (row.md5, row.file_ext, row.file_url, row.file_relpath) == (None, None, None, None)
        if row.state == PostState.DOWNLOADED:
            assert row.file_relpath is not None
            assert sha256_file(home / row.file_relpath) == row.file_sha256
    dropped = rows[116]
    assert (dropped.score, dropped.width, dropped.file_size, dropped.height) == (None, None, None, 64)
    bad_recorded = sum(hostile.expected(variant) == BAD for hostile in recorded)
    tally = summary.classes["smile"]
    assert summary.reasons[HarvestReason.BAD_METADATA] == bad_recorded + len(UNUSABLE_IDS)
    assert tally.downloaded == sum(hostile.expected(variant) == DOWNLOADED for hostile in recorded)
    assert tally.exhausted
    fetched = {
        record.path.rsplit("/", 1)[-1].split(".")[0].removeprefix("sample-")
        for record in booru.file_records()
    }
    bad_posts = [hostile.post for hostile in recorded if hostile.expected(variant) == BAD] + unrecordable
    assert not fetched & {post.md5 for post in bad_posts}  # a bad post's file is never even asked for


def test_the_cli_summary_counts_bad_metadata(booru_factory: Callable[..., FakeDanbooru], home: Path) -> None:
    recorded, unrecordable = hostile_server_posts()
    booru = booru_factory([hostile.post for hostile in recorded] + unrecordable)
    plant_user_files(home)
    args = ["--home", str(home), "harvest", "--api-url", booru.url, "--class", "smile", "--variant", "sample"]
    result = CliRunner().invoke(
        app, [*args, "--rate", "100", "--download-rate", "100"], env={"COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    bad = sum(hostile.sample == BAD for hostile in recorded) + len(UNUSABLE_IDS)
    assert f"bad_metadata {bad}" in result.output
    assert "unsupported_type 1" in result.output


def test_a_page_of_unusable_ids_ends_the_walk_without_moving_the_cursor(
    booru_factory: Callable[..., FakeDanbooru],
    run_crawl: Callable[..., CrawlSummary],
    engine: Engine,
    post_rows: Callable[[], dict[int, Post]],
) -> None:
    booru = booru_factory(
        [smile_post(100 + n, json_overrides={"id": value}) for n, value in enumerate(UNUSABLE_IDS)]
    )
    summary = run_crawl(booru, per_class=5, classes=["smile"])
    assert summary.reasons == {HarvestReason.BAD_METADATA: len(UNUSABLE_IDS)}
    assert post_rows() == {}
    with Session(engine) as session:
        cursor = session.scalars(select(CrawlCursor)).one()
    # Not marked exhausted: a later run asks again, in case the server mends its answers.
    assert (cursor.oldest_id, cursor.newest_id, cursor.exhausted) == (None, None, False)
    assert [record.params.get("page") for record in booru.api_records() if record.path == "/posts.json"] == [
        None
    ]


def test_a_good_page_after_unusable_ids_moves_the_cursor_by_good_ids_only(
    booru_factory: Callable[..., FakeDanbooru],
    run_crawl: Callable[..., CrawlSummary],
    engine: Engine,
) -> None:
    posts = [smile_post(200), smile_post(201, json_overrides={"id": 2**64}), smile_post(202)]
    booru = booru_factory([*posts, smile_post(199, json_overrides={"id": "199"})])
    summary = run_crawl(booru, per_class=5, classes=["smile"])
    assert summary.classes["smile"].downloaded == 2
    with Session(engine) as session:
        cursor = session.scalars(select(CrawlCursor)).one()
    assert (cursor.oldest_id, cursor.newest_id) == (200, 202)
    pages = [record.params.get("page") for record in booru.api_records() if record.path == "/posts.json"]
    assert pages == [None, "b200"]  # the next page holds only the post with id "199": the walk ends there


def test_a_sample_is_stored_under_the_sha256_of_its_bytes(
    booru_factory: Callable[..., FakeDanbooru],
    run_crawl: Callable[..., CrawlSummary],
    post_rows: Callable[[], dict[int, Post]],
    engine: Engine,
    home: Path,
) -> None:
    large = FakePost(
        id=1, tags=("smile", "solo"), content=generated_png(1, 1200, 900), width=1200, height=900
    )
    booru = booru_factory([large])
    run_crawl(booru, per_class=1, classes=["smile"], variant="sample")
    sample = booru.derived_image(large, "sample")
    assert sample is not None
    digest = sha256_bytes(sample)
    row = post_rows()[1]
    assert (row.state, row.detail, row.md5) == (PostState.DOWNLOADED, SAMPLE_MARK, large.md5)
    assert (row.file_relpath, row.file_sha256, row.file_ext) == (
        f"originals/{digest[:2]}/{digest}.jpg",
        digest,
        "jpg",
    )
    assert (home / row.file_relpath).read_bytes() == sample
    assert not list(
        (home / "originals").rglob(f"{large.md5}*")
    )  # the md5 names no file: it was never checked

    # Resumed after a crash between the file and the row: fetched again, stored once, recorded the same.
    with Session(engine) as session, session.begin():
        resumed = session.get_one(Post, 1)
        resumed.state, resumed.file_relpath, resumed.file_sha256 = PostState.FOUND, None, None
    run_crawl(booru, per_class=1, classes=["smile"], variant="sample")
    again = post_rows()[1]
    assert (again.state, again.file_relpath, again.file_sha256) == (
        PostState.DOWNLOADED,
        row.file_relpath,
        digest,
    )
    assert len([path for path in (home / "originals").rglob("*") if path.is_file()]) == 1


def test_a_404_file_is_asked_for_once_and_recorded_as_not_found(
    booru_factory: Callable[..., FakeDanbooru],
    run_crawl: Callable[..., CrawlSummary],
    post_rows: Callable[[], dict[int, Post]],
) -> None:
    gone, kept = smile_post(10), smile_post(11)
    booru = booru_factory([gone, kept])
    booru.set_file_fault(gone.md5, "404")
    summary = run_crawl(booru, per_class=2, classes=["smile"])
    asked = [record for record in booru.file_records() if gone.md5 in record.path]
    assert [record.status for record in asked] == [404]
    row = post_rows()[gone.id]
    assert (row.state, row.reason) == (PostState.FAILED, HarvestReason.NOT_FOUND)
    assert "404" in (row.detail or "")
    assert summary.classes["smile"].failed == 1
    assert post_rows()[kept.id].state == PostState.DOWNLOADED


@pytest.mark.parametrize(
    ("status", "reason"), [("410", HarvestReason.NOT_FOUND), ("403", HarvestReason.DOWNLOAD_FAILED)]
)
def test_other_final_4xx_files_are_asked_for_once(
    status: str,
    reason: HarvestReason,
    booru_factory: Callable[..., FakeDanbooru],
    run_crawl: Callable[..., CrawlSummary],
    post_rows: Callable[[], dict[int, Post]],
) -> None:
    post = smile_post(10)
    booru = booru_factory([post])
    booru.set_file_fault(post.md5, status)
    run_crawl(booru, per_class=1, classes=["smile"])
    assert [record.status for record in booru.file_records()] == [int(status)]
    row = post_rows()[post.id]
    assert (row.state, row.reason) == (PostState.FAILED, reason)


@pytest.mark.parametrize(
    ("md5", "detail"),
    [("./../animexpr", None), ("./../animexpr", SAMPLE_MARK), ("0" * 31 + "G", None)],
)
def test_the_store_wall_records_a_bad_row_from_an_older_version(
    md5: str,
    detail: str | None,
    booru_factory: Callable[..., FakeDanbooru],
    run_crawl: Callable[..., CrawlSummary],
    post_rows: Callable[[], dict[int, Post]],
    engine: Engine,
    home: Path,
    tmp_path: Path,
) -> None:
    """A `found` row no check of this version would write: the store refuses its path, the run goes on."""
    good = smile_post(20)
    booru = booru_factory([good])
    url = f"{booru.url}/sample/{good.md5[:2]}/{good.md5[2:4]}/sample-{good.md5}.toml"
    row = {"id": 5, "md5": md5, "file_ext": "toml", "file_url": url, "class_name": "smile", "detail": detail}
    with Session(engine) as session, session.begin():
        session.execute(insert(Post), [{**row, "state": PostState.FOUND.value, "tags": "smile solo"}])
    plant_user_files(home)
    before = every_file(tmp_path)
    summary = run_crawl(booru, per_class=2, classes=["smile"], variant="sample" if detail else "original")
    assert_only_store_files_were_written(tmp_path, home, before)
    refused = post_rows()[5]
    assert (refused.state, refused.reason) == BAD
    assert "refused by the store" in (refused.detail or "")
    assert post_rows()[good.id].state == PostState.DOWNLOADED
    assert summary.reasons == {HarvestReason.BAD_METADATA: 1}


def test_a_row_with_an_unusable_file_url_fails_without_stopping_the_run(
    booru_factory: Callable[..., FakeDanbooru],
    run_crawl: Callable[..., CrawlSummary],
    post_rows: Callable[[], dict[int, Post]],
    engine: Engine,
) -> None:
    """A `found` row from an older version that fetched whatever URL a server named."""
    good = smile_post(20)
    booru = booru_factory([good])
    row = {
        "id": 5,
        "md5": "0" * 32,
        "file_ext": "png",
        "file_url": "file:///etc/passwd",
        "class_name": "smile",
    }
    with Session(engine) as session, session.begin():
        session.execute(insert(Post), [{**row, "state": PostState.FOUND.value, "tags": "smile solo"}])
    run_crawl(booru, per_class=2, classes=["smile"])
    refused = post_rows()[5]
    assert (refused.state, refused.reason) == (PostState.FAILED, HarvestReason.DOWNLOAD_FAILED)
    assert "unusable URL" in (refused.detail or "")
    assert post_rows()[good.id].state == PostState.DOWNLOADED
