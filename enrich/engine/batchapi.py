"""Backfills that can wait: the whole job through OpenAI's Batch API, at half the price.

:func:`run_via_batch_api` prepares every conversation (fetching transcripts, skipping what the
ledger already holds and what has nothing to analyse), uploads one JSONL file of chat completion
requests, creates the batch, polls it (reporting progress), downloads the output, and validates
every row exactly as a direct answer is validated. Rows that fail validation, were refused or cut
off, or are missing, are asked again directly (with the validation errors fed back); calls too
long for one request use the direct map-reduce path. Then each result is kept in the ledger and
written back, as in a direct batch. Yields a :class:`~enrich.batch.BatchResult` for every item.

This module orchestrates (which rows, the ledger, re-asks, writes); the Batch API calls are the
LLM adapter's :class:`~enrich.llm.BatchAPI`, and a row is read and validated by
:mod:`enrich.llm.wire`, exactly as a direct answer is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any

from ..errors import EnrichError, LLMError, redact
from ..ledger import State
from ..llm import Answer, BatchAPI, BatchRequest, LLMResult, reask_messages, validate
from ..models.enrichment import AnswerBase
from ..models.results import BadItem, BatchItem, BatchResult
from ..models.transcript import Transcript
from ..models.usage import Usage
from .core import EnricherCore
from .items import (
    aiter_items,
    bad_result,
    enrich_item,
    failed_result,
    skipped_result,
    to_item,
    where,
)
from .longcall import plan
from .profile import Profile

__all__ = ["run_via_batch_api", "BATCH_DISCOUNT", "BatchAPIUnavailableError"]

log = logging.getLogger("enrich.batchapi")

#: The Batch API's price, as a share of the direct price.
BATCH_DISCOUNT = 0.5


class BatchAPIUnavailableError(LLMError):
    """``via="batch-api"`` on a server whose Batch API cannot be used (no ``/v1/files``, an
    upload or a batch refused...), without ``fallback``: nothing was paid for; the job can run
    directly, at the full price."""


def _unavailable(
    enricher: EnricherCore, exc: Exception, created: str | None
) -> BatchAPIUnavailableError:
    reason = redact(str(exc), [enricher.config.llm.api_key, enricher.config.chatdash.api_key])
    reason = " ".join(reason.split())[:300]
    if created is None:
        what = f"the Batch API is unavailable ({reason}); nothing was paid for"
    elif enricher.ledger is not None:
        what = (
            f"the Batch API failed after batch {created} was created ({reason}); the ledger "
            "keeps it, and the same command collects it later"
        )
    else:
        what = f"the Batch API failed after batch {created} was created ({reason})"
    return BatchAPIUnavailableError(
        f"{what}. Run with --via direct to ask directly at the full price, or allow that "
        "fallback (llm.batch_api_fallback: true)"
    )


class _Job:
    def __init__(
        self,
        index: int,
        item: BatchItem,
        conversation_id: str,
        parsed: Transcript,
        profile: Profile,
    ) -> None:
        self.index = index
        self.item = item
        self.conversation_id = conversation_id
        self.parsed = parsed
        self.profile = profile
        self.fingerprint = profile.fingerprint(parsed)  # its key in the ledger, computed once
        self.messages: list[dict[str, Any]] = []
        self.source: tuple[str, str] | None = None  # (batch id, custom id)
        self.start = time.perf_counter()


async def run_via_batch_api(
    enricher: EnricherCore,
    items: Iterable[Any] | AsyncIterable[Any],
    *,
    write: bool = True,
    force: bool = False,
    poll_seconds: float = 10.0,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    stop: asyncio.Event | None = None,
    fallback: bool | None = None,
) -> AsyncIterator[BatchResult]:
    """Enrich ``items`` through one Batch API job; ``stop`` leaves the job waiting (it is in the
    ledger: the same command collects it later).

    When the Batch API cannot be used (the server has none, refuses the upload...), the run
    raises :class:`BatchAPIUnavailableError` before paying anything, unless ``fallback``
    (default: ``llm.batch_api_fallback``) allows asking those conversations directly, at the
    full price. Invalid rows of a completed batch are re-asked directly either way."""
    llm = enricher.llm
    if fallback is None:
        fallback = enricher.config.llm.batch_api_fallback
    jobs: list[_Job] = []
    direct: list[Any] = []  # items that take the direct path (long calls)

    # 1. prepare: resolve, skip what is done, fetch, parse, skip what has nothing to analyse,
    #    render
    index = 0
    async for raw in aiter_items(items):
        item = to_item(raw)
        if isinstance(item, BadItem):
            yield bad_result(item)
            continue
        try:
            conversation_id = item.conversation_id or await enricher.aresolve(
                item.agent_id, item.platform_id or ""
            )
            if write and not force and item.transcript is None:
                done = await enricher.awritten_result(item.agent_id, conversation_id)
                if done is not None:
                    yield skipped_result(item, conversation_id, done)
                    continue
            if item.transcript is None:
                parsed = await enricher.afetch(item.agent_id, conversation_id)
            else:
                parsed = enricher.parse(item.transcript, format=item.format, source=where(item))
            # nothing to analyse: no row in the batch, nothing paid
            skipped = await enricher.askip(
                parsed, item.agent_id, conversation_id, write=write, force=force
            )
        except EnrichError as exc:
            yield failed_result(item, item.conversation_id, exc, time.perf_counter())
            continue
        if skipped is not None:
            yield skipped_result(item, conversation_id, skipped)
            continue
        if plan(parsed, enricher.profile(item.agent_id)).strategy != "single":
            direct.append(item.model_copy(update={"conversation_id": conversation_id}))
            continue
        job = _Job(index, item, conversation_id, parsed, enricher.profile(item.agent_id))
        job.messages = job.profile.messages(parsed)
        jobs.append(job)
        index += 1

    # 2. one batch for everything that fits one request; a job an interrupted run left open
    #    (recorded in the ledger) is collected instead of being paid for again
    ledger = enricher.ledger
    outputs: dict[tuple[str, str], Answer | None] = {}  # None: a row answered with an error
    if jobs:
        batch_api = BatchAPI(llm)
        adopted: dict[str, tuple[str, str]] = {}
        open_jobs = await ledger.aopen_batch_jobs() if ledger is not None and not force else {}
        for batch_id, rows in open_jobs.items():
            for custom_id, key in rows.items():
                adopted["|".join(key)] = (batch_id, custom_id)
        fresh = []
        for job in jobs:
            job.source = adopted.get("|".join(_key(job)))
            if job.source is None:
                fresh.append(job)
        created: str | None = None  # a batch made by this run
        try:
            if fresh:
                batch_id = await batch_api.submit(
                    BatchRequest(str(job.index), job.messages, job.profile.schema) for job in fresh
                )
                if ledger is not None:  # recorded before anything can interrupt the wait
                    await ledger.arecord_batch_job(
                        batch_id, {str(job.index): _key(job) for job in fresh}
                    )
                created = batch_id
                log.warning(
                    "Batch API job %s created for %d conversations; if interrupted, run the "
                    "same command again to collect it",
                    batch_id,
                    len(fresh),
                )
                for job in fresh:
                    job.source = (batch_id, str(job.index))
            pending = sorted({job.source[0] for job in jobs if job.source})
            for batch_id in pending:
                status = await batch_api.status(batch_id)
                while not status.done:
                    if stop is not None and stop.is_set():
                        return  # the job stays open in the ledger for the next run
                    await asyncio.sleep(poll_seconds)
                    status = await batch_api.status(batch_id)
                    if on_progress is not None:
                        on_progress(
                            {
                                "id": status.id,
                                "status": status.status,
                                "completed": status.completed,
                                "failed": status.failed,
                                "total": len(jobs) if status.total is None else status.total,
                            }
                        )
                if status.status != "completed":
                    log.warning(
                        "batch %s ended %s: asking its rows directly", batch_id, status.status
                    )
                for custom_id, answer in (await batch_api.answers(status)).items():
                    outputs[(batch_id, custom_id)] = answer
        except Exception as exc:  # noqa: BLE001 - fall back to direct calls only if allowed
            if not fallback:
                raise _unavailable(enricher, exc, created) from exc
            log.warning(
                "the Batch API failed (%s): asking directly, at the full price "
                "(llm.batch_api_fallback)",
                exc,
            )

    # 3. validate each row; re-ask the invalid ones directly; keep, then write
    semaphore = asyncio.Semaphore(max(1, enricher.config.llm.part_concurrency))

    async def settle(job: _Job) -> BatchResult:
        row = job.source is not None and job.source in outputs  # the batch attempted it
        try:
            batch_answer = outputs.get(job.source) if job.source else None
            answer, batch_usage = await _answer(enricher, job, batch_answer, semaphore)
            direct_usage = answer.usage
            model = answer.model
            usage = batch_usage + direct_usage
            cost = _cost(enricher, model, batch_usage, direct_usage)
            answer = LLMResult(
                value=answer.value,
                usage=usage,
                attempts=answer.attempts + (1 if row else 0),
                raw_outputs=answer.raw_outputs,
                model=model,
                repairs=answer.repairs,
            )
            result = await enricher.afinish(
                job.parsed,
                answer,
                job.item.agent_id,
                job.conversation_id,
                state=State.PENDING if write else State.ENRICHED,
                cost=cost,
                fingerprint=job.fingerprint,
            )
            if write:
                result = await enricher.awrite(result)
        except Exception as exc:  # noqa: BLE001 - one failure never aborts the batch
            return failed_result(job.item, job.conversation_id, exc, job.start)
        return BatchResult(
            agent_id=job.item.agent_id,
            conversation_id=job.conversation_id,
            line=job.item.line,
            status="written" if write else "enriched",
            ok=True,
            result=result,
            seconds=time.perf_counter() - job.start,
        )

    for done in asyncio.as_completed([settle(job) for job in jobs]):
        yield await done
    if ledger is not None:  # every row of these jobs is now kept in the ledger
        consumed = {job.source for job in jobs if job.source}
        for batch_id, rows in (await ledger.aopen_batch_jobs()).items():
            if all((batch_id, custom_id) in consumed for custom_id in rows):
                await ledger.aclose_batch_job(batch_id, "collected")
    for item in direct:
        yield await enrich_item(enricher, item, write=write, force=force)


async def _answer(
    enricher: EnricherCore, job: _Job, row: Answer | None, semaphore: asyncio.Semaphore
) -> tuple[LLMResult[AnswerBase], Usage]:
    """The validated answer for one job: the batch's row if it is valid (read and validated as
    a direct answer is), else a direct re-ask (with the row's validation errors fed back when
    there was a usable row)."""
    spec = job.profile.spec
    context = spec.context()
    messages = list(job.messages)
    batch_usage = Usage()
    if row is not None:
        batch_usage = row.usage
        if row.usable:
            checked = validate(row.text, spec.output_model(), context=context)
            if checked.ok and checked.value is not None:
                return (
                    LLMResult(
                        value=checked.value,
                        usage=Usage(),
                        attempts=0,
                        raw_outputs=[row.text],
                        model=row.model or enricher.config.llm.model,
                        repairs=int(checked.repaired),
                    ),
                    batch_usage,
                )
            messages += reask_messages(row, job.profile.prompts.reask(checked.errors))
    async with semaphore:
        try:
            answer = await enricher.llm.complete(
                messages,
                output=spec.output_model(),
                schema=job.profile.schema,
                reask=job.profile.prompts.reask,
                context=context,
            )
        except LLMError as exc:
            exc.usage = batch_usage + (exc.usage or Usage())
            raise
    return answer, batch_usage


def _key(job: _Job) -> list[str]:
    """What a Batch API row enriches, as the ledger keeps it: the conversation and its
    fingerprint."""
    return [job.item.agent_id, job.conversation_id, *job.fingerprint.parts()]


def _cost(enricher: EnricherCore, model: str, batch: Usage, direct: Usage) -> float | None:
    price = enricher.config.price(model)
    if price is None:
        return None
    cost = BATCH_DISCOUNT * price.cost(
        batch.prompt_tokens, batch.completion_tokens, batch.cached_tokens
    )
    return cost + price.cost(direct.prompt_tokens, direct.completion_tokens, direct.cached_tokens)
