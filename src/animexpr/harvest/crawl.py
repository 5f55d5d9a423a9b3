"""The crawler: walks each class query with a persisted cursor, records every post once, downloads originals.

Order of writes, so that a crash or `kill -9` at any moment leaves a consistent store:
1. A page's new posts (kept ones as `found`, refused ones as `skipped` with their reason) and the query's
   cursor are committed in one transaction.
2. A download thread fetches a `found` post's file, checks its md5, stores it atomically
   (`FileStore.put_original`) and only then marks the post `downloaded` with the file's path and sha256.
   A sample (`--variant sample`) has no md5 to check: it is stored under the sha256 of its bytes
   (`FileStore.put_bytes`), and its post's detail says it is a sample.
A post left `found` by an interrupted run is downloaded first by the next run; an original already complete on
disk for such a post is taken without downloading it again (a sample is fetched again: its name is only known
from its bytes, and storing the same bytes twice keeps one file).

Every post is checked (`policy.usable_post_id`, `policy.metadata_problem`) before any of its fields is used;
the store's own refusal of a path not of its shape (`UnsafePathError`) is a second wall, recorded as
`bad_metadata` if it ever fires.

`HarvestOptions.per_class` is a target for the store, not for one run: a rerun with the same target only
finishes what is missing. Raising it continues the walk where the cursor stopped, after first picking up posts
newer than the newest one seen (`page=a<id>`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from animexpr.config import ClassSpec, Settings
from animexpr.db.models import INT_COLUMN_MAX, INT_COLUMN_MIN, CrawlCursor, Post, PostState
from animexpr.db.session import session_scope
from animexpr.harvest.client import (
    DanbooruClient,
    DownloadError,
    FileNotOnServer,
    FileTooLarge,
    HarvestError,
    RetriesExhausted,
    Stopped,
)
from animexpr.harvest.policy import (
    RATINGS,
    HarvestOptions,
    QueryPlan,
    Variant,
    Verdict,
    build_queries,
    choose_file,
    judge_post,
    url_ext,
    usable_post_id,
)
from animexpr.harvest.reasons import HarvestReason
from animexpr.homelock import hold_home_lock
from animexpr.store import TEMP_PREFIX, FileStore, StoredFile, UnsafePathError, sha256_file

log = logging.getLogger(__name__)


@dataclass
class ClassTally:
    """Counts for one class: `already` were downloaded before this run, the rest happened in it."""

    name: str
    target: int
    already: int = 0
    available: int | None = None  # Danbooru's count for the class queries (includes deleted posts)
    found: int = 0  # new posts recorded
    downloaded: int = 0
    skipped: int = 0
    failed: int = 0
    queued: int = 0  # downloads waiting or running
    exhausted: bool = False
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def have(self) -> int:
        return self.already + self.downloaded

    @property
    def total(self) -> int:
        """What the class will plausibly reach: the target, or less when Danbooru has fewer posts."""
        if self.available is None:
            return self.target
        return min(self.target, self.already + self.available)


@dataclass
class CrawlSummary:
    classes: dict[str, ClassTally]
    api_requests: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def reasons(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for tally in self.classes.values():
            total.update(tally.reasons)
        return total


ProgressCallback = Callable[[ClassTally], None]


@dataclass(frozen=True)
class DownloadJob:
    post_id: int
    class_name: str
    md5: str
    url: str
    ext: str
    check_md5: bool


class QueryWalk:
    """Where one query stands in this run: first the posts newer than the cursor, then the older ones."""

    def __init__(self, plan: QueryPlan, cursor: CrawlCursor) -> None:
        self.plan = plan
        self.oldest_id = cursor.oldest_id
        self.newest_id = cursor.newest_id
        self.exhausted = cursor.exhausted
        # A fresh cursor starts at the newest post, so there is nothing newer to look for.
        self.phase = "after" if cursor.newest_id is not None else "before"

    @property
    def done(self) -> bool:
        return self.phase == "before" and self.exhausted

    def page_param(self) -> str | None:
        if self.phase == "after":
            return f"a{self.newest_id}"
        return None if self.oldest_id is None else f"b{self.oldest_id}"


class Crawler:
    """Runs one harvest; see the module docstring for the guarantees."""

    def __init__(
        self,
        engine: Engine,
        store: FileStore,
        settings: Settings,
        client: DanbooruClient,
        options: HarvestOptions,
        class_names: Sequence[str] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.client = client
        self.options = options
        self.all_classes: tuple[ClassSpec, ...] = settings.classes
        names = list(dict.fromkeys(class_names)) if class_names else list(settings.class_names)
        self.classes = [settings.class_spec(name) for name in names]
        self.plans = build_queries(self.classes, options.ratings)
        build_queries(self.all_classes, options.ratings)  # refuses a tag shared by two classes
        self.on_progress = on_progress
        self.stop = threading.Event()
        self.tallies = {spec.name: ClassTally(spec.name, options.per_class) for spec in self.classes}
        self._lock = threading.Lock()
        self._inflight: dict[Future[None], str] = {}
        self.drain_seconds = 5.0  # how long Ctrl-C waits for running downloads

    # the run ---------------------------------------------------------------------------------

    def run(self) -> CrawlSummary:
        started = time.monotonic()
        requests_before = self.client.api_requests
        summary = CrawlSummary(self.tallies)
        with hold_home_lock(self.store.home, "harvest"):
            removed = remove_stale_originals_temporaries(self.store)
            if removed:
                log.info("removed %d partial files left by an interrupted run", removed)
            walks = self._open_walks()
            self._count_existing()
            executor = ThreadPoolExecutor(
                max_workers=max(1, self.options.downloads), thread_name_prefix="fetch"
            )
            try:
                self._count_available(walks)
                self._resume_unfinished(executor)
                self._crawl(walks, executor)
            except KeyboardInterrupt:
                summary.interrupted = True
                self._drain()
            except BaseException:
                self.stop.set()
                raise
            finally:
                executor.shutdown(wait=True, cancel_futures=True)
                self._inflight.clear()
        summary.api_requests = self.client.api_requests - requests_before
        summary.seconds = time.monotonic() - started
        return summary

    def _drain(self) -> None:
        """After Ctrl-C: drop queued downloads, give running ones a moment to finish, then abandon them."""
        for future, class_name in self._inflight.items():
            if future.cancel():
                with self._lock:
                    self.tallies[class_name].queued -= 1
        running = [future for future in self._inflight if not future.cancelled()]
        if running:
            log.warning(
                "interrupted: letting %d running downloads finish (at most %.0f s; Ctrl-C again stops now)",
                len(running),
                self.drain_seconds,
            )
            with contextlib.suppress(KeyboardInterrupt):
                wait(running, timeout=self.drain_seconds)
        self.stop.set()

    def _crawl(self, walks: list[QueryWalk], executor: ThreadPoolExecutor) -> None:
        while True:
            advanced = False
            for walk in walks:
                if walk.done or self._need(walk.plan.class_name) <= 0:
                    continue
                self._advance(walk, executor)
                advanced = True
                self._collect(block=False)
            for name, tally in self.tallies.items():
                tally.exhausted = all(walk.done for walk in walks if walk.plan.class_name == name)
            if advanced:
                continue
            if not self._inflight:
                return
            self._collect(block=True)

    def _need(self, class_name: str) -> int:
        tally = self.tallies[class_name]
        with self._lock:
            return tally.target - tally.have - tally.queued

    # cursors and pages ---------------------------------------------------------------------------------

    def _open_walks(self) -> list[QueryWalk]:
        walks = []
        with session_scope(self.engine) as session:
            for plan in self.plans:
                cursor = session.scalar(select(CrawlCursor).where(CrawlCursor.query == plan.text))
                if cursor is None:
                    cursor = CrawlCursor(query=plan.text, class_name=plan.class_name)
                    session.add(cursor)
                    session.flush()
                walks.append(QueryWalk(plan, cursor))
        return walks

    def _count_existing(self) -> None:
        names = list(self.tallies)
        query = (
            select(Post.class_name, func.count())
            .where(Post.state == PostState.DOWNLOADED, Post.class_name.in_(names))
            .group_by(Post.class_name)
        )
        with session_scope(self.engine) as session:
            for name, count in session.execute(query):
                if name is not None:
                    self.tallies[name].already = count

    def _count_available(self, walks: list[QueryWalk]) -> None:
        """Danbooru's own count per class, for the progress total; one cheap request per query."""
        for walk in walks:
            tally = self.tallies[walk.plan.class_name]
            if walk.done or self._need(tally.name) <= 0:
                continue
            try:
                count = self.client.count_posts(walk.plan.text)
            except RetriesExhausted as exc:  # the count only feeds the progress display
                log.warning("no post count for %s: %s", walk.plan.text, exc.problem)
                continue
            if count is not None:
                tally.available = (tally.available or 0) + count
            self._report(tally)

    def _advance(self, walk: QueryWalk, executor: ThreadPoolExecutor) -> None:
        """Fetch the walk's next page, record what it brings, queue the downloads."""
        page = self.client.posts_page(walk.plan.text, walk.page_param())
        if not page:
            self._finish_phase(walk)
            return
        posts = [(post_id, post) for post in page if (post_id := usable_post_id(post)) is not None]
        self._count_unusable_ids(walk, len(page) - len(posts))
        if not posts:
            self._stop_walk_at_unusable_page(walk)
            return
        ordered = sorted(posts, key=lambda pair: pair[0], reverse=walk.phase == "before")
        jobs = self._record_page(walk, ordered)
        for job in jobs:
            self._submit(executor, job)

    def _count_unusable_ids(self, walk: QueryWalk, count: int) -> None:
        """Posts without a usable id cannot be recorded (no row, no cursor): counted and logged only."""
        if count <= 0:
            return
        log.warning(
            "%s: %d posts on this page have no usable id (an integer from 1 to 2**63-1); skipped as %s",
            walk.plan.text,
            count,
            HarvestReason.BAD_METADATA,
        )
        tally = self.tallies[walk.plan.class_name]
        with self._lock:
            tally.skipped += count
            tally.reasons[HarvestReason.BAD_METADATA] += count
        self._report(tally)

    def _stop_walk_at_unusable_page(self, walk: QueryWalk) -> None:
        """No id on the page can move the cursor, so asking again would bring the same page forever.

        The walk ends for this run as at an empty page, but the cursor is not marked exhausted: a later run
        asks again, in case the server has mended its answers.
        """
        log.warning("%s: a page without one usable post id; this query stops here for now", walk.plan.text)
        if walk.phase == "after":
            walk.phase = "before"
        else:
            walk.exhausted = True

    def _finish_phase(self, walk: QueryWalk) -> None:
        if walk.phase == "after":
            walk.phase = "before"
            return
        walk.exhausted = True
        with session_scope(self.engine) as session:
            session.execute(
                update(CrawlCursor).where(CrawlCursor.query == walk.plan.text).values(exhausted=True)
            )
        log.info("%s: no more posts", walk.plan.text)

    def _record_page(self, walk: QueryWalk, posts: list[tuple[int, dict[str, Any]]]) -> list[DownloadJob]:
        """Record the page's new posts up to the class quota and move the cursor past them, atomically."""
        for attempt in range(3):
            try:
                return self._record_page_once(walk, posts)
            except IntegrityError:
                # Another harvest on the same database recorded some of these posts first; look again.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _record_page_once(
        self, walk: QueryWalk, posts: list[tuple[int, dict[str, Any]]]
    ) -> list[DownloadJob]:
        tally = self.tallies[walk.plan.class_name]
        need = self._need(tally.name)
        ids = [post_id for post_id, _ in posts]
        jobs: list[DownloadJob] = []
        outcomes: Counter[str] = Counter()
        processed: list[int] = []
        new_rows: list[dict[str, Any]] = []
        with session_scope(self.engine) as session:
            known = set(session.scalars(select(Post.id).where(Post.id.in_(ids))))
            for post_id, post in posts:
                if post_id not in known:
                    verdict = judge_post(post, walk.plan, self.all_classes, self.options)
                    if verdict.keep and len(jobs) >= need:
                        break  # quota reached: the cursor stops before this post
                    values = post_values(post_id, post, walk.plan, verdict, self.options.variant)
                    new_rows.append(values)
                    known.add(post_id)
                    job = job_for(Post(**values)) if verdict.keep else None
                    if job is not None:
                        jobs.append(job)
                    outcomes[verdict.reason or "found"] += 1
                processed.append(post_id)
            if new_rows:
                session.execute(insert(Post), new_rows)  # one multi-row statement for the page
            if processed:
                self._move_cursor(walk, processed)
                session.execute(
                    update(CrawlCursor)
                    .where(CrawlCursor.query == walk.plan.text)
                    .values(oldest_id=walk.oldest_id, newest_id=walk.newest_id)
                )
        self._count_outcomes(tally, outcomes)
        return jobs

    def _move_cursor(self, walk: QueryWalk, processed: list[int]) -> None:
        newest = max(processed)
        walk.newest_id = newest if walk.newest_id is None else max(walk.newest_id, newest)
        if walk.phase == "before":
            oldest = min(processed)
            walk.oldest_id = oldest if walk.oldest_id is None else min(walk.oldest_id, oldest)

    def _count_outcomes(self, tally: ClassTally, outcomes: Counter[str]) -> None:
        with self._lock:
            for outcome, count in outcomes.items():
                tally.found += count
                if outcome != "found":
                    tally.skipped += count
                    tally.reasons[outcome] += count
        self._report(tally)

    # resuming ---------------------------------------------------------------------------------

    def _resume_unfinished(self, executor: ThreadPoolExecutor) -> None:
        """Queue the posts an earlier run recorded but did not download (and failed ones when asked)."""
        states = [PostState.FOUND.value]
        if self.options.retry_failed:
            states.append(PostState.FAILED.value)
        for tally in self.tallies.values():
            need = self._need(tally.name)
            if need <= 0:
                continue
            query = (
                select(Post)
                .where(Post.class_name == tally.name, Post.state.in_(states))
                .order_by(Post.id.desc())
                .limit(need)
            )
            with session_scope(self.engine) as session:
                rows = list(session.scalars(query))
            for row in rows:
                job = job_for(row)
                if job is not None:
                    self._submit(executor, job)
            if rows:
                log.info("%s: resuming %d posts found by an earlier run", tally.name, len(rows))

    # downloads ---------------------------------------------------------------------------------

    def _submit(self, executor: ThreadPoolExecutor, job: DownloadJob) -> None:
        tally = self.tallies[job.class_name]
        with self._lock:
            tally.queued += 1
        future = executor.submit(self._download, job)
        self._inflight[future] = job.class_name

    def _collect(self, block: bool) -> None:
        """Forget finished downloads; an unexpected download error (disk full, database) stops the run."""
        if not self._inflight:
            return
        done, _ = wait(list(self._inflight), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for future in done:
            self._inflight.pop(future)
            error = None if future.cancelled() else future.exception()
            if error is not None:
                self.stop.set()
                raise error

    def _download(self, job: DownloadJob) -> None:
        tally = self.tallies[job.class_name]
        try:
            if self.stop.is_set():
                raise Stopped
            outcome = self._fetch_and_store(job)
        except BaseException:
            # Stopped: the post stays `found` and the next run downloads it.
            with self._lock:
                tally.queued -= 1
            if self.stop.is_set():
                return
            raise
        with self._lock:  # one step, so that the quota never sees the post as neither queued nor done
            tally.queued -= 1
            if outcome is None:
                tally.downloaded += 1
            elif outcome.reason is not None:
                tally.reasons[outcome.reason] += 1
                if outcome.reason.state == PostState.FAILED:
                    tally.failed += 1
                else:
                    tally.skipped += 1
        self._report(tally)

    def _fetch_and_store(self, job: DownloadJob) -> Verdict | None:
        """None when the file is stored and the post marked downloaded, else the recorded refusal."""
        try:
            return self._fetch_and_store_checked(job)
        except UnsafePathError as exc:
            # The metadata checks let no such post through; a row written by an older version might.
            return self._mark_refused(
                job, Verdict(HarvestReason.BAD_METADATA, f"refused by the store: {exc}")
            )

    def _fetch_and_store_checked(self, job: DownloadJob) -> Verdict | None:
        existing = self._complete_file_on_disk(job)
        if existing is not None:
            self._mark_downloaded(job, existing)
            return None
        try:
            data = self.client.download(job.url, self.options.max_file_bytes, self.stop)
        except FileTooLarge as exc:
            return self._mark_refused(job, Verdict(HarvestReason.TOO_LARGE, exc.detail))
        except FileNotOnServer as exc:
            return self._mark_refused(job, Verdict(HarvestReason.NOT_FOUND, exc.detail))
        except DownloadError as exc:
            return self._mark_refused(job, Verdict(HarvestReason.DOWNLOAD_FAILED, exc.detail))
        if job.check_md5:
            actual = md5_hex(data)
            if actual != job.md5:
                detail = f"md5 of the {len(data)} bytes is {actual}"
                return self._mark_refused(job, Verdict(HarvestReason.MD5_MISMATCH, detail))
        stored = self._store_file(job, data)
        self._mark_downloaded(job, (stored.relpath, stored.sha256))
        return None

    def _store_file(self, job: DownloadJob, data: bytes) -> StoredFile:
        """An original under its (checked) md5; a sample, whose md5 nobody knows, under its sha256."""
        try:
            if job.check_md5:
                return self.store.put_original(job.md5, data, job.ext)
            return self.store.put_bytes("originals", data, job.ext)
        except OSError as exc:  # disk full, permissions: no use going on
            raise HarvestError(
                f"cannot write into {self.store.home / 'originals'}: {exc.strerror or exc}"
            ) from exc

    def _complete_file_on_disk(self, job: DownloadJob) -> tuple[str, str] | None:
        """An original stored by a run that died before its database write; trusted only if its md5 is right.

        A sample's file name is the sha256 of bytes not yet seen, so it is always fetched again.
        """
        if not job.check_md5:
            return None
        relpath = self.store.relpath_for("originals", job.md5, job.ext)
        path = self.store.abspath(relpath)
        if not path.is_file() or md5_hex(path.read_bytes()) != job.md5:
            return None
        return (relpath, sha256_file(path))

    def _mark_downloaded(self, job: DownloadJob, stored: tuple[str, str]) -> None:
        relpath, sha256 = stored
        with session_scope(self.engine) as session:
            session.execute(
                update(Post)
                .where(Post.id == job.post_id)
                .values(
                    state=PostState.DOWNLOADED.value,
                    reason=None,
                    detail=None if job.check_md5 else SAMPLE_MARK,
                    file_relpath=relpath,
                    file_sha256=sha256,
                    file_ext=job.ext,
                )
            )

    def _mark_refused(self, job: DownloadJob, verdict: Verdict) -> Verdict:
        assert verdict.reason is not None
        log.info("post %d: %s (%s)", job.post_id, verdict.reason, verdict.detail)
        detail = verdict.detail if job.check_md5 else f"{SAMPLE_MARK}: {verdict.detail}"
        with session_scope(self.engine) as session:
            session.execute(
                update(Post)
                .where(Post.id == job.post_id)
                .values(state=verdict.reason.state.value, reason=verdict.reason.value, detail=detail)
            )
        return verdict

    def _report(self, tally: ClassTally) -> None:
        if self.on_progress is not None:
            with self._lock:
                snapshot = replace(tally, reasons=Counter(tally.reasons))
            self.on_progress(snapshot)


# Post.detail of a post whose file is a sample (`--variant sample`) starts with this: its bytes have no known
# md5 to check, and a resumed or retried download must know that.
SAMPLE_MARK = "sample variant"


def is_sample_detail(detail: str | None) -> bool:
    return (detail or "").startswith(SAMPLE_MARK)


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def job_for(row: Post) -> DownloadJob | None:
    """The download a `found` (or retried `failed`) post row asks for."""
    if row.md5 is None or row.file_url is None or row.class_name is None:
        return None
    is_sample = is_sample_detail(row.detail)
    ext = url_ext(row.file_url) if is_sample else (row.file_ext or url_ext(row.file_url))
    return DownloadJob(row.id, row.class_name, row.md5, row.file_url, (ext or "jpg").lower(), not is_sample)


def post_values(
    post_id: int, post: dict[str, Any], plan: QueryPlan, verdict: Verdict, variant: Variant
) -> dict[str, Any]:
    """The Post columns for a post as first seen: `found` when kept, else skipped with its reason.

    `post_id` is the post's checked id (`usable_post_id`). `file_url` is the file to fetch: the original, or
    the sample with `--variant sample`. A post with bad metadata keeps none of its file fields; numbers and a
    rating that do not fit their column are dropped (they only inform).
    """
    reason = verdict.reason
    md5, file_url, file_ext = post.get("md5"), post.get("file_url"), post.get("file_ext")
    detail = verdict.detail
    if reason is HarvestReason.BAD_METADATA:
        md5 = file_url = file_ext = None
    elif reason is None:
        choice = choose_file(post, variant)
        file_url, file_ext = choice.url, choice.ext
        if not choice.check_md5:
            detail = SAMPLE_MARK
    return {
        "id": post_id,
        "md5": md5,
        "file_ext": file_ext.lower() if isinstance(file_ext, str) else None,
        "file_url": file_url,
        "file_size": _int_column(post.get("file_size"), minimum=0),
        "width": _int_column(post.get("image_width"), minimum=0),
        "height": _int_column(post.get("image_height"), minimum=0),
        "tags": str(post.get("tag_string") or ""),
        "rating": post.get("rating") if post.get("rating") in RATINGS else None,
        "score": _int_column(post.get("score"), minimum=INT_COLUMN_MIN),
        "class_name": plan.class_name,
        "query": plan.text,
        "state": (PostState.FOUND if reason is None else reason.state).value,
        "reason": None if reason is None else reason.value,
        "detail": detail,
    }


def _int_column(value: object, minimum: int) -> int | None:
    """`value` if it fits an INTEGER column (file_size, width, height, score) from `minimum` up, else None."""
    if type(value) is not int or not minimum <= value <= INT_COLUMN_MAX:
        return None
    return value


def remove_stale_originals_temporaries(store: FileStore) -> int:
    """Partial downloads a killed run left in originals/ (safe: we hold the home's harvest lock)."""
    removed = 0
    for temp in (store.home / "originals").rglob(f"{TEMP_PREFIX}*"):
        temp.unlink(missing_ok=True)
        removed += 1
    return removed


def crawl(
    engine: Engine,
    store: FileStore,
    settings: Settings,
    client: DanbooruClient,
    options: HarvestOptions,
    class_names: Sequence[str] | None = None,
    on_progress: ProgressCallback | None = None,
) -> CrawlSummary:
    """Harvest the classes (all configured ones when `class_names` is empty) to `options.per_class` each."""
    crawler = Crawler(engine, store, settings, client, options, class_names, on_progress)
    return crawler.run()
