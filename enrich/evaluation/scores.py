"""What an eval found: each variant's figures against the labels, and what its answers cost.

:func:`score` turns one variant's :class:`Outcome` per item into :class:`VariantScores`:

- the **figures** (each a :class:`Figure`: the value, its 95% bootstrap interval, and how many
  items it is over): topic and subtopic accuracy and macro-F1, success accuracy and Cohen's
  kappa, summary ROUGE-L F1 (the best reference), misunderstood-query precision and recall, and
  the accuracy of every ``enum`` or ``boolean`` field the labels name. A figure is over the
  items that carry its label; an item whose answer stayed invalid (or was refused, or cut off)
  counts as answered wrong; an item that failed for another reason (the server unreachable...)
  or had nothing to analyse is not scored;
- the **confusion matrices** (topic, subtopic, success) and the per-topic accuracy;
- the **operations**: answers reused from the ledger, invalid answers, answers that needed a
  re-ask, answers read after a JSON repair, tokens and cost of the answers (a reused answer's
  as the ledger recorded them; ``paid`` is what this run spent), and the latency of the answers
  asked this run.

:class:`EvalReport` holds every variant, side by side; :meth:`EvalReport.gate` checks
``--min`` bars.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..models.enrichment import Enrichment
from ..models.fields import CustomField
from ..models.usage import Usage
from .items import Gold, LabeledItem, norm
from .metrics import (
    accuracy,
    bootstrap,
    cohen_kappa,
    confusion,
    macro_f1,
    match_queries,
    precision_recall,
    quantile,
    rouge_l,
)

__all__ = [
    "Outcome",
    "Figure",
    "Confusion",
    "TopicBar",
    "Operations",
    "VariantScores",
    "EvalReport",
    "HEADLINE",
    "score",
    "field_key",
]

Status = Literal["answered", "reused", "invalid", "failed", "skipped"]

#: The headline figures, in the order they are shown, and their names for people.
HEADLINE: dict[str, str] = {
    "topic_accuracy": "topic accuracy",
    "topic_macro_f1": "topic macro-F1",
    "subtopic_accuracy": "subtopic accuracy",
    "subtopic_macro_f1": "subtopic macro-F1",
    "success_accuracy": "success accuracy",
    "success_kappa": "success Cohen's kappa",
    "summary_rouge_l": "summary ROUGE-L F1",
    "misunderstood_precision": "misunderstood precision",
    "misunderstood_recall": "misunderstood recall",
}


def field_key(name: str) -> str:
    """The figure of a custom field's accuracy."""
    return f"field_{name}_accuracy"


@dataclass
class Outcome:
    """One item under one variant: ``answered`` (asked this run), ``reused`` (the ledger's
    answer), ``invalid`` (the model gave no valid answer: invalid after its re-asks, refused,
    or cut off), ``failed`` (any other error: not scored) or ``skipped`` (nothing to analyse)."""

    item_id: str
    status: Status
    enrichment: Enrichment | None = None
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost: float | None = None
    paid: float = 0.0
    seconds: float | None = None
    repairs: int = 0
    expected_requests: int = 1
    exc: BaseException | None = field(default=None, repr=False)


class Figure(BaseModel):
    """A figure, its 95% bootstrap interval, and the number of items it is over."""

    value: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0


class Confusion(BaseModel):
    """Rows: the labels; columns: the answers (``labels`` names both, in order)."""

    labels: list[str]
    matrix: list[list[int]]


class TopicBar(BaseModel):
    """How often the answer's topic was right, for the items labeled ``topic``."""

    topic: str
    n: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


class Operations(BaseModel):
    """What it took to get the variant's answers."""

    items: int = 0
    answered: int = Field(default=0, description="asked this run")
    reused: int = Field(default=0, description="the ledger's answers: nothing paid")
    invalid: int = Field(default=0, description="no valid answer (invalid, refused, cut off)")
    failed: int = Field(default=0, description="other errors: not scored")
    skipped: int = Field(default=0, description="nothing to analyse: not scored")
    reasked: int = Field(default=0, description="answers that took a re-ask")
    repairs: int = Field(default=0, description="answers read after a JSON repair, this run")
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = Field(default=None, description="USD of every answer; None: no price")
    paid: float = Field(default=0.0, description="USD spent by this run")
    latency_median: float | None = Field(default=None, description="seconds, answers of this run")
    latency_p95: float | None = None
    errors: list[str] = Field(
        default_factory=list, description="the first failed or invalid items' messages"
    )

    @property
    def asked(self) -> int:
        """Items the model was asked about (or whose answer the ledger had)."""
        return self.answered + self.reused + self.invalid

    @property
    def invalid_rate(self) -> float | None:
        return self.invalid / self.asked if self.asked else None

    @property
    def reask_rate(self) -> float | None:
        valid = self.answered + self.reused
        return self.reasked / valid if valid else None


class VariantScores(BaseModel):
    """One variant's figures, matrices and operations."""

    name: str
    model: str
    figures: dict[str, Figure] = Field(default_factory=dict)
    confusions: dict[str, Confusion] = Field(default_factory=dict)
    per_topic: list[TopicBar] = Field(default_factory=list)
    ops: Operations = Field(default_factory=Operations)


class EvalReport(BaseModel):
    """Every variant of one eval, on the same items."""

    source: str
    items: int
    seed: int
    rounds: int
    labels: dict[str, str] = Field(description="the labels scored: name -> what it scores")
    variants: list[VariantScores]

    def figure_names(self) -> list[str]:
        """The figures some variant has, headline first, then the fields'."""
        present = {k for v in self.variants for k in v.figures}
        names = [k for k in HEADLINE if k in present]
        return names + sorted(present - set(names))

    def gate(self, bars: dict[str, float]) -> list[str]:
        """Each ``--min`` bar some variant is below (or cannot be checked on), in words."""
        misses = []
        for name, bar in bars.items():
            for v in self.variants:
                fig = v.figures.get(name)
                if fig is None or fig.value is None:
                    misses.append(f"{name} was not measured for {v.name} (no item labeled)")
                elif fig.value < bar:
                    misses.append(f"{name} is {fig.value:.3f} for {v.name}, below {bar:g}")
        return misses


def _same(gold: Any, got: Any) -> Any:
    """The answer, spelt as the label when they agree ignoring case and spacing."""
    if got is None or isinstance(gold, bool) or isinstance(got, bool):
        return got
    return gold if norm(gold) == norm(got) else str(got)


def _figure(units: Sequence[Any], stat: Callable[[Sequence[Any]], Any], seed: int, rounds: int):
    low, high = bootstrap(units, stat, seed=seed, rounds=rounds)
    return Figure(value=stat(units), low=low, high=high, n=len(units))


def _ops(outcomes: Sequence[Outcome]) -> Operations:
    ops = Operations(items=len(outcomes))
    costs: list[float | None] = []
    latencies = []
    for o in outcomes:
        setattr(ops, o.status, getattr(ops, o.status) + 1)
        if o.status in ("failed", "invalid") and len(ops.errors) < 5 and o.error:
            ops.errors.append(f"{o.item_id} ({o.status}): {o.error}")
        if o.status in ("answered", "reused", "invalid"):
            u = o.usage
            ops.requests += u.requests
            ops.prompt_tokens += u.prompt_tokens
            ops.completion_tokens += u.completion_tokens
            costs.append(o.cost)
            ops.paid += o.paid
        if o.status in ("answered", "reused") and o.usage.requests > o.expected_requests:
            ops.reasked += 1
        if o.status == "answered":
            ops.repairs += o.repairs
            if o.seconds is not None:
                latencies.append(o.seconds)
    priced = [c for c in costs if c is not None]
    ops.cost = sum(priced) if priced or not costs else None
    if latencies:
        latencies.sort()
        ops.latency_median = statistics.median(latencies)
        ops.latency_p95 = quantile(latencies, 0.95)
    return ops


def score(
    name: str,
    model: str,
    items: Sequence[LabeledItem],
    outcomes: Sequence[Outcome],
    fields: Sequence[CustomField] = (),
    *,
    seed: int = 0,
    rounds: int = 1000,
) -> VariantScores:
    """One variant's scores over ``items`` (``outcomes`` in the same order)."""
    scored = [
        (i.gold, o.enrichment)
        for i, o in zip(items, outcomes, strict=True)
        if o.status in ("answered", "reused", "invalid")
    ]
    out = VariantScores(name=name, model=model, ops=_ops(outcomes))

    def pairs(get_gold: Callable[[Gold], Any], get: Callable[[Enrichment], Any]) -> list[Any]:
        return [
            (g, _same(g, get(e) if e is not None else None))
            for gold, e in scored
            if (g := get_gold(gold)) is not None
        ]

    def add(key: str, units: list[Any], stat: Callable[[Sequence[Any]], Any]) -> None:
        if units:
            out.figures[key] = _figure(units, stat, seed, rounds)

    for target in ("topic", "subtopic"):
        p = pairs(lambda g, t=target: getattr(g, t), lambda e, t=target: getattr(e, t))
        add(f"{target}_accuracy", p, accuracy)
        add(f"{target}_macro_f1", p, macro_f1)
        if p:
            labels, matrix = confusion(p)
            out.confusions[target] = Confusion(labels=labels, matrix=matrix)
        if target == "topic":
            per: dict[str, list[int]] = {}
            for g, a in p:
                per.setdefault(g, [0, 0])
                per[g][0] += 1
                per[g][1] += int(a == g)
            order = sorted(per, key=lambda t: (-per[t][0], t))
            out.per_topic = [TopicBar(topic=t, n=per[t][0], correct=per[t][1]) for t in order]

    success = pairs(lambda g: g.is_success, lambda e: e.evaluation.is_success)
    add("success_accuracy", success, accuracy)
    add("success_kappa", success, cohen_kappa)
    if success:
        labels, matrix = confusion([(str(g).lower(), _bool(a)) for g, a in success])
        out.confusions["success"] = Confusion(labels=labels, matrix=matrix)

    rouge = [
        rouge_l(e.summary if e is not None else None, gold.summaries)
        for gold, e in scored
        if gold.summaries
    ]
    add("summary_rouge_l", rouge, lambda xs: sum(xs) / len(xs) if xs else None)

    counts = []
    for gold, e in scored:
        if gold.misunderstood is None:
            continue
        answered = [q.question for q in e.misunderstood_queries] if e is not None else []
        precise, found = match_queries(answered, gold.misunderstood)
        counts.append((len(answered), precise, len(gold.misunderstood), found))
    if counts:
        # each over the items that give it a denominator, so n is the items it says something of
        for key, index in (("misunderstood_precision", 0), ("misunderstood_recall", 1)):
            units = [c for c in counts if c[2 * index]]
            add(key, units, lambda cs, i=index: precision_recall(cs)[i])

    for f in fields:
        if f.type not in ("enum", "boolean"):
            continue
        p = pairs(lambda g, n=f.name: g.custom.get(n), lambda e, n=f.name: e.custom.get(n))
        add(field_key(f.name), p, accuracy)
    return out


def _bool(value: Any) -> str | None:
    return None if value is None else str(value).lower()
