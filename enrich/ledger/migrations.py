"""The ledger's schema, as numbered migrations applied in order when a ledger is opened.

Each migration is a function of a connection, registered with ``@migration`` and named
``mNNN_what``; its name is recorded in the ``_migrations`` table once applied, so it runs once
per ledger. Never edit or remove a released migration: add the next one.

Release 0.1 created its tables without recording anything, so :func:`m001_initial` creates them
only if they do not exist: a 0.1 ledger passes through it untouched, then gets the later ones.

:func:`migrate` applies what is missing in one ``BEGIN IMMEDIATE`` transaction, so two processes
opening a fresh ledger at once apply each migration once (the second waits, then finds nothing
to do), and a failed migration leaves the ledger as it was. A ledger that records a migration
this release does not know was written by a newer release: it is refused rather than misread.

The SQL is kept to what Postgres could also run where that costs nothing; SQLite is the only
back end today.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime

from ..errors import ConfigError

__all__ = ["MIGRATIONS", "migration", "migrate", "applied_migrations"]

Migration = Callable[[sqlite3.Connection], None]

#: Every migration, in the order it is applied.
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Register ``fn`` as the next migration (a decorator; ``fn`` stays usable by its name)."""
    MIGRATIONS.append(fn)
    return fn


#: Release 0.1's schema, verbatim (so a fresh ledger and an upgraded 0.1 one are alike).
_INITIAL = """
CREATE TABLE IF NOT EXISTS conversations (
    agent_id        TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    transcript_hash TEXT NOT NULL,
    model           TEXT NOT NULL,
    prompt_hash     TEXT NOT NULL,
    taxonomy_hash   TEXT NOT NULL,
    enrichment      TEXT NOT NULL,
    body            TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens     INTEGER NOT NULL DEFAULT 0,
    requests          INTEGER NOT NULL DEFAULT 0,
    cost            REAL,
    state           TEXT NOT NULL CHECK (state IN ('enriched', 'pending', 'written', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    claimed_until   REAL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    written_at      TEXT,
    PRIMARY KEY (agent_id, conversation_id)
);
CREATE INDEX IF NOT EXISTS conversations_state ON conversations (state);
CREATE TABLE IF NOT EXISTS events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id        TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    at              TEXT NOT NULL,
    event           TEXT NOT NULL,
    detail          TEXT
);
CREATE INDEX IF NOT EXISTS events_conversation ON events (conversation_id, agent_id);
CREATE TABLE IF NOT EXISTS inflight (
    agent_id        TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    until           REAL NOT NULL,
    PRIMARY KEY (agent_id, conversation_id)
);
CREATE TABLE IF NOT EXISTS batch_jobs (
    batch_id   TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    status     TEXT NOT NULL,
    rows       TEXT NOT NULL
);
"""


@migration
def m001_initial(conn: sqlite3.Connection) -> None:
    """The schema of release 0.1, unchanged (0.1 ledgers already have it: nothing happens)."""
    for statement in _INITIAL.split(";"):
        if statement.strip():
            conn.execute(statement)


@migration
def m002_fingerprint_version(conn: sqlite3.Connection) -> None:
    """Each entry's fingerprint version (how its hashes were computed); 0.1's rows are 1."""
    conn.execute(
        "ALTER TABLE conversations ADD COLUMN fingerprint_version INTEGER NOT NULL DEFAULT 1"
    )


#: The conversations table as :func:`m003_skipped_state` leaves it: 0.1's, the fingerprint
#: version of m002, and ``skipped`` among the states.
_CONVERSATIONS_V3 = """
CREATE TABLE conversations_v3 (
    agent_id        TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    transcript_hash TEXT NOT NULL,
    model           TEXT NOT NULL,
    prompt_hash     TEXT NOT NULL,
    taxonomy_hash   TEXT NOT NULL,
    enrichment      TEXT NOT NULL,
    body            TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens     INTEGER NOT NULL DEFAULT 0,
    requests          INTEGER NOT NULL DEFAULT 0,
    cost            REAL,
    state           TEXT NOT NULL
                    CHECK (state IN ('enriched', 'pending', 'written', 'failed', 'skipped')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    claimed_until   REAL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    written_at      TEXT,
    fingerprint_version INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (agent_id, conversation_id)
)
"""
_CONVERSATIONS_COLUMNS = (
    "agent_id, conversation_id, transcript_hash, model, prompt_hash, taxonomy_hash, enrichment, "
    "body, prompt_tokens, completion_tokens, cached_tokens, requests, cost, state, attempts, "
    "last_error, claimed_until, created_at, updated_at, written_at, fingerprint_version"
)


@migration
def m003_skipped_state(conn: sqlite3.Connection) -> None:
    """``skipped`` becomes a state (a conversation with nothing to analyse). SQLite cannot
    change a CHECK constraint in place: the table is rebuilt, its rows copied as they are, and
    its index made again."""
    conn.execute(_CONVERSATIONS_V3)
    conn.execute(
        f"INSERT INTO conversations_v3 ({_CONVERSATIONS_COLUMNS}) "
        f"SELECT {_CONVERSATIONS_COLUMNS} FROM conversations"
    )
    conn.execute("DROP TABLE conversations")
    conn.execute("ALTER TABLE conversations_v3 RENAME TO conversations")
    conn.execute("CREATE INDEX IF NOT EXISTS conversations_state ON conversations (state)")


@migration
def m004_inflight_holder(conn: sqlite3.Connection) -> None:
    """An enrichment in flight records its holder (``host|pid|start``, see
    :mod:`enrich.ledger.holder`), so a lease whose process is gone is free at once."""
    conn.execute("ALTER TABLE inflight ADD COLUMN holder TEXT")


@migration
def m005_claim_holder(conn: sqlite3.Connection) -> None:
    """A claimed write records its holder too, so a write claimed by a process that died is
    free at once rather than after the lease."""
    conn.execute("ALTER TABLE conversations ADD COLUMN claimed_by TEXT")


@migration
def m006_rate_limits(conn: sqlite3.Connection) -> None:
    """One row per shared rate limit (see :meth:`~enrich.ledger.LedgerBackend.pace`): the
    request and token schedules (theoretical arrival times, wall-clock seconds), a pause after
    a 429, and the speed ``factor`` it slowed to."""
    conn.execute(
        "CREATE TABLE rate_limits ("
        "name TEXT PRIMARY KEY, req_tat REAL NOT NULL, tok_tat REAL NOT NULL, "
        "paused_until REAL NOT NULL DEFAULT 0, factor REAL NOT NULL DEFAULT 1.0)"
    )


_TABLE = "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"


def applied_migrations(conn: sqlite3.Connection) -> list[str]:
    """The names recorded in the ledger, in the order they were applied (none if no table)."""
    try:
        rows = conn.execute("SELECT name FROM _migrations ORDER BY applied_at, name").fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
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


def migrate(conn: sqlite3.Connection, location: str) -> list[str]:
    """Apply the migrations ``conn``'s ledger lacks, in order, in one transaction; return their
    names. ``conn`` is in autocommit mode (``isolation_level=None``); ``location`` names the
    ledger in the error raised for a migration this release does not know."""
    if not _missing(applied_migrations(conn), location):
        return []  # the usual case: up to date, checked without taking the write lock
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_TABLE)
        todo = _missing(applied_migrations(conn), location)  # again, now that we hold the lock
        for fn in todo:
            fn(conn)
            conn.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                (fn.__name__, datetime.now(UTC).isoformat(timespec="milliseconds")),
            )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return [fn.__name__ for fn in todo]


@migration
def m007_webhooks(conn: sqlite3.Connection) -> None:
    """``enrich serve``'s durable queue (see the webhook queue of
    :mod:`enrich.ledger.base`): one row per ``(platform, call_id)``, its verified raw payload,
    its state, when it is due (``due``, wall-clock seconds) and who leased it until when."""
    conn.execute(
        "CREATE TABLE webhooks ("
        "platform TEXT NOT NULL, call_id TEXT NOT NULL, agent_id TEXT NOT NULL, "
        "payload BLOB NOT NULL, "
        "state TEXT NOT NULL CHECK (state IN ('queued', 'done', 'failed')), "
        "deliveries INTEGER NOT NULL DEFAULT 1, attempts INTEGER NOT NULL DEFAULT 0, "
        "conversation_id TEXT, last_error TEXT, received_at TEXT NOT NULL, "
        "queued_at TEXT NOT NULL, due REAL NOT NULL, leased_until REAL, leased_by TEXT, "
        "updated_at TEXT NOT NULL, PRIMARY KEY (platform, call_id))"
    )
    conn.execute("CREATE INDEX webhooks_due ON webhooks (state, due)")
