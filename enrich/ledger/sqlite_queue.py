"""The SQLite ledger's webhook queue (``enrich serve``): the ``webhooks`` table of migration
``m007_webhooks``, with the semantics of the webhook queue of :mod:`enrich.ledger.base`.

:class:`SQLiteWebhookQueue` is a mixin of :class:`~enrich.ledger.sqlite.SQLiteLedger` (kept
apart so that neither module grows past a readable size): it uses the ledger's connection and
its ``BEGIN IMMEDIATE`` transactions, so each operation is atomic between the processes that
share the file. A lease names its holder (:mod:`enrich.ledger.holder`): an item leased by a
process of this host that is gone is taken again at once.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .base import WebhookItem, WebhookState
from .holder import holder_is_gone, this_holder

__all__ = ["SQLiteWebhookQueue"]

_COLUMNS = (
    "platform, call_id, agent_id, payload, state, deliveries, attempts, conversation_id, "
    "last_error, received_at, queued_at, due, updated_at"
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def _item(row: sqlite3.Row) -> WebhookItem:
    data = dict(row)
    data["due_at"] = _iso(data.pop("due"))
    data["payload"] = bytes(data["payload"])
    return WebhookItem(**data)


class SQLiteWebhookQueue:
    """The webhook queue's operations on a SQLite ledger (see the module's docstring)."""

    if TYPE_CHECKING:  # provided by SQLiteLedger

        def _tx(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _conn(self) -> sqlite3.Connection: ...

    def webhook_enqueue(
        self, platform: str, call_id: str, agent_id: str, payload: bytes, received_at: str
    ) -> bool:
        now = _now()
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO webhooks (platform, call_id, agent_id, payload, state, deliveries, "
                "attempts, received_at, queued_at, due, updated_at) "
                "VALUES (?, ?, ?, ?, 'queued', 1, 0, ?, ?, ?, ?) "
                "ON CONFLICT (platform, call_id) DO NOTHING",
                (platform, call_id, agent_id, payload, received_at, now, time.time(), now),
            )
            if cur.rowcount == 1:
                return True
            conn.execute(
                "UPDATE webhooks SET deliveries = deliveries + 1 "
                "WHERE platform = ? AND call_id = ?",
                (platform, call_id),
            )
            return False

    def webhook_take(self, seconds: float) -> WebhookItem | None:
        now = time.time()
        with self._tx() as conn:
            row = self._next_free(conn, now)
            if row is None and self._free_gone_holders(conn, now):
                row = self._next_free(conn, now)
            if row is None:
                return None
            conn.execute(
                "UPDATE webhooks SET leased_until = ?, leased_by = ?, attempts = attempts + 1, "
                "updated_at = ? WHERE platform = ? AND call_id = ?",
                (now + seconds, this_holder(), _now(), row["platform"], row["call_id"]),
            )
            taken = dict(row)
            taken["attempts"] += 1
            return _item(taken)  # type: ignore[arg-type]

    @staticmethod
    def _next_free(conn: sqlite3.Connection, now: float) -> sqlite3.Row | None:
        return conn.execute(
            f"SELECT {_COLUMNS} FROM webhooks WHERE state = 'queued' AND due <= ? "
            "AND (leased_until IS NULL OR leased_until < ?) ORDER BY due LIMIT 1",
            (now, now),
        ).fetchone()

    @staticmethod
    def _free_gone_holders(conn: sqlite3.Connection, now: float) -> bool:
        """Release the leases of holders (on this host) whose process is gone; True if any."""
        holders = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT leased_by FROM webhooks WHERE state = 'queued' "
                "AND leased_until >= ?",
                (now,),
            )
        ]
        gone = [h for h in holders if holder_is_gone(h)]
        for holder in gone:
            conn.execute(
                "UPDATE webhooks SET leased_until = NULL, leased_by = NULL "
                "WHERE state = 'queued' AND leased_by = ?",
                (holder,),
            )
        return bool(gone)

    def webhook_renew(self, platform: str, call_id: str, seconds: float) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE webhooks SET leased_until = ? WHERE platform = ? AND call_id = ? "
                "AND state = 'queued' AND leased_by = ?",
                (time.time() + seconds, platform, call_id, this_holder()),
            )
            return cur.rowcount == 1

    def _settle(self, platform: str, call_id: str, sets: str, args: tuple[Any, ...]) -> None:
        with self._tx() as conn:
            conn.execute(
                f"UPDATE webhooks SET {sets}, leased_until = NULL, leased_by = NULL, "
                "updated_at = ? WHERE platform = ? AND call_id = ? AND state = 'queued'",
                (*args, _now(), platform, call_id),
            )

    def webhook_done(
        self, platform: str, call_id: str, conversation_id: str | None, note: str
    ) -> None:
        self._settle(
            platform,
            call_id,
            "state = 'done', conversation_id = ?, last_error = ?",
            (conversation_id, note),
        )

    def webhook_retry(self, platform: str, call_id: str, delay: float, error: str) -> None:
        self._settle(platform, call_id, "due = ?, last_error = ?", (time.time() + delay, error))

    def webhook_fail(self, platform: str, call_id: str, error: str) -> None:
        self._settle(platform, call_id, "state = 'failed', last_error = ?", (error,))

    def webhook_requeue(self, platform: str | None = None, call_id: str | None = None) -> int:
        sql = (
            "UPDATE webhooks SET state = 'queued', attempts = 0, queued_at = ?, due = ?, "
            "leased_until = NULL, leased_by = NULL, updated_at = ? WHERE state = 'failed'"
        )
        now = _now()
        args: tuple[Any, ...] = (now, time.time(), now)
        if platform is not None:
            sql += " AND platform = ?"
            args += (platform,)
        if call_id is not None:
            sql += " AND call_id = ?"
            args += (call_id,)
        with self._tx() as conn:
            return conn.execute(sql, args).rowcount

    def webhook_items(self, state: WebhookState | None = None) -> list[WebhookItem]:
        sql, args = f"SELECT {_COLUMNS} FROM webhooks", ()
        if state is not None:
            sql, args = sql + " WHERE state = ?", (WebhookState(state).value,)
        rows: Iterator[sqlite3.Row] = self._conn().execute(sql + " ORDER BY received_at", args)
        return [_item(r) for r in rows]

    def webhook_counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in WebhookState}
        deliveries = 0
        for row in self._conn().execute(
            "SELECT state, COUNT(*), SUM(deliveries) FROM webhooks GROUP BY state"
        ):
            counts[row[0]] = row[1]
            deliveries += row[2] or 0
        return {**counts, "deliveries": deliveries}
