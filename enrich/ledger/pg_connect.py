"""The Postgres ledger's connections: its URL, one connection per thread, short transactions.

:class:`PostgresConnections` is the base of :class:`~enrich.ledger.postgres.PostgresLedger`
(kept apart so that no module grows past a readable size). It parses the URL once (a bad one is
a :class:`~enrich.errors.ConfigError` that never shows it whole) and keeps its password out of
every message, ``location`` and ``repr`` included. Each thread of each process has its own
connection, opened on first use, when the database's missing migrations
(:mod:`enrich.ledger.pg_migrations`) are applied; a process never uses one it inherited across a
fork (the child's copies are pointed at ``/dev/null``, so that not even closing them touches the
parent's sessions), and one a thread or a ledger no longer needs is closed. The connection is
in autocommit mode: a read is one statement, its own snapshot
(:meth:`PostgresConnections._statement`); a change is one short explicit transaction
(:meth:`PostgresConnections._tx`), which first takes the conversation's transaction-scoped
advisory lock when it touches one. A connection the server dropped while idle (a restart, an
idle timeout) is replaced once, at the start of the next operation, before anything was done
with it. Database errors become :class:`~enrich.errors.LedgerError` naming the ledger
(:func:`ledger_errors`).

psycopg 3 is an optional extra (``pip install 'enrich[postgres]'``), imported when a Postgres
ledger is made.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from ..errors import ConfigError, LedgerError, redact
from .pg_migrations import migrate

__all__ = [
    "PostgresConnections",
    "SERVER_NOW",
    "is_postgres_url",
    "ledger_errors",
    "lock_key",
    "pg_text",
    "psycopg_module",
]

T = TypeVar("T")

_SCHEMES = ("postgresql", "postgres")

#: The database server's clock, in seconds since the epoch: leases and rate limits are timed by
#: it, the one clock every host sharing the ledger agrees on.
SERVER_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"


def is_postgres_url(location: object) -> bool:
    """True for a ``postgresql://`` or ``postgres://`` URL."""
    scheme, sep, _ = str(location).partition("://")
    return bool(sep) and scheme.lower() in _SCHEMES


def psycopg_module() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigError(
            "a PostgreSQL ledger needs psycopg: pip install 'enrich[postgres]'"
        ) from None
    return psycopg


def _passwords(url: str) -> list[str]:
    """The password(s) in ``url``, as written and decoded, found without parsing it whole (it
    may not parse): the user information's, and any ``password=`` of the query."""
    rest = url.partition("://")[2]
    authority = re.split(r"[/?]", rest, maxsplit=1)[0]
    userinfo = authority.rpartition("@")[0]
    found = [userinfo.partition(":")[2]] if ":" in userinfo else []
    found += re.findall(r"[?&]password=([^&#]*)", rest)
    return [p for value in found for p in {value, unquote(value)} if p]


def _scrub(text: str, secrets: list[str]) -> str:
    """``text`` without the password, or nothing of it when the password is too short to be
    told apart from ordinary words."""
    if any(len(s) < 4 for s in secrets):
        return "(details hidden: they might show the password)"
    return redact(text, secrets)


def _location(params: dict[str, Any]) -> str:
    """The ledger's URL for messages: user, host, port and database, never the password."""
    host = str(params.get("host") or params.get("hostaddr") or "")
    netloc = quote(host, safe=",.:[]") if host else ""
    if params.get("port"):
        netloc += f":{params['port']}"
    if params.get("user"):
        netloc = f"{quote(str(params['user']), safe='')}@{netloc}"
    return f"postgresql://{netloc}/{quote(str(params.get('dbname') or ''), safe='')}"


def lock_key(agent_id: str, conversation_id: str) -> int:
    """A conversation's advisory lock: 64 bits of a hash of its ids."""
    digest = hashlib.blake2b(
        f"{agent_id}\x00{conversation_id}".encode("utf-8", "surrogatepass"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def pg_text(value: str) -> str:
    """A message as Postgres can keep it (its text holds no NUL)."""
    return value.replace("\x00", "\ufffd")


#: Every connection this module opened, with the process that opened it: a forked child points
#: its copies at /dev/null (:func:`_disown_inherited`), so that closing them, or collecting
#: them, never ends the parent's sessions.
_OPENED: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _disown_inherited() -> None:
    try:
        inherited = [conn for conn, pid in list(_OPENED.items()) if pid != os.getpid()]
    except RuntimeError:  # pragma: no cover - changed while copied: nothing safe to do
        return
    if not inherited:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for conn in inherited:
            try:
                os.dup2(null, conn.pgconn.socket)
            except Exception:  # noqa: BLE001 - closed already: nothing of it to keep from the parent
                continue
    finally:
        os.close(null)


class _Token:
    """Lives as long as one thread's connection should: see :meth:`PostgresConnections._conn`."""


def _close(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - a thread's end: nothing left to tell
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disown_inherited)


class PostgresConnections:
    """A Postgres ledger's URL and connections (see the module's docstring)."""

    #: How long an operation waits for another's lock (``lock_timeout``) before it fails with
    #: a :class:`~enrich.errors.LedgerError`, as :attr:`SQLiteLedger.busy_seconds`.
    busy_seconds: float = 300.0
    #: How long connecting may take, unless the URL says (``connect_timeout``).
    connect_seconds: int = 10

    def __init__(self, url: str, *, lease_seconds: float = 300.0) -> None:
        if not is_postgres_url(url):
            raise ConfigError("a PostgreSQL ledger's location is a postgresql:// URL")
        psycopg = psycopg_module()
        from psycopg.conninfo import conninfo_to_dict

        self._url = str(url)
        self._secrets = _passwords(self._url)
        try:
            self._params = conninfo_to_dict(self._url)
        except psycopg.Error as exc:
            lines = str(exc).strip().splitlines()
            reason = _scrub(lines[0] if lines else type(exc).__name__, self._secrets)
            raise ConfigError(
                f"ledger {url.partition('://')[0]}://...: not a valid PostgreSQL URL ({reason})"
            ) from None
        self._secrets += [p for p in [self._params.get("password")] if p]
        self._location = _location(self._params)
        self.lease_seconds = lease_seconds
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    @property
    def location(self) -> str:
        return self._location

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self._url, "lease_seconds": self.lease_seconds}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], lease_seconds=state["lease_seconds"])  # type: ignore[misc]

    # -- connection -----------------------------------------------------------------------------

    def _error(self, exc: BaseException, what: str = "cannot be used") -> LedgerError:
        lines = str(exc).strip().splitlines()
        detail = _scrub(lines[0] if lines else type(exc).__name__, self._secrets)
        return LedgerError(f"{self.location}: the ledger {what}: {detail}", location=self.location)

    def _open(self) -> Any:
        """A new connection, the database's schema brought up to date."""
        psycopg = psycopg_module()
        from psycopg.rows import dict_row

        options: dict[str, Any] = {"autocommit": True, "row_factory": dict_row}
        if "connect_timeout" not in self._params:
            options["connect_timeout"] = self.connect_seconds
        if "application_name" not in self._params:
            options["application_name"] = "enrich"
        try:
            conn = psycopg.connect(self._url, **options)
        except psycopg.Error as exc:
            raise self._error(exc, "cannot be reached") from None
        _OPENED[conn] = os.getpid()
        try:
            conn.execute(f"SET lock_timeout = {int(self.busy_seconds * 1000)}")
            migrate(conn, self.location)
        except BaseException:
            conn.close()
            raise
        return conn

    def _conn(self) -> Any:
        """This thread's connection (a process never uses one it inherited from its parent; a
        broken one is replaced)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid() and not conn.closed:
            return conn
        conn = self._open()
        self._local.conn, self._local.pid = conn, os.getpid()
        # closed, not left open, once the thread (a worker of asyncio.to_thread) or the ledger
        # is gone: when this thread's share of the ledger is
        token = self._local.token = _Token()
        self._local.closer = weakref.finalize(token, _close, conn)
        return conn

    def _stale(self, conn: Any, exc: BaseException) -> bool:
        """``conn`` failed before doing anything because the server had dropped it (a restart,
        an idle timeout): forget it, so the operation is tried once more on a new one."""
        if not conn.broken:
            return False
        self.close()
        return True

    def _statement(self, sql: str, args: Any = ()) -> list[dict[str, Any]]:
        """Run one statement, its own transaction (a read, or a change that may be lost or
        made twice if the connection breaks while it runs); its rows. A connection the server
        dropped while idle is replaced, and the statement run again on the new one."""
        psycopg = psycopg_module()
        conn = self._conn()
        try:
            return conn.execute(sql, args).fetchall()
        except psycopg.OperationalError as exc:
            if not self._stale(conn, exc):
                raise
        return self._conn().execute(sql, args).fetchall()

    @contextmanager
    def _tx(self, agent_id: str | None = None, conversation_id: str | None = None) -> Iterator[Any]:
        """One transaction; with ids, holding that conversation's advisory lock."""
        psycopg = psycopg_module()
        conn = self._conn()
        tx = conn.transaction()
        try:
            tx.__enter__()  # BEGIN: nothing is done yet if it fails
        except psycopg.OperationalError as exc:
            if not self._stale(conn, exc):
                raise
            conn = self._conn()
            tx = conn.transaction()
            tx.__enter__()
        try:
            if agent_id is not None:
                conn.execute(
                    "SELECT pg_advisory_xact_lock(%s)", (lock_key(agent_id, conversation_id or ""),)
                )
            yield conn
        except BaseException as exc:
            if not tx.__exit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            tx.__exit__(None, None, None)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            if self._local.pid == os.getpid():
                self._local.closer.detach()
                conn.close()
            self._local.conn = None


def ledger_errors(operation: Callable[..., T]) -> Callable[..., T]:
    """``operation``, its database errors (a lock held past ``busy_seconds``, a server that
    cannot be reached, a broken connection) raised as :class:`~enrich.errors.LedgerError`
    naming the ledger, never its password."""

    @functools.wraps(operation)
    def wrapper(self: PostgresConnections, *args: Any, **kwargs: Any) -> T:
        psycopg = psycopg_module()
        try:
            return operation(self, *args, **kwargs)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.errors.LockNotAvailable):
                raise LedgerError(
                    f"{self.location}: the ledger cannot be used: locked by another process",
                    location=self.location,
                ) from None
            raise self._error(exc) from None

    return wrapper
