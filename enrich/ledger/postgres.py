"""The ledger in a PostgreSQL database: one ledger for a fleet of processes on many hosts.

``ENRICH_LEDGER=postgresql://user:password@host:5432/db`` (or ``postgres://``; any libpq URL:
``?sslmode=require``, several hosts...) keeps the semantics of
:class:`~enrich.ledger.base.LedgerBackend` exactly as :class:`~enrich.ledger.sqlite.SQLiteLedger`
does, with the same SQL where it can be the same:

- each thread of each process has its own connection (a process never uses one it inherited
  across a fork), opened on first use, when the database's missing migrations
  (:mod:`enrich.ledger.pg_migrations`) are applied;
- a read is one statement; every change is one short explicit transaction (but
  :meth:`~PostgresLedger.pace_settle`, one statement: it runs after every LLM request);
- JSON is kept as the text :mod:`json` wrote, so ``body`` compares as in SQLite; entries and
  states are ordered byte-wise (``COLLATE "C"``), as SQLite orders them, whatever the
  database's collation;
- every operation on one conversation first takes a transaction-scoped advisory lock on that
  conversation (``pg_advisory_xact_lock`` of a hash of its agent and conversation ids), so the
  read-then-write ones (:meth:`~PostgresLedger.begin`, :meth:`~PostgresLedger.claim`,
  :meth:`~PostgresLedger.write_failed`) are as atomic as SQLite's ``BEGIN IMMEDIATE``, without
  one process's write waiting for another's on a different conversation;
- leases and rate limits are timed by the database server's clock, the one clock every host
  sharing the ledger agrees on;
- a lock held past ``busy_seconds``, a server that cannot be reached, any database error, is a
  :class:`~enrich.errors.LedgerError` naming the ledger (its URL without the password): a result
  the LLM was paid for then goes to the spill file (:mod:`enrich.ledger.spill`). A connection
  the server dropped while idle is replaced once, at the start of the next operation.

Its connections, URL and errors are :mod:`enrich.ledger.pg_connect`'s; its webhook queue is
:mod:`enrich.ledger.pg_queue`'s. psycopg 3 is an optional extra (``pip install
'enrich[postgres]'``), imported when a Postgres ledger is made.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ..models.fingerprint import Fingerprint
from ..models.usage import Usage
from .base import LedgerBackend, LedgerEntry, LedgerEvent, State, book_slot
from .holder import holder_is_gone, this_holder
from .pg_connect import SERVER_NOW as _NOW
from .pg_connect import PostgresConnections, is_postgres_url, ledger_errors
from .pg_connect import pg_text as _text
from .pg_queue import PostgresWebhookQueue
from .rows import (
    CLAIM,
    CLAIMABLE,
    END,
    QUEUE,
    RECORD,
    SKIP,
    STATE,
    WRITE_FAILED,
    WRITTEN,
    failed_state,
    pg,
    record_args,
    recorded_event,
    skip_args,
)

__all__ = ["PostgresLedger", "is_postgres_url"]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _entry(row: dict[str, Any]) -> LedgerEntry:
    data = dict(row)
    usage = Usage(
        prompt_tokens=data.pop("prompt_tokens"),
        completion_tokens=data.pop("completion_tokens"),
        cached_tokens=data.pop("cached_tokens"),
        requests=data.pop("requests"),
    )
    data.pop("claimed_until", None)
    data.pop("claimed_by", None)
    data["version"] = data.pop("fingerprint_version")
    data["enrichment"] = json.loads(data["enrichment"])
    data["body"] = json.loads(data["body"])
    return LedgerEntry(usage=usage, **data)


_RECORD, _SKIP, _QUEUE, _CLAIM = pg(RECORD), pg(SKIP), pg(QUEUE), pg(CLAIM)
_WRITTEN, _STATE, _WRITE_FAILED, _END = pg(WRITTEN), pg(STATE), pg(WRITE_FAILED), pg(END)


class PostgresLedger(PostgresWebhookQueue, PostgresConnections, LedgerBackend):
    """One ledger in a PostgreSQL database. Safe to share between threads, processes and
    hosts; picklable (a worker process connects on its own)."""

    @staticmethod
    def _event(conn: Any, agent: str, conv: str, event: str, detail: Any) -> None:
        conn.execute(
            "INSERT INTO events (agent_id, conversation_id, at, event, detail) "
            "VALUES (%s, %s, %s, %s, %s)",
            (agent, conv, _now(), _text(event), json.dumps(detail, ensure_ascii=False)),
        )

    # -- reading --------------------------------------------------------------------------------

    def get(self, agent_id: str, conversation_id: str) -> LedgerEntry | None:
        rows = self._statement(
            "SELECT * FROM conversations WHERE agent_id = %s AND conversation_id = %s",
            (agent_id, conversation_id),
        )
        return _entry(rows[0]) if rows else None

    def find(self, conversation_id: str, agent_id: str | None = None) -> list[LedgerEntry]:
        sql = "SELECT * FROM conversations WHERE conversation_id = %s"
        args: tuple[Any, ...] = (conversation_id,)
        if agent_id is not None:
            sql += " AND agent_id = %s"
            args += (agent_id,)
        return [_entry(r) for r in self._statement(sql + ' ORDER BY agent_id COLLATE "C"', args)]

    def history(self, agent_id: str, conversation_id: str) -> list[LedgerEvent]:
        rows = self._statement(
            "SELECT at, event, detail FROM events WHERE agent_id = %s AND conversation_id = %s "
            "ORDER BY id",
            (agent_id, conversation_id),
        )
        return [
            LedgerEvent(at=r["at"], event=r["event"], detail=json.loads(r["detail"] or "{}"))
            for r in rows
        ]

    def entries(self, state: State | None = None) -> list[LedgerEntry]:
        order = (
            ' ORDER BY updated_at COLLATE "C", agent_id COLLATE "C", conversation_id COLLATE "C"'
        )
        if state is None:
            rows = self._statement("SELECT * FROM conversations" + order)
        else:
            rows = self._statement(
                "SELECT * FROM conversations WHERE state = %s" + order, (state.value,)
            )
        return [_entry(r) for r in rows]

    def stats(self) -> list[dict[str, Any]]:
        """Per state: conversations, tokens and cost."""
        return self._statement(
            "SELECT state, COUNT(*) AS conversations, "
            "SUM(prompt_tokens)::bigint AS prompt_tokens, "
            "SUM(completion_tokens)::bigint AS completion_tokens, "
            "SUM(cached_tokens)::bigint AS cached_tokens, SUM(requests)::bigint AS requests, "
            "SUM(cost) AS cost, COUNT(cost) AS costed "
            'FROM conversations GROUP BY state ORDER BY state COLLATE "C"'
        )

    # -- writing --------------------------------------------------------------------------------

    def record(
        self,
        agent_id: str,
        conversation_id: str,
        fingerprint: Fingerprint,
        *,
        enrichment: dict[str, Any],
        body: dict[str, Any],
        usage: Usage,
        cost: float | None,
        state: State,
    ) -> None:
        """Store a fresh enrichment (replacing an older one): the paid-for result is safe. A
        dry run's (``enriched``) never replaces an entry ``written``, ``pending`` or ``failed``:
        it is only noted in the history."""
        args = record_args(
            agent_id, conversation_id, fingerprint, enrichment=enrichment, body=body,
            usage=usage, cost=cost, state=state, now=_now(),
        )  # fmt: skip
        with self._tx(agent_id, conversation_id) as conn:
            kept = conn.execute(_RECORD, args).rowcount == 0
            event, detail = recorded_event(kept, fingerprint, usage, cost, state)
            self._event(conn, agent_id, conversation_id, event, detail)

    def skip(
        self,
        agent_id: str,
        conversation_id: str,
        fingerprint: Fingerprint,
        *,
        reason: str,
        body: dict[str, Any],
    ) -> None:
        """Keep a conversation with nothing to analyse as ``skipped`` (never over a paid one)."""
        args = skip_args(
            agent_id, conversation_id, fingerprint, reason=reason, body=body, now=_now()
        )
        with self._tx(agent_id, conversation_id) as conn:
            conn.execute(_SKIP, args)
            self._event(conn, agent_id, conversation_id, "skipped", {"why": reason})

    def queue(self, agent_id: str, conversation_id: str, body: dict[str, Any], event: str) -> None:
        """Mark a stored enrichment ``pending`` with ``body`` (reused, or re-narrowed); one
        written with this very body meanwhile (by another process) stays written."""
        body_json = json.dumps(body, ensure_ascii=False)
        with self._tx(agent_id, conversation_id) as conn:
            conn.execute(_QUEUE, (body_json, _now(), agent_id, conversation_id, body_json))
            self._event(conn, agent_id, conversation_id, event, {})

    def claim(self, agent_id: str, conversation_id: str) -> bool:
        """Take the write of one conversation for ``lease_seconds`` in this process's name;
        False if another live holder has it or it is no longer waiting to be written."""
        with self._tx(agent_id, conversation_id) as conn:
            row = conn.execute(
                f"SELECT claimed_until, claimed_by, {_NOW} AS now FROM conversations "
                f"WHERE agent_id = %s AND conversation_id = %s AND {CLAIMABLE}",
                (agent_id, conversation_id),
            ).fetchone()
            if row is None:
                return False
            until, holder, now = row["claimed_until"], row["claimed_by"], row["now"]
            if until is not None and until >= now and not holder_is_gone(holder):
                return False
            until = now + self.lease_seconds
            conn.execute(_CLAIM, (until, this_holder(), agent_id, conversation_id))
            return True

    def written(self, agent_id: str, conversation_id: str, body: dict[str, Any]) -> None:
        now = _now()
        body_json = json.dumps(body, ensure_ascii=False)
        with self._tx(agent_id, conversation_id) as conn:
            conn.execute(_WRITTEN, (now, now, agent_id, conversation_id, body_json))
            self._event(conn, agent_id, conversation_id, "written", {})

    def write_failed(
        self, agent_id: str, conversation_id: str, error: str, *, permanent: bool
    ) -> None:
        error = _text(error)
        with self._tx(agent_id, conversation_id) as conn:
            row = conn.execute(_STATE, (agent_id, conversation_id)).fetchone()
            state = failed_state(row["state"] if row else None, permanent=permanent)
            conn.execute(_WRITE_FAILED, (state.value, error, _now(), agent_id, conversation_id))
            self._event(
                conn,
                agent_id,
                conversation_id,
                "write_failed",
                {"error": error, "state": state.value},
            )

    # -- enrichments in flight: two processes never pay for the same one at once ---------------

    def begin(self, agent_id: str, conversation_id: str, fingerprint: str, seconds: float) -> bool:
        """Take the enrichment of a conversation for ``seconds``; False while another process
        holds it for the same fingerprint (wait for its result instead of paying twice)."""
        with self._tx(agent_id, conversation_id) as conn:
            row = conn.execute(
                f'SELECT {_NOW} AS now, i.fingerprint, i."until", i.holder FROM (SELECT 1) AS one '
                "LEFT JOIN inflight AS i ON i.agent_id = %s AND i.conversation_id = %s",
                (agent_id, conversation_id),
            ).fetchone()
            now = row["now"]
            if (
                row["fingerprint"] is not None
                and row["until"] > now
                and row["fingerprint"] == fingerprint
                and not holder_is_gone(row["holder"])
            ):
                return False
            conn.execute(
                'INSERT INTO inflight (agent_id, conversation_id, fingerprint, "until", holder) '
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (agent_id, conversation_id) DO UPDATE "
                'SET fingerprint = excluded.fingerprint, "until" = excluded."until", '
                "holder = excluded.holder",
                (agent_id, conversation_id, fingerprint, now + seconds, this_holder()),
            )
            return True

    def renew(self, agent_id: str, conversation_id: str, seconds: float) -> bool:
        """Hold what this process took with :meth:`begin` for ``seconds`` more; False if it no
        longer holds it."""
        with self._tx(agent_id, conversation_id) as conn:
            cur = conn.execute(
                f'UPDATE inflight SET "until" = {_NOW} + %s '
                "WHERE agent_id = %s AND conversation_id = %s AND holder = %s",
                (seconds, agent_id, conversation_id, this_holder()),
            )
            return cur.rowcount == 1

    def end(self, agent_id: str, conversation_id: str) -> None:
        with self._tx(agent_id, conversation_id) as conn:
            conn.execute(_END, (agent_id, conversation_id))

    # -- shared pacing: one rate limit for every process of every host on this ledger ----------

    @staticmethod
    def _pace_row(conn: Any, name: str) -> dict[str, Any]:
        """The limit ``name`` (made if missing, starting now), locked until the transaction
        ends, and the server's clock once it is locked."""
        return conn.execute(
            f"INSERT INTO rate_limits (name, req_tat, tok_tat) VALUES (%s, {_NOW}, {_NOW}) "
            "ON CONFLICT (name) DO UPDATE SET name = excluded.name "
            f"RETURNING req_tat, tok_tat, paused_until, factor, {_NOW} AS now",
            (name,),
        ).fetchone()

    def pace(
        self, name: str, *, request_interval: float, token_interval: float, burst: float
    ) -> float:
        """Reserve the next start under the shared limit ``name``; how long to wait for it."""
        with self._tx() as conn:
            row = self._pace_row(conn, name)
            now = row["now"]
            start, req, tok = book_slot(
                row, now, request_interval=request_interval, token_interval=token_interval,
                burst=burst,
            )  # fmt: skip
            conn.execute(
                "UPDATE rate_limits SET req_tat = %s, tok_tat = %s WHERE name = %s",
                (req, tok, name),
            )
        return start - now

    def pace_settle(self, name: str, token_interval: float) -> None:
        # one statement, its own transaction: called after every request, and a settle lost
        # (or made twice) with a connection that broke only shifts an estimate
        self._statement(
            "UPDATE rate_limits SET tok_tat = tok_tat + %s / factor, "
            "factor = LEAST(1.0, factor + 0.0025) WHERE name = %s RETURNING name",
            (token_interval, name),
        )

    def pace_penalize(self, name: str, pause: float) -> float:
        with self._tx() as conn:
            row = self._pace_row(conn, name)
            conn.execute(
                "UPDATE rate_limits SET paused_until = GREATEST(paused_until, %s), "
                "factor = GREATEST(0.25, factor * 0.8) WHERE name = %s",
                (row["now"] + pause, name),
            )
        return pause

    # -- Batch API jobs: paid for at OpenAI, collected even after an interruption -----------------

    def record_batch_job(self, batch_id: str, rows: dict[str, list[str]]) -> None:
        """A Batch API job just created; ``rows`` maps each custom_id to the key of what it
        enriches (agent, conversation, and the fingerprint's hashes)."""
        with self._tx() as conn:
            conn.execute(
                'INSERT INTO batch_jobs (batch_id, created_at, status, "rows") '
                "VALUES (%s, %s, 'open', %s) ON CONFLICT (batch_id) DO UPDATE SET "
                "created_at = excluded.created_at, status = excluded.status, "
                '"rows" = excluded."rows"',
                (batch_id, _now(), json.dumps(rows)),
            )

    def open_batch_jobs(self) -> dict[str, dict[str, list[str]]]:
        rows = self._statement(
            "SELECT batch_id, \"rows\" FROM batch_jobs WHERE status = 'open' "
            'ORDER BY created_at COLLATE "C", batch_id COLLATE "C"'
        )
        return {r["batch_id"]: json.loads(r["rows"]) for r in rows}

    def close_batch_job(self, batch_id: str, status: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE batch_jobs SET status = %s WHERE batch_id = %s", (status, batch_id)
            )

    def note(self, agent_id: str, conversation_id: str, event: str, detail: Any = None) -> None:
        with self._tx(agent_id, conversation_id) as conn:
            self._event(conn, agent_id, conversation_id, event, detail or {})


for _name in (
    "get find history entries stats record skip queue claim written write_failed begin renew "
    "end record_batch_job open_batch_jobs close_batch_job note pace pace_settle pace_penalize "
    "webhook_enqueue webhook_take webhook_renew webhook_done webhook_retry webhook_fail "
    "webhook_requeue webhook_items webhook_counts"
).split():
    setattr(PostgresLedger, _name, ledger_errors(getattr(PostgresLedger, _name)))
