"""Results: what enriching one conversation, or many, gave.

- :class:`EnrichmentResult`: one conversation's enrichment, its PUT body, tokens and cost (or,
  for a call with nothing to analyse, why it was skipped);
- :class:`BatchItem` and :class:`BatchResult`: one conversation of a batch, in and out;
  :class:`BatchTotals` sums results for progress and the closing summary;
- :class:`CostEstimate` and :class:`EstimateRow`: what a conversation should cost, before any call;
- :class:`ReplayReport`: what ``replay`` did.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .enrichment import Enrichment
from .transcript import CallMetadata
from .usage import Usage

__all__ = [
    "EnrichmentResult",
    "CostEstimate",
    "ReplayReport",
    "BatchItem",
    "BadItem",
    "BatchResult",
    "BatchTotals",
    "EstimateRow",
    "Status",
    "Stage",
]

Status = Literal["written", "enriched", "skipped", "failed"]
#: Where a failed item failed (see :func:`enrich.errors.error_class`).
Stage = Literal["input", "llm", "chatdash", "ledger", "config", "internal"]


class EnrichmentResult(BaseModel):
    """What one conversation gave: the enrichment, its cost, and what was (or would be) written.

    A conversation with nothing to analyse (fewer user turns than ``analysis.min_user_turns``:
    no answer, voicemail, a caller who never spoke) is not sent to the LLM: its result has no
    ``enrichment``, says why in ``skipped``, costs nothing, and its ``update`` is the
    ``noAnswer`` body when metadata is written and the call was not answered, else empty (nothing
    is written).
    """

    enrichment: Enrichment | None = Field(
        default=None, description="None only when the conversation was skipped"
    )
    skipped: str | None = Field(
        default=None,
        description="why the conversation was not analysed (nothing to analyse): no LLM call",
    )
    update: dict[str, Any] = Field(description="the PUT body, wire names, only the fields sent")
    withheld: dict[str, str] = Field(
        default_factory=dict,
        description="fields asked to be written but left out of the body, and why (an unknown "
        "verdict is not written as isSuccess false unless write.unknown_evaluation says so)",
    )
    usage: Usage
    attempts: int = Field(description="LLM requests made, re-asks and parts included")
    repairs: int = Field(
        default=0,
        description="answers read only once their JSON was repaired (a fence, raw line feeds "
        "in strings, chatter after the object): accepted without a re-ask",
    )
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
    """What a conversation should cost, before any LLM call (see :meth:`Enricher.estimate`).

    A conversation with nothing to analyse costs nothing: strategy ``skipped``, and why."""

    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None = Field(description="USD at list price; None: the model has no price")
    strategy: Literal["single", "map_reduce", "skipped"]
    skipped: str | None = Field(default=None, description="why it would not be analysed")


class ReplayReport(BaseModel):
    """What ``replay`` did."""

    written: int = 0
    imported: int = Field(
        default=0,
        description="results recorded from the spill file (the ledger could not "
        "take them when they were paid for)",
    )
    skipped: int = Field(default=0, description="claimed by another process at the time")
    failed: list[str] = Field(default_factory=list)
    refused_waiting: int = Field(
        default=0, description="writes ChatDash refused, left for a replay with include_failed"
    )


class BatchItem(BaseModel):
    """One conversation to enrich. Without ``transcript`` it is fetched from ChatDash."""

    agent_id: str = Field(min_length=1)
    conversation_id: str | None = Field(default=None, min_length=1)
    platform_id: str | None = Field(default=None, min_length=1)
    transcript: Any = None
    format: str | None = None
    line: int | None = Field(default=None, description="where it came from, for messages")


class BadItem(BaseModel):
    """An item that could not be read: a failed result naming its line."""

    line: int | None = None
    error: str


class BatchResult(BaseModel):
    """What happened to one item.

    ``skipped`` has two meanings, told apart by ``result``: nothing to analyse
    (``result.skipped`` says why), or already done (``result.already_written``, or ``error``
    naming the earlier line of a duplicate).
    """

    agent_id: str | None = None
    conversation_id: str | None = None
    line: int | None = None
    status: Status
    ok: bool
    result: EnrichmentResult | None = None
    error: str | None = None
    error_type: str | None = None
    stage: Stage | None = None
    usage: Usage | None = Field(
        default=None,
        description="a failed item: what its LLM attempts spent when no result was kept "
        "(an LLMError's usage); a paid result is in result",
    )
    cost: float | None = Field(default=None, description="USD of usage, from the price table")
    seconds: float = 0.0


class BatchTotals(BaseModel):
    """Running totals, for progress and the closing summary.

    ``skipped`` counts what was already done (written before, or a duplicate);
    ``nothing_to_analyse`` the skipped conversations with nothing to analyse. ``done`` is the sum
    of ``written``, ``enriched``, ``skipped``, ``nothing_to_analyse`` and ``failed``.

    The tokens and cost count every request paid for, failed conversations' too (a result paid
    for whose write or record failed, an LLM error's attempts); ``failed_requests`` and
    ``failed_cost`` are the failed conversations' share of them.
    """

    done: int = 0
    written: int = 0
    enriched: int = 0
    skipped: int = 0
    nothing_to_analyse: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    requests: int = 0
    cost: float = 0.0
    uncosted: int = 0
    failed_requests: int = 0
    failed_cost: float = 0.0

    def add(self, r: BatchResult) -> None:
        self.done += 1
        res = r.result
        if r.status == "skipped" and res is not None and res.skipped:
            self.nothing_to_analyse += 1
        else:
            setattr(self, r.status, getattr(self, r.status) + 1)
        if res is not None and not res.reused:
            usage, cost = res.usage, res.cost
        elif res is None and r.usage is not None:
            usage, cost = r.usage, r.cost
        else:
            return
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cached_tokens += usage.cached_tokens
        self.requests += usage.requests
        if r.status == "failed":
            self.failed_requests += usage.requests
            self.failed_cost += cost or 0.0
        if cost is None:
            if usage.requests or res is not None:
                self.uncosted += 1
        else:
            self.cost += cost


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
    skipped: str | None = Field(
        default=None, description="why it would not be analysed (strategy skipped, cost 0)"
    )
