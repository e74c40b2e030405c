"""The ledger: what happened to each conversation, kept before anything is written.

See :mod:`enrich.ledger.sqlite` for the embedded back end.
"""

from ..models.fingerprint import Fingerprint, digest
from .sqlite import Ledger, LedgerEntry, LedgerEvent, State, default_ledger_path

__all__ = [
    "Ledger",
    "LedgerEntry",
    "LedgerEvent",
    "State",
    "Fingerprint",
    "digest",
    "default_ledger_path",
]
