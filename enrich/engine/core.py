"""The engine's core: one conversation through transcript → prompts → LLM → validated enrichment
→ ledger → ChatDash PUT.

:class:`EnricherCore` composes the adapters; it holds no global state. It is the part of
:class:`~enrich.Enricher` that deals with one conversation at a time: :meth:`~EnricherCore.enrich`
(no write) or :meth:`~EnricherCore.enrich_and_write`, their async twins, fetch, resolve, replay
and estimate. Many conversations at once are :mod:`enrich.engine.batch`'s, on top of it.

The synchronous methods run on a private event loop in a background thread
(:class:`~enrich.engine.sync.LoopThread`), so they work from a plain script and from a notebook
whose loop is already running.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal, Self

from ..chatdash import ChatDash, conversation_path
from ..config import Config, load_config
from ..errors import ChatDashError, ConfigError, LedgerError, LLMError
from ..ledger import LedgerBackend, LedgerEntry, State, default_ledger_path, open_ledger
from ..llm import LLMResult, StructuredLLM, get_counter
from ..models.enrichment import AnswerBase
from ..models.fingerprint import FINGERPRINT_VERSION, Fingerprint
from ..models.results import CostEstimate, EnrichmentResult, ReplayReport
from ..models.transcript import Transcript
from .bounds import aground, parse_bounded
from .keep import from_ledger, import_spilled, keep, paid_error
from .leases import acquire, claim_write, renewed
from .longcall import PART_SCHEMA, map_reduce, plan
from .pacing import limiter_for
from .profile import Profile, Profiles
from .skip import sent_before, skip_reason, skipped_estimate, skipped_result
from .sync import LoopThread

__all__ = ["EnricherCore", "TranscriptInput", "count_tokens"]

#: Anything :func:`~enrich.formats.parse_transcript` reads.
TranscriptInput = Transcript | str | bytes | list[Any] | dict[str, Any]


def count_tokens(text: str, config: Config) -> int:
    return get_counter(config.llm.tokenizer).count(text)


class EnricherCore:
    """Enrich conversations with one configuration, one conversation at a time.

    :class:`~enrich.Enricher` is this plus many conversations at once.
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        ledger = self.config.ledger
        self.ledger: LedgerBackend | None = (
            open_ledger(ledger.path or default_ledger_path()) if ledger.enabled else None
        )
        self.llm = StructuredLLM(self.config.llm, limiter_for(self.config.llm, self.ledger))
        self.chatdash = ChatDash(self.config.chatdash)
        self._profiles = Profiles(self.config)  # built now: a broken one fails before any call
        self._default = self._profiles.default
        #: The synchronous face: a private event loop in a daemon thread.
        self.sync = LoopThread()
        #: Results an earlier run could not record (the spill file), recorded now.
        self.imported = import_spilled(self.ledger) if self.ledger is not None else 0

    @classmethod
    def from_env(cls, config_path: str | None = None, **overrides: Any) -> Self:
        """Resolve the configuration (overrides, environment, YAML file, defaults) and build."""
        return cls(load_config(config_path, overrides or None))

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(model={self.config.llm.model!r}, mode={self.config.llm.mode!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])  # type: ignore[misc]

    # -- profiles -------------------------------------------------------------------------------

    def profile(self, agent_id: str | None = None) -> Profile:
        """The analysis set-up for the conversations of ``agent_id``: its own when the
        configuration's ``agents`` overrides it, else the default one (``analysis``)."""
        return self._profiles.get(agent_id)

    @property
    def prompts(self) -> Any:
        """The default profile's prompt templates."""
        return self._default.prompts

    @property
    def schema(self) -> dict[str, Any]:
        """The JSON schema the model is asked to follow (the default profile's)."""
        return self._default.schema

    # -- steps ----------------------------------------------------------------------------------

    def parse(
        self, transcript: TranscriptInput, *, format: str | None = None, source: str = "<input>"
    ) -> Transcript:
        """Any supported transcript, parsed; ``source`` names it in error messages. Over
        ``input.max_bytes`` (a parsed value measured as JSON), a TranscriptError."""
        return parse_bounded(
            transcript, format=format, source=source, max_bytes=self.config.input.max_bytes
        )

    def render(
        self,
        transcript: TranscriptInput,
        *,
        format: str | None = None,
        agent_id: str | None = None,
    ) -> list[dict[str, str]]:
        """The exact messages that would go to the LLM for this transcript."""
        return self.profile(agent_id).messages(self.parse(transcript, format=format))

    def fingerprint(self, transcript: Transcript, agent_id: str | None = None) -> Fingerprint:
        """What the enrichment of ``transcript`` depends on; the same fingerprint reuses the
        ledger's enrichment instead of paying again."""
        return self.profile(agent_id).fingerprint(transcript)

    def fingerprint_static(self, agent_id: str | None = None) -> tuple[str, str, str]:
        """The model, prompts and taxonomy part of every fingerprint (read once)."""
        return self.profile(agent_id).static_fingerprint()

    async def _ask(
        self, parsed: Transcript, profile: Profile
    ) -> tuple[LLMResult[AnswerBase], Literal["single", "map_reduce"], int, int]:
        """The LLM's validated answer: (LLMResult, strategy, parts, transcript tokens)."""
        the_plan = plan(parsed, profile)
        if the_plan.strategy == "single":
            answer = await self.llm.complete(
                the_plan.messages,
                output=profile.spec.output_model(),
                schema=profile.schema,
                reask=profile.prompts.reask,
                context=profile.spec.context(),
            )
            return answer, "single", 1, the_plan.transcript_tokens
        answer, parts = await map_reduce(parsed, the_plan, profile, self.llm)
        return answer, "map_reduce", parts, the_plan.transcript_tokens

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
        profile = self.profile(agent_id)
        fingerprint = profile.fingerprint(parsed)
        base = {
            "transcript_format": parsed.format,
            "turns": len(parsed.turns),
            "metadata": parsed.metadata,
            "agent_id": agent_id,
            "conversation_id": conversation_id,
        }

        async def stored() -> tuple[EnrichmentResult, LedgerEntry] | None:
            entry = await ledger.aget(agent_id, conversation_id)  # type: ignore[union-attr,arg-type]
            if entry is None or entry.fingerprint != fingerprint or entry.state == State.SKIPPED:
                return None  # (a skipped entry holds no enrichment to reuse)
            result = from_ledger(entry, **base)
            result.update = profile.update(result.enrichment, parsed)  # today's write.fields
            result.withheld = profile.spec.withheld(result.enrichment)
            return result, entry

        if ledger is not None and not force and (found := await stored()) is not None:
            return found
        if ledger is None:
            result = await self._ask_and_finish(
                parsed, profile, fingerprint, agent_id, conversation_id, state
            )
            return result, None
        # Another process (a webhook retried while the first is still running) may be paying
        # for this very enrichment: wait for its result rather than pay again.
        s = self.config.llm
        patience = s.timeout * (s.max_retries + 1) * (s.max_reasks + 1) + 60
        found = await acquire(
            ledger,
            agent_id,  # type: ignore[arg-type]
            conversation_id,  # type: ignore[arg-type]
            fingerprint.key(),
            patience=patience,
            stored=None if force else stored,
        )
        if found is not None:
            return found
        try:
            async with renewed(ledger, agent_id, conversation_id):  # type: ignore[arg-type]
                result = await self._ask_and_finish(
                    parsed, profile, fingerprint, agent_id, conversation_id, state
                )
                return result, None
        except LedgerError as exc:  # the lease's release failed too: the paid result first
            raise (paid_error(exc) or exc) from None

    async def _ask_and_finish(
        self,
        parsed: Transcript,
        profile: Profile,
        fingerprint: Fingerprint,
        agent_id: str | None,
        conversation_id: str | None,
        state: State,
    ) -> EnrichmentResult:
        try:
            answer, strategy, parts, tokens = await self._ask(parsed, profile)
        except LLMError as exc:  # what its attempts cost, for a batch's totals (.cost)
            u = exc.usage
            exc.cost = None if u is None else self.config.cost(self.config.llm.model, u)
            raise
        return await self.afinish(
            parsed,
            answer,
            agent_id,
            conversation_id,
            strategy=strategy,
            parts=parts,
            transcript_tokens=tokens,
            state=state,
            fingerprint=fingerprint,
        )

    async def afinish(
        self,
        parsed: Transcript,
        answer: LLMResult[Any],
        agent_id: str | None,
        conversation_id: str | None,
        *,
        state: State,
        strategy: Literal["single", "map_reduce"] = "single",
        parts: int = 1,
        transcript_tokens: int = 0,
        cost: float | None = None,
        fingerprint: Fingerprint | None = None,
    ) -> EnrichmentResult:
        """Turn the LLM's validated answer (of the profile's output model) into a result: the
        enrichment, its queries grounded, the PUT body; and keep it in the ledger (in
        ``state``) before anything else can go wrong. ``fingerprint``: the transcript's under
        this profile, when the caller has it already."""
        profile = self.profile(agent_id)
        enrichment = profile.spec.enrichment(answer.value)
        kept, dropped = await aground(
            enrichment.misunderstood_queries, [t.text for t in parsed.user_turns]
        )
        enrichment = enrichment.model_copy(update={"misunderstood_queries": kept})
        result = EnrichmentResult(
            enrichment=enrichment,
            update=profile.update(enrichment, parsed),
            withheld=profile.spec.withheld(enrichment),
            usage=answer.usage,
            cost=cost if cost is not None else self.config.cost(answer.model, answer.usage),
            attempts=answer.attempts,
            repairs=answer.repairs,
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
        if self.ledger is not None and agent_id and conversation_id:  # else: the spill file
            stored = {"enrichment": enrichment.model_dump(mode="json"), "dropped_queries": dropped}
            stored |= {"strategy": strategy, "parts": parts}
            fingerprint = fingerprint or profile.fingerprint(parsed)
            await keep(self.ledger, result, fingerprint, stored, state)
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
        (``force`` asks the LLM anyway). One with nothing to analyse is skipped (:meth:`askip`).
        """
        parsed = self.parse(transcript, format=format)
        skipped = await self.askip(parsed, agent_id, conversation_id, write=False)
        if skipped is not None:
            return skipped
        result, _ = await self._enrich(
            parsed, agent_id, conversation_id, force=force, state=State.ENRICHED
        )
        return result

    # -- conversations with nothing to analyse (see enrich.engine.skip) -------------------------

    def skip_reason(self, transcript: Transcript, agent_id: str | None = None) -> str | None:
        """Why ``transcript`` is not worth analysing (fewer user turns than the profile's
        ``analysis.min_user_turns``: no answer, voicemail...), or None. No LLM call is made."""
        return skip_reason(transcript, self.profile(agent_id))

    async def askip(
        self,
        parsed: Transcript,
        agent_id: str | None,
        conversation_id: str | None,
        *,
        write: bool,
        force: bool = False,
    ) -> EnrichmentResult | None:
        """The result of a conversation with nothing to analyse, kept in the ledger as
        ``skipped`` and, with ``write``, its body written (with ``write.metadata`` the call's
        platform fields and ``noAnswer``; without, none) unless ChatDash has it already
        (``force`` sends it anyway); None if the conversation is to be analysed."""
        profile = self.profile(agent_id)
        result = skipped_result(parsed, profile, agent_id, conversation_id)
        if result is None:
            return None
        if self.ledger is not None and agent_id and conversation_id:
            await self.ledger.askip(
                agent_id,
                conversation_id,
                profile.fingerprint(parsed),
                reason=result.skipped or "",
                body=result.update,
            )
        if not write or not result.update:
            return result
        if not force and await sent_before(self.ledger, result):
            return result.model_copy(update={"written": True, "already_written": True})
        return await self.awrite(result)

    async def awrite(self, result: EnrichmentResult, *, claimed: bool = False) -> EnrichmentResult:
        """PUT ``result.update`` to its conversation; returns the result marked written.

        With a ledger, the write is claimed first (unless the caller did: ``claimed``), so two
        processes never send it both: one that finds another process writing the same body
        waits, and returns that write (``already_written``) instead of sending it again. A
        write that fails stays ``pending`` (or ``failed``, when ChatDash refused it) with its
        error, for ``enrich replay``.
        """
        agent_id, conversation_id = result.agent_id or "", result.conversation_id or ""
        if self.ledger is not None and not claimed and agent_id and conversation_id:
            patience = self.ledger.lease_seconds + self.config.chatdash.max_total_seconds
            done = await claim_write(
                self.ledger, agent_id, conversation_id, result.update, patience=patience
            )
            if done is not None:
                await self.ledger.anote(
                    agent_id, conversation_id, "skipped", {"why": "written by another process"}
                )
                return result.model_copy(update={"written": True, "already_written": True})
        try:
            await self.chatdash.update_conversation(agent_id, conversation_id, result.update)
        except ChatDashError as exc:
            if self.ledger is not None:
                await self.ledger.awrite_failed(
                    agent_id, conversation_id, str(exc), permanent=exc.permanent
                )
            exc.result = result  # paid for: hand it back with the error
            raise
        if self.ledger is not None:
            await self.ledger.awritten(agent_id, conversation_id, result.update)
        return result.model_copy(update={"written": True})

    async def afetch(self, agent_id: str, conversation_id: str) -> Transcript:
        """The conversation's transcript, from ChatDash's messages."""
        messages = await self.chatdash.get_messages(agent_id, conversation_id)
        source = f"messages of conversation {conversation_id}"
        return parse_bounded(
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
        A conversation with nothing to analyse is skipped, no LLM call (:meth:`askip`).
        """
        conversation_path(agent_id, conversation_id)  # bad ids fail before anything is paid
        self.chatdash.check()  # a write that cannot happen is known before the LLM is paid
        if transcript is None:
            if skip_written and not force:
                done = await self.awritten_result(agent_id, conversation_id)
                if done is not None:
                    return done
            parsed = await self.afetch(agent_id, conversation_id)
        else:
            parsed = self.parse(transcript, format=format)
        skipped = await self.askip(parsed, agent_id, conversation_id, write=True, force=force)
        if skipped is not None:
            return skipped
        result, entry = await self._enrich(
            parsed, agent_id, conversation_id, force=force, state=State.PENDING
        )
        if entry is not None and self.ledger is not None:
            if entry.state == State.WRITTEN and entry.body == result.update:
                await self.ledger.anote(
                    agent_id, conversation_id, "skipped", {"why": "already written"}
                )
                return result.model_copy(update={"written": True, "already_written": True})
            await self.ledger.aqueue(agent_id, conversation_id, result.update, "reused")
        return await self.awrite(result)

    async def awritten_result(self, agent_id: str, conversation_id: str) -> EnrichmentResult | None:
        """The ledger's result for a conversation written with the current model, prompts and
        taxonomy: a batch that resumes skips it without even fetching its transcript."""
        if self.ledger is None:
            return None
        entry = await self.ledger.aget(agent_id, conversation_id)
        if entry is None or entry.state != State.WRITTEN or entry.version != FINGERPRINT_VERSION:
            return None
        current = self.fingerprint_static(agent_id)
        if (entry.model, entry.prompt_hash, entry.taxonomy_hash) != current:
            return None
        await self.ledger.anote(agent_id, conversation_id, "skipped", {"why": "already written"})
        result = from_ledger(entry, written=True, already_written=True)
        result.withheld = self.profile(agent_id).spec.withheld(result.enrichment)
        return result

    async def areplay(self, *, include_failed: bool = False) -> ReplayReport:
        """Send every ``pending`` write again (and ``failed`` ones with ``include_failed``);
        no LLM call. Safe to run twice, or beside a batch: each write is claimed first."""
        if self.ledger is None:
            raise ConfigError("replay needs the ledger (it is disabled: ledger.enabled)")
        self.chatdash.check()
        states = [State.PENDING] + ([State.FAILED] if include_failed else [])
        imported = self.imported + await asyncio.to_thread(import_spilled, self.ledger)
        report, self.imported = ReplayReport(imported=imported), 0
        if not include_failed:
            report.refused_waiting = len(await self.ledger.aentries(State.FAILED))
        for state in states:
            for entry in await self.ledger.aentries(state):
                if not await self.ledger.aclaim(entry.agent_id, entry.conversation_id):
                    report.skipped += 1
                    continue
                try:
                    await self.awrite(from_ledger(entry), claimed=True)
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
        agent_id: str | None = None,
    ) -> CostEstimate:
        """What enriching ``transcript`` should cost, without calling the LLM: its requests and
        prompt tokens as planned (offline count), ``completion_tokens`` per answer, list price."""
        profile = self.profile(agent_id)
        parsed = self.parse(transcript, format=format)
        if (reason := skip_reason(parsed, profile)) is not None:
            return skipped_estimate(reason)  # nothing to analyse: no request, nothing to pay
        p = plan(parsed, profile)
        counter_schema = json.dumps(profile.schema)
        if p.strategy == "single":
            prompt = sum(count_tokens(m["content"], self.config) for m in p.messages)
            prompt += count_tokens(counter_schema, self.config)
            requests = 1
        else:
            prompt = 0
            for i, part in enumerate(p.parts, 1):
                messages = profile.prompts.part_messages(
                    part,
                    profile.analysis,
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
        return self.sync.run(
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
        return self.sync.run(self.afetch(agent_id, conversation_id))

    def resolve(self, agent_id: str, platform_id: str) -> str:
        """Synchronous :meth:`aresolve`."""
        return self.sync.run(self.aresolve(agent_id, platform_id))

    def replay(self, *, include_failed: bool = False) -> ReplayReport:
        """Synchronous :meth:`areplay`."""
        return self.sync.run(self.areplay(include_failed=include_failed))

    def write(self, result: EnrichmentResult) -> EnrichmentResult:
        """Synchronous :meth:`awrite`."""
        return self.sync.run(self.awrite(result))

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
        return self.sync.run(
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
        self.sync.close(self.aclose())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
