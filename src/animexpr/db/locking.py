"""Write transactions that read first and must not meet a concurrent writer in between.

SQLite takes its write lock at the first write of a transaction, so two connections that both read
"crop 7 is free" and then both write would each succeed in turn. `lock_for_write` starts the transaction
with BEGIN IMMEDIATE instead: the second writer waits (busy timeout) until the first commits and then
reads the new state. PostgreSQL needs no transaction-wide lock: callers lock the rows they read with
SELECT ... FOR UPDATE (SKIP LOCKED where any free row will do).
"""

from __future__ import annotations

from sqlalchemy import Connection
from sqlalchemy.orm import Session


def lock_for_write(session: Session | Connection) -> None:
    """Call first thing in a transaction that reads and then writes what it read."""
    connection = session.connection() if isinstance(session, Session) else session
    if connection.dialect.name != "sqlite":
        return
    dbapi_connection = connection.connection.dbapi_connection
    if dbapi_connection is not None and dbapi_connection.in_transaction:
        raise RuntimeError("lock_for_write must run before the transaction's first statement")
    connection.exec_driver_sql("BEGIN IMMEDIATE")
