"""Fixtures of the model tests (the helpers live in model_fixtures.py, importable by name from the tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_fixtures import build_test_snapshot


@pytest.fixture
def snapshot_dir(tmp_path: Path) -> Path:
    """A 4-class snapshot folder: 5 training and 1 test image per class."""
    return build_test_snapshot(tmp_path)
