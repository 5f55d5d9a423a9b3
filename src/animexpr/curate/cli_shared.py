"""What the `dedup`, `expand` and `snapshot` commands share: the progress bar and their common options."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from animexpr.cli_common import ProgressBars

MaxDistance = Annotated[
    int,
    typer.Option(
        "--max-distance",
        min=0,
        max=63,
        help="Near-duplicate threshold: differing bits of the 64-bit perceptual hash (mirrors included).",
    ),
]

Workers = Annotated[
    int | None,
    typer.Option(min=1, help="Processes (default: one per available core).", show_default=False),
]


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A bar on standard error, fed `(done, total)` as the stages report it."""
    with ProgressBars() as bars:
        yield lambda done, total: bars.update(description, done, total)
