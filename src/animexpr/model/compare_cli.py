"""`animexpr compare`: the paper's tables and a figure for evaluated runs (the work: `model.compare`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from animexpr.cli_common import JsonOption, console, print_json
from animexpr.model.config import TableChoice


def compare(
    runs: Annotated[
        list[Path],
        typer.Argument(help="Evaluated run folders, folders of scored images, or eval.json files."),
    ],
    out: Annotated[Path, typer.Option(help="Markdown report to write.")] = Path("report.md"),
    figure: Annotated[Path | None, typer.Option(help="Figure PNG (default: beside the report).")] = None,
    rows: Annotated[int, typer.Option(help="Test inputs shown in the figure.")] = 8,
    table: Annotated[
        TableChoice, typer.Option(help="The paper's table layout: 1 (ablations), 2 (methods) or both.")
    ] = "both",
    allow_mismatch: Annotated[
        bool,
        typer.Option(
            help="List rows scored under different protocols, real sets or sample sizes with a warning "
            "instead of refusing them."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The paper's Table 1 and/or Table 2 for these rows, the paper's figures beside ours, and a figure."""
    from animexpr.model.compare import comparability_problems, compare_runs, load_evaluated

    result = compare_runs(runs, out, figure, rows, table=table, allow_mismatch=allow_mismatch)
    if as_json:
        # What was compared differently: refused above unless --allow-mismatch, listed among the warnings.
        mismatches = comparability_problems([load_evaluated(run) for run in runs])
        print_json(
            {
                "report": str(out),
                "figure": None if result.figure is None else str(result.figure),
                "rows": result.rows,
                "comparable": not mismatches,
                "mismatches": mismatches,
                "warnings": result.warnings,
            }
        )
        return
    console.print(result.markdown, markup=False, highlight=False)
    console.print(f"written {out}" + (f" and {result.figure}" if result.figure else ""))


def register(app: typer.Typer) -> None:
    app.command()(compare)
