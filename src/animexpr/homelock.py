"""One run of a stage per home at a time: a file lock the OS drops when its process dies (even kill -9)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from animexpr.errors import AnimexprError


class HomeBusyError(AnimexprError):
    """Another process holds this stage's lock on the home."""


@contextlib.contextmanager
def hold_home_lock(home: Path, stage: str) -> Iterator[None]:
    """Hold HOME/.<stage>.lock for the block; a second holder gets `HomeBusyError` at once, never a wait."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    home.mkdir(parents=True, exist_ok=True)
    with (home / f".{stage}.lock").open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HomeBusyError(f"another {stage} is running on {home}; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
