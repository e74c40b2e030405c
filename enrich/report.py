"""Analytics over many enrichments: topics, success rate, misunderstood queries, tokens, cost.

:func:`summarize` takes flat rows (from a results file, :func:`enrich.resultfiles.read_results`, or
from the ledger, :func:`rows_from_ledger`) and returns a :class:`Report`.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from pydantic import BaseModel

from .models.spec import AnalysisSpec

__all__ = ["Report", "summarize", "rows_from_ledger"]


class Report(BaseModel):
    conversations: int
    enriched: int
    failed: int
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


def _norm(question: str) -> str:
    return re.sub(r"[^\w ]+", "", " ".join(question.casefold().split()))


def summarize(rows: list[dict[str, Any]], *, top: int = 10) -> Report:
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
        cost=sum(c for c in costs if c is not None),
        uncosted=sum(1 for c in costs if c is None),
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
