"""The enricher: :class:`~enrich.engine.core.EnricherCore` (one conversation at a time) plus many
conversations at once, directly or through the Batch API (:mod:`enrich.engine.batch`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, Literal

from ..models.results import BatchResult
from .batch import BatchRun, run_many
from .core import EnricherCore

__all__ = ["Enricher"]


class Enricher(EnricherCore):
    """Enrich conversations with one configuration.

    >>> enricher = Enricher.from_env()                      # doctest: +SKIP
    >>> result = enricher.enrich("Agent: Hi!\\nUser: I need a refund.")   # doctest: +SKIP
    >>> result.enrichment.topic                             # doctest: +SKIP
    """

    def aenrich_many(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        concurrency: int = 8,
        write: bool = True,
        force: bool = False,
        stop: asyncio.Event | None = None,
    ) -> AsyncIterator[BatchResult]:
        """Enrich (and with ``write``, write) many conversations, at most ``concurrency`` at a
        time; yields a :class:`~enrich.BatchResult` for each as it completes. Items are pulled
        lazily; a failure is a failed result, never an exception."""
        return run_many(self, items, concurrency=concurrency, write=write, force=force, stop=stop)

    def enrich_many(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        concurrency: int = 8,
        write: bool = True,
        force: bool = False,
        via: Literal["direct", "batch-api"] = "direct",
        poll_seconds: float = 10.0,
        on_progress: Any = None,
    ) -> BatchRun:
        """Synchronous :meth:`aenrich_many`: iterate the returned run for results (also in a
        notebook whose event loop is running); ``run.stop()`` winds it down.

        ``via="batch-api"`` sends the whole job through OpenAI's Batch API instead (half the
        price; results come when the batch completes; ``on_progress`` gets its status)."""
        return BatchRun(
            self,
            items,
            concurrency=concurrency,
            write=write,
            force=force,
            via=via,
            poll_seconds=poll_seconds,
            on_progress=on_progress,
        )
