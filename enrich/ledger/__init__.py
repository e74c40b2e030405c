"""The ledger: what happened to each conversation, kept before anything is written.

:class:`LedgerBackend` (:mod:`enrich.ledger.base`) is the one interface the engine uses, and
states the semantics every back end keeps; :class:`SQLiteLedger` (:mod:`enrich.ledger.sqlite`)
is the embedded back end, its schema made of the numbered migrations of
:mod:`enrich.ledger.migrations`. :func:`open_ledger` picks the back end for a location.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError
from ..models.fingerprint import Fingerprint, digest
from .base import LedgerBackend, LedgerEntry, LedgerEvent, State
from .sqlite import SQLiteLedger, default_ledger_path

__all__ = [
    "LedgerBackend",
    "SQLiteLedger",
    "Ledger",
    "open_ledger",
    "LedgerEntry",
    "LedgerEvent",
    "State",
    "Fingerprint",
    "digest",
    "default_ledger_path",
]

#: The name call sites used before there was more than one back end: ``Ledger(path)`` opens
#: a SQLite ledger. New code calls :func:`open_ledger` and types with :class:`LedgerBackend`.
Ledger = SQLiteLedger

_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+")


def open_ledger(location: str | Path, *, lease_seconds: float = 300.0) -> LedgerBackend:
    """The ledger at ``location``: today a SQLite file's path (``~`` is expanded).

    A database URL (``postgresql://...``) is refused with a clear message until that back end
    exists, rather than being taken for a file name.
    """
    scheme, sep, _ = str(location).partition("://")
    if sep and _URL_SCHEME.fullmatch(scheme):  # never echo the rest: it may hold a password
        raise ConfigError(f"ledger {scheme}://...: only a SQLite file can be the ledger for now")
    return SQLiteLedger(location, lease_seconds=lease_seconds)
