"""Analytics over many enrichments: topics, success rate, misunderstood queries, tokens, cost.

:func:`summarize` takes flat rows (from a results file, :func:`enrich.resultfiles.read_results`, or
from the ledger, :func:`rows_from_ledger`) and returns a :class:`Report`.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from typing import Any

from pydantic import BaseModel, Field

from .models.spec import AnalysisSpec
from .resultfiles import COST_DIGITS

__all__ = ["Report", "FieldSummary", "CriterionSummary", "summarize", "rows_from_ledger"]


class FieldSummary(BaseModel):
    """One custom field over many conversations: how often it was answered (not null), the
    counts of its values (enum, boolean, the items of a list), the mean and median (numbers)."""

    name: str
    type: str
    answered: int
    counts: list[tuple[str, int]] = Field(default_factory=list)
    mean: float | None = None
    median: float | None = None


class CriterionSummary(BaseModel):
    """One named criterion's verdicts over many conversations."""

    name: str
    success: int
    failure: int
    unknown: int


class Report(BaseModel):
    conversations: int
    enriched: int
    failed: int
    skipped: int = Field(
        default=0, description="conversations with nothing to analyse (no LLM call, no cost)"
    )
    success_rate: float | None
    topics: list[tuple[str, int]]
    subtopics: list[tuple[str, str, int]]
    misunderstood: list[tuple[str, int]]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    requests: int
    cost: float
    uncosted: int
    fields: list[FieldSummary] = Field(default_factory=list)
    criteria: list[CriterionSummary] = Field(default_factory=list)


def _norm(question: str) -> str:
    return re.sub(r"[^\w ]+", "", " ".join(question.casefold().split()))


_TRUE = {True: True, False: False, "True": True, "False": False, "true": True, "false": False}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _field_summary(field: Any, values: list[Any], top: int) -> FieldSummary:
    """``values``: the field's column over the enriched rows (typed, or text from a CSV)."""
    present = [v for v in values if v not in (None, "")]
    out = FieldSummary(name=field.name, type=field.type, answered=len(present))
    if field.type in ("number", "integer"):
        numbers = [n for n in map(_number, present) if n is not None]
        if numbers:
            out.mean = statistics.fmean(numbers)
            out.median = statistics.median(numbers)
    elif field.type == "boolean":
        flags = Counter(str(_TRUE.get(v, v)).lower() for v in present)
        out.counts = flags.most_common()
    elif field.type == "enum":
        out.counts = Counter(str(v) for v in present).most_common()
    elif field.type == "list":
        items = Counter(i.strip() for v in present for i in str(v).split(" | ") if i.strip())
        out.counts = items.most_common(top)
    return out


def summarize(
    rows: list[dict[str, Any]], *, top: int = 10, spec: AnalysisSpec | None = None
) -> Report:
    """The report over flat rows; ``spec`` (default: the default analysis) names the custom
    fields and criteria to summarise."""
    spec = spec or AnalysisSpec()
    enriched = [r for r in rows if r.get("topic")]
    topics = Counter(r["topic"] for r in enriched)
    subtopics = Counter((r["topic"], r.get("subtopic") or "") for r in enriched)
    verdicts = [r["is_success"] for r in enriched if r.get("is_success") is not None]
    queries: Counter[str] = Counter()
    shown: dict[str, str] = {}
    for r in enriched:
        for q in (r.get("misunderstood_queries") or "").split(" | "):
            if q.strip():
                key = _norm(q)
                queries[key] += 1
                shown.setdefault(key, q.strip())
    costs = [r.get("cost") for r in enriched if not r.get("reused")]
    return Report(
        conversations=len(rows),
        enriched=len(enriched),
        failed=sum(1 for r in rows if r.get("status") == "failed"),
        skipped=sum(1 for r in rows if r.get("status") == "skipped" and r.get("skip_reason")),
        success_rate=(sum(map(bool, verdicts)) / len(verdicts)) if verdicts else None,
        topics=topics.most_common(),
        subtopics=[(t, s, n) for (t, s), n in subtopics.most_common(top * 3)],
        misunderstood=[(shown[k], n) for k, n in queries.most_common(top)],
        prompt_tokens=sum(
            int(r.get("prompt_tokens") or 0) for r in enriched if not r.get("reused")
        ),
        completion_tokens=sum(
            int(r.get("completion_tokens") or 0) for r in enriched if not r.get("reused")
        ),
        cached_tokens=sum(
            int(r.get("cached_tokens") or 0) for r in enriched if not r.get("reused")
        ),
        requests=sum(int(r.get("requests") or 0) for r in enriched if not r.get("reused")),
        # rounded as results files round each cost: no float noise in what is shown
        cost=round(sum(c for c in costs if c is not None), COST_DIGITS),
        uncosted=sum(1 for c in costs if c is None),
        fields=[_field_summary(f, [r.get(f.name) for r in enriched], top) for f in spec.fields],
        criteria=[
            CriterionSummary(
                name=c.name,
                **{
                    v: sum(1 for r in enriched if r.get(f"criterion_{c.name}") == v)
                    for v in ("success", "failure", "unknown")
                },
            )
            for c in spec.criteria
        ],
    )


def rows_from_ledger(ledger: Any, spec: AnalysisSpec | None = None) -> list[dict[str, Any]]:
    """Flat rows (the columns of :func:`enrich.resultfiles.columns`) for every ledger entry."""
    spec = spec or AnalysisSpec()
    rows = []
    for entry in ledger.entries():
        rows.append(
            {
                "agent_id": entry.agent_id,
                "conversation_id": entry.conversation_id,
                "status": entry.state.value,
                "error": entry.last_error,
                "skip_reason": entry.enrichment.get("skipped"),
                **spec.flat(entry.enrichment.get("enrichment") or None),
                "model": entry.model,
                "prompt_tokens": entry.usage.prompt_tokens,
                "completion_tokens": entry.usage.completion_tokens,
                "cached_tokens": entry.usage.cached_tokens,
                "requests": entry.usage.requests,
                "cost": entry.cost,
                "reused": False,
            }
        )
    return rows
