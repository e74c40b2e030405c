"""The background workers: they take webhooks from the ledger's queue and enrich them.

``serve.concurrency`` workers run on the server's event loop. Each takes the next due item
(:meth:`~enrich.ledger.LedgerBackend.webhook_take`, leased to this process and renewed while
it works, so that a replica sharing the ledger does not take it too, and a ``kill -9``'d
server's items are taken again by the next start), then:

1. reads its transcript from the stored payload (a payload that cannot be read fails at once);
2. resolves the platform's call id to ChatDash's conversation id (``isPlatformId=true``). A 404
   says ChatDash has not imported the call yet: the item is tried again later, the delay
   doubling from ``serve.retry_delay`` to ``serve.max_retry_delay``, until ``serve.retry_window``
   seconds after it was queued; then it fails. ChatDash not answering (5xx, timeouts) is retried
   the same way; a refusal that cannot pass (401, 403) fails at once;
3. enriches and writes it the usual way (:meth:`~enrich.Enricher.aenrich_and_write`): the
   conversation gets its ledger entry, an enrichment already paid for is reused, one already
   written is not sent again, and the LLM calls are paced by ``llm.rpm``/``llm.tpm``. A write
   ChatDash refused leaves the conversation ``failed`` in the ledger (``enrich replay --failed``)
   and the item done; a write that may pass later is tried again (no second LLM call: the
   enrichment is in the ledger). An LLM that could not be reached is retried; an answer that
   stayed invalid fails the item (``enrich replay`` puts it back once the cause is fixed).

:meth:`Workers.stop` stops taking items and gives those in flight ``grace`` seconds; any still
running then are abandoned and put back in the queue, due at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..errors import ChatDashError, InputError, LedgerError, LLMError, LLMTransportError
from ..ledger import WebhookItem

if TYPE_CHECKING:
    from ..config import ServeSettings
    from ..engine import Enricher
    from .metrics import Metrics

__all__ = ["Workers"]

log = logging.getLogger("enrich.serve")

#: How long a worker holds an item; renewed every third of it while the item is worked on.
LEASE_SECONDS = 60.0
#: How often an idle worker looks at the queue (other replicas' items), when not woken sooner.
POLL_SECONDS = 0.5


class Workers:
    """``settings.concurrency`` workers over the ledger's queue (see the module's docstring)."""

    def __init__(self, enricher: Enricher, settings: ServeSettings, metrics: Metrics) -> None:
        if enricher.ledger is None:
            raise ValueError("the workers need the ledger")
        self.enricher = enricher
        self.ledger = enricher.ledger
        self.settings = settings
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.busy = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"enrich-serve-worker-{i}")
            for i in range(self.settings.concurrency)
        ]

    def wake(self) -> None:
        """An item was just queued: idle workers look at once."""
        self._wake.set()

    async def stop(self, grace: float) -> int:
        """Take no more items; wait up to ``grace`` seconds for those in flight, then abandon
        them (they go back in the queue). Returns how many were abandoned."""
        self._stopping = True
        self._wake.set()
        if not self._tasks:
            return 0
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        abandoned = self.busy
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return abandoned

    # -- one worker -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            try:
                item = await self.ledger.awebhook_take(LEASE_SECONDS)
            except LedgerError as exc:
                log.error("the webhook queue cannot be read: %s", exc)
                await self._idle(5.0)
                continue
            if item is None:
                await self._idle(POLL_SECONDS)
                continue
            self.busy += 1
            try:
                await self._held(item)
            finally:
                self.busy -= 1

    async def _idle(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _held(self, item: WebhookItem) -> None:
        """Work on ``item`` while renewing its lease; put it back if abandoned."""
        renewer = asyncio.create_task(self._renew(item))
        try:
            await self._handle(item)
        except asyncio.CancelledError:  # stopped after the grace period
            with contextlib.suppress(LedgerError):
                self.ledger.webhook_retry(
                    item.platform, item.call_id, 0.0, "interrupted: the server stopped"
                )
            raise
        except LedgerError as exc:
            log.error("%s call %s: the ledger failed: %s", item.platform, item.call_id, exc)
            with contextlib.suppress(LedgerError):
                await self.ledger.awebhook_retry(
                    item.platform, item.call_id, self._delay(item), str(exc)
                )
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the worker
            log.exception("%s call %s: unexpected error", item.platform, item.call_id)
            await self._retry(item, f"{type(exc).__name__}: {exc}", "transient")
        finally:
            renewer.cancel()

    async def _renew(self, item: WebhookItem) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            with contextlib.suppress(LedgerError):
                await self.ledger.awebhook_renew(item.platform, item.call_id, LEASE_SECONDS)

    async def _handle(self, item: WebhookItem) -> None:
        platform, call_id, agent_id = item.platform, item.call_id, item.agent_id
        try:
            payload = json.loads(item.payload)
            parsed = await asyncio.to_thread(
                self.enricher.parse, payload, format=platform, source=f"{platform} webhook"
            )
        except (ValueError, InputError) as exc:
            return await self._fail(item, f"the payload cannot be read: {exc}")
        try:
            conversation_id = await self.enricher.aresolve(agent_id, call_id)
        except ChatDashError as exc:
            if exc.status_code == 404:
                return await self._retry(item, "not in ChatDash yet (404)", "not_found")
            if exc.permanent:
                return await self._fail(item, str(exc))
            return await self._retry(item, str(exc), "transient")
        try:
            result = await self.enricher.aenrich_and_write(agent_id, conversation_id, parsed)
        except ChatDashError as exc:
            paid = exc.result
            if paid is not None and not paid.reused:
                self.metrics.spent(paid.usage, paid.cost)
            if exc.permanent and paid is not None:  # the conversation waits in the ledger
                note = f"write refused (enrich replay --failed): {exc}"
                await self.ledger.awebhook_done(platform, call_id, conversation_id, note)
                self.metrics.failed.labels(platform).inc()
                log.warning("%s call %s: %s", platform, call_id, note)
                return None
            if exc.permanent:
                return await self._fail(item, str(exc))
            return await self._retry(item, str(exc), "transient")
        except LLMError as exc:
            self.metrics.spent(exc.usage, exc.cost)
            if isinstance(exc, LLMTransportError):
                return await self._retry(item, str(exc), "transient")
            return await self._fail(item, str(exc))
        except InputError as exc:
            return await self._fail(item, str(exc))
        if result.skipped:
            note = f"skipped: {result.skipped}"
        elif result.already_written:
            note = "already written"
        else:
            note = "written"
        if not result.reused and not result.skipped:
            self.metrics.spent(result.usage, result.cost)
        await self.ledger.awebhook_done(platform, call_id, conversation_id, note)
        counter = self.metrics.written if note == "written" else self.metrics.skipped
        counter.labels(platform).inc()
        log.info("%s call %s: conversation %s %s", platform, call_id, conversation_id, note)
        return None

    # -- outcomes -------------------------------------------------------------------------------

    def _delay(self, item: WebhookItem) -> float:
        s = self.settings
        return min(s.max_retry_delay, s.retry_delay * 2 ** max(0, item.attempts - 1))

    async def _retry(self, item: WebhookItem, error: str, reason: str) -> None:
        """Try ``item`` again later, or fail it once its retry window is over."""
        elapsed = _age(item.queued_at)
        left = self.settings.retry_window - elapsed
        if left <= 0:
            window = self.settings.retry_window
            return await self._fail(item, f"{error}; gave up after {window:g}s of retries")
        delay = min(self._delay(item), left)
        await self.ledger.awebhook_retry(item.platform, item.call_id, delay, error)
        self.metrics.retried.labels(item.platform, reason).inc()
        log.info("%s call %s: %s; trying again in %.1fs", item.platform, item.call_id, error, delay)
        return None

    async def _fail(self, item: WebhookItem, error: str) -> None:
        await self.ledger.awebhook_fail(item.platform, item.call_id, error)
        self.metrics.failed.labels(item.platform).inc()
        log.warning("%s call %s failed: %s", item.platform, item.call_id, error)


def _age(iso: str) -> float:
    """Seconds since the ISO 8601 time ``iso``."""
    return (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
