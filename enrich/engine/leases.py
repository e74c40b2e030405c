"""The lease on an enrichment in flight: taken before the LLM is paid, renewed while it answers.

Two processes asked the same question must not both pay for it: the first takes the lease
(:meth:`~enrich.ledger.LedgerBackend.begin`), the second waits for its result. The lease is
short (:data:`LEASE_SECONDS`) and renewed every :data:`RENEW_SECONDS` by a task that runs while
the LLM call does, so a holder that dies (``kill -9``, a lost host) frees it within seconds, and
at once on the same host, where the ledger sees that its process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from ..ledger import LedgerBackend

__all__ = ["LEASE_SECONDS", "RENEW_SECONDS", "acquire", "renewed"]

T = TypeVar("T")

#: How long a lease lasts unless renewed.
LEASE_SECONDS = 30.0
#: How often a live holder renews it.
RENEW_SECONDS = 10.0


async def acquire(
    ledger: LedgerBackend,
    agent_id: str,
    conversation_id: str,
    key: str,
    *,
    patience: float,
    stored: Callable[[], Awaitable[T | None]] | None,
) -> T | None:
    """Take the lease on the enrichment ``key`` of a conversation, waiting while a live holder
    has it; return None once taken, or what ``stored`` finds meanwhile (the holder's result).
    After ``patience`` seconds of waiting it is taken anyway."""
    waited = 0.0
    while not await ledger.abegin(agent_id, conversation_id, key, LEASE_SECONDS):
        await asyncio.sleep(0.25)
        waited += 0.25
        if stored is not None and (found := await stored()) is not None:
            return found
        if waited > patience:
            break
    return None


async def _renew(ledger: LedgerBackend, agent_id: str, conversation_id: str) -> None:
    while True:
        await asyncio.sleep(RENEW_SECONDS)
        with contextlib.suppress(Exception):  # a busy ledger: the next renewal tries again
            await ledger.arenew(agent_id, conversation_id, LEASE_SECONDS)


@contextlib.asynccontextmanager
async def renewed(ledger: LedgerBackend, agent_id: str, conversation_id: str) -> AsyncIterator[Any]:
    """Keep the lease :func:`acquire` took while the body runs; release it after."""
    task = asyncio.create_task(_renew(ledger, agent_id, conversation_id))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await ledger.aend(agent_id, conversation_id)
