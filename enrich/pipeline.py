"""The pipeline: transcript → prompts → LLM → validated enrichment → PUT body → ChatDash.

:class:`Enricher` composes the modules; it holds no global state. Build it from a
:class:`~enrich.config.Config` (or with :meth:`Enricher.from_env`), then call
:meth:`~Enricher.enrich` (no write) or :meth:`~Enricher.enrich_and_write`, or their async twins
:meth:`~Enricher.aenrich` and :meth:`~Enricher.aenrich_and_write`.

The synchronous methods run on a private event loop in a background thread, so they work from a
plain script and from a notebook whose loop is already running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
from collections.abc import AsyncIterable, AsyncIterator, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, Field

from .config import Config, load_config
from .errors import ChatDashError, ConfigError
from .ledger import Fingerprint, Ledger, LedgerEntry, State, default_ledger_path, digest
from .ratelimit import RateLimiter
from .schema import Enrichment, build_update, ground_queries, output_schema
from .transcript import CallMetadata, Transcript, parse_transcript
from .usage import Usage

__all__ = ["Enricher", "EnrichmentResult", "CostEstimate", "ReplayReport", "TranscriptInput"]

if TYPE_CHECKING:
    from .batch import BatchResult, BatchRun

T = TypeVar("T")

#: Anything :func:`~enrich.transcript.parse_transcript` reads.
TranscriptInput = Transcript | str | bytes | list[Any] | dict[str, Any]


class EnrichmentResult(BaseModel):
    """What one conversation gave: the enrichment, its cost, and what was (or would be) written."""

    enrichment: Enrichment
    update: dict[str, Any] = Field(description="the PUT body, wire names, only the fields sent")
    usage: Usage
    attempts: int = Field(description="LLM requests made, re-asks and parts included")
    model: str
    dropped_queries: list[str] = Field(
        default_factory=list,
        description="misunderstood queries the model invented (not said by the user): not written",
    )
    transcript_format: str
    turns: int
    strategy: Literal["single", "map_reduce"] = Field(
        default="single",
        description="single: one request; map_reduce: the call was over the context budget, "
        "so notes were taken on its parts and combined",
    )
    parts: int = Field(default=1, description="parts the transcript was cut into")
    transcript_tokens: int = Field(default=0, description="the transcript's tokens, as estimated")
    metadata: CallMetadata = Field(default_factory=CallMetadata)
    cost: float | None = Field(
        default=None, description="USD, from the price table; None: no price"
    )
    reused: bool = Field(
        default=False, description="the enrichment came from the ledger: no LLM call, no cost"
    )
    already_written: bool = Field(
        default=False, description="the same body was written before: nothing was sent"
    )
    agent_id: str | None = None
    conversation_id: str | None = None
    written: bool = False


class CostEstimate(BaseModel):
    """What a conversation should cost, before any LLM call (see :meth:`Enricher.estimate`)."""

    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None = Field(description="USD at list price; None: the model has no price")
    strategy: Literal["single", "map_reduce"]


def count_tokens(text: str, config: Config) -> int:
    from .tokens import get_counter

    return get_counter(config.llm.tokenizer).count(text)


class ReplayReport(BaseModel):
    """What ``replay`` did."""

    written: int = 0
    skipped: int = Field(default=0, description="claimed by another process at the time")
    failed: list[str] = Field(default_factory=list)
    refused_waiting: int = Field(
        default=0, description="writes ChatDash refused, left for a replay with include_failed"
    )


def _from_ledger(entry: LedgerEntry, **fields: Any) -> EnrichmentResult:
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


class _LoopThread:
    """A private event loop in a daemon thread, for the synchronous API."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name="enrich-loop", daemon=True
                )
                self._thread.start()
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def close(self, cleanup: Coroutine[Any, Any, Any]) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None:
            cleanup.close()
            return

        async def wind_down() -> None:
            # cancel what is still running (an abandoned batch), so nothing is destroyed pending
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await cleanup

        try:
            asyncio.run_coroutine_threadsafe(wind_down(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(timeout=10)
            loop.close()


class Enricher:
    """Enrich conversations with one configuration.

    >>> enricher = Enricher.from_env()                      # doctest: +SKIP
    >>> result = enricher.enrich("Agent: Hi!\\nUser: I need a refund.")   # doctest: +SKIP
    >>> result.enrichment.topic                             # doctest: +SKIP
    """

    def __init__(self, config: Config | None = None) -> None:
        from .chatdash import ChatDash
        from .llm import StructuredLLM
        from .prompts import Prompts

        self.config = config or Config()
        self.prompts = Prompts(self.config.analysis.prompts_dir)
        limiter = None
        if self.config.llm.rpm or self.config.llm.tpm:
            limiter = RateLimiter(self.config.llm.rpm, self.config.llm.tpm)
        self.llm = StructuredLLM(self.config.llm, limiter)
        self.chatdash = ChatDash(self.config.chatdash)
        self._schema = output_schema(self.config.analysis.taxonomy)
        self._sync = _LoopThread()
        self._static: tuple[str, str, str] | None = None
        ledger = self.config.ledger
        self.ledger: Ledger | None = (
            Ledger(ledger.path or default_ledger_path()) if ledger.enabled else None
        )

    @classmethod
    def from_env(cls, config_path: str | None = None, **overrides: Any) -> Enricher:
        """Resolve the configuration (overrides, environment, YAML file, defaults) and build."""
        return cls(load_config(config_path, overrides or None))

    def __repr__(self) -> str:
        return f"Enricher(model={self.config.llm.model!r}, mode={self.config.llm.mode!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])  # type: ignore[misc]

    # -- steps ----------------------------------------------------------------------------------

    @property
    def schema(self) -> dict[str, Any]:
        """The JSON schema the model is asked to follow."""
        return self._schema

    def parse(
        self, transcript: TranscriptInput, *, format: str | None = None, source: str = "<input>"
    ) -> Transcript:
        """Any supported transcript, parsed; ``source`` names it in error messages."""
        return parse_transcript(
            transcript, format=format, source=source, max_bytes=self.config.input.max_bytes
        )

    def render(
        self, transcript: TranscriptInput, *, format: str | None = None
    ) -> list[dict[str, str]]:
        """The exact messages that would go to the LLM for this transcript."""
        return self.prompts.messages(
            self.parse(transcript, format=format),
            self.config.analysis,
            schema=self._schema,
            mode=self.config.llm.mode,
        )

    def fingerprint(self, transcript: Transcript) -> Fingerprint:
        """What the enrichment of ``transcript`` depends on; the same fingerprint reuses the
        ledger's enrichment instead of paying again."""
        model, prompt_hash, taxonomy_hash = self.fingerprint_static()
        turns = [(t.role.value, t.text) for t in transcript.turns]
        return Fingerprint(
            transcript_hash=digest(turns),
            model=model,
            prompt_hash=prompt_hash,
            taxonomy_hash=taxonomy_hash,
        )

    def fingerprint_static(self) -> tuple[str, str, str]:
        """The model, prompts and taxonomy part of every fingerprint (read once)."""
        if self._static is None:
            a = self.config.analysis
            self._static = (
                self.config.llm.model,
                digest(
                    [self.prompts.fingerprint(), a.language, a.business_context, a.success_criteria]
                ),
                digest([t.model_dump() for t in a.taxonomy]),
            )
        return self._static

    async def _ask(self, parsed: Transcript) -> tuple[Any, str, int, int]:
        """The LLM's validated answer: (LLMResult, strategy, parts, transcript tokens)."""
        from .longcall import map_reduce, plan

        the_plan = plan(parsed, self.config, self.prompts, self._schema)
        if the_plan.strategy == "single":
            answer = await self.llm.complete(
                the_plan.messages,
                output=Enrichment,
                schema=self._schema,
                reask=self.prompts.reask,
                context={"taxonomy": self.config.analysis.taxonomy},
            )
            return answer, "single", 1, the_plan.transcript_tokens
        answer, parts = await map_reduce(
            parsed, the_plan, self.config, self.prompts, self.llm, self._schema
        )
        return answer, "map_reduce", parts, the_plan.transcript_tokens

    def _update(self, enrichment: Enrichment, parsed: Transcript) -> dict[str, Any]:
        metadata = parsed.metadata if self.config.write.metadata else None
        return build_update(enrichment, self.config.write.fields, metadata).body()

    async def _enrich(
        self,
        parsed: Transcript,
        agent_id: str | None,
        conversation_id: str | None,
        *,
        force: bool,
        state: State,
    ) -> tuple[EnrichmentResult, LedgerEntry | None]:
        """Enrich, or reuse the ledger's enrichment; store a fresh one in ``state`` at once."""
        ledger = self.ledger if agent_id and conversation_id else None
        fingerprint = self.fingerprint(parsed)
        base = {
            "transcript_format": parsed.format,
            "turns": len(parsed.turns),
            "metadata": parsed.metadata,
            "agent_id": agent_id,
            "conversation_id": conversation_id,
        }

        def stored() -> tuple[EnrichmentResult, LedgerEntry] | None:
            entry = ledger.get(agent_id, conversation_id)  # type: ignore[union-attr,arg-type]
            if entry is None or entry.fingerprint != fingerprint:
                return None
            result = _from_ledger(entry, **base)
            result.update = self._update(result.enrichment, parsed)  # today's write.fields
            return result, entry

        if ledger is not None and not force and (found := stored()) is not None:
            return found
        if ledger is None:
            return await self._ask_and_finish(parsed, agent_id, conversation_id, state), None
        # Another process (a webhook retried while the first is still running) may be paying
        # for this very enrichment: wait for its result rather than pay again.
        held = digest(fingerprint.model_dump())
        s = self.config.llm
        lease = s.timeout * (s.max_retries + 1) * (s.max_reasks + 1) + 60
        waited = 0.0
        while not ledger.begin(agent_id, conversation_id, held, lease):  # type: ignore[arg-type]
            await asyncio.sleep(0.25)
            waited += 0.25
            if not force and (found := stored()) is not None:
                return found
            if waited > lease:
                break
        try:
            return await self._ask_and_finish(parsed, agent_id, conversation_id, state), None
        finally:
            ledger.end(agent_id, conversation_id)  # type: ignore[arg-type]

    async def _ask_and_finish(
        self, parsed: Transcript, agent_id: str | None, conversation_id: str | None, state: State
    ) -> EnrichmentResult:
        answer, strategy, parts, tokens = await self._ask(parsed)
        return self.finish(
            parsed,
            answer,
            agent_id,
            conversation_id,
            strategy=strategy,
            parts=parts,
            transcript_tokens=tokens,
            state=state,
        )

    def finish(
        self,
        parsed: Transcript,
        answer: Any,
        agent_id: str | None,
        conversation_id: str | None,
        *,
        state: State,
        strategy: Literal["single", "map_reduce"] = "single",
        parts: int = 1,
        transcript_tokens: int = 0,
        cost: float | None = None,
    ) -> EnrichmentResult:
        """Turn the LLM's validated answer into a result: ground the queries, build the PUT
        body, and keep it in the ledger (in ``state``) before anything else can go wrong."""
        kept, dropped = ground_queries(
            answer.value.misunderstood_queries, [t.text for t in parsed.user_turns]
        )
        enrichment = answer.value.model_copy(update={"misunderstood_queries": kept})
        result = EnrichmentResult(
            enrichment=enrichment,
            update=self._update(enrichment, parsed),
            usage=answer.usage,
            cost=cost if cost is not None else self.config.cost(answer.model, answer.usage),
            attempts=answer.attempts,
            model=answer.model,
            dropped_queries=dropped,
            strategy=strategy,
            parts=parts,
            transcript_tokens=transcript_tokens,
            transcript_format=parsed.format,
            turns=len(parsed.turns),
            metadata=parsed.metadata,
            agent_id=agent_id,
            conversation_id=conversation_id,
        )
        if self.ledger is not None and agent_id and conversation_id:
            self.ledger.record(
                agent_id,
                conversation_id,
                self.fingerprint(parsed),
                enrichment={
                    "enrichment": enrichment.model_dump(mode="json"),
                    "dropped_queries": dropped,
                    "strategy": strategy,
                    "parts": parts,
                },
                body=result.update,
                usage=result.usage,
                cost=result.cost,
                state=state,
            )
        return result

    async def aenrich(
        self,
        transcript: TranscriptInput,
        *,
        format: str | None = None,
        agent_id: str | None = None,
        conversation_id: str | None = None,
        force: bool = False,
    ) -> EnrichmentResult:
        """Enrich one transcript; nothing is written to ChatDash.

        With both ids and a ledger, the result is kept there (``enriched``), and a transcript
        already enriched with the same model, prompts and taxonomy is not paid for twice
        (``force`` asks the LLM anyway).
        """
        parsed = self.parse(transcript, format=format)
        result, _ = await self._enrich(
            parsed, agent_id, conversation_id, force=force, state=State.ENRICHED
        )
        return result

    async def awrite(self, result: EnrichmentResult) -> EnrichmentResult:
        """PUT ``result.update`` to its conversation; returns the result marked written.

        With a ledger, a write that fails stays ``pending`` (or ``failed``, when ChatDash
        refused it) with its error, for ``enrich replay``.
        """
        agent_id, conversation_id = result.agent_id or "", result.conversation_id or ""
        try:
            await self.chatdash.update_conversation(agent_id, conversation_id, result.update)
        except ChatDashError as exc:
            if self.ledger is not None:
                permanent = exc.status_code is not None and 400 <= exc.status_code < 500
                self.ledger.write_failed(
                    agent_id,
                    conversation_id,
                    str(exc),
                    permanent=permanent and exc.status_code != 429,
                )
            exc.result = result  # paid for: hand it back with the error
            raise
        if self.ledger is not None:
            self.ledger.written(agent_id, conversation_id, result.update)
        return result.model_copy(update={"written": True})

    async def afetch(self, agent_id: str, conversation_id: str) -> Transcript:
        """The conversation's transcript, from ChatDash's messages."""
        messages = await self.chatdash.get_messages(agent_id, conversation_id)
        source = f"messages of conversation {conversation_id}"
        return parse_transcript(
            messages, format="chatdash", source=source, max_bytes=self.config.input.max_bytes
        )

    async def aresolve(self, agent_id: str, platform_id: str) -> str:
        """ChatDash's conversation id for a platform's call id."""
        return await self.chatdash.resolve(agent_id, platform_id)

    async def aenrich_and_write(
        self,
        agent_id: str,
        conversation_id: str,
        transcript: TranscriptInput | None = None,
        *,
        format: str | None = None,
        force: bool = False,
        skip_written: bool = False,
    ) -> EnrichmentResult:
        """Enrich one conversation and write the result to ChatDash.

        Without ``transcript`` the messages are fetched from ChatDash. With a ledger the
        enrichment is stored before the write is tried; an unchanged conversation that was
        already written is not paid for nor written again (``force`` does both).
        ``skip_written`` (a batch resuming) trusts the ledger without fetching again: a
        conversation written with today's model, prompts and taxonomy is skipped as it is.
        """
        from .chatdash import conversation_path

        conversation_path(agent_id, conversation_id)  # bad ids fail before anything is paid
        self.chatdash.check()  # a write that cannot happen is known before the LLM is paid
        if transcript is None:
            if skip_written and not force:
                done = self._already_written(agent_id, conversation_id)
                if done is not None:
                    return done
            parsed = await self.afetch(agent_id, conversation_id)
        else:
            parsed = self.parse(transcript, format=format)
        result, entry = await self._enrich(
            parsed, agent_id, conversation_id, force=force, state=State.PENDING
        )
        if entry is not None and self.ledger is not None:
            if entry.state == State.WRITTEN and entry.body == result.update:
                self.ledger.note(agent_id, conversation_id, "skipped", {"why": "already written"})
                return result.model_copy(update={"written": True, "already_written": True})
            self.ledger.queue(agent_id, conversation_id, result.update, "reused")
        return await self.awrite(result)

    def _already_written(self, agent_id: str, conversation_id: str) -> EnrichmentResult | None:
        """The ledger's result for a conversation written with the current model, prompts and
        taxonomy: a batch that resumes skips it without even fetching its transcript."""
        if self.ledger is None:
            return None
        entry = self.ledger.get(agent_id, conversation_id)
        if entry is None or entry.state != State.WRITTEN:
            return None
        current = self.fingerprint_static()
        if (entry.model, entry.prompt_hash, entry.taxonomy_hash) != current:
            return None
        self.ledger.note(agent_id, conversation_id, "skipped", {"why": "already written"})
        return _from_ledger(entry, written=True, already_written=True)

    async def areplay(self, *, include_failed: bool = False) -> ReplayReport:
        """Send every ``pending`` write again (and ``failed`` ones with ``include_failed``);
        no LLM call. Safe to run twice, or beside a batch: each write is claimed first."""
        if self.ledger is None:
            raise ConfigError("replay needs the ledger (it is disabled: ledger.enabled)")
        self.chatdash.check()
        states = [State.PENDING] + ([State.FAILED] if include_failed else [])
        report = ReplayReport()
        if not include_failed:
            report.refused_waiting = len(self.ledger.entries(State.FAILED))
        for state in states:
            for entry in self.ledger.entries(state):
                if not self.ledger.claim(entry.agent_id, entry.conversation_id):
                    report.skipped += 1
                    continue
                try:
                    await self.awrite(_from_ledger(entry))
                except ChatDashError as exc:
                    report.failed.append(f"{entry.agent_id}/{entry.conversation_id}: {exc}")
                else:
                    report.written += 1
        return report

    def estimate(
        self,
        transcript: TranscriptInput,
        *,
        format: str | None = None,
        completion_tokens: int = 250,
    ) -> CostEstimate:
        """What enriching ``transcript`` should cost, without calling the LLM: its requests and
        prompt tokens as planned (offline count), ``completion_tokens`` per answer, list price."""
        from .longcall import PART_SCHEMA, plan

        parsed = self.parse(transcript, format=format)
        p = plan(parsed, self.config, self.prompts, self._schema)
        counter_schema = json.dumps(self._schema)
        if p.strategy == "single":
            prompt = sum(count_tokens(m["content"], self.config) for m in p.messages)
            prompt += count_tokens(counter_schema, self.config)
            requests = 1
        else:
            prompt = 0
            for i, part in enumerate(p.parts, 1):
                messages = self.prompts.part_messages(
                    part,
                    self.config.analysis,
                    schema=PART_SCHEMA,
                    mode=self.config.llm.mode,
                    index=i,
                    count=len(p.parts),
                )
                prompt += sum(count_tokens(m["content"], self.config) for m in messages)
            prompt += len(p.parts) * (250 + count_tokens(json.dumps(PART_SCHEMA), self.config))
            prompt += p.budget // 5  # the final call: notes, the last turns, the instructions
            requests = len(p.parts) + 1
        completion = completion_tokens * requests
        price = self.config.price(self.config.llm.model)
        return CostEstimate(
            requests=requests,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost=price.cost(prompt, completion) if price else None,
            strategy=p.strategy,
        )

    # -- many conversations ---------------------------------------------------------------------

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
        time; yields a :class:`~enrich.batch.BatchResult` for each as it completes. Items are
        pulled lazily; a failure is a failed result, never an exception."""
        from .batch import run_many

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
        from .batch import BatchRun

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

    # -- synchronous twins ----------------------------------------------------------------------

    def enrich(
        self,
        transcript: TranscriptInput,
        *,
        format: str | None = None,
        agent_id: str | None = None,
        conversation_id: str | None = None,
        force: bool = False,
    ) -> EnrichmentResult:
        """Synchronous :meth:`aenrich`."""
        return self._sync.run(
            self.aenrich(
                transcript,
                format=format,
                agent_id=agent_id,
                conversation_id=conversation_id,
                force=force,
            )
        )

    def fetch(self, agent_id: str, conversation_id: str) -> Transcript:
        """Synchronous :meth:`afetch`."""
        return self._sync.run(self.afetch(agent_id, conversation_id))

    def resolve(self, agent_id: str, platform_id: str) -> str:
        """Synchronous :meth:`aresolve`."""
        return self._sync.run(self.aresolve(agent_id, platform_id))

    def replay(self, *, include_failed: bool = False) -> ReplayReport:
        """Synchronous :meth:`areplay`."""
        return self._sync.run(self.areplay(include_failed=include_failed))

    def write(self, result: EnrichmentResult) -> EnrichmentResult:
        """Synchronous :meth:`awrite`."""
        return self._sync.run(self.awrite(result))

    def enrich_and_write(
        self,
        agent_id: str,
        conversation_id: str,
        transcript: TranscriptInput | None = None,
        *,
        format: str | None = None,
        force: bool = False,
    ) -> EnrichmentResult:
        """Synchronous :meth:`aenrich_and_write`."""
        return self._sync.run(
            self.aenrich_and_write(
                agent_id, conversation_id, transcript, format=format, force=force
            )
        )

    # -- lifecycle ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connections opened on the running event loop."""
        await self.llm.aclose()
        await self.chatdash.aclose()

    def close(self) -> None:
        """Close the connections of the synchronous API."""
        self._sync.close(self.aclose())

    def __enter__(self) -> Enricher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Enricher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
