"""Which store (home folder) a database belongs to.

The database holds paths into one home's files, so two homes on one database would each see rows whose files
are in the other. The first command on a database binds it to its home: a random id written to
HOME/.animexpr-store-id and to the `store_identity` table. Later commands refuse a home whose id differs.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from animexpr.db.locking import lock_for_write
from animexpr.db.models import StoreIdentity
from animexpr.db.session import safe_url, session_scope
from animexpr.errors import DatabaseOpenError
from animexpr.store import atomic_write_bytes

STORE_ID_FILE = ".animexpr-store-id"
_STORE_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


def read_store_id(home: Path) -> str | None:
    path = home / STORE_ID_FILE
    if not path.is_file():
        return None
    text = path.read_text(encoding="ascii", errors="replace").strip()
    if not _STORE_ID_PATTERN.fullmatch(text):
        raise DatabaseOpenError(f"{path}: not a store id (32 hex digits); restore it or remove it")
    return text


def bind_store(engine: Engine, home: Path) -> str:
    """The store id shared by `home` and the database, binding them on first use; refuses another store's."""
    home_id = read_store_id(home)
    with session_scope(engine) as session:
        _lock_identity(session)
        bound = session.scalars(select(StoreIdentity)).first()
        if bound is not None:
            if bound.store_id != home_id:
                raise DatabaseOpenError(_other_store_message(engine, home, bound, home_id))
            return bound.store_id
        store_id = home_id or uuid.uuid4().hex
        if home_id is None:
            atomic_write_bytes(home / STORE_ID_FILE, f"{store_id}\n".encode())
        session.add(StoreIdentity(store_id=store_id, home=str(home.resolve())))
    return store_id


def _lock_identity(session: Session) -> None:
    """Two first commands on one new database must not bind it to two homes at once."""
    if session.connection().dialect.name == "sqlite":
        lock_for_write(session)
    else:
        session.execute(text("LOCK TABLE store_identity IN SHARE ROW EXCLUSIVE MODE"))


def _other_store_message(engine: Engine, home: Path, bound: StoreIdentity, home_id: str | None) -> str:
    where = f"db: {safe_url(engine.url)} belongs to the store at {bound.home}, not to {home}"
    if home_id is None:
        return (
            f"{where}; give each home its own --db (or, if this folder is that store moved here, "
            f"write {bound.store_id} into {home / STORE_ID_FILE})"
        )
    return f"{where} (store ids {bound.store_id} and {home_id}); give each home its own --db"
