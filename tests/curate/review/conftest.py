"""Fixtures of the review tests: a seeded store, the queue, a live server (helpers in review_testdata)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from review_testdata import LiveServer, SeededCrops, seed_crops
from sqlalchemy import Engine

from animexpr.config import Settings
from animexpr.curate.review import ReviewQueue
from animexpr.curate.review_app import ReviewAppConfig, create_app
from animexpr.store import FileStore


@pytest.fixture
def seeded(engine: Engine, store: FileStore, settings: Settings) -> SeededCrops:
    return seed_crops(engine, store, settings.class_names, per_class=6)


@pytest.fixture
def queue(engine: Engine, settings: Settings) -> ReviewQueue:
    return ReviewQueue(engine, settings.class_names)


@pytest.fixture
def live_server(engine: Engine, settings: Settings, seeded: SeededCrops) -> Iterator[LiveServer]:
    app = create_app(engine, settings, ReviewAppConfig(reviewer="alice"))
    with LiveServer(app) as server:
        yield server
