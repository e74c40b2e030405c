"""Calls too long for one request: plan against the context budget, then map-reduce.

:func:`plan` counts the transcript's tokens offline (:mod:`enrich.tokens`) against what the
model's context window leaves once the instructions, the schema, the answer and its re-asks are
reserved. Within budget the call is enriched in one request. Over budget, the dialogue is cut at
turn boundaries into balanced parts (a single turn longer than a part is cut between words, so
nothing in the middle is lost); :func:`map_reduce` takes notes on every part (``map.j2``,
concurrently), merges notes while they are still too long (the same template, given notes), and
asks for the enrichment of the whole call from the notes and its last turns (``reduce.j2``).
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from ..errors import ConfigError, LLMError
from ..llm import LLMResult, StructuredLLM, get_counter
from ..models.enrichment import AnswerBase, PartNotes, strict_schema
from ..models.transcript import ROLE_LABELS, Transcript, Turn
from ..models.usage import Usage
from ..prompts import Prompts
from .profile import Profile

__all__ = ["Plan", "plan", "map_reduce", "PART_SCHEMA"]

PART_SCHEMA = strict_schema(PartNotes)
#: The estimate errs high at the median, but not always: budgets keep this margin on top.
ESTIMATE_MARGIN = 1.15
#: The verbatim ending shown to the final call: at most this many tokens, and a fifth of its budget.
ENDING_TOKENS = 1500
#: The smallest part of a transcript worth a request of its own, in tokens.
MIN_PART_TOKENS = 256


@dataclass
class Plan:
    """How one transcript will be sent: in one request, or in ``parts``."""

    strategy: Literal["single", "map_reduce"]
    transcript_tokens: int
    budget: int
    parts: list[list[Turn]] = field(default_factory=list)
    part_budget: int = 0
    messages: list[dict[str, str]] = field(default_factory=list)  # for "single"


class _Budget:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.settings = profile.llm
        self.prompts = profile.prompts
        self.schema = profile.schema
        self.counter = get_counter(profile.llm.tokenizer)
        self.margin = ESTIMATE_MARGIN if self.counter.name == "estimate" else 1.0

    def count(self, text: str) -> int:
        return math.ceil(self.counter.count(text) * self.margin)

    def left(self, system_text: str, schema: dict[str, Any], max_tokens: int | None = None) -> int:
        """Tokens left for the user message under this system prompt and schema (with
        ``max_tokens`` for the answer, default ``llm.max_tokens``)."""
        s = self.settings
        answer = s.max_tokens if max_tokens is None else max_tokens
        # the answer, then for each re-ask the answer sent back (rarely near max_tokens) and
        # the errors
        reserve = answer + s.max_reasks * (min(answer, 1000) + 300) + 64
        schema_json = self.profile.schema_json if schema is self.schema else json.dumps(schema)
        overhead = _cached_count(self.counter, self.margin, system_text) + _cached_count(
            self.counter, self.margin, schema_json
        )
        return s.context_tokens - reserve - overhead

    def turn_cost(self, turn: Turn) -> int:
        return self.count(f"{ROLE_LABELS[turn.role]}: {turn.text}") + 2

    def context(self, **extra: Any) -> dict[str, Any]:
        return self.profile.context(**extra)


@lru_cache(maxsize=64)
def _cached_count(counter: Any, margin: float, text: str) -> int:
    """The system prompt and the schema are the same for every conversation: count them once."""
    return math.ceil(counter.count(text) * margin)


def plan(transcript: Transcript, profile: Profile) -> Plan:
    """Decide whether ``transcript`` fits one request under ``profile``; if not, cut it into
    parts."""
    b = _Budget(profile)
    prompts, schema = profile.prompts, profile.schema
    context = b.context(transcript=transcript)
    system = profile.system(context)
    user = prompts.render("user.j2", **context)
    single = b.left(system, schema)
    tokens = b.count(user)
    if tokens <= single:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return Plan("single", tokens, single, messages=messages)

    part_context = b.context(part={"index": 1, "count": 1})
    map_prompt = prompts.render("map.j2", **part_context)
    part_budget = b.left(map_prompt, PART_SCHEMA) - 64
    if part_budget < MIN_PART_TOKENS:
        raise ConfigError(_no_room(b, map_prompt))
    total = sum(b.turn_cost(t) for t in transcript.dialogue)
    # balanced parts, with a little slack so that packing whole turns needs no extra part
    limit = min(part_budget, math.ceil(total / math.ceil(total / part_budget) * 1.05))
    return Plan("map_reduce", tokens, single, _pack(transcript.dialogue, limit, b), part_budget)


def _no_room(b: _Budget, map_prompt: str) -> str:
    """The one line that says what to set: the largest ``llm.max_tokens`` that leaves a part
    room, or, when none does, that the context is too small."""
    llm = b.settings
    head = (
        f"llm.context_tokens={llm.context_tokens} leaves no room for a part of the transcript "
        f"once the prompts, the answer (llm.max_tokens={llm.max_tokens}) and its "
        f"{llm.max_reasks} re-asks (llm.max_reasks) are reserved"
    )
    if b.left(map_prompt, PART_SCHEMA, 16) - 64 < MIN_PART_TOKENS:
        return f"{head}: raise context_tokens, or lower max_reasks"
    low, high = 16, llm.max_tokens  # low fits, high does not
    while high - low > 1:
        mid = (low + high) // 2
        if b.left(map_prompt, PART_SCHEMA, mid) - 64 >= MIN_PART_TOKENS:
            low = mid
        else:
            high = mid
    return (
        f"{head}: with context_tokens {llm.context_tokens}, set llm.max_tokens to at most {low} "
        "(or leave it unset), or raise context_tokens"
    )


def _pack(turns: list[Turn], limit: int, b: _Budget) -> list[list[Turn]]:
    """Consecutive turns in parts of at most ``limit`` tokens. A turn that does not fit is cut
    between words (a word too long for half a part, a turn with no spaces, is cut between
    characters): its first piece fills the current part, the rest start new ones."""
    parts: list[list[Turn]] = [[]]
    used = 0
    for turn in turns:
        cost = b.turn_cost(turn)
        if used + cost <= limit:
            parts[-1].append(turn)
            used += cost
            continue
        if cost <= limit:
            parts.append([turn])
            used = cost
            continue
        label_cost = b.turn_cost(turn.model_copy(update={"text": ""}))
        full = limit - label_cost
        pieces = [p for word in turn.text.split() for p in _cut(word, full // 2, b)]
        i = 0
        while i < len(pieces):
            room = limit - used - label_cost
            if room < 32 or pieces[i][2] > room:
                parts.append([])
                used, room = 0, full
            start, taken = i, 0
            while i < len(pieces) and (i == start or taken + pieces[i][2] <= room):
                taken += pieces[i][2]
                i += 1
            text = "".join(
                (sep if k > start else "") + piece
                for k, (sep, piece, _) in enumerate(pieces[start:i], start)
            )
            parts[-1].append(turn.model_copy(update={"text": text}))
            used += taken + label_cost
    return [p for p in parts if p]


def _cut(word: str, most: int, b: _Budget) -> list[tuple[str, str, int]]:
    """``word`` as ``(separator before it, piece, cost)`` pieces of at most ``most`` tokens: the
    word itself when it fits, else consecutive runs of its characters (joined again with no
    separator)."""
    if len(word) <= most and (cost := b.count(word) + 1) <= most:
        return [(" ", word, cost)]
    pieces: list[tuple[str, str, int]] = []
    at = 0
    while at < len(word):
        size = max(1, most)
        while (cost := b.count(word[at : at + size]) + 1) > most and size > 1:
            size //= 2
        pieces.append((" " if at == 0 else "", word[at : at + size], cost))
        at += size
    return pieces


class _Spend:
    """Usage, attempts, repairs and raw answers over every call of one map-reduce."""

    def __init__(self) -> None:
        self.usage = Usage()
        self.attempts = 0
        self.repairs = 0
        self.raw: list[str] = []

    def add(self, result: LLMResult[Any]) -> Any:
        self.usage = self.usage + result.usage
        self.attempts += result.attempts
        self.repairs += result.repairs
        self.raw += result.raw_outputs
        return result.value

    def fail(self, exc: LLMError) -> LLMError:
        exc.usage = self.usage + (exc.usage or Usage())
        exc.attempts += self.attempts
        exc.raw_outputs = self.raw + exc.raw_outputs
        return exc


async def map_reduce(
    transcript: Transcript, the_plan: Plan, profile: Profile, llm: StructuredLLM
) -> tuple[LLMResult[AnswerBase], int]:
    """Enrich a long call from notes on its parts; returns the final result (its usage and
    attempts summed over every call) and the number of parts."""
    b = _Budget(profile)
    prompts, schema, analysis = profile.prompts, profile.schema, profile.analysis
    spend = _Spend()
    mode = profile.llm.mode
    limit = asyncio.Semaphore(profile.llm.part_concurrency)

    async def notes_for(index: int, count: int, turns=None, notes=None) -> PartNotes:
        messages = prompts.part_messages(
            turns,
            analysis,
            schema=PART_SCHEMA,
            mode=mode,
            index=index,
            count=count,
            notes=notes,
        )
        async with limit:
            result = await llm.complete(
                messages, output=PartNotes, schema=PART_SCHEMA, reask=prompts.reask
            )
        return spend.add(result)

    async def gather(calls: list[Any]) -> list[PartNotes]:
        """All the calls' notes, in order; on the first failure the rest are cancelled, so
        nothing more is paid for a call that cannot be enriched."""
        tasks = [asyncio.ensure_future(c) for c in calls]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    try:
        count = len(the_plan.parts)
        notes = await gather(
            [notes_for(i + 1, count, turns=part) for i, part in enumerate(the_plan.parts)]
        )
        ending_budget = min(ENDING_TOKENS, the_plan.budget // 5)
        ending = _ending(transcript.dialogue, ending_budget, b)
        while True:
            messages = prompts.reduce_messages(
                notes, ending, analysis, schema=schema, mode=mode, spec=profile.spec
            )
            if b.count(messages[1]["content"]) <= the_plan.budget:
                break
            if ending:
                ending = []
                continue
            if len(notes) == 1:
                break  # one note over budget: send it and let the server say so
            groups = _group(notes, the_plan.part_budget, b, prompts)
            notes = await gather(
                [notes_for(i + 1, len(groups), notes=g) for i, g in enumerate(groups)]
            )
        final = await llm.complete(
            messages,
            output=profile.spec.output_model(),
            schema=schema,
            reask=prompts.reask,
            context=profile.spec.context(),
        )
        value = spend.add(final)
    except LLMError as exc:
        raise spend.fail(exc) from None
    result = LLMResult(
        value=value,
        usage=spend.usage,
        attempts=spend.attempts,
        raw_outputs=spend.raw,
        model=final.model,
        repairs=spend.repairs,
    )
    return result, len(the_plan.parts)


def _ending(dialogue: list[Turn], budget: int, b: _Budget) -> list[Turn]:
    out: list[Turn] = []
    used = 0
    for turn in reversed(dialogue):
        cost = b.turn_cost(turn)
        if used + cost > budget:
            break
        out.append(turn)
        used += cost
    return out[::-1]


def _group(
    notes: list[PartNotes], budget: int, b: _Budget, prompts: Prompts
) -> list[list[PartNotes]]:
    """Consecutive groups of notes that fit ``budget``; at least pairs, so merging shrinks."""
    groups: list[list[PartNotes]] = [[]]
    for note in notes:
        candidate = groups[-1] + [note]
        text = prompts.render("reduce.j2", parts=[n.model_dump() for n in candidate], last_turns=[])
        if len(groups[-1]) >= 2 and b.count(text) > budget:
            groups.append([note])
        else:
            groups[-1] = candidate
    return groups
