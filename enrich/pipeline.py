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
import threading
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from .config import Config, load_config
from .errors import ChatDashError
from .schema import Enrichment, build_update, ground_queries, output_schema
from .transcript import CallMetadata, Transcript, parse_transcript
from .usage import Usage

__all__ = ["Enricher", "EnrichmentResult", "TranscriptInput"]

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
    agent_id: str | None = None
    conversation_id: str | None = None
    written: bool = False


class _LoopThread:
    """A private event loop in a daemon thread, for the synchronous API."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name="enrich-loop", daemon=True
                )
                self._thread.start()
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def close(self, cleanup: Coroutine[Any, Any, Any]) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None:
            cleanup.close()
            return
        try:
            asyncio.run_coroutine_threadsafe(cleanup, loop).result(timeout=10)
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
        self.llm = StructuredLLM(self.config.llm)
        self.chatdash = ChatDash(self.config.chatdash)
        self._schema = output_schema(self.config.analysis.taxonomy)
        self._sync = _LoopThread()

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

    def parse(self, transcript: TranscriptInput, *, format: str | None = None) -> Transcript:
        return parse_transcript(transcript, format=format, max_bytes=self.config.input.max_bytes)

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

    async def aenrich(
        self,
        transcript: TranscriptInput,
        *,
        format: str | None = None,
        agent_id: str | None = None,
        conversation_id: str | None = None,
    ) -> EnrichmentResult:
        """Enrich one transcript; nothing is written."""
        from .longcall import map_reduce, plan

        parsed = self.parse(transcript, format=format)
        the_plan = plan(parsed, self.config, self.prompts, self._schema)
        parts = 1
        if the_plan.strategy == "single":
            messages = self.prompts.messages(
                parsed, self.config.analysis, schema=self._schema, mode=self.config.llm.mode
            )
            answer = await self.llm.complete(
                messages,
                output=Enrichment,
                schema=self._schema,
                reask=self.prompts.reask,
                context={"taxonomy": self.config.analysis.taxonomy},
            )
        else:
            answer, parts = await map_reduce(
                parsed, the_plan, self.config, self.prompts, self.llm, self._schema
            )
        kept, dropped = ground_queries(
            answer.value.misunderstood_queries, [t.text for t in parsed.user_turns]
        )
        enrichment = answer.value.model_copy(update={"misunderstood_queries": kept})
        metadata = parsed.metadata if self.config.write.metadata else None
        update = build_update(enrichment, self.config.write.fields, metadata).body()
        return EnrichmentResult(
            enrichment=enrichment,
            update=update,
            usage=answer.usage,
            attempts=answer.attempts,
            model=answer.model,
            dropped_queries=dropped,
            transcript_format=parsed.format,
            turns=len(parsed.turns),
            strategy=the_plan.strategy,
            parts=parts,
            transcript_tokens=the_plan.transcript_tokens,
            metadata=parsed.metadata,
            agent_id=agent_id,
            conversation_id=conversation_id,
        )

    async def awrite(self, result: EnrichmentResult) -> EnrichmentResult:
        """PUT ``result.update`` to its conversation; returns the result marked written."""
        try:
            await self.chatdash.update_conversation(
                result.agent_id or "", result.conversation_id or "", result.update
            )
        except ChatDashError as exc:
            exc.result = result  # paid for: hand it back with the error
            raise
        return result.model_copy(update={"written": True})

    async def aenrich_and_write(
        self,
        agent_id: str,
        conversation_id: str,
        transcript: TranscriptInput,
        *,
        format: str | None = None,
    ) -> EnrichmentResult:
        """Enrich one transcript and write the result to its ChatDash conversation."""
        from .chatdash import conversation_path

        conversation_path(agent_id, conversation_id)  # bad ids fail before anything is paid
        parsed = self.parse(transcript, format=format)
        self.chatdash.check()  # a write that cannot happen is known before the LLM is paid
        result = await self.aenrich(parsed, agent_id=agent_id, conversation_id=conversation_id)
        return await self.awrite(result)

    # -- synchronous twins ----------------------------------------------------------------------

    def enrich(self, transcript: TranscriptInput, *, format: str | None = None) -> EnrichmentResult:
        """Synchronous :meth:`aenrich`."""
        return self._sync.run(self.aenrich(transcript, format=format))

    def write(self, result: EnrichmentResult) -> EnrichmentResult:
        """Synchronous :meth:`awrite`."""
        return self._sync.run(self.awrite(result))

    def enrich_and_write(
        self,
        agent_id: str,
        conversation_id: str,
        transcript: TranscriptInput,
        *,
        format: str | None = None,
    ) -> EnrichmentResult:
        """Synchronous :meth:`aenrich_and_write`."""
        return self._sync.run(
            self.aenrich_and_write(agent_id, conversation_id, transcript, format=format)
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
