"""The lease on an enrichment in flight: taken before the LLM is paid, renewed while it answers.

Two processes asked the same question must not both pay for it: the first takes the lease
(:meth:`~enrich.ledger.LedgerBackend.begin`), the second waits for its result. The lease is
short (:data:`LEASE_SECONDS`) and renewed every :data:`RENEW_SECONDS` by a task that runs while
the LLM call does, so a holder that dies (``kill -9``, a lost host) frees it within seconds, and
at once on the same host, where the ledger sees that its process is gone.

The write is claimed too (:func:`claim_write`): two processes that hold the same enrichment (the
second reused the first's) never both PUT it; the second reports the first's write.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from ..ledger import LedgerBackend, LedgerEntry, State

__all__ = ["LEASE_SECONDS", "RENEW_SECONDS", "acquire", "claim_write", "renewed"]

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
    After ``patience`` seconds of waiting it is taken anyway. Once taken, ``stored`` is asked
    once more (a holder may have finished just before): what it finds is returned, the lease
    released."""
    waited = 0.0
    while not await ledger.abegin(agent_id, conversation_id, key, LEASE_SECONDS):
        await asyncio.sleep(0.25)
        waited += 0.25
        if stored is not None and (found := await stored()) is not None:
            return found
        if waited > patience:
            return None
    # Taken. The holder waited for, or one that finished just before this process looked, may
    # have stored its result meanwhile: look once more before paying.
    if stored is not None and (found := await stored()) is not None:
        await ledger.aend(agent_id, conversation_id)
        return found
    return None


async def claim_write(
    ledger: LedgerBackend,
    agent_id: str,
    conversation_id: str,
    body: dict[str, Any],
    *,
    patience: float,
) -> LedgerEntry | None:
    """Take the write of a conversation (:meth:`~enrich.ledger.LedgerBackend.claim`) before its
    PUT, so that two processes never both send it; None once taken. While another live holder
    has it, wait: return its entry once that holder has written it (``written``, or a skipped
    one's body sent), for the caller to report instead of writing again; if the holder's write
    failed, the claim is free again and this process takes it. An entry that is not waiting to
    be written at all (none, or another body written) is written anyway: None. After
    ``patience`` seconds the write goes ahead."""
    waited, delay = 0.0, 0.05
    while not await ledger.aclaim(agent_id, conversation_id):
        entry = await ledger.aget(agent_id, conversation_id)
        if entry is None:
            return None
        if entry.state == State.WRITTEN or (
            entry.state == State.SKIPPED and entry.written_at is not None
        ):
            return entry if entry.body == body else None
        if entry.state not in (State.PENDING, State.FAILED, State.SKIPPED) or waited > patience:
            return None
        await asyncio.sleep(delay)
        waited += delay
        delay = min(delay * 2, 1.0)
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
