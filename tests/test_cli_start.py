"""`animexpr --help` starts fast: the command modules load no heavy library until a command runs.

The timing itself is a benchmark (bench/cli_start.py), not a test; these tests keep what makes it fast.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("alembic", "sqlalchemy", "numpy", "scipy", "cv2", "torch", "PIL", "requests", "starlette", "uvicorn")
_LOADED_AFTER = """
import sys
from animexpr.cli import app
try:
    app({args!r})
except SystemExit:
    pass
print(" ".join(sorted({{name.split(".")[0] for name in sys.modules}} & set({heavy!r}))), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["crop", "--help"],
        ["review", "--help"],
        ["snapshot", "create", "--help"],
        ["train", "--help"],
    ],
)
def test_help_loads_no_heavy_library(args: list[str]) -> None:
    code = _LOADED_AFTER.format(args=args, heavy=HEAVY)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    assert loaded == "", f"`animexpr {' '.join(args)}` imported {loaded}"
    assert "Usage" in result.stdout


def test_crop_option_defaults_match_the_cropper() -> None:
    from animexpr.curate import crop, crop_cli, detect

    assert crop_cli.DEFAULT_MARGIN == crop.DEFAULT_MARGIN
    assert crop_cli.DEFAULT_SIZE == crop.DEFAULT_SIZE
    assert crop.default_min_face(crop.DEFAULT_SIZE, crop.DEFAULT_MARGIN) == crop_cli.DEFAULT_MIN_FACE
    assert crop_cli.CASCADE_ENV == detect.CASCADE_ENV
    assert [policy.value for policy in crop_cli.FacePolicy] == [policy.value for policy in crop.FacePolicy]


def test_review_option_defaults_match_the_queue_and_the_page() -> None:
    from animexpr.curate import review, review_app, review_cli

    assert review_cli.DEFAULT_LEASE_SECONDS == review.DEFAULT_LEASE_SECONDS
    assert review_cli.DEFAULT_GRID_SIZE == review_app.DEFAULT_GRID_SIZE
    assert review_cli.BULK_ACCEPT_REVIEWER == review.BULK_ACCEPT_REVIEWER
    assert review_cli.CSV_IMPORT_REVIEWER == review.CSV_IMPORT_REVIEWER
    assert tuple(review.STATE_FILTERS) == review_cli.STATE_FILTER_NAMES


def test_expand_and_snapshot_option_defaults_match_the_stages() -> None:
    from animexpr.curate import augment, dedup, expand_cli, snapshot

    assert expand_cli.DEFAULT_TARGET == augment.DEFAULT_TARGET
    assert expand_cli.DEFAULT_MAX_DISTANCE == dedup.DEFAULT_MAX_DISTANCE
    assert expand_cli.DEFAULT_TEST_FRACTION == snapshot.DEFAULT_TEST_FRACTION
