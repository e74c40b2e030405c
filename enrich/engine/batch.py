"""Many conversations at once: bounded concurrency, results as they complete, nothing aborts.

:func:`run_many` takes an iterable or async iterable of items (a :class:`BatchItem`, a dict with
``agent_id``, ``conversation_id`` and optionally ``transcript``, or an
``(agent_id, conversation_id[, transcript])`` tuple), pulls them lazily (a 100,000-line input
streams), keeps at most ``concurrency`` in flight, and yields a :class:`BatchResult` for each as
it completes. A failure is a failed result with its error, never an exception that stops the
batch. ``stop`` (an :class:`asyncio.Event`) stops taking new items; those in flight finish.

:class:`BatchRun` drives the same from synchronous code (a script, or a notebook whose event
loop is already running): iterate it for results, call :meth:`BatchRun.stop` to wind down.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, Literal

from ..errors import EnrichError
from ..models.results import BadItem, BatchItem, BatchResult, EstimateRow
from .batchapi import run_via_batch_api
from .core import EnricherCore
from .items import aiter_items, enrich_item, to_item, where

__all__ = ["run_many", "BatchRun", "backfill_items", "estimate_many"]


async def run_many(
    enricher: EnricherCore,
    items: Iterable[Any] | AsyncIterable[Any],
    *,
    concurrency: int = 8,
    write: bool = True,
    force: bool = False,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[BatchResult]:
    """Enrich ``items`` with at most ``concurrency`` in flight; yield results as they complete."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    source = aiter_items(items).__aiter__()
    running: set[asyncio.Task[BatchResult]] = set()
    # Each task, once done, moves itself to ``finished`` and wakes the loop below: O(1) per
    # result, where asyncio.wait() over the running set costs O(concurrency) every time.
    finished: deque[asyncio.Task[BatchResult]] = deque()
    wake = asyncio.Event()
    exhausted = False

    def done(task: asyncio.Task[BatchResult]) -> None:
        running.discard(task)
        finished.append(task)
        wake.set()

    seen: dict[tuple[str, str], int | None] = {}
    early: list[BatchResult] = []  # duplicates, answered without work

    async def fill() -> None:
        nonlocal exhausted
        while not exhausted and len(running) < concurrency and not (stop and stop.is_set()):
            try:
                raw = await source.__anext__()
            except StopAsyncIteration:
                exhausted = True
                break
            item = to_item(raw)
            if isinstance(item, BatchItem):
                key = (item.agent_id, item.conversation_id or f"platform:{item.platform_id}")
                if key in seen:
                    first = seen[key]
                    early.append(
                        BatchResult(
                            agent_id=item.agent_id,
                            conversation_id=item.conversation_id,
                            line=item.line,
                            status="skipped",
                            ok=True,
                            error=f"the same conversation as line {first} of this batch"
                            if first
                            else "the same conversation appears earlier in this batch",
                        )
                    )
                    continue
                seen[key] = item.line
            task = asyncio.ensure_future(enrich_item(enricher, item, write=write, force=force))
            running.add(task)
            task.add_done_callback(done)

    try:
        await fill()
        while running or finished or early:
            while early:
                yield early.pop()
            if not running and not finished:
                await fill()
                continue
            if not finished:
                wake.clear()
                await wake.wait()
            ready = list(finished)
            finished.clear()
            await fill()  # replacements start before the results are handed over
            for task in ready:
                yield task.result()
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)


_END = object()


class BatchRun:
    """A batch running on the enricher's own event loop thread, read from synchronous code.

    >>> run = BatchRun(enricher, items, concurrency=16)   # doctest: +SKIP
    >>> for result in run: ...                             # doctest: +SKIP
    """

    def __init__(
        self,
        enricher: EnricherCore,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        concurrency: int = 8,
        write: bool = True,
        force: bool = False,
        via: Literal["direct", "batch-api"] = "direct",
        poll_seconds: float = 10.0,
        on_progress: Any = None,
    ) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(64, concurrency * 4))
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._finished = False
        self.stopped = False

        async def pump() -> None:
            self._stop = asyncio.Event()
            self._ready.set()
            if via == "batch-api":
                source = run_via_batch_api(
                    enricher,
                    items,
                    write=write,
                    force=force,
                    poll_seconds=poll_seconds,
                    on_progress=on_progress,
                    stop=self._stop,
                )
            else:
                source = run_many(
                    enricher,
                    items,
                    concurrency=concurrency,
                    write=write,
                    force=force,
                    stop=self._stop,
                )
            try:
                async for result in source:
                    try:
                        self._queue.put_nowait(result)
                    except queue.Full:  # the reader is slow: wait without blocking the loop
                        await asyncio.get_running_loop().run_in_executor(
                            None, self._queue.put, result
                        )
            except BaseException as exc:  # noqa: BLE001 - surfaced in the reading thread
                self._queue.put(exc)
            finally:
                self._queue.put(_END)

        self._future = enricher.sync.submit(pump())
        self._loop = enricher.sync.loop
        self._ready.wait(10)

    def stop(self) -> None:
        """Take no new items; the ones in flight still finish and are yielded."""
        self.stopped = True
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def cancel(self) -> None:
        """Stop at once: in-flight items are cancelled (what was paid for is in the ledger)."""
        self.stop()
        self._future.cancel()

    def __iter__(self) -> Iterator[BatchResult]:
        return self

    def __next__(self) -> BatchResult:
        # Not a generator: a KeyboardInterrupt while waiting leaves the run readable, so the
        # caller can stop() it and still collect what is in flight.
        if self._finished:
            raise StopIteration
        while True:
            try:
                value = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if value is _END:
                self._finished = True
                raise StopIteration
            if isinstance(value, BaseException):
                self._finished = True
                raise value
            return value


#: A window of a backfill is split in halves at most this many times: at most
#: ``2 ** (MAX_SPLITS + 1) - 1`` list requests per window, whatever the server answers.
MAX_SPLITS = 8

log = logging.getLogger("enrich.backfill")


async def backfill_items(
    enricher: EnricherCore,
    agent_id: str,
    start: Any,
    end: Any,
    window: Any,
    *,
    split_at: int = 100,
    min_window: Any = None,
) -> AsyncIterator[BatchItem]:
    """Every conversation of ``agent_id`` between ``start`` and ``end``, listed window by window.

    No pagination is documented, so a window that returns ``split_at`` or more conversations
    (it may have been cut short) is listed again in halves, down to ``min_window`` (default one
    minute) and at most :data:`MAX_SPLITS` times (a bound on list requests, even from a server
    whose list is always full). A window still full at the bottom is taken as it is, with a
    warning naming it (it may be incomplete). Each conversation is yielded once.
    """
    from datetime import timedelta

    min_window = min_window or timedelta(minutes=1)
    seen: set[str] = set()
    full: list[tuple[Any, Any]] = []  # windows still full where splitting stopped

    async def listing(lo: Any, hi: Any, depth: int) -> AsyncIterator[dict[str, Any]]:
        items = await enricher.chatdash.list_conversations(
            agent_id, start=lo.isoformat(), end=hi.isoformat()
        )
        if len(items) >= split_at:
            if hi - lo > min_window and depth < MAX_SPLITS:
                mid = lo + (hi - lo) / 2
                async for c in listing(lo, mid, depth + 1):
                    yield c
                async for c in listing(mid, hi, depth + 1):
                    yield c
                return
            full.append((lo, hi))
        for c in items:
            yield c

    lo = start
    while lo < end:
        hi = min(end, lo + window)
        async for conversation in listing(lo, hi, 0):
            cid = conversation.get("_id")
            if isinstance(cid, str) and cid and cid not in seen:
                seen.add(cid)
                yield BatchItem(agent_id=agent_id, conversation_id=cid)
        if full:
            smallest = min(b - a for a, b in full)
            log.warning(
                "backfill: %d window(s) between %s and %s still listed %d or more "
                "conversations (--split-at) when split down to %s: the list may be incomplete "
                "there (first: %s to %s); a smaller --window-hours or a larger --split-at "
                "may list them all",
                len(full),
                lo.isoformat(),
                hi.isoformat(),
                split_at,
                smallest,
                full[0][0].isoformat(),
                full[0][1].isoformat(),
            )
            full.clear()
        lo = hi


async def estimate_many(
    enricher: EnricherCore, items: Iterable[Any] | AsyncIterable[Any], *, force: bool = False
) -> AsyncIterator[EstimateRow]:
    """What each item should cost, without calling the LLM (transcripts are fetched when
    absent; what the ledger already holds costs nothing unless ``force``, and so does a
    conversation with nothing to analyse: strategy ``skipped``, with why)."""
    async for raw in aiter_items(items):
        item = to_item(raw)
        if isinstance(item, BadItem):
            yield EstimateRow(line=item.line, ok=False, error=item.error)
            continue
        conversation_id = item.conversation_id
        try:
            if conversation_id is None:
                conversation_id = await enricher.aresolve(item.agent_id, item.platform_id or "")
            if not force and await enricher.awritten_result(item.agent_id, conversation_id):
                yield EstimateRow(
                    agent_id=item.agent_id,
                    conversation_id=conversation_id,
                    line=item.line,
                    ok=True,
                    cost=0.0,
                    strategy="skipped",
                )
                continue
            transcript = item.transcript
            if transcript is None:
                transcript = await enricher.afetch(item.agent_id, conversation_id)
            else:
                transcript = enricher.parse(transcript, format=item.format, source=where(item))
            est = enricher.estimate(transcript, agent_id=item.agent_id)
        except EnrichError as exc:
            yield EstimateRow(
                agent_id=item.agent_id,
                conversation_id=conversation_id,
                line=item.line,
                ok=False,
                error=str(exc),
            )
            continue
        yield EstimateRow(
            agent_id=item.agent_id,
            conversation_id=conversation_id,
            line=item.line,
            ok=True,
            **est.model_dump(),
        )
