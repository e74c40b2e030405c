"""Running an eval: every variant over the same items, through the engine and its ledger.

A :class:`Variant` is a configuration (a YAML file, a model, a prompts folder, or a mix of
them). Each item is enriched with :meth:`Enricher.aenrich <enrich.Enricher.aenrich>` under the
ledger key ``(agent, "eval-<setup>-<item id>")``, where ``<setup>`` digests what the answer
depends on: the model, the prompts and analysis, the taxonomy (the fingerprint's own parts) and
the LLM settings the fingerprint leaves out (server, mode, temperature, token limits, the system
role). So an
answer is paid for once per setup: running the eval again, or another eval with a variant set
up the same way, reuses it from the ledger; changing a variant's prompt pays for that variant
only; and variants never overwrite each other's answers. No eval writes to ChatDash.

Variants run one after the other, ``concurrency`` items at a time; :func:`evaluate` returns the
:class:`~enrich.evaluation.scores.EvalReport` of them all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..config import Config
from ..engine import Enricher
from ..errors import (
    ConfigError,
    EnrichError,
    LLMError,
    LLMRefusalError,
    LLMTruncatedError,
    LLMValidationError,
    TemplateError,
)
from ..models.fingerprint import digest
from ..models.results import EnrichmentResult
from ..models.usage import Usage
from .items import LabeledItem
from .scores import EvalReport, Outcome, score

__all__ = ["Variant", "EVAL_AGENT", "evaluate", "arun_variant", "setup_key"]

#: The agent id of an eval's answers in the ledger (unless the eval names an agent's profile).
EVAL_AGENT = "enrich-eval"

OnOutcome = Callable[[str, Outcome], None]

#: The model's own failures: scored as wrong answers (the server's failures are not scored).
_NO_VALID_ANSWER = (LLMValidationError, LLMRefusalError, LLMTruncatedError)


@dataclass
class Variant:
    """One column of an eval: a name for people and the configuration it runs with."""

    name: str
    config: Config


def setup_key(enricher: Enricher, agent_id: str) -> str:
    """A short digest of everything a variant's answer depends on but the transcript."""
    s = enricher.config.llm
    llm = [s.base_url, s.mode, s.temperature, s.max_tokens, s.context_tokens]
    if not s.system_role:  # (only then: the keys of setups with a system role stay as they were)
        llm.append("no-system-role")
    return digest([list(enricher.fingerprint_static(agent_id)), llm])[:12]


async def _outcome(
    enricher: Enricher, item: LabeledItem, agent_id: str, conversation_id: str, force: bool
) -> Outcome:
    started = time.monotonic()
    try:
        result = await enricher.aenrich(
            item.transcript, agent_id=agent_id, conversation_id=conversation_id, force=force
        )
    except LLMError as exc:  # what the model said, or the server's failure; paid either way
        cost = getattr(exc, "cost", None)
        return Outcome(
            item_id=item.id,
            status="invalid" if isinstance(exc, _NO_VALID_ANSWER) else "failed",
            error=str(exc),
            exc=exc,
            usage=exc.usage or Usage(),
            cost=cost,
            paid=cost or 0.0,
        )
    except (ConfigError, TemplateError):
        raise  # the set-up itself is wrong: every item would fail the same way
    except EnrichError as exc:
        paid = getattr(exc, "result", None)  # a ledger that could not keep a paid answer
        if not isinstance(paid, EnrichmentResult):
            return Outcome(item_id=item.id, status="failed", error=str(exc), exc=exc)
        result = paid
    seconds = time.monotonic() - started
    if result.skipped:
        return Outcome(item_id=item.id, status="skipped", error=result.skipped)
    expected = 1 if result.strategy == "single" else result.parts + 1
    if result.reused:
        entry = await enricher.ledger.aget(agent_id, conversation_id) if enricher.ledger else None
        return Outcome(
            item_id=item.id,
            status="reused",
            enrichment=result.enrichment,
            usage=entry.usage if entry is not None else result.usage,
            cost=entry.cost if entry is not None else None,
            expected_requests=expected,
        )
    return Outcome(
        item_id=item.id,
        status="answered",
        enrichment=result.enrichment,
        usage=result.usage,
        cost=result.cost,
        paid=result.cost or 0.0,
        seconds=seconds,
        repairs=result.repairs,
        expected_requests=expected,
    )


async def arun_variant(
    enricher: Enricher,
    name: str,
    items: Sequence[LabeledItem],
    *,
    concurrency: int = 8,
    force: bool = False,
    agent_id: str = EVAL_AGENT,
    on_outcome: OnOutcome | None = None,
) -> list[Outcome]:
    """Each item's :class:`Outcome` with ``enricher`` (the variant ``name``), in the items'
    order, ``concurrency`` at a time."""
    limit = asyncio.Semaphore(max(1, concurrency))
    key = setup_key(enricher, agent_id)

    async def one(item: LabeledItem) -> Outcome:
        async with limit:
            outcome = await _outcome(enricher, item, agent_id, f"eval-{key}-{item.id}", force)
        if on_outcome is not None:
            on_outcome(name, outcome)
        return outcome

    return list(await asyncio.gather(*(one(item) for item in items)))


def evaluate(
    variants: Sequence[Variant],
    items: Sequence[LabeledItem],
    *,
    source: str,
    labels: dict[str, str],
    concurrency: int = 8,
    force: bool = False,
    agent_id: str = EVAL_AGENT,
    seed: int = 0,
    rounds: int = 1000,
    on_outcome: OnOutcome | None = None,
) -> EvalReport:
    """Run every variant over ``items``, one after the other, and score them side by side
    (``seed`` and ``rounds``: the bootstrap's). Each variant runs on its :class:`Enricher`'s own
    event loop thread, so this works from a script and from a notebook alike; ``on_outcome`` is
    called there, as each item is done."""
    scores = []
    for variant in variants:
        enricher = Enricher(variant.config)
        try:
            outcomes = enricher.sync.run(
                arun_variant(
                    enricher,
                    variant.name,
                    items,
                    concurrency=concurrency,
                    force=force,
                    agent_id=agent_id,
                    on_outcome=on_outcome,
                )
            )
        finally:
            enricher.close()
            if enricher.ledger is not None:
                enricher.ledger.close()
        failures = [o.exc for o in outcomes if o.status == "failed" and o.exc is not None]
        if failures and not any(o.status in ("answered", "reused", "invalid") for o in outcomes):
            raise failures[0]  # nothing to score: the server, most likely, is the problem
        cfg = variant.config
        fields = cfg.for_agent(agent_id).spec().fields
        scores.append(
            score(variant.name, cfg.llm.model, items, outcomes, fields, seed=seed, rounds=rounds)
        )
    return EvalReport(
        source=source,
        items=len(items),
        seed=seed,
        rounds=rounds,
        labels=labels,
        variants=scores,
    )
