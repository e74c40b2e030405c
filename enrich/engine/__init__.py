"""The engine: composes the adapters into transcript → prompts → LLM → validated enrichment →
ledger → ChatDash PUT, for one conversation (:mod:`~enrich.engine.core`), a long one
(:mod:`~enrich.engine.longcall`), or many (:mod:`~enrich.engine.batch`,
:mod:`~enrich.engine.batchapi`), with a synchronous face (:mod:`~enrich.engine.sync`)."""

from .batch import BatchRun
from .enricher import Enricher
from .profile import Profile

__all__ = ["Enricher", "BatchRun", "Profile"]
