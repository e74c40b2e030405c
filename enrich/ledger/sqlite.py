"""The ledger in an embedded SQLite database: one file, shared by threads and processes.

It keeps the semantics of :class:`~enrich.ledger.base.LedgerBackend` this way: the database runs
in WAL mode (readers never wait for the writer, and a killed process loses no committed
change), every change is one short ``BEGIN IMMEDIATE`` transaction (an operation waits up to
5 minutes, ``busy_seconds``, for another's lock, then fails with a ``LedgerError``), and each
thread of each process has its own connection, opened on first use, when the schema's missing
migrations (:mod:`enrich.ledger.migrations`) are applied. A ledger written by release 0.1 is
upgraded in place the first time it is opened.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError, LedgerError
from ..models.fingerprint import Fingerprint
from ..models.usage import Usage
from .base import LedgerBackend, LedgerEntry, LedgerEvent, State
from .holder import holder_is_gone, this_holder
from .migrations import migrate
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
    record_args,
    recorded_event,
    skip_args,
)
from .sqlite_pace import SQLitePace
from .sqlite_queue import SQLiteWebhookQueue

__all__ = ["SQLiteLedger", "default_ledger_path"]

T = TypeVar("T")


def default_ledger_path() -> Path:
    """``$ENRICH_LEDGER``'s default: the user's data directory."""
    from platformdirs import user_data_path

    return user_data_path("enrich", appauthor=False) / "ledger.sqlite3"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@functools.lru_cache(maxsize=1)
def _me(pid: int) -> str:  # this_holder(), read from /proc once per process, not per lease
    return this_holder()


def _entry(row: sqlite3.Row) -> LedgerEntry:
    data = dict(row)
    usage = Usage(
        prompt_tokens=data.pop("prompt_tokens"),
        completion_tokens=data.pop("completion_tokens"),
        cached_tokens=data.pop("cached_tokens"),
        requests=data.pop("requests"),
    )
    data.pop("claimed_until", None)
    data["version"] = data.pop("fingerprint_version")
    data["enrichment"] = json.loads(data["enrichment"])
    data["body"] = json.loads(data["body"])
    return LedgerEntry(usage=usage, **data)


class _MustWait(Exception):
    """The no-wait connection cannot be used yet: the operation goes to a worker thread."""


def _wal(conn: sqlite3.Connection, wait: float = 30.0) -> None:
    """Put the database in WAL mode. On a fresh file, processes opening it at once race to
    switch it, and the losers are told "database is locked" at once, without the busy
    timeout's wait: they wait here instead, then find it switched."""
    deadline = time.monotonic() + wait
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class SQLiteLedger(SQLiteWebhookQueue, SQLitePace, LedgerBackend):  # see sqlite_queue, _pace
    """One ledger file. Safe to share between threads and between processes."""

    #: How long an operation waits for another process's lock before it fails with a
    #: :class:`~enrich.errors.LedgerError`: well above a writer's longest transaction (each is
    #: one conversation's, milliseconds; a migration, seconds), so a busy ledger is waited out.
    busy_seconds: float = 300.0

    def __init__(self, path: str | Path, *, lease_seconds: float = 300.0) -> None:
        self.path = Path(path).expanduser()
        self.lease_seconds = lease_seconds
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    @property
    def location(self) -> str:
        return str(self.path)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "lease_seconds": self.lease_seconds}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], lease_seconds=state["lease_seconds"])  # type: ignore[misc]

    # -- connection -----------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """A new connection, its schema brought up to date."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_seconds, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_seconds * 1000)}")
            _wal(conn, self.busy_seconds)
            conn.execute("PRAGMA synchronous = NORMAL")  # with WAL: survives a killed process
            migrate(conn, self.location)
        except BaseException:
            conn.close()
            raise
        return conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (a process never uses one it inherited from its parent)."""
        if getattr(self._local, "nowait", False):
            return self._nowait_conn()
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        try:
            conn = self._open()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise ConfigError(f"{self.path}: cannot open the ledger: {exc}") from None
            raise LedgerError(
                f"{self.path}: the ledger cannot be used: locked by another process",
                location=self.location,
            ) from None
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{self.path}: cannot open the ledger: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot create the ledger: {exc.strerror}") from None
        self._local.conn, self._local.pid = conn, os.getpid()
        self._opened_pid = os.getpid()
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- async twins: at once when nothing has to wait, else in a worker thread -----------------

    def _nowait_conn(self) -> sqlite3.Connection:
        """The event loop thread's connection: it never waits for a lock (``busy_timeout`` 0).
        Made only once this process has opened (and migrated) the ledger the usual way."""
        conn = getattr(self._local, "nowait_conn", None)
        if conn is not None and getattr(self._local, "nowait_pid", None) == os.getpid():
            return conn
        if getattr(self, "_opened_pid", None) != os.getpid():
            raise _MustWait  # the first open may migrate and wait: a worker thread does it
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 0")
        conn.execute("PRAGMA synchronous = NORMAL")
        self._local.nowait_conn, self._local.nowait_pid = conn, os.getpid()
        return conn

    async def _call(self, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``operation`` on the event loop's own thread when it needs no wait (a read in WAL
        mode, or a write whose ``BEGIN IMMEDIATE`` gets the lock at once): each is a short
        transaction, and a thread hop would cost more than the work. When another process
        holds the lock, the operation was rolled back (or never began): it runs again in a
        worker thread, where waiting out the lock blocks nothing."""
        self._local.nowait = True
        try:
            return operation(*args, **kwargs)
        except _MustWait:
            pass
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        finally:
            self._local.nowait = False
        return await asyncio.to_thread(operation, *args, **kwargs)

    def close(self) -> None:
        for name in ("conn", "nowait_conn"):
            conn = getattr(self._local, name, None)
            if conn is not None:
                conn.close()
                setattr(self._local, name, None)

    @staticmethod
    def _event(conn: sqlite3.Connection, agent: str, conv: str, event: str, detail: Any) -> None:
        conn.execute(
            "INSERT INTO events (agent_id, conversation_id, at, event, detail) VALUES (?,?,?,?,?)",
            (agent, conv, _now(), event, json.dumps(detail, ensure_ascii=False)),
        )

    # -- reading --------------------------------------------------------------------------------

    def get(self, agent_id: str, conversation_id: str) -> LedgerEntry | None:
        row = (
            self._conn()
            .execute(
                "SELECT * FROM conversations WHERE agent_id = ? AND conversation_id = ?",
                (agent_id, conversation_id),
            )
            .fetchone()
        )
        return _entry(row) if row else None

    def find(self, conversation_id: str, agent_id: str | None = None) -> list[LedgerEntry]:
        sql = "SELECT * FROM conversations WHERE conversation_id = ?"
        args: tuple[Any, ...] = (conversation_id,)
        if agent_id is not None:
            sql += " AND agent_id = ?"
            args += (agent_id,)
        return [_entry(r) for r in self._conn().execute(sql, args).fetchall()]

    def history(self, agent_id: str, conversation_id: str) -> list[LedgerEvent]:
        rows = (
            self._conn()
            .execute(
                "SELECT at, event, detail FROM events WHERE agent_id = ? AND conversation_id = ? "
                "ORDER BY id",
                (agent_id, conversation_id),
            )
            .fetchall()
        )
        return [
            LedgerEvent(at=r["at"], event=r["event"], detail=json.loads(r["detail"] or "{}"))
            for r in rows
        ]

    def entries(self, state: State | None = None) -> list[LedgerEntry]:
        if state is None:
            rows = (
                self._conn().execute("SELECT * FROM conversations ORDER BY updated_at").fetchall()
            )
        else:
            rows = (
                self._conn()
                .execute(
                    "SELECT * FROM conversations WHERE state = ? ORDER BY updated_at",
                    (state.value,),
                )
                .fetchall()
            )
        return [_entry(r) for r in rows]

    def stats(self) -> list[dict[str, Any]]:
        """Per state: conversations, tokens and cost."""
        rows = (
            self._conn()
            .execute(
                "SELECT state, COUNT(*) AS conversations, SUM(prompt_tokens) AS prompt_tokens, "
                "SUM(completion_tokens) AS completion_tokens, SUM(cached_tokens) AS cached_tokens, "
                "SUM(requests) AS requests, SUM(cost) AS cost, COUNT(cost) AS costed "
                "FROM conversations GROUP BY state ORDER BY state"
            )
            .fetchall()
        )
        return [dict(r) for r in rows]

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
        with self._tx() as conn:
            kept = conn.execute(RECORD, args).rowcount == 0
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
        with self._tx() as conn:
            conn.execute(SKIP, args)
            self._event(conn, agent_id, conversation_id, "skipped", {"why": reason})

    def queue(self, agent_id: str, conversation_id: str, body: dict[str, Any], event: str) -> None:
        """Mark a stored enrichment ``pending`` with ``body`` (reused, or re-narrowed); one
        written with this very body meanwhile (by another process) stays written."""
        body_json = json.dumps(body, ensure_ascii=False)
        with self._tx() as conn:
            conn.execute(QUEUE, (body_json, _now(), agent_id, conversation_id, body_json))
            self._event(conn, agent_id, conversation_id, event, {})

    def claim(self, agent_id: str, conversation_id: str) -> bool:
        """Take the write of one conversation for ``lease_seconds`` in this process's name;
        False if another live holder has it or it is no longer waiting to be written."""
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                "SELECT claimed_until, claimed_by FROM conversations "
                f"WHERE agent_id = ? AND conversation_id = ? AND {CLAIMABLE}",
                (agent_id, conversation_id),
            ).fetchone()
            if row is None:
                return False
            until, holder = row["claimed_until"], row["claimed_by"]
            if until is not None and until >= now and not holder_is_gone(holder):
                return False
            until = now + self.lease_seconds
            conn.execute(CLAIM, (until, _me(os.getpid()), agent_id, conversation_id))
            return True

    def written(self, agent_id: str, conversation_id: str, body: dict[str, Any]) -> None:
        now = _now()
        body_json = json.dumps(body, ensure_ascii=False)
        with self._tx() as conn:
            conn.execute(WRITTEN, (now, now, agent_id, conversation_id, body_json))
            self._event(conn, agent_id, conversation_id, "written", {})

    def write_failed(
        self, agent_id: str, conversation_id: str, error: str, *, permanent: bool
    ) -> None:
        with self._tx() as conn:
            row = conn.execute(STATE, (agent_id, conversation_id)).fetchone()
            state = failed_state(row["state"] if row else None, permanent=permanent)
            conn.execute(WRITE_FAILED, (state.value, error, _now(), agent_id, conversation_id))
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
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                "SELECT fingerprint, until, holder FROM inflight "
                "WHERE agent_id = ? AND conversation_id = ?",
                (agent_id, conversation_id),
            ).fetchone()
            if (
                row is not None
                and row["until"] > now
                and row["fingerprint"] == fingerprint
                and not holder_is_gone(row["holder"])
            ):
                return False
            conn.execute(
                "INSERT OR REPLACE INTO inflight "
                "(agent_id, conversation_id, fingerprint, until, holder) VALUES (?, ?, ?, ?, ?)",
                (agent_id, conversation_id, fingerprint, now + seconds, _me(os.getpid())),
            )
            return True

    def renew(self, agent_id: str, conversation_id: str, seconds: float) -> bool:
        """Hold what this process took with :meth:`begin` for ``seconds`` more; False if it no
        longer holds it."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE inflight SET until = ? WHERE agent_id = ? AND conversation_id = ? "
                "AND holder = ?",
                (time.time() + seconds, agent_id, conversation_id, _me(os.getpid())),
            )
            return cur.rowcount == 1

    def end(self, agent_id: str, conversation_id: str) -> None:
        with self._tx() as conn:
            conn.execute(END, (agent_id, conversation_id))

    # -- Batch API jobs: paid for at OpenAI, collected even after an interruption -----------------

    def record_batch_job(self, batch_id: str, rows: dict[str, list[str]]) -> None:
        """A Batch API job just created; ``rows`` maps each custom_id to the key of what it
        enriches (agent, conversation, and the fingerprint's hashes)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO batch_jobs (batch_id, created_at, status, rows) "
                "VALUES (?, ?, 'open', ?)",
                (batch_id, _now(), json.dumps(rows)),
            )

    def open_batch_jobs(self) -> dict[str, dict[str, list[str]]]:
        rows = (
            self._conn()
            .execute(
                "SELECT batch_id, rows FROM batch_jobs WHERE status = 'open' ORDER BY created_at"
            )
            .fetchall()
        )
        return {r["batch_id"]: json.loads(r["rows"]) for r in rows}

    def close_batch_job(self, batch_id: str, status: str) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE batch_jobs SET status = ? WHERE batch_id = ?", (status, batch_id))

    def note(self, agent_id: str, conversation_id: str, event: str, detail: Any = None) -> None:
        with self._tx() as conn:
            self._event(conn, agent_id, conversation_id, event, detail or {})


def _ledger_errors(operation: Callable[..., T]) -> Callable[..., T]:
    """``operation``, its SQLite errors (a lock still held after ``busy_seconds``, a full
    disk, a corrupt page) raised as :class:`~enrich.errors.LedgerError` naming the ledger. On
    the no-wait connection they pass as they are: :meth:`SQLiteLedger._call` retries there."""

    @functools.wraps(operation)
    def wrapper(self: SQLiteLedger, *args: Any, **kwargs: Any) -> T:
        try:
            return operation(self, *args, **kwargs)
        except sqlite3.Error as exc:
            if getattr(self._local, "nowait", False):
                raise
            what = "locked by another process" if "locked" in str(exc) else str(exc)
            raise LedgerError(
                f"{self.location}: the ledger cannot be used: {what}", location=self.location
            ) from exc

    return wrapper


for _name in (
    "get find history entries stats record skip queue claim written write_failed begin renew "
    "end record_batch_job open_batch_jobs close_batch_job note"
).split():
    setattr(SQLiteLedger, _name, _ledger_errors(getattr(SQLiteLedger, _name)))

for _name in [
    *(n for n in vars(SQLiteWebhookQueue) if n.startswith("webhook_")),  # the queue
    *(n for n in vars(SQLitePace) if n.startswith("pace")),  # the shared rate limit
]:
    setattr(SQLiteLedger, _name, _ledger_errors(getattr(SQLiteLedger, _name)))
