"""The Postgres ledger's webhook queue (``enrich serve``): the ``webhooks`` table of migration
``m004_webhooks`` of :mod:`enrich.ledger.pg_migrations`, with the semantics of the webhook queue
of :mod:`enrich.ledger.base`, as :mod:`enrich.ledger.sqlite_queue` keeps them for SQLite.

:class:`PostgresWebhookQueue` is a mixin of :class:`~enrich.ledger.postgres.PostgresLedger`: it
uses the ledger's connections and short transactions. Taking an item locks its row and skips
those other takers hold (``FOR UPDATE SKIP LOCKED``), so a fleet of workers takes distinct items
without waiting for each other. Due times and leases are in the database server's clock; a lease
names its holder (:mod:`enrich.ledger.holder`): an item leased by a process of this host that is
gone is taken again at once.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .base import WebhookItem, WebhookState
from .holder import holder_is_gone, this_holder
from .pg_connect import SERVER_NOW as _NOW
from .pg_connect import pg_text

__all__ = ["PostgresWebhookQueue"]

_COLUMNS = (
    "platform, call_id, agent_id, payload, state, deliveries, attempts, conversation_id, "
    "last_error, received_at, queued_at, due, updated_at"
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _item(row: dict[str, Any]) -> WebhookItem:
    data = dict(row)
    data.pop("now", None)
    data["due_at"] = datetime.fromtimestamp(data.pop("due"), UTC).isoformat(timespec="milliseconds")
    data["payload"] = bytes(data["payload"])
    return WebhookItem(**data)


class PostgresWebhookQueue:
    """The webhook queue's operations on a Postgres ledger (see the module's docstring)."""

    if TYPE_CHECKING:  # provided by PostgresConnections

        def _tx(
            self, agent_id: str | None = None, conversation_id: str | None = None
        ) -> AbstractContextManager[Any]: ...
        def _statement(self, sql: str, args: Any = ()) -> list[dict[str, Any]]: ...

    def webhook_enqueue(
        self, platform: str, call_id: str, agent_id: str, payload: bytes, received_at: str
    ) -> bool:
        now = _now()
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO webhooks (platform, call_id, agent_id, payload, state, deliveries, "
                "attempts, received_at, queued_at, due, updated_at) "
                f"VALUES (%s, %s, %s, %s, 'queued', 1, 0, %s, %s, {_NOW}, %s) "
                "ON CONFLICT (platform, call_id) DO NOTHING",
                (platform, call_id, agent_id, bytes(payload), received_at, now, now),
            )
            if cur.rowcount == 1:
                return True
            conn.execute(
                "UPDATE webhooks SET deliveries = deliveries + 1 "
                "WHERE platform = %s AND call_id = %s",
                (platform, call_id),
            )
            return False

    def webhook_take(self, seconds: float) -> WebhookItem | None:
        with self._tx() as conn:
            row = self._next_free(conn)
            if row is None and self._free_gone_holders(conn):
                row = self._next_free(conn)
            if row is None:
                return None
            conn.execute(
                "UPDATE webhooks SET leased_until = %s, leased_by = %s, attempts = attempts + 1, "
                "updated_at = %s WHERE platform = %s AND call_id = %s",
                (row["now"] + seconds, this_holder(), _now(), row["platform"], row["call_id"]),
            )
            taken = dict(row)
            taken["attempts"] += 1
            return _item(taken)

    @staticmethod
    def _next_free(conn: Any) -> dict[str, Any] | None:
        """The next due item no live lease holds, its row locked (one another taker has
        locked is skipped: it is taking it)."""
        return conn.execute(
            f"SELECT {_COLUMNS}, now FROM webhooks, (SELECT {_NOW} AS now) AS clock "
            "WHERE state = 'queued' AND due <= now "
            "AND (leased_until IS NULL OR leased_until < now) "
            'ORDER BY due, received_at COLLATE "C" LIMIT 1 FOR UPDATE OF webhooks SKIP LOCKED'
        ).fetchone()

    @staticmethod
    def _free_gone_holders(conn: Any) -> bool:
        """Release the leases of holders (on this host) whose process is gone; True if any."""
        holders = [
            r["leased_by"]
            for r in conn.execute(
                "SELECT DISTINCT leased_by FROM webhooks WHERE state = 'queued' "
                f"AND leased_until >= {_NOW}"
            ).fetchall()
        ]
        gone = [h for h in holders if holder_is_gone(h)]
        for holder in gone:
            conn.execute(
                "UPDATE webhooks SET leased_until = NULL, leased_by = NULL "
                "WHERE state = 'queued' AND leased_by = %s",
                (holder,),
            )
        return bool(gone)

    def webhook_renew(self, platform: str, call_id: str, seconds: float) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                f"UPDATE webhooks SET leased_until = {_NOW} + %s WHERE platform = %s "
                "AND call_id = %s AND state = 'queued' AND leased_by = %s",
                (seconds, platform, call_id, this_holder()),
            )
            return cur.rowcount == 1

    def _settle(self, platform: str, call_id: str, sets: str, args: tuple[Any, ...]) -> None:
        with self._tx() as conn:
            conn.execute(
                f"UPDATE webhooks SET {sets}, leased_until = NULL, leased_by = NULL, "
                "updated_at = %s WHERE platform = %s AND call_id = %s AND state = 'queued'",
                (*args, _now(), platform, call_id),
            )

    def webhook_done(
        self, platform: str, call_id: str, conversation_id: str | None, note: str
    ) -> None:
        self._settle(
            platform,
            call_id,
            "state = 'done', conversation_id = %s, last_error = %s",
            (conversation_id, pg_text(note)),
        )

    def webhook_retry(self, platform: str, call_id: str, delay: float, error: str) -> None:
        self._settle(
            platform, call_id, f"due = {_NOW} + %s, last_error = %s", (delay, pg_text(error))
        )

    def webhook_fail(self, platform: str, call_id: str, error: str) -> None:
        self._settle(platform, call_id, "state = 'failed', last_error = %s", (pg_text(error),))

    def webhook_requeue(self, platform: str | None = None, call_id: str | None = None) -> int:
        sql = (
            f"UPDATE webhooks SET state = 'queued', attempts = 0, queued_at = %s, due = {_NOW}, "
            "leased_until = NULL, leased_by = NULL, updated_at = %s WHERE state = 'failed'"
        )
        now = _now()
        args: tuple[Any, ...] = (now, now)
        if platform is not None:
            sql += " AND platform = %s"
            args += (platform,)
        if call_id is not None:
            sql += " AND call_id = %s"
            args += (call_id,)
        with self._tx() as conn:
            return conn.execute(sql, args).rowcount

    def webhook_items(self, state: WebhookState | None = None) -> list[WebhookItem]:
        sql, args = f"SELECT {_COLUMNS} FROM webhooks", ()
        if state is not None:
            sql, args = sql + " WHERE state = %s", (WebhookState(state).value,)
        order = ' ORDER BY received_at COLLATE "C", platform COLLATE "C", call_id COLLATE "C"'
        return [_item(r) for r in self._statement(sql + order, args)]

    def webhook_counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in WebhookState}
        deliveries = 0
        for row in self._statement(
            "SELECT state, COUNT(*) AS n, SUM(deliveries)::bigint AS deliveries "
            "FROM webhooks GROUP BY state"
        ):
            counts[row["state"]] = row["n"]
            deliveries += row["deliveries"] or 0
        return {**counts, "deliveries": deliveries}
