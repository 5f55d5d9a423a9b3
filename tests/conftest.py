"""Fixtures every room's tests share: settings on a temporary home, a migrated database, the store, assets."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from animexpr.config import Settings, load_settings
from animexpr.db.session import open_db
from animexpr.store import FileStore

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# No test reaches the internet: a test that would download a pinned file fails at once instead of waiting
# for a timeout (the download tests serve their files on 127.0.0.1 and pass their own environment).
os.environ.setdefault("ANIMEXPR_OFFLINE", "1")
PG_URL_VARIABLE = "ANIMEXPR_TEST_PG_URL"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def assets_dir() -> Path:
    """The real third-party assets (ANIMEXPR_ASSETS); tests that need them skip without them."""
    value = os.environ.get("ANIMEXPR_ASSETS")
    if not value or not Path(value).is_dir():
        pytest.skip("ANIMEXPR_ASSETS is not set to the assets folder (real images, fixtures, cascade)")
    return Path(value)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def settings(home: Path) -> Settings:
    return load_settings(home=home, environ={})


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = open_db(settings.db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(home: Path) -> FileStore:
    file_store = FileStore(home)
    file_store.create_areas()
    return file_store


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the server named by ANIMEXPR_TEST_PG_URL, dropped afterwards."""
    admin_url = os.environ.get(PG_URL_VARIABLE)
    if not admin_url:
        pytest.skip(f"no PostgreSQL server: set {PG_URL_VARIABLE} (.ci/run starts one)")
    name = f"animexpr_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_db_url(request: pytest.FixtureRequest, settings: Settings) -> str:
    """The same test on SQLite and, where a server is there, on PostgreSQL."""
    if request.param == "sqlite":
        return settings.db_url
    return str(request.getfixturevalue("postgres_url"))
