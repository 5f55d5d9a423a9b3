"""Harvest fixtures: a fake Danbooru on 127.0.0.1 with real faces (ANIMEXPR_ASSETS) or generated images."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from animexpr.config import Settings
from animexpr.db.models import Post
from animexpr.harvest.client import ClientPolicy, Credentials, DanbooruClient
from animexpr.harvest.crawl import CrawlSummary, crawl
from animexpr.harvest.policy import HarvestOptions
from animexpr.store import FileStore
from animexpr.testing.fakebooru import CorpusCounts, FakeDanbooru, FakePost, build_corpus

# No waiting in tests unless a test asks for it: unlimited pace, tiny backoffs.
FAST_POLICY = ClientPolicy(
    rate=None,
    download_rate=None,
    connect_timeout=2.0,
    read_timeout=5.0,
    max_retries=2,
    backoff_base=0.01,
    backoff_max=0.05,
    throttle_wait=0.05,
    max_throttled=4,
)


@pytest.fixture
def fast_policy() -> ClientPolicy:
    return FAST_POLICY


@pytest.fixture
def faces_dir() -> Path | None:
    """Real anime faces when ANIMEXPR_ASSETS is set; None makes the fake server generate PNGs."""
    value = os.environ.get("ANIMEXPR_ASSETS")
    if value and (Path(value) / "faces").is_dir():
        return Path(value) / "faces"
    return None


@pytest.fixture
def make_corpus(faces_dir: Path | None) -> Callable[..., list[FakePost]]:
    def make(counts: CorpusCounts | None = None, **kwargs: object) -> list[FakePost]:
        return build_corpus(counts=counts or CorpusCounts(), faces_dir=faces_dir, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def booru_factory() -> Iterator[Callable[..., FakeDanbooru]]:
    servers: list[FakeDanbooru] = []

    def start(posts: list[FakePost], **options: object) -> FakeDanbooru:
        server = FakeDanbooru(posts, **options).start()  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def run_crawl(engine: Engine, store: FileStore, settings: Settings) -> Callable[..., CrawlSummary]:
    """Crawl the fake server with the test settings; keyword arguments override HarvestOptions fields."""

    def run(
        booru: FakeDanbooru,
        classes: list[str] | None = None,
        policy: ClientPolicy = FAST_POLICY,
        credentials: Credentials | None = None,
        on_progress: Callable[..., None] | None = None,
        **option_fields: object,
    ) -> CrawlSummary:
        options = replace(HarvestOptions(downloads=3), **option_fields)  # type: ignore[arg-type]
        with DanbooruClient(booru.url, policy, credentials) as client:
            return crawl(engine, store, settings, client, options, classes, on_progress)

    return run


@pytest.fixture
def post_rows(engine: Engine) -> Callable[[], dict[int, Post]]:
    """Every Post row, by id, read fresh."""

    def read() -> dict[int, Post]:
        with Session(engine) as session:
            return {post.id: post for post in session.scalars(select(Post))}

    return read


@pytest.fixture
def stored_files(home: Path) -> Callable[[], list[Path]]:
    """Every file under HOME/originals, temporaries included."""

    def list_files() -> list[Path]:
        return sorted(path for path in (home / "originals").rglob("*") if path.is_file())

    return list_files
