"""The SQLite ledger's shared rate limits: the ``rate_limits`` table of migration
``m006_rate_limits``, with the semantics of :meth:`enrich.ledger.base.LedgerBackend.pace`.

:class:`SQLitePace` is a mixin of :class:`~enrich.ledger.sqlite.SQLiteLedger`: each operation is
one of the ledger's ``BEGIN IMMEDIATE`` transactions, so the processes that share the file book
distinct slots of one schedule (GCRA, wall-clock seconds).
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from .base import book_slot

__all__ = ["SQLitePace"]


class SQLitePace:
    """``pace``, ``pace_settle`` and ``pace_penalize`` over the ledger's transactions."""

    if TYPE_CHECKING:

        def _tx(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def _pace_row(self, conn: sqlite3.Connection, name: str, now: float) -> sqlite3.Row:
        conn.execute(
            "INSERT OR IGNORE INTO rate_limits (name, req_tat, tok_tat) VALUES (?, ?, ?)",
            (name, now, now),
        )
        return conn.execute("SELECT * FROM rate_limits WHERE name = ?", (name,)).fetchone()

    def pace(
        self, name: str, *, request_interval: float, token_interval: float, burst: float
    ) -> float:
        """Reserve the next start under the shared limit ``name``; how long to wait for it."""
        now = time.time()
        with self._tx() as conn:
            row = self._pace_row(conn, name, now)
            start, req, tok = book_slot(
                row, now, request_interval=request_interval, token_interval=token_interval,
                burst=burst,
            )  # fmt: skip
            conn.execute(
                "UPDATE rate_limits SET req_tat = ?, tok_tat = ? WHERE name = ?",
                (req, tok, name),
            )
        return start - now

    def pace_settle(self, name: str, token_interval: float) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE rate_limits SET tok_tat = tok_tat + ? / factor, "
                "factor = MIN(1.0, factor + 0.0025) WHERE name = ?",
                (token_interval, name),
            )

    def pace_penalize(self, name: str, pause: float) -> float:
        now = time.time()
        with self._tx() as conn:
            self._pace_row(conn, name, now)
            conn.execute(
                "UPDATE rate_limits SET paused_until = MAX(paused_until, ?), "
                "factor = MAX(0.25, factor * 0.8) WHERE name = ?",
                (now + pause, name),
            )
        return pause
