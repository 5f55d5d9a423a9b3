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


def test_the_review_filter_table_has_the_names_the_command_offers() -> None:
    # The names live in curate.defaults (light); the table of states each stands for in curate.review.
    from animexpr.curate import review
    from animexpr.curate.defaults import STATE_FILTER_NAMES

    assert tuple(review.STATE_FILTERS) == STATE_FILTER_NAMES
