"""The LLM's pacing for a configuration: ``llm.rpm``/``llm.tpm`` held by one process, or by every
process that shares the ledger.

With a ledger, the limit is a :class:`~enrich.llm.SharedRateLimiter` whose schedule is a row of
the ledger (:meth:`~enrich.ledger.LedgerBackend.pace`): the workers of ``enrich batch
--workers N``, a Spark job's executors, a fleet of ``enrich serve`` replicas and a batch beside
them together stay under the provider's limit, and a 429 answered to any of them slows all.
Processes share a limit when they use the same provider (base URL), key and model: the limit's
name is a digest of the three, so no secret is stored.
"""

from __future__ import annotations

from ..config import LLMSettings
from ..ledger import LedgerBackend
from ..llm import RateLimiter, SharedRateLimiter
from ..models.fingerprint import digest

__all__ = ["limiter_for"]


def limiter_for(settings: LLMSettings, ledger: LedgerBackend | None) -> RateLimiter | None:
    """The pacing for ``llm.rpm``/``llm.tpm``: none without a limit; shared through the ledger
    by every process and host that uses it with the same provider, key and model (the limit's
    name is a digest of the three: no secret in it); this process's alone without a ledger."""
    if not (settings.rpm or settings.tpm):
        return None
    if ledger is None:
        return RateLimiter(settings.rpm, settings.tpm)
    key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
    name = "llm:" + digest(f"{settings.base_url}\n{key}\n{settings.model}")[:20]
    return SharedRateLimiter(ledger, name, settings.rpm, settings.tpm)
