"""Keeping a paid result: in the ledger, else in its spill file; and reading it back.

A result the LLM was paid for is recorded in the ledger before anything else is tried. When the
ledger cannot take it (a :class:`~enrich.errors.LedgerError`: locked past its busy timeout, a
full disk, a corrupt page), :func:`keep` appends it to the ledger's spill file
(:mod:`enrich.ledger.spill`) and raises the error with the result attached (``.result``, as a
failed write's :class:`~enrich.errors.ChatDashError` does) and the spill file named
(``.spilled``, None if it could not be written either). The next run that opens the ledger and
``enrich replay`` import the spill file (:func:`import_spilled`).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError, LedgerError
from ..ledger import LedgerBackend, LedgerEntry, State
from ..ledger.spill import import_spill, spill, spill_path
from ..models.enrichment import Enrichment
from ..models.fingerprint import Fingerprint
from ..models.results import EnrichmentResult
from ..models.usage import Usage

__all__ = ["from_ledger", "keep", "import_spilled", "paid_error"]

log = logging.getLogger("enrich.engine")


def from_ledger(entry: LedgerEntry, **fields: Any) -> EnrichmentResult:
    """A result for an enrichment the ledger holds: no LLM call, no cost this time."""
    values: dict[str, Any] = {
        "enrichment": Enrichment.model_validate(entry.enrichment["enrichment"]),
        "update": entry.body,
        "usage": Usage(),
        "attempts": 0,
        "model": entry.model,
        "dropped_queries": entry.enrichment.get("dropped_queries", []),
        "strategy": entry.enrichment.get("strategy", "single"),
        "parts": entry.enrichment.get("parts", 1),
        "transcript_format": "ledger",
        "turns": 0,
        "reused": True,
        "agent_id": entry.agent_id,
        "conversation_id": entry.conversation_id,
    }
    return EnrichmentResult(**{**values, **fields})


async def keep(
    ledger: LedgerBackend,
    result: EnrichmentResult,
    fingerprint: Fingerprint,
    enrichment: dict[str, Any],
    state: State,
) -> None:
    """Record ``result`` (paid for) in ``ledger``; if the ledger cannot take it, append it to
    the spill file and raise the :class:`~enrich.errors.LedgerError` carrying it."""
    agent_id, conversation_id = result.agent_id or "", result.conversation_id or ""
    fields: dict[str, Any] = {
        "enrichment": enrichment,
        "body": result.update,
        "usage": result.usage,
        "cost": result.cost,
        "state": state,
    }
    try:
        await ledger.arecord(agent_id, conversation_id, fingerprint, **fields)
    except LedgerError as exc:
        path: Path | None = spill_path(ledger)
        try:
            await asyncio.to_thread(spill, path, agent_id, conversation_id, fingerprint, **fields)
        except OSError as spill_error:
            log.error("%s: the spill file cannot be written either: %s", path, spill_error)
            path = None
        exc.result = result  # paid for: hand it back
        exc.spilled = path
        raise


def paid_error(exc: BaseException) -> LedgerError | None:
    """The :class:`~enrich.errors.LedgerError` carrying a paid result that ``exc`` is, or was
    raised while handling (a lease that could not be released after it, say); else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, LedgerError) and getattr(seen, "result", None) is not None:
            return seen
        seen = seen.__context__
    return None


def import_spilled(ledger: LedgerBackend) -> int:
    """Import ``ledger``'s spill file, if any (how many results were recorded). A ledger that
    still cannot take them leaves them there, for the next run or ``enrich replay``."""
    try:
        imported = import_spill(ledger)
    except (LedgerError, ConfigError, OSError) as exc:
        log.warning("%s: the spill file is kept for later: %s", spill_path(ledger), exc)
        return 0
    if imported:
        log.info("%s: %d result(s) imported into the ledger", spill_path(ledger), imported)
    return imported
