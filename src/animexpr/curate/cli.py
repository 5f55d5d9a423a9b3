"""The curate room's commands: each group lives in its own `*_cli` module with a `register(app)`."""

from __future__ import annotations

import importlib

import typer

# One module per command group, owned by whoever builds it; a module not written yet is simply not offered.
COMMAND_MODULES = (
    "animexpr.curate.crop_cli",
    "animexpr.curate.review_cli",
    "animexpr.curate.dedup_cli",
    "animexpr.curate.expand_cli",
    "animexpr.curate.snapshot_cli",
)


def register(app: typer.Typer) -> None:
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(app)
