"""What every command shares: the resolved settings, the database and the store of the current invocation.

This module is imported by every command, `--help` included: it imports nothing heavy at module level
(SQLAlchemy, alembic and the database modules load when a command first opens the store).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
import typer.core
from rich.console import Console, ConsoleDimensions
from rich.text import Text

from animexpr.config import DEFAULT_HOME, Settings
from animexpr.errors import AnimexprError
from animexpr.store import FileStore

if TYPE_CHECKING:
    from rich.live import Live
    from rich.style import Style
    from sqlalchemy import Engine

# Width of a console that writes to a log or a pipe: wide enough that tables, paths and command lines stay
# whole (a terminal's or COLUMNS' width still wins where there is one).
LOG_COLUMNS = 10_000
# How often a progress display prints a plain line when its console is not a terminal.
PROGRESS_LOG_SECONDS = 30.0


class LogFriendlyConsole(Console):
    """A rich console that keeps whole lines when its output is not a terminal (CI, `| tee`, a log file).

    A terminal sees what a plain `Console` shows. Elsewhere rich would wrap at 80 columns and cut table
    headers and command lines; this console is as wide as `LOG_COLUMNS` instead, draws rules as a short
    prefix (a rule as wide as the console would be a line of dashes), and prints a plain line of each live
    progress display every `progress_log_seconds`, where rich would print nothing until the step ends.
    """

    def __init__(self, *args: Any, progress_log_seconds: float = PROGRESS_LOG_SECONDS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress_log_seconds = progress_log_seconds
        self._progress_logger: _ProgressLogger | None = None

    @property
    def _logs_plainly(self) -> bool:
        return not self.is_terminal and not self.is_jupyter

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._width is None and self._logs_plainly:  # no width given, COLUMNS unset, not a terminal
            return ConsoleDimensions(LOG_COLUMNS, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size  # as Console's own setter

    def rule(
        self,
        title: str | Text = "",
        *,
        characters: str = "─",
        style: str | Style = "rule.line",
        align: Literal["left", "center", "right"] = "center",
    ) -> None:
        if not self._logs_plainly:
            super().rule(title, characters=characters, style=style, align=align)
            return
        heading = Text(characters * 2 + " ", style=style)
        self.print(heading + (self.render_str(title) if isinstance(title, str) else title), soft_wrap=True)

    def set_live(self, live: Live) -> bool:
        topmost = super().set_live(live)
        if topmost and self._logs_plainly:
            self._progress_logger = _ProgressLogger(self, live, self.progress_log_seconds)
            self._progress_logger.start()
        return topmost

    def clear_live(self) -> None:
        super().clear_live()
        if not self._live_stack and self._progress_logger is not None:
            self._progress_logger.stop()
            self._progress_logger = None


class _ProgressLogger(threading.Thread):
    """Prints what a live display shows, as plain lines, every `seconds`, until stopped."""

    def __init__(self, console: Console, live: Live, seconds: float) -> None:
        super().__init__(name="progress-log", daemon=True)
        self.console = console
        self.live = live
        self.seconds = seconds
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.seconds):
            self.console.print(self.live.renderable)

    def stop(self) -> None:
        self.done.set()


console = LogFriendlyConsole()
err_console = LogFriendlyConsole(stderr=True)


class ProgressBars:
    """How every command shows progress: bars on standard error (standard output holds summaries and their
    JSON), one bar per task (a stage, a class, a run), all fed the same way: `update(task, done, total,
    status)`.

    On a terminal the bars are live; in a log or a pipe the console prints them as a plain line every 30 s.
    The display starts at the first update, so a command that forks workers first (crop) starts no thread
    before them. `columns` replaces the standard ones (bar, done/total, time left) for commands that count
    something else (bytes); `status` text is shown after them.
    """

    def __init__(self, columns: Sequence[Any] = (), *, transient: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        shown = columns or (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self.progress = Progress(
            TextColumn("{task.description}"),
            *shown,
            TextColumn("{task.fields[status]}"),
            console=err_console,
            transient=transient,
        )
        self.tasks: dict[str, Any] = {}
        self.started = False
        self._lock = threading.Lock()  # harvest reports from its download threads

    def update(self, task: str, done: float, total: float | None, status: str = "", **fields: Any) -> None:
        """Set `task`'s bar (made on first use) to `done` of `total`; `fields` feed the given columns."""
        with self._lock:
            if not self.started:
                self.progress.start()
                self.started = True
            if task not in self.tasks:
                self.tasks[task] = self.progress.add_task(task, total=total, status=status, **fields)
            self.progress.update(self.tasks[task], completed=done, total=total, status=status, **fields)

    def print(self, text: str) -> None:
        """A line above the bars (a stage beginning)."""
        self.progress.console.print(text)

    def close(self) -> None:
        with self._lock:
            if self.started:  # rich prints an empty line when stopping a display that never ran
                self.progress.stop()
                self.started = False

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class AppState:
    settings: Settings
    # Only the commands that make a store (init, harvest) may create a home; the others refuse a missing one.
    may_create_home: bool = False
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def engine(self) -> Engine:
        """Opened on first use, so that commands which need no database never touch it."""
        if self._engine is None:
            from animexpr.db.identity import bind_store
            from animexpr.db.session import open_db

            self._prepare_home()
            engine = open_db(self.settings.db_url)
            try:
                bind_store(engine, self.settings.home)
            except BaseException:
                engine.dispose()
                raise
            self._engine = engine
        return self._engine

    @property
    def store(self) -> FileStore:
        store = FileStore(self.settings.home)
        self._prepare_home()
        try:
            store.create_areas()
        except OSError as exc:
            raise AnimexprError(
                f"home {self.settings.home}: cannot create its folders ({exc.strerror})"
            ) from None
        return store

    def _prepare_home(self) -> None:
        if not self.may_create_home:
            require_store(self.settings)
        ensure_home(self.settings.home)


class NoStoreError(AnimexprError):
    """The home holds no store, and the command is not one that makes a store."""


def holds_store(settings: Settings) -> bool:
    """True when the home is a store: a folder with the store id, the settings file or its SQLite database.

    The store id is written by the first command that opens the database (`init`, `harvest`); the other two
    also mark homes made before store ids.
    """
    from animexpr.db.identity import STORE_ID_FILE

    home = settings.home
    if not home.is_dir():
        return False
    if (home / STORE_ID_FILE).is_file() or settings.config_file.is_file():
        return True
    sqlite_file = _sqlite_file(settings.db_url)
    return sqlite_file is not None and sqlite_file.is_file()


def _sqlite_file(db_url: str) -> Path | None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(db_url)
    except ArgumentError:
        return None  # open_db says what is wrong with it
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def require_store(settings: Settings) -> None:
    """A one-line error, and no folder made, when the home holds no store (a mistyped --home, no init yet)."""
    home = settings.home
    if home.exists() and not home.is_dir():
        raise AnimexprError(f"home {home} is a file, not a folder: give --home a folder")
    if holds_store(settings):
        return
    default = (
        " (the default home; choose another with --home or ANIMEXPR_HOME)" if home == DEFAULT_HOME else ""
    )
    raise NoStoreError(f"no store at {home}{default}; make one with: animexpr --home {home} init")


def ensure_home(home: Path) -> None:
    """The home folder exists and can be written, or a one-line error says why not."""
    if home.exists() and not home.is_dir():
        raise AnimexprError(f"home {home} is a file, not a folder: give --home a folder")
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AnimexprError(f"home {home}: cannot create it ({exc.strerror})") from None
    if not os.access(home, os.W_OK):
        raise AnimexprError(f"home {home} is read-only; animexpr writes its database and files there")


def get_state(ctx: typer.Context, *, create_home: bool = False) -> AppState:
    """The invocation's state; `create_home=True` for the commands that make a store where there is none."""
    state = ctx.find_root().obj
    assert isinstance(state, AppState), "the root callback sets the app state"
    if create_home:
        state.may_create_home = True
    return state


def get_settings(ctx: typer.Context) -> Settings:
    return get_state(ctx).settings


# Exit statuses, the same for every command (the README lists them).
EXIT_OK = 0
EXIT_ERROR = 1  # an AnimexprError: one line on standard error
EXIT_USAGE = 2  # a bad option or argument: click's usage error
EXIT_INTERRUPTED = 130  # Ctrl-C: what a shell reports for a process stopped by SIGINT (128 + 2)


class AnimexprGroup(typer.core.TyperGroup):
    """The root command: Ctrl-C in any command ends it with one line and status 130.

    Stages that catch Ctrl-C themselves say what they kept and exit 130 on their own; this covers the other
    commands. Typer releases built on click's own main turn Ctrl-C into `Abort` ("Aborted!", status 1), later
    ones into a silent 130: with this group users see the same line and status whichever is installed.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise self._interrupted() from None
        except typer.Abort as exc:
            if isinstance(exc.__context__, KeyboardInterrupt):  # Ctrl-C at a prompt, which click re-raises
                raise self._interrupted() from None
            raise  # a declined confirmation or the end of input: click's own "Aborted!" and status 1

    @staticmethod
    def _interrupted() -> typer.Exit:
        err_console.print("interrupted", highlight=False)
        return typer.Exit(EXIT_INTERRUPTED)


def hide_flag_types() -> None:
    """No `<bool>` beside the flags in `--help`.

    Recent typer's rich help fills the type column of every option, `<bool>` for flags and `--help` too,
    although a flag takes no value (click's plain help leaves it out): flags get an empty column again.
    """
    shown = getattr(typer.core.TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "hides_flags", False):
        return  # a typer without that column, or hidden already

    def display_type_rich(self: typer.core.TyperOption, ctx: Any) -> str | None:
        return None if self.is_bool_flag else shown(self, ctx)

    display_type_rich.hides_flags = True  # type: ignore[attr-defined]
    typer.core.TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


JsonOption = Annotated[
    bool,
    typer.Option(
        "--json", help="Print one JSON object on standard output instead of the summary (keys in the README)."
    ),
]


def print_json(data: Any) -> None:
    """One JSON object on standard output, for scripts; logs and progress stay on standard error."""
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def choices(names: Sequence[str]) -> Any:
    """The type of an option of fixed choices, from the tuple that defines them (no copy to keep in step).

    A `Literal` of the names: typer shows them in `--help` and refuses any other value with a usage error
    (status 2) that lists them.
    """
    literal: Any = Literal
    return literal[tuple(names)]
