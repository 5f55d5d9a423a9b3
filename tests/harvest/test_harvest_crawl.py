"""The crawler against the fake Danbooru: outcomes, quotas, cursors, resume, faults, pace, interruption."""

from __future__ import annotations

import _thread
import errno
import hashlib
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from animexpr.config import Settings
from animexpr.db.models import CrawlCursor, Post, PostState
from animexpr.db.session import open_db, session_scope
from animexpr.harvest.client import ClientPolicy, Credentials, DanbooruAuthError, DanbooruClient, HarvestError
from animexpr.harvest.crawl import CrawlSummary, crawl
from animexpr.harvest.policy import HarvestOptions
from animexpr.harvest.reasons import HarvestReason
from animexpr.homelock import HomeBusyError, hold_home_lock
from animexpr.store import TEMP_PREFIX, FileStore, sha256_file
from animexpr.testing.fakebooru import CorpusCounts, FakeDanbooru, FakePost, generated_png

CLASSES = ("angry", "sad", "smile", "surprised")
EXPECTED_REASON = {
    "ambiguous": HarvestReason.AMBIGUOUS,
    "excluded": HarvestReason.EXCLUDED_TAG,
    "deleted": HarvestReason.DELETED,
    "banned": HarvestReason.NO_FILE_URL,
    "unsupported": HarvestReason.UNSUPPORTED_TYPE,
    "too_large": HarvestReason.TOO_LARGE,
}
EVERY_KIND = CorpusCounts(
    keep=4, ambiguous=1, excluded=1, deleted=1, banned=1, unsupported=1, too_large=1, explicit=1, not_solo=1
)

RunCrawl = Callable[..., CrawlSummary]
Rows = Callable[[], dict[int, Post]]
Files = Callable[[], list[Path]]


def class_of(post: FakePost) -> str:
    assert post.class_tag is not None
    return post.class_tag


def assert_store_matches_database(home: Path, rows: dict[int, Post], files: list[Path]) -> None:
    """Exactly one complete, md5-correct file per downloaded post, nothing else, no temporaries."""
    downloaded = [row for row in rows.values() if row.state == PostState.DOWNLOADED]
    expected = sorted(home / row.file_relpath for row in downloaded if row.file_relpath)
    assert files == expected
    for row in downloaded:
        assert row.md5 is not None
        assert row.file_sha256 is not None
        assert row.file_relpath is not None
        path = home / row.file_relpath
        assert row.file_relpath == f"originals/{row.md5[:2]}/{row.md5}.{row.file_ext}"
        assert hashlib.md5(path.read_bytes()).hexdigest() == row.md5
        assert sha256_file(path) == row.file_sha256
    assert not [path for path in files if path.name.startswith(TEMP_PREFIX)]


def test_every_post_is_recorded_once_with_its_outcome(
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    run_crawl: RunCrawl,
    post_rows: Rows,
    stored_files: Files,
    home: Path,
    engine: Engine,
) -> None:
    corpus = make_corpus(EVERY_KIND)
    booru = booru_factory(corpus)
    summary = run_crawl(booru, per_class=10)
    rows = post_rows()
    seen = {post.id: post for post in corpus if post.kind not in ("explicit", "not_solo")}
    assert set(rows) == set(seen)  # the query never returns the other two kinds
    for post_id, post in seen.items():
        row = rows[post_id]
        # an ambiguous post is recorded by whichever of its two classes' queries met it first
        classes = set(post.tags) & set(CLASSES) if post.kind == "ambiguous" else {class_of(post)}
        assert row.class_name in classes
        assert row.query == f"{row.class_name} solo rating:g,s"
        assert row.tags == " ".join(sorted(post.tags))
        if post.kind == "keep":
            assert (row.state, row.reason) == (PostState.DOWNLOADED, None)
        else:
            assert (row.state, row.reason) == (PostState.SKIPPED, EXPECTED_REASON[post.kind])
    assert_store_matches_database(home, rows, stored_files())
    for name in CLASSES:
        tally = summary.classes[name]
        assert (tally.downloaded, tally.exhausted) == (4, True)
    assert summary.reasons == {reason.value: 4 for reason in EXPECTED_REASON.values()}
    with Session(engine) as session:
        cursors = list(session.scalars(select(CrawlCursor)))
    assert sorted(cursor.query for cursor in cursors) == [f"{name} solo rating:g,s" for name in CLASSES]
    assert all(cursor.exhausted for cursor in cursors)
    # each file fetched once
    assert len(booru.file_records()) == 16


def test_quota_is_per_class_and_a_rerun_only_finishes_what_is_missing(
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    run_crawl: RunCrawl,
    post_rows: Rows,
    stored_files: Files,
    home: Path,
) -> None:
    booru = booru_factory(make_corpus(CorpusCounts(keep=8, deleted=2)))
    first = run_crawl(booru, per_class=3)
    assert {name: tally.downloaded for name, tally in first.classes.items()} == dict.fromkeys(CLASSES, 3)
    requests_after_first = len(booru.requests)
    api_after_first = len(booru.api_records())

    again = run_crawl(booru, per_class=3)
    assert len(booru.requests) == requests_after_first  # nothing to do: not even a request
    assert again.api_requests == 0
    assert {tally.already for tally in again.classes.values()} == {3}

    more = run_crawl(booru, per_class=5)
    assert {name: tally.have for name, tally in more.classes.items()} == dict.fromkeys(CLASSES, 5)
    rows = post_rows()
    assert_store_matches_database(home, rows, stored_files())
    fetched = [record.path for record in booru.file_records()]
    assert len(fetched) == len(set(fetched)) == 20  # no file twice
    pages = [r.params.get("page") for r in booru.api_records()[api_after_first:] if r.path == "/posts.json"]
    assert all(page is not None and page[0] in "ab" for page in pages)  # continued from the cursor


def test_posts_newer_than_the_newest_seen_are_picked_up(
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    run_crawl: RunCrawl,
    post_rows: Rows,
) -> None:
    booru = booru_factory(make_corpus(CorpusCounts(keep=2)))
    run_crawl(booru, per_class=10, classes=["smile"])
    newest = max(post_rows())
    fresh = [
        FakePost(id=newest + 100 + i, tags=("smile", "solo"), content=generated_png(9000 + i))
        for i in range(3)
    ]
    booru.add_posts(fresh)
    before = len(booru.api_records())
    summary = run_crawl(booru, per_class=10, classes=["smile"])
    assert summary.classes["smile"].downloaded == 3
    assert {post.id for post in fresh} <= {
        pid for pid, row in post_rows().items() if row.state == "downloaded"
    }
    pages = [r.params.get("page") for r in booru.api_records()[before:] if r.path == "/posts.json"]
    assert pages[0] == f"a{newest}"
    assert not any(page is None for page in pages)  # no walk from the top again


def test_skipped_posts_never_come_back(
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    run_crawl: RunCrawl,
    post_rows: Rows,
) -> None:
    booru = booru_factory(make_corpus(CorpusCounts(keep=1, ambiguous=2, excluded=1)))
    run_crawl(booru, per_class=10)
    skipped = {pid for pid, row in post_rows().items() if row.state == PostState.SKIPPED}
    assert len(skipped) == 12
    files_before = len(booru.file_records())
    run_crawl(booru, per_class=10, keep_ambiguous=True, excluded_tags=frozenset())
    rows = post_rows()
    assert all(rows[pid].state == PostState.SKIPPED for pid in skipped)
    assert len(booru.file_records()) == files_before


def test_keep_ambiguous_keeps_them_in_the_query_class(
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    run_crawl: RunCrawl,
    post_rows: Rows,
) -> None:
    corpus = make_corpus(CorpusCounts(keep=0, ambiguous=1), class_tags=("smile", "sad"))
    booru = booru_factory(corpus)
    run_crawl(booru, per_class=10, keep_ambiguous=True, classes=["smile"])
    rows = post_rows()
    assert len(rows) == 2  # smile's own ambiguous post and sad's, which also has the smile tag
    assert {row.state for row in rows.values()} == {PostState.DOWNLOADED}
    assert {row.class_name for row in rows.values()} == {"smile"}


def test_class_option_restricts_the_crawl(
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    run_crawl: RunCrawl,
    post_rows: Rows,
) -> None:
    booru = booru_factory(make_corpus(CorpusCounts(keep=2)))
    summary = run_crawl(booru, per_class=5, classes=["sad"])
    assert list(summary.classes) == ["sad"]
    assert {row.class_name for row in post_rows().values()} == {"sad"}
    assert {record.params.get("tags") for record in booru.api_records()} == {"sad solo rating:g,s"}


def test_wrong_bytes_are_an_md5_mismatch_and_nothing_is_stored(
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    run_crawl: RunCrawl,
    post_rows: Rows,
    stored_files: Files,
    home: Path,
) -> None:
    corpus = make_corpus(CorpusCounts(keep=3), class_tags=("smile", "sad"))
    booru = booru_factory(corpus)
    bad = next(post for post in corpus if post.class_tag == "smile")
    booru.set_file_fault(bad.md5, "wrong_bytes")
    summary = run_crawl(booru, per_class=3, classes=["smile"])
    row = post_rows()[bad.id]
    assert (row.state, row.reason) == (PostState.FAILED, HarvestReason.MD5_MISMATCH)
    assert row.file_relpath is None
    assert not list((home / "originals").rglob(f"{bad.md5}*"))
    assert summary.classes["smile"].failed == 1
    assert summary.classes["smile"].downloaded == 2  # Danbooru had no fourth smile post
    assert_store_matches_database(home, post_rows(), stored_files())

    booru.file_faults.clear()
    assert run_crawl(booru, per_class=3, classes=["smile"]).classes["smile"].downloaded == 0  # not retried
    retried = run_crawl(booru, per_class=3, classes=["smile"], retry_failed=True)
    assert retried.classes["smile"].downloaded == 1
    assert post_rows()[bad.id].state == PostState.DOWNLOADED
    assert_store_matches_database(home, post_rows(), stored_files())


def test_failed_downloads_are_recorded_and_the_quota_is_filled_by_others(
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    run_crawl: RunCrawl,
    post_rows: Rows,
) -> None:
    corpus = make_corpus(CorpusCounts(keep=5), class_tags=("smile", "sad"))
    booru = booru_factory(corpus)
    smiles = sorted((post for post in corpus if post.class_tag == "smile"), key=lambda post: -post.id)
    booru.set_file_fault(smiles[0].md5, "503")
    booru.set_file_fault(smiles[1].md5, "truncate")
    summary = run_crawl(booru, per_class=3, classes=["smile"])
    rows = post_rows()
    for post in smiles[:2]:
        assert (rows[post.id].state, rows[post.id].reason) == (
            PostState.FAILED,
            HarvestReason.DOWNLOAD_FAILED,
        )
        assert rows[post.id].detail
    assert summary.classes["smile"].downloaded == 3
    assert summary.classes["smile"].failed == 2


def test_a_body_larger_than_announced_is_too_large(
    booru_factory: Callable[..., FakeDanbooru], run_crawl: RunCrawl, post_rows: Rows
) -> None:
    liar = FakePost(id=5, tags=("smile", "solo"), content=generated_png(5, 300, 300), declared_size=10)
    booru = booru_factory([liar])
    run_crawl(booru, per_class=1, classes=["smile"], max_file_bytes=100)
    row = post_rows()[5]
    assert (row.state, row.reason) == (PostState.SKIPPED, HarvestReason.TOO_LARGE)


def test_sample_variant_stores_samples_and_checks_md5_only_on_originals(
    booru_factory: Callable[..., FakeDanbooru], run_crawl: RunCrawl, post_rows: Rows, home: Path
) -> None:
    large = FakePost(
        id=1, tags=("smile", "solo"), content=generated_png(1, 1200, 900), width=1200, height=900
    )
    small = FakePost(id=2, tags=("smile", "solo"), content=generated_png(2))
    booru = booru_factory([large, small])
    run_crawl(booru, per_class=2, classes=["smile"], variant="sample")
    rows = post_rows()
    assert rows[1].state == rows[2].state == PostState.DOWNLOADED
    assert rows[1].file_sha256 is not None
    sample_path = home / f"originals/{rows[1].file_sha256[:2]}/{rows[1].file_sha256}.jpg"
    assert rows[1].file_relpath == sample_path.relative_to(home).as_posix()  # a sample's md5 is unknown
    assert sample_path.read_bytes()[:3] == b"\xff\xd8\xff"
    assert "/sample/" in (rows[1].file_url or "")
    assert rows[2].file_relpath == f"originals/{small.md5[:2]}/{small.md5}.png"  # no sample: the original


def test_a_crash_between_file_and_row_is_completed_without_downloading_again(
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    run_crawl: RunCrawl,
    post_rows: Rows,
    stored_files: Files,
    engine: Engine,
    home: Path,
) -> None:
    booru = booru_factory(make_corpus(CorpusCounts(keep=2), class_tags=("smile", "sad")))
    run_crawl(booru, per_class=2, classes=["smile"])
    victim = next(row for row in post_rows().values() if row.state == PostState.DOWNLOADED)
    with session_scope(engine) as session:  # as if killed after the rename, before the commit
        session.execute(
            update(Post)
            .where(Post.id == victim.id)
            .values(state="found", file_relpath=None, file_sha256=None)
        )
    temporary = home / "originals" / "ab" / f"{TEMP_PREFIX}half"
    temporary.parent.mkdir(parents=True, exist_ok=True)
    temporary.write_bytes(b"half a file")
    files_before = len(booru.file_records())
    run_crawl(booru, per_class=2, classes=["smile"])
    assert len(booru.file_records()) == files_before
    assert post_rows()[victim.id].state == PostState.DOWNLOADED
    assert not temporary.exists()
    assert_store_matches_database(home, post_rows(), stored_files())


def test_refused_credentials_stop_the_crawl_with_nothing_recorded(
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    run_crawl: RunCrawl,
    post_rows: Rows,
) -> None:
    booru = booru_factory(make_corpus(CorpusCounts(keep=2)), credentials={"alice": "right"})
    with pytest.raises(DanbooruAuthError, match="401"):
        run_crawl(booru, per_class=2, credentials=Credentials("alice", "wrong"))
    assert post_rows() == {}


def test_a_failing_count_only_costs_the_progress_total(
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    run_crawl: RunCrawl,
    fast_policy: ClientPolicy,
) -> None:
    booru = booru_factory(make_corpus(CorpusCounts(keep=2), class_tags=("smile", "sad")))
    booru.fail_next_api(*[503] * (fast_policy.max_retries + 1))
    summary = run_crawl(booru, per_class=2, classes=["smile", "sad"])
    assert summary.classes["smile"].available is None
    assert summary.classes["sad"].available == 2
    assert {tally.downloaded for tally in summary.classes.values()} == {2}


def test_an_api_failing_for_good_stops_the_crawl_keeping_finished_work(
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    run_crawl: RunCrawl,
    post_rows: Rows,
    fast_policy: ClientPolicy,
) -> None:
    booru = booru_factory(make_corpus(CorpusCounts(keep=250), class_tags=("smile", "sad")))
    run_crawl(booru, per_class=100, classes=["smile"])
    booru.fail_next_api(*[503] * 20)
    with pytest.raises(HarvestError, match="gave up after 3 tries: HTTP 503"):
        run_crawl(booru, per_class=300, classes=["smile"])
    assert sum(row.state == PostState.DOWNLOADED for row in post_rows().values()) == 100


def test_a_full_disk_stops_the_crawl_with_a_clear_message(
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    run_crawl: RunCrawl,
    post_rows: Rows,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FileStore, "put_original", full)
    booru = booru_factory(make_corpus(CorpusCounts(keep=2)))
    with pytest.raises(HarvestError, match="No space left on device"):
        run_crawl(booru, per_class=2)
    assert PostState.DOWNLOADED not in {row.state for row in post_rows().values()}


def test_one_harvest_per_home(
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    run_crawl: RunCrawl,
    home: Path,
) -> None:
    booru = booru_factory(make_corpus(CorpusCounts(keep=1)))
    with hold_home_lock(home, "harvest"), pytest.raises(HomeBusyError, match="another harvest"):
        run_crawl(booru, per_class=1)


def test_api_rate_seen_by_the_server_never_exceeds_the_limit(
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    run_crawl: RunCrawl,
    fast_policy: ClientPolicy,
) -> None:
    rate = 10.0
    # 230 posts per class: two pages each, plus the count and the closing empty page, plus retried faults.
    booru = booru_factory(make_corpus(CorpusCounts(keep=1, deleted=229)))
    booru.fail_next_api(503, 429)
    summary = run_crawl(booru, per_class=5, policy=replace(fast_policy, rate=rate, throttle_wait=0.01))
    times = [record.started for record in booru.api_records()]
    assert len(times) == summary.api_requests == 4 * 4 + 2
    assert_never_faster_than(times, rate)


def assert_never_faster_than(times: list[float], rate: float) -> None:
    """Any k successive requests span at least k / rate seconds, give or take one fixed tolerance.

    The tolerance (40 ms) absorbs when the server thread gets to stamp a request on a loaded 2-core host; it
    does not grow with k, so over the whole run even 10 % above the rate fails.
    """
    tolerance = 0.04
    for i, j in itertools.combinations(range(len(times)), 2):
        assert times[j] - times[i] >= (j - i) / rate - tolerance, (i, j)


def test_the_rate_check_catches_a_client_only_ten_percent_too_fast() -> None:
    jittered = [k / 10 + (0.015 if k % 3 == 1 else 0.0) for k in range(18)]
    assert_never_faster_than(jittered, 10.0)
    with pytest.raises(AssertionError):
        assert_never_faster_than([k / 11 for k in range(18)], 10.0)


def test_server_throttling_is_survived_without_hammering(
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    run_crawl: RunCrawl,
    post_rows: Rows,
    fast_policy: ClientPolicy,
) -> None:
    booru = booru_factory(make_corpus(CorpusCounts(keep=2)), throttle=(20.0, 3.0))
    policy = replace(fast_policy, throttle_wait=0.1, backoff_max=1.0, max_throttled=8)
    summary = run_crawl(booru, per_class=2, policy=policy)
    assert {tally.downloaded for tally in summary.classes.values()} == {2}
    statuses = [record.status for record in booru.api_records()]
    assert 429 in statuses
    records = booru.api_records()
    for earlier, later in itertools.pairwise(records):
        if earlier.status == 429:
            assert later.started - earlier.started >= 0.1 - 0.04  # server stamping jitter, see above


def test_ctrl_c_keeps_finished_work_and_a_rerun_completes_it(
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    run_crawl: RunCrawl,
    post_rows: Rows,
    stored_files: Files,
    home: Path,
) -> None:
    booru = booru_factory(make_corpus(CorpusCounts(keep=4)), file_trickle=0.2)
    interrupted = threading.Event()

    def interrupt_after_two(tally: object) -> None:
        done = sum(1 for record in booru.file_records() if record.complete)
        if done >= 2 and not interrupted.is_set():
            interrupted.set()
            _thread.interrupt_main()

    summary = run_crawl(booru, per_class=4, on_progress=interrupt_after_two)
    time.sleep(0.05)
    assert summary.interrupted
    rows = post_rows()
    have = [row for row in rows.values() if row.state == PostState.DOWNLOADED]
    assert 1 <= len(have) < 16
    assert_store_matches_database(home, rows, stored_files())

    booru.file_trickle = 0.0
    done = run_crawl(booru, per_class=4)
    assert not done.interrupted
    rows = post_rows()
    assert sum(row.state == PostState.DOWNLOADED for row in rows.values()) == 16
    assert_store_matches_database(home, rows, stored_files())
    completed = [record.path for record in booru.file_records() if record.complete]
    assert len(completed) == len(set(completed))  # nothing fetched in full twice


def test_crawl_works_the_same_on_any_database(
    any_db_url: str,
    booru_factory: Callable[..., FakeDanbooru],
    make_corpus: Callable[..., list[FakePost]],
    settings: Settings,
    store: FileStore,
    fast_policy: ClientPolicy,
) -> None:
    engine = open_db(any_db_url)
    try:
        booru = booru_factory(make_corpus(EVERY_KIND))
        with DanbooruClient(booru.url, fast_policy) as client:
            summary = crawl(engine, store, settings, client, HarvestOptions(per_class=3, downloads=3))
        assert {tally.downloaded for tally in summary.classes.values()} == {3}
        assert summary.reasons  # every kind of skip was met and recorded
        with Session(engine) as session:
            downloaded = session.scalars(select(Post).where(Post.state == PostState.DOWNLOADED)).all()
            assert len(downloaded) == 12
            assert all(store.verify(row.file_relpath or "", row.file_sha256 or "") for row in downloaded)
    finally:
        engine.dispose()
