"""The figures of an eval, as plain functions over (label, answer) pairs.

- :func:`accuracy`, :func:`macro_f1` and :func:`confusion` for names (topic, subtopic, an enum
  field): an answer of ``None`` (no valid answer) is wrong; macro-F1 averages the F1 of every
  class that is a label or an answer (one answered but never labeled scores 0, as in
  scikit-learn's ``f1_score(average="macro")``);
- :func:`cohen_kappa`: agreement beyond chance between the labels and the answers (success);
- :func:`rouge_l`: ROUGE-L F1 of a summary against the best of its references, by Google's
  ``rouge-score`` package (the ``eval`` extra), with its Porter stemmer;
- :func:`match_queries`: which misunderstood queries the answer gave match a labeled user turn,
  matched as the grounding step matches a query to what the user said
  (:func:`~enrich.models.enrichment.ground_queries`), either way round (a short label inside a
  longer answer counts too);
- :func:`bootstrap`: a seeded percentile bootstrap interval of any of them, resampling items.

Nothing here calls an LLM or reads a file.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

from ..errors import ConfigError
from ..models.enrichment import MisunderstoodQuery, ground_queries

__all__ = [
    "NO_ANSWER",
    "accuracy",
    "macro_f1",
    "confusion",
    "cohen_kappa",
    "rouge_l",
    "match_queries",
    "precision_recall",
    "bootstrap",
    "quantile",
]

T = TypeVar("T")

#: How a missing answer shows among the classes of a confusion matrix.
NO_ANSWER = "(no answer)"

Pair = tuple[Any, Any]


def accuracy(pairs: Sequence[Pair]) -> float | None:
    """The share of ``(label, answer)`` pairs that agree; None without pairs."""
    if not pairs:
        return None
    return sum(1 for gold, got in pairs if got is not None and got == gold) / len(pairs)


def macro_f1(pairs: Sequence[Pair]) -> float | None:
    """The mean F1 over the classes that are a label or an answer; None without pairs."""
    if not pairs:
        return None
    classes = {g for g, _ in pairs} | {a for _, a in pairs if a is not None}
    tp: Counter[Any] = Counter()
    fp: Counter[Any] = Counter()
    fn: Counter[Any] = Counter()
    for gold, got in pairs:
        if got == gold:
            tp[gold] += 1
            continue
        fn[gold] += 1
        if got is not None:
            fp[got] += 1
    scores = [2 * tp[c] / (2 * tp[c] + fp[c] + fn[c]) for c in classes]
    return sum(scores) / len(scores)


def confusion(pairs: Sequence[Pair]) -> tuple[list[str], list[list[int]]]:
    """The classes and the matrix (a row per label, a column per answer) of ``pairs``. The
    labels come first, most frequent first; then answers never labeled; then
    :data:`NO_ANSWER` when some answer is missing."""
    gold_counts = Counter(str(g) for g, _ in pairs)
    labels = sorted(gold_counts, key=lambda c: (-gold_counts[c], c))
    extra = sorted({str(a) for _, a in pairs if a is not None} - set(labels))
    classes = labels + extra
    if any(a is None for _, a in pairs):
        classes.append(NO_ANSWER)
    index = {c: i for i, c in enumerate(classes)}
    matrix = [[0] * len(classes) for _ in classes]
    for gold, got in pairs:
        matrix[index[str(gold)]][index[NO_ANSWER if got is None else str(got)]] += 1
    return classes, matrix


def cohen_kappa(pairs: Sequence[Pair]) -> float | None:
    """Cohen's kappa of ``(label, answer)`` pairs: (observed - chance agreement) / (1 - chance).
    A missing answer is a category of its own. None without pairs, or when chance agreement is
    certain (every label and every answer the same class), where kappa is undefined."""
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(1 for g, a in pairs if g == a) / n
    gold = Counter(g for g, _ in pairs)
    got = Counter(a for _, a in pairs)
    chance = sum(gold[c] * got[c] for c in gold) / (n * n)
    if chance >= 1.0:
        return None
    return (observed - chance) / (1.0 - chance)


@lru_cache(maxsize=1)
def _scorer() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ConfigError(
            "scoring summaries needs the rouge-score package: pip install 'enrich[eval]' "
            "(or map the summaries label away: --map NAME=-)"
        ) from None
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(summary: str | None, references: Sequence[str]) -> float:
    """ROUGE-L F1 of ``summary`` against the best of ``references`` (0 without a summary)."""
    if not summary or not references:
        return 0.0
    scorer = _scorer()
    return max(scorer.score(ref, summary)["rougeL"].fmeasure for ref in references)


def _grounded(query: str, turn: str) -> bool:
    kept, _ = ground_queries([MisunderstoodQuery(question=query)], [turn])
    return bool(kept)


def match_queries(answered: Sequence[str], labeled: Sequence[str]) -> tuple[int, int]:
    """How many of the ``answered`` queries match a ``labeled`` user turn, and how many labeled
    turns some answered query matches. A query matches a turn when the grounding step would
    find it in the turn, or the turn in it."""
    hits = [[_grounded(q, t) or _grounded(t, q) for t in labeled] for q in answered if q.strip()]
    precise = sum(1 for row in hits if any(row))
    found = sum(1 for j in range(len(labeled)) if any(row[j] for row in hits))
    return precise, found


def precision_recall(counts: Sequence[tuple[int, int, int, int]]) -> tuple[float | None, ...]:
    """Micro-averaged precision and recall over items' ``(answered, matching, labeled,
    found)`` counts; None where nothing was answered (precision) or labeled (recall)."""
    answered = sum(c[0] for c in counts)
    labeled = sum(c[2] for c in counts)
    precision = sum(c[1] for c in counts) / answered if answered else None
    recall = sum(c[3] for c in counts) / labeled if labeled else None
    return precision, recall


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values``, interpolated linearly (NumPy's default)."""
    at = q * (len(values) - 1)
    lo = int(at)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (at - lo)


def bootstrap(
    units: Sequence[T],
    statistic: Callable[[Sequence[T]], float | None],
    *,
    seed: int,
    rounds: int = 1000,
    level: float = 0.95,
) -> tuple[float | None, float | None]:
    """The ``level`` percentile bootstrap interval of ``statistic`` over ``units`` (the items):
    ``rounds`` resamples of as many items, drawn with replacement by a generator seeded with
    ``seed`` (the same seed, the same interval). ``(None, None)`` without units, or when the
    statistic is undefined on every resample."""
    if not units or rounds <= 0:
        return None, None
    rng = random.Random(seed)
    n = len(units)
    values = []
    for _ in range(rounds):
        value = statistic([units[rng.randrange(n)] for _ in range(n)])
        if value is not None:
            values.append(value)
    if not values:
        return None, None
    values.sort()
    tail = (1.0 - level) / 2
    return quantile(values, tail), quantile(values, 1.0 - tail)
