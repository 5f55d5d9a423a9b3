"""Process pools for the stages that use every core (crop, expand)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
from collections.abc import Sequence


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def pool_context(preload: Sequence[str] = ()) -> multiprocessing.context.BaseContext:
    """A start method that is safe after OpenCV has run in this process.

    Not fork: OpenCV's thread pool does not survive a fork, and a worker forked from a process that has
    already run OpenCV hangs in its first OpenCV call. A fork server is a clean process that imports
    `preload` once (when the first pool of this process starts it); each worker is forked from it in
    milliseconds.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(preload))
        return context
    return multiprocessing.get_context("spawn")
