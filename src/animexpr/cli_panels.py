"""`animexpr --help` in pipeline order: the root's commands in three panels, each in the order the README's
diagram runs them, whatever order the rooms register them in.
"""

from __future__ import annotations

from typing import Any, Final

from animexpr.cli_common import AnimexprGroup

PANELS: Final[dict[str, tuple[str, ...]]] = {
    "Dataset": ("harvest", "crop", "review", "dedup", "expand", "snapshot"),
    "Model": ("train", "transform", "evaluate", "compare", "benchmark"),
    "Store": ("init", "status", "demo"),
}
_PANEL_OF: Final = {name: panel for panel, names in PANELS.items() for name in names}
_PIPELINE_ORDER: Final = list(_PANEL_OF)


class PipelineGroup(AnimexprGroup):
    """The root command: each command in its panel of PANELS, the commands in pipeline order.

    Typer lists commands in registration order, command groups (`review`, `snapshot`, `benchmark`) after
    every single command, and shows the panels in the order of their first command. A command missing from
    PANELS keeps typer's default panel and comes last (a test lists every command).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, command in self.commands.items():
            if name in _PANEL_OF:
                command.rich_help_panel = _PANEL_OF[name]  # type: ignore[attr-defined]
        self.commands = dict(sorted(self.commands.items(), key=lambda item: _pipeline_position(item[0])))


def _pipeline_position(name: str) -> int:
    return _PIPELINE_ORDER.index(name) if name in _PANEL_OF else len(_PIPELINE_ORDER)
