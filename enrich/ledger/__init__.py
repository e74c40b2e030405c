"""The ledger: what happened to each conversation, kept before anything is written.

:class:`LedgerBackend` (:mod:`enrich.ledger.base`) is the one interface the engine uses, and
states the semantics every back end keeps; :class:`SQLiteLedger` (:mod:`enrich.ledger.sqlite`)
is the embedded back end, its schema made of the numbered migrations of
:mod:`enrich.ledger.migrations`; :class:`PostgresLedger` (:mod:`enrich.ledger.postgres`) is the
one a fleet shares, its schema made of :mod:`enrich.ledger.pg_migrations` (psycopg, the
``postgres`` extra, is imported only when one is opened). :func:`open_ledger` picks the back end
for a location.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError
from ..models.fingerprint import Fingerprint, digest
from .base import LedgerBackend, LedgerEntry, LedgerEvent, State, WebhookItem, WebhookState
from .postgres import PostgresLedger, is_postgres_url
from .sqlite import SQLiteLedger, default_ledger_path

__all__ = [
    "LedgerBackend",
    "SQLiteLedger",
    "PostgresLedger",
    "Ledger",
    "open_ledger",
    "LedgerEntry",
    "LedgerEvent",
    "State",
    "WebhookItem",
    "WebhookState",
    "Fingerprint",
    "digest",
    "default_ledger_path",
]

#: The name call sites used before there was more than one back end: ``Ledger(path)`` opens
#: a SQLite ledger. New code calls :func:`open_ledger` and types with :class:`LedgerBackend`.
Ledger = SQLiteLedger

_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+")


def open_ledger(location: str | Path, *, lease_seconds: float = 300.0) -> LedgerBackend:
    """The ledger at ``location``: a ``postgresql://`` (or ``postgres://``) URL is a PostgreSQL
    database (:class:`PostgresLedger`); anything else a SQLite file's path (``~`` is expanded).

    A URL of any other scheme (anything that starts ``scheme:``, as a URL made a path does) is
    refused with a clear message, rather than taken for a file name; the message never shows
    the rest of the URL (it may hold a password).
    """
    if is_postgres_url(location):
        return PostgresLedger(str(location), lease_seconds=lease_seconds)
    scheme, sep, rest = str(location).partition(":")
    if sep and _URL_SCHEME.fullmatch(scheme):  # never echo the rest: it may hold a password
        shown = f"{scheme}://..." if rest.startswith("//") else f"{scheme}:..."
        raise ConfigError(
            f"ledger {shown}: a ledger is a SQLite file's path or a postgresql:// URL"
        )
    return SQLiteLedger(location, lease_seconds=lease_seconds)
