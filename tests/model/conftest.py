"""Fixtures of the model tests (the helpers live in model_fixtures.py, importable by name from the tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_fixtures import build_test_snapshot

from animexpr.model.inception import InceptionError, resolve_inception


@pytest.fixture
def snapshot_dir(tmp_path: Path) -> Path:
    """A 4-class snapshot folder: 5 training and 1 test image per class."""
    return build_test_snapshot(tmp_path)


@pytest.fixture(scope="module")
def inception_weights() -> Path:
    """The checked Inception TorchScript, already on this machine; the test skips without it."""
    try:
        return resolve_inception(fetch=False)
    except InceptionError as exc:
        pytest.skip(f"Inception weights not found ({exc})")
