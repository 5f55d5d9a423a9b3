"""What every command shares: the resolved settings, the database and the store of the current invocation."""

from __future__ import annotations

from dataclasses import dataclass, field

import typer
from rich.console import Console
from sqlalchemy import Engine

from animexpr.config import Settings
from animexpr.db.session import open_db
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
            self.settings.home.mkdir(parents=True, exist_ok=True)
            self._engine = open_db(self.settings.db_url)
        return self._engine

    @property
    def store(self) -> FileStore:
        store = FileStore(self.settings.home)
        store.create_areas()
        return store


def get_state(ctx: typer.Context) -> AppState:
    state = ctx.find_root().obj
    assert isinstance(state, AppState), "the root callback sets the app state"
    return state


def get_settings(ctx: typer.Context) -> Settings:
    return get_state(ctx).settings
