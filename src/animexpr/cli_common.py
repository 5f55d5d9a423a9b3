"""What every command shares: the resolved settings, the database and the store of the current invocation."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich.console import Console
from sqlalchemy import Engine

from animexpr.config import Settings
from animexpr.db.identity import bind_store
from animexpr.db.session import open_db
from animexpr.errors import AnimexprError
from animexpr.store import FileStore

console = Console()
err_console = Console(stderr=True)


@dataclass
class AppState:
    settings: Settings
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def engine(self) -> Engine:
        """Opened on first use, so that commands which need no database never touch it."""
        if self._engine is None:
            ensure_home(self.settings.home)
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
        ensure_home(self.settings.home)
        try:
            store.create_areas()
        except OSError as exc:
            raise AnimexprError(
                f"home {self.settings.home}: cannot create its folders ({exc.strerror})"
            ) from None
        return store


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


def get_state(ctx: typer.Context) -> AppState:
    state = ctx.find_root().obj
    assert isinstance(state, AppState), "the root callback sets the app state"
    return state


def get_settings(ctx: typer.Context) -> Settings:
    return get_state(ctx).settings
