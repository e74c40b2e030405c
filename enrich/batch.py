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
import json
import queue
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from .errors import ChatDashError, EnrichError, InputError, LLMError
from .pipeline import EnrichmentResult

if TYPE_CHECKING:
    from .pipeline import Enricher

__all__ = ["BatchItem", "BatchResult", "BatchRun", "run_many", "read_items", "BatchTotals"]

Status = Literal["written", "enriched", "skipped", "failed"]


class BatchItem(BaseModel):
    """One conversation to enrich. Without ``transcript`` it is fetched from ChatDash."""

    agent_id: str = Field(min_length=1)
    conversation_id: str | None = Field(default=None, min_length=1)
    platform_id: str | None = Field(default=None, min_length=1)
    transcript: Any = None
    format: str | None = None
    line: int | None = Field(default=None, description="where it came from, for messages")


class _BadItem(BaseModel):
    line: int | None = None
    error: str


class BatchResult(BaseModel):
    """What happened to one item."""

    agent_id: str | None = None
    conversation_id: str | None = None
    line: int | None = None
    status: Status
    ok: bool
    result: EnrichmentResult | None = None
    error: str | None = None
    error_type: str | None = None
    stage: Literal["input", "llm", "chatdash", "config", "internal"] | None = None
    seconds: float = 0.0


class BatchTotals(BaseModel):
    """Running totals, for progress and the closing summary."""

    done: int = 0
    written: int = 0
    enriched: int = 0
    skipped: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    requests: int = 0
    cost: float = 0.0
    uncosted: int = 0

    def add(self, r: BatchResult) -> None:
        self.done += 1
        setattr(self, r.status, getattr(self, r.status) + 1)
        res = r.result
        if res is not None and not res.reused:
            self.prompt_tokens += res.usage.prompt_tokens
            self.completion_tokens += res.usage.completion_tokens
            self.cached_tokens += res.usage.cached_tokens
            self.requests += res.usage.requests
            if res.cost is None:
                self.uncosted += 1
            else:
                self.cost += res.cost


def _item(raw: Any) -> BatchItem | _BadItem:
    if isinstance(raw, (BatchItem, _BadItem)):
        return raw
    try:
        if isinstance(raw, tuple):
            raw = dict(zip(("agent_id", "conversation_id", "transcript"), raw, strict=False))
        item = BatchItem.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "item"
        line = raw.get("line") if isinstance(raw, dict) else None
        return _BadItem(line=line, error=f"{where}: {err['msg']}")
    if not (item.conversation_id or item.platform_id):
        return _BadItem(line=item.line, error="needs conversation_id (or platform_id)")
    return item


def read_items(path: str | Path) -> Iterator[BatchItem | _BadItem]:
    """Items from a JSON Lines file (``-`` for standard input), one at a time; a bad line
    becomes a failed result naming its number, not an error that stops the batch."""
    import sys

    if str(path) != "-" and Path(path).is_dir():
        raise InputError(f"{path}: is a directory, not a JSON Lines file")
    stream = sys.stdin.buffer if str(path) == "-" else open(path, "rb")  # noqa: SIM115
    try:
        for number, raw in enumerate(stream, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
            except UnicodeDecodeError as exc:
                yield _BadItem(
                    line=number,
                    error=f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                )
                continue
            if not line:
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                yield _BadItem(line=number, error=f"invalid JSON at column {exc.colno}: {exc.msg}")
                continue
            if not isinstance(data, dict):
                yield _BadItem(line=number, error="expected a JSON object")
                continue
            data["line"] = number
            yield _item(data)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _stage(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return "input"
    if isinstance(exc, LLMError):
        return "llm"
    if isinstance(exc, ChatDashError):
        return "chatdash"
    if isinstance(exc, EnrichError):
        return "config"
    return "internal"


def _where(item: BatchItem) -> str:
    return f"line {item.line}" if item.line else f"conversation {item.conversation_id}"


def _bad(item: _BadItem) -> BatchResult:
    """The failed result of an item that could not be read."""
    return BatchResult(
        line=item.line,
        status="failed",
        ok=False,
        error=item.error,
        error_type="InputError",
        stage="input",
    )


def _failed(
    item: BatchItem, conversation_id: str | None, exc: Exception, start: float
) -> BatchResult:
    """The failed result of an item whose enrichment raised ``exc`` (kept, if it was paid)."""
    message = str(exc) if isinstance(exc, EnrichError) else f"internal error: {exc!r}"
    return BatchResult(
        agent_id=item.agent_id,
        conversation_id=conversation_id,
        line=item.line,
        status="failed",
        ok=False,
        result=getattr(exc, "result", None),
        error=message,
        error_type=type(exc).__name__,
        stage=_stage(exc),  # type: ignore[arg-type]
        seconds=time.perf_counter() - start,
    )


async def _one(enricher: Enricher, raw: Any, *, write: bool, force: bool) -> BatchResult:
    start = time.perf_counter()
    item = _item(raw)
    if isinstance(item, _BadItem):
        return _bad(item)
    conversation_id = item.conversation_id
    try:
        transcript = item.transcript
        if transcript is not None:  # parsed here, so that an error names the line
            transcript = enricher.parse(transcript, format=item.format, source=_where(item))
        if conversation_id is None:
            conversation_id = await enricher.aresolve(item.agent_id, item.platform_id or "")
        if write:
            result = await enricher.aenrich_and_write(
                item.agent_id,
                conversation_id,
                transcript,
                format=item.format,
                force=force,
                skip_written=True,
            )
            status: Status = "skipped" if result.already_written else "written"
        else:
            if transcript is None:
                transcript = await enricher.afetch(item.agent_id, conversation_id)
            result = await enricher.aenrich(
                transcript,
                format=item.format,
                agent_id=item.agent_id,
                conversation_id=conversation_id,
                force=force,
            )
            status = "enriched"
    except Exception as exc:  # noqa: BLE001 - one failure never aborts the batch
        return _failed(item, conversation_id, exc, start)
    return BatchResult(
        agent_id=item.agent_id,
        conversation_id=conversation_id,
        line=item.line,
        status=status,
        ok=True,
        result=result,
        seconds=time.perf_counter() - start,
    )


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def run_many(
    enricher: Enricher,
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
    source = _aiter(items).__aiter__()
    running: set[asyncio.Task[BatchResult]] = set()
    exhausted = False

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
            item = _item(raw)
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
            running.add(asyncio.ensure_future(_one(enricher, item, write=write, force=force)))

    try:
        await fill()
        while running or early:
            while early:
                yield early.pop()
            if not running:
                await fill()
                continue
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            await fill()  # replacements start before the results are handed over
            for task in done:
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
        enricher: Enricher,
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
                from .batchapi import run_via_batch_api

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

        self._future = enricher._sync.submit(pump())
        self._loop = enricher._sync.loop
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


async def backfill_items(
    enricher: Enricher,
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
    (it may have been cut short) is listed again in halves, down to ``min_window``
    (default one minute). Each conversation is yielded once.
    """
    from datetime import timedelta

    min_window = min_window or timedelta(minutes=1)
    seen: set[str] = set()

    async def listing(lo: Any, hi: Any) -> AsyncIterator[dict[str, Any]]:
        items = await enricher.chatdash.list_conversations(
            agent_id, start=lo.isoformat(), end=hi.isoformat()
        )
        if len(items) >= split_at and hi - lo > min_window:
            mid = lo + (hi - lo) / 2
            async for c in listing(lo, mid):
                yield c
            async for c in listing(mid, hi):
                yield c
            return
        for c in items:
            yield c

    lo = start
    while lo < end:
        hi = min(end, lo + window)
        async for conversation in listing(lo, hi):
            cid = conversation.get("_id")
            if isinstance(cid, str) and cid and cid not in seen:
                seen.add(cid)
                yield BatchItem(agent_id=agent_id, conversation_id=cid)
        lo = hi


class EstimateRow(BaseModel):
    agent_id: str | None = None
    conversation_id: str | None = None
    line: int | None = None
    ok: bool
    error: str | None = None
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    strategy: str | None = None


async def estimate_many(
    enricher: Enricher, items: Iterable[Any] | AsyncIterable[Any], *, force: bool = False
) -> AsyncIterator[EstimateRow]:
    """What each item should cost, without calling the LLM (transcripts are fetched when
    absent; what the ledger already holds costs nothing unless ``force``)."""
    async for raw in _aiter(items):
        item = _item(raw)
        if isinstance(item, _BadItem):
            yield EstimateRow(line=item.line, ok=False, error=item.error)
            continue
        conversation_id = item.conversation_id
        try:
            if conversation_id is None:
                conversation_id = await enricher.aresolve(item.agent_id, item.platform_id or "")
            if not force and enricher._already_written(item.agent_id, conversation_id):
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
                transcript = enricher.parse(transcript, format=item.format, source=_where(item))
            est = enricher.estimate(transcript)
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
