"""The Postgres ledger's schema, as numbered migrations applied in order when it is opened.

The pattern of :mod:`enrich.ledger.migrations` (SQLite's): each migration is a function of a
connection, registered with ``@migration`` and named ``mNNN_what``; its name is recorded in the
``_migrations`` table once applied, so it runs once per database. Never edit or remove a
released migration: add the next one. The numbering is this back end's own: Postgres started
from SQLite's schema as it stood then (:func:`m001_initial`), and a later change to the
ledger is one more migration in each module.

:func:`migrate` applies what is missing in one transaction, holding a transaction-scoped
advisory lock (:data:`LOCK`), so two processes opening a fresh database at once apply each
migration once (the second waits, then finds nothing to do), and a failed migration leaves the
database as it was: Postgres runs DDL inside a transaction. A database that records a migration
this release does not know was written by a newer release: it is refused rather than misread.

Types keep SQLite's behaviour: JSON is stored as the text :mod:`json` wrote (so ``body`` is
compared as that text, as in SQLite), times as ISO text (``created_at``...) or as seconds since
the epoch in ``double precision`` (leases and rate limits).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..errors import ConfigError

__all__ = ["MIGRATIONS", "LOCK", "migration", "migrate", "applied_migrations"]

#: A migration takes a psycopg connection (typed loosely: psycopg is an optional extra).
Migration = Callable[[Any], None]

#: Every migration, in the order it is applied.
MIGRATIONS: list[Migration] = []

#: The advisory lock :func:`migrate` holds (the two-key form: it never meets a conversation's
#: one-key lock): 0x656E7269 is "enri", 1 the schema.
LOCK = (0x656E7269, 1)


def migration(fn: Migration) -> Migration:
    """Register ``fn`` as the next migration (a decorator; ``fn`` stays usable by its name)."""
    MIGRATIONS.append(fn)
    return fn


_INITIAL = """
CREATE TABLE conversations (
    agent_id        TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    transcript_hash TEXT NOT NULL,
    model           TEXT NOT NULL,
    prompt_hash     TEXT NOT NULL,
    taxonomy_hash   TEXT NOT NULL,
    enrichment      TEXT NOT NULL,
    body            TEXT NOT NULL,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cached_tokens     BIGINT NOT NULL DEFAULT 0,
    requests          BIGINT NOT NULL DEFAULT 0,
    cost            DOUBLE PRECISION,
    state           TEXT NOT NULL
                    CHECK (state IN ('enriched', 'pending', 'written', 'failed', 'skipped')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    claimed_until   DOUBLE PRECISION,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    written_at      TEXT,
    fingerprint_version INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (agent_id, conversation_id)
);
CREATE INDEX conversations_state ON conversations (state);
CREATE INDEX conversations_conversation ON conversations (conversation_id);
CREATE TABLE events (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id        TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    at              TEXT NOT NULL,
    event           TEXT NOT NULL,
    detail          TEXT
);
CREATE INDEX events_conversation ON events (conversation_id, agent_id);
CREATE TABLE inflight (
    agent_id        TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    "until"         DOUBLE PRECISION NOT NULL,
    holder          TEXT,
    PRIMARY KEY (agent_id, conversation_id)
);
CREATE TABLE batch_jobs (
    batch_id   TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    status     TEXT NOT NULL,
    "rows"     TEXT NOT NULL
);
"""


def _run(conn: Any, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


@migration
def m001_initial(conn: Any) -> None:
    """The ledger as SQLite's migrations m001 to m004 left it: conversations (with the
    ``skipped`` state and the fingerprint's version), their events, the enrichments in flight
    (with their holder) and the Batch API jobs."""
    _run(conn, _INITIAL)


@migration
def m002_claim_holder(conn: Any) -> None:
    """A claimed write records its holder, so a write claimed by a process that died is free
    at once rather than after the lease (SQLite's m005)."""
    conn.execute("ALTER TABLE conversations ADD COLUMN claimed_by TEXT")


@migration
def m003_rate_limits(conn: Any) -> None:
    """One row per shared rate limit (see :meth:`~enrich.ledger.LedgerBackend.pace`; SQLite's
    m006): the request and token schedules, a pause after a 429, the speed ``factor``."""
    conn.execute(
        "CREATE TABLE rate_limits ("
        "name TEXT PRIMARY KEY, req_tat DOUBLE PRECISION NOT NULL, "
        "tok_tat DOUBLE PRECISION NOT NULL, "
        "paused_until DOUBLE PRECISION NOT NULL DEFAULT 0, "
        "factor DOUBLE PRECISION NOT NULL DEFAULT 1.0)"
    )


@migration
def m004_webhooks(conn: Any) -> None:
    """``enrich serve``'s durable queue (see the webhook queue of :mod:`enrich.ledger.base`;
    SQLite's m007): one row per ``(platform, call_id)``, its verified raw payload, its state,
    when it is due (``due``, seconds since the epoch) and who leased it until when."""
    conn.execute(
        "CREATE TABLE webhooks ("
        "platform TEXT NOT NULL, call_id TEXT NOT NULL, agent_id TEXT NOT NULL, "
        "payload BYTEA NOT NULL, "
        "state TEXT NOT NULL CHECK (state IN ('queued', 'done', 'failed')), "
        "deliveries INTEGER NOT NULL DEFAULT 1, attempts INTEGER NOT NULL DEFAULT 0, "
        "conversation_id TEXT, last_error TEXT, received_at TEXT NOT NULL, "
        "queued_at TEXT NOT NULL, due DOUBLE PRECISION NOT NULL, "
        "leased_until DOUBLE PRECISION, leased_by TEXT, "
        "updated_at TEXT NOT NULL, PRIMARY KEY (platform, call_id))"
    )
    conn.execute("CREATE INDEX webhooks_due ON webhooks (state, due)")


_TABLE = "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"


def applied_migrations(conn: Any) -> list[str]:
    """The names recorded in the database, in the order they were applied (none if no table).
    Runs in the caller's transaction, if any."""
    from psycopg.rows import tuple_row

    cur = conn.cursor(row_factory=tuple_row)  # whatever rows the connection makes
    if not cur.execute("SELECT to_regclass('_migrations') IS NOT NULL").fetchone()[0]:
        return []
    rows = cur.execute(
        'SELECT name FROM _migrations ORDER BY applied_at COLLATE "C", name COLLATE "C"'
    ).fetchall()
    return [r[0] for r in rows]


def _missing(applied: list[str], location: str) -> list[Migration]:
    known = {fn.__name__ for fn in MIGRATIONS}
    unknown = [name for name in applied if name not in known]
    if unknown:
        raise ConfigError(
            f"{location}: this ledger was written by a newer release of enrich (it records "
            f"migration(s) this release does not know: {', '.join(unknown)}); upgrade enrich "
            "to use it"
        )
    return [fn for fn in MIGRATIONS if fn.__name__ not in applied]


def migrate(conn: Any, location: str) -> list[str]:
    """Apply the migrations ``conn``'s database lacks, in order, in one transaction under the
    advisory lock :data:`LOCK`; return their names. ``conn`` is a psycopg connection with no
    transaction open; ``location`` names the ledger (no password) in the error raised for a
    migration this release does not know."""
    with conn.transaction():
        up_to_date = not _missing(applied_migrations(conn), location)
    if up_to_date:
        return []  # the usual case: checked without taking the lock
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", LOCK)
        conn.execute(_TABLE)
        todo = _missing(applied_migrations(conn), location)  # again, now that we hold the lock
        for fn in todo:
            fn(conn)
            conn.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (%s, %s)",
                (fn.__name__, datetime.now(UTC).isoformat(timespec="milliseconds")),
            )
    return [fn.__name__ for fn in todo]
