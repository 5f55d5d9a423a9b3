"""The `animexpr` command line: global options here, each room adds its own commands."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from animexpr import __version__, demo
from animexpr.cli_common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    AppState,
    JsonOption,
    console,
    err_console,
    get_state,
    hide_flag_types,
)
from animexpr.cli_panels import PipelineGroup
from animexpr.config import CONFIG_FILE_NAME, load_settings
from animexpr.curate import cli as curate_cli
from animexpr.errors import AnimexprError
from animexpr.harvest import harvest_cli
from animexpr.model import cli as model_cli
from animexpr.model import compare_cli, evaluate_cli
from animexpr.testing import benchmark_cli

# Every command, `--help` included, imports this module and the rooms' command modules: those import their
# heavy libraries (SQLAlchemy, OpenCV, numpy, scipy, torch, PIL) inside the commands, so that
# `animexpr --help` starts about as fast as any typer program (bench/cli_start.py measures it).

hide_flag_types()
app = typer.Typer(
    name="animexpr",
    cls=PipelineGroup,  # --help in pipeline order; Ctrl-C in any command: one line, status 130
    help="Anime facial-expression dataset from Danbooru, and the expression GAN trained on it.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # never print local variables: they may hold an API key
)


def _version(value: bool) -> None:
    if value:
        console.print(f"animexpr {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            help="Home folder of the store (env ANIMEXPR_HOME; default ./animexpr-home).", show_default=False
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            help="Database URL (env ANIMEXPR_DB; default SQLite in the home folder).", show_default=False
        ),
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            help="Classes and tags, e.g. 'angry,sad:sad+crying' (env ANIMEXPR_CLASSES).", show_default=False
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug messages.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    _setup_logging(verbose)
    ctx.obj = AppState(load_settings(home=home, db=db, classes=classes))


def _setup_logging(verbose: bool) -> None:
    handler: logging.Handler
    if err_console.is_terminal:
        from rich.logging import RichHandler

        handler = RichHandler(console=err_console, show_path=False, show_time=False)
    else:
        handler = _PlainLogHandler()
    logger = logging.getLogger("animexpr")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


class _PlainLogHandler(logging.Handler):
    """Log records as whole lines ('WARNING  message') for a log file or a pipe: rich's handler pads each
    line to the console's width and wraps long messages."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            err_console.print(
                f"{record.levelname:<8} {self.format(record)}", markup=False, highlight=False, soft_wrap=True
            )
        except Exception:
            self.handleError(record)


@app.command()
def init(ctx: typer.Context) -> None:
    """Create the home folder, its file areas and the database, and write a settings file to edit."""
    state = get_state(ctx, create_home=True)
    state.store.remove_stale_temporaries()
    _ = state.engine
    config_file = state.settings.config_file
    if not config_file.exists():
        config_file.write_text(_settings_file_text(state), encoding="utf-8")
    console.print(f"store ready in [bold]{state.settings.home}[/] (settings: {config_file})")


def _settings_file_text(state: AppState) -> str:
    lines = [
        f"# animexpr settings ({CONFIG_FILE_NAME}); environment variables and options override them.",
        '# db = "postgresql+psycopg://user@127.0.0.1/animexpr"',
        "",
        "[classes]  # class name = Danbooru tag(s); a post matches a class when it has any of its tags",
    ]
    lines += [f"{spec.name} = {json.dumps(list(spec.tags))}" for spec in state.settings.classes]
    return "\n".join(lines) + "\n"


@app.command()
def status(
    ctx: typer.Context,
    as_json: JsonOption = False,
) -> None:
    """Show what the store holds: posts, crops, augmentations and snapshots per class, and the training runs
    with their latest evaluation."""
    from animexpr.status import collect_status

    state = get_state(ctx)
    report = collect_status(state.engine, state.settings)
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=False))
        return
    console.print(f"home [bold]{report['home']}[/]  database {report['database']}")
    table = Table(
        "class", "posts", "downloaded", "skipped", "failed", "pending", "accepted", "rejected", "augmented"
    )
    rows = [*report["per_class"].items(), ("all", report)]
    for name, counts in rows:
        posts, crops = counts["posts"], counts["crops"]
        table.add_row(
            name,
            *(str(posts[key]) for key in ("total", "downloaded", "skipped", "failed")),
            *(str(crops[key]) for key in ("pending", "accepted", "rejected")),
            str(counts["augmented"]),
        )
    console.print(table)
    if report["posts"]["reasons"]:
        reasons = ", ".join(f"{reason} {count}" for reason, count in report["posts"]["reasons"].items())
        console.print(f"skipped or failed posts by reason: {reasons}")
    console.print(f"snapshots: {', '.join(report['snapshots']) or 'none'}")
    _print_runs(report["runs"])


def _print_runs(runs: list[dict[str, Any]]) -> None:
    from rich.markup import escape

    from animexpr.status import RUN_COLUMNS, run_table_rows

    if not runs:
        console.print("runs: none")
        return
    table = Table(*RUN_COLUMNS, title="runs")
    for row in run_table_rows(runs):
        table.add_row(*(escape(cell) for cell in row))  # run names and problems are text, not markup
    console.print(table)


for room in (harvest_cli, curate_cli, model_cli, evaluate_cli, compare_cli, benchmark_cli, demo):
    room.register(app)


def main(args: list[str] | None = None) -> None:
    """Console-script entry point (`args`: the command line, default `sys.argv[1:]`); exit statuses:

    0 done; 1 an error the user can fix (one red line); 2 a usage error (click's message); 130 interrupted
    (Ctrl-C: the root group turns it into one line in any command, and stages that catch it themselves say
    what they kept). Click's standalone mode does the exiting; our errors, and a Ctrl-C outside any
    command (while the options are parsed or an error printed), are turned into their status here.
    """
    try:
        app(args)
    except AnimexprError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        err_console.print("interrupted", highlight=False)
        sys.exit(EXIT_INTERRUPTED)
