"""Our write transactions: on SQLite they take the write lock first, so they wait their turn.

SQLite lets one connection write at a time. A transaction that reads and then writes (what
a plain ``BEGIN`` gives) cannot wait for another writer: SQLite answers "database is
locked" at once rather than risk a deadlock. With several workers on one SQLite file, that
used to lose a recording: the mail had gone out, the result was not stored, and the message
came back later as a possible duplicate. ``BEGIN IMMEDIATE`` takes the lock up front, so a
busy writer is waited for (up to the connection's ``timeout``) instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import transaction


@contextmanager
def writing(using: str | None = None, *, savepoint: bool = True) -> Iterator[None]:
    """``transaction.atomic()``, begun with ``BEGIN IMMEDIATE`` on SQLite when it is the
    outermost block. Inside a caller's transaction it is a plain nested block: the
    caller's ``BEGIN`` decided how the lock is taken."""
    connection = transaction.get_connection(using)
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        with transaction.atomic(using=using, savepoint=savepoint):
            yield
        return
    connection.ensure_connection()  # the mode is read from the settings on connect
    configured = connection.transaction_mode
    if configured in (None, "DEFERRED"):
        connection.transaction_mode = "IMMEDIATE"
    try:
        with transaction.atomic(using=using, savepoint=savepoint):
            connection.transaction_mode = configured
            yield
    finally:
        connection.transaction_mode = configured
