"""The enrichment of one conversation, and the parts every answer of the model is made of.

- :class:`Enrichment` is the result: summary, topic and subtopic, misunderstood queries, the
  :class:`Evaluation` (a verdict, its reason, and one :class:`CriterionVerdict` per named success
  criterion), and the agency's own fields (``custom``). It is what the ledger keeps, what the
  library returns, and what every projection (the PUT body, a result row) is made from.
- What the model is asked to return is built from the analysis spec
  (:meth:`~enrich.models.spec.AnalysisSpec.output_model`, on :class:`AnswerBase`) and turned into
  an :class:`Enrichment` by :meth:`~enrich.models.spec.AnalysisSpec.enrichment`. Validated with a
  taxonomy in the context (``{"taxonomy": [...]}``), the topic must be one of the taxonomy's and
  the subtopic one of that topic's.
- :func:`strict_schema` makes a model's JSON schema strict-mode compatible (every property
  required, no additional properties, no descriptions: the instructions describe each field
  once, in the prompt).
- :func:`ground_queries` keeps only the misunderstood queries the user really said.
- :class:`PartNotes` are the notes taken on one part of a call too long for one request.
"""

from __future__ import annotations

import copy
import difflib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

__all__ = [
    "Evaluation",
    "CriterionVerdict",
    "Verdict",
    "MisunderstoodQuery",
    "Enrichment",
    "AnswerBase",
    "AnswerEvaluation",
    "strict_schema",
    "PartNotes",
    "ground_queries",
    "MAX_QUERIES",
    "GROUNDING_THRESHOLD",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


#: At most this many misunderstood queries (and part requests): a bound on the answer's length
#: that also stops a weak model from repeating itself until it runs out of tokens.
MAX_QUERIES = 10


#: A verdict on the whole conversation or on one criterion. ``unknown``: the conversation is too
#: short or off-topic to judge.
Verdict = Literal["success", "failure", "unknown"]


class CriterionVerdict(_Strict):
    """The verdict on one named success criterion, and why."""

    name: str
    verdict: Verdict
    rationale: str


class Evaluation(_Strict):
    """How the conversation fared against the success criteria."""

    reason: str = Field(
        min_length=1,
        description="Why the conversation did or did not succeed, judged against the success "
        "criteria, in one or two sentences.",
    )
    is_success: bool | None = Field(
        description="true if the conversation met the success criteria; None when the verdict "
        "is unknown (named criteria only)"
    )
    verdict: Verdict | None = Field(
        default=None, description="with named criteria: the overall verdict, unknown included"
    )
    criteria: list[CriterionVerdict] = Field(
        default_factory=list, description="with named criteria: one verdict per criterion"
    )


class AnswerEvaluation(_Strict):
    """The evaluation the model returns with plain-text success criteria."""

    reason: str = Field(min_length=1)
    is_success: bool


class MisunderstoodQuery(_Strict):
    question: str = Field(
        min_length=1,
        description="The user's own words, quoted from a user turn, that the agent misunderstood "
        "or failed to answer.",
    )


class _InTaxonomy(BaseModel):
    """Checks, given ``{"taxonomy": [...]}`` as validation context, that the topic is one of the
    taxonomy's and the subtopic one of that topic's."""

    @model_validator(mode="after")
    def _within_taxonomy(self, info: ValidationInfo) -> Any:
        # the spec's topics (anything with .name and .subtopics[].name)
        taxonomy: Sequence[Any] = (info.context or {}).get("taxonomy") or ()
        if not taxonomy:
            return self
        topic_name, subtopic_name = self.topic, self.subtopic  # type: ignore[attr-defined]
        by_name = {t.name: t for t in taxonomy}
        topic = by_name.get(topic_name)
        if topic is None:
            names = ", ".join(repr(n) for n in by_name)
            raise ValueError(f"topic {topic_name!r} is not in the taxonomy; choose one of {names}")
        allowed = [s.name for s in topic.subtopics]
        if allowed and subtopic_name not in allowed:
            names = ", ".join(repr(n) for n in allowed)
            raise ValueError(
                f"subtopic {subtopic_name!r} does not belong to topic {topic_name!r}; "
                f"choose one of {names}"
            )
        return self


class Enrichment(_InTaxonomy, _Strict):
    """The analytics for one conversation (see the module's docstring)."""

    summary: str = Field(min_length=1, description="A short, factual summary of the conversation.")
    topic: str = Field(min_length=1, description="The main topic of the conversation.")
    subtopic: str = Field(min_length=1, description="The subtopic, within the topic.")
    misunderstood_queries: list[MisunderstoodQuery] = Field(
        max_length=MAX_QUERIES,
        description="User queries the agent misunderstood or could not answer; empty if none.",
    )
    evaluation: Evaluation
    custom: dict[str, Any] = Field(
        default_factory=dict,
        description="the agency's own fields (analysis.fields and presets), by name; None: not "
        "mentioned",
    )


class AnswerBase(_InTaxonomy, _Strict):
    """What every answer of the model holds; the spec adds the evaluation and its own fields."""

    summary: str = Field(min_length=1)
    topic: str = Field(min_length=1)
    subtopic: str = Field(min_length=1)
    misunderstood_queries: list[MisunderstoodQuery] = Field(max_length=MAX_QUERIES)


class PartNotes(_Strict):
    """Notes on one part of a conversation too long for one call (the map step)."""

    summary: str = Field(min_length=1, description="What happened in this part, factually.")
    user_requests: list[str] = Field(
        max_length=MAX_QUERIES, description="What the user asked for in this part."
    )
    misunderstood_queries: list[MisunderstoodQuery] = Field(
        max_length=MAX_QUERIES,
        description="User queries in this part that the agent misunderstood or did not answer; "
        "quoted from user turns; empty if none.",
    )
    outcome: str = Field(
        min_length=1,
        description="Where things stood at the end of this part: resolved, "
        "pending, escalated, abandoned...",
    )


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Inline ``$ref``s, drop titles and descriptions, and close every object (strict
    structured outputs). Property names are kept whatever they are (even ``title``)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(copy.deepcopy(defs[node["$ref"].split("/")[-1]]), defs)
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("title", "$defs", "description", "minLength"):
                continue  # minLength: not in strict mode; validation enforces it
            if key == "properties" and isinstance(value, dict):
                out[key] = {name: _inline(v, defs) for name, v in value.items()}
            else:
                out[key] = _inline(value, defs)
        if out.get("type") == "object":
            out["additionalProperties"] = False
            out["required"] = list(out.get("properties", {}))
        return out
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema, made strict-mode compatible."""
    raw = model.model_json_schema()
    return _inline(raw, raw.get("$defs", {}))


# --------------------------------------------------------------------------------------------
# Grounding: a misunderstood query must be something the user said


_WORD = re.compile(r"\w+", re.UNICODE)
_SUFFIXES = ("ing", "ed", "es", "s")

#: How close a query must be to some stretch of a user turn (difflib ratio over words).
GROUNDING_THRESHOLD = 0.75


def _words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).casefold().replace("'", "").replace("\u2019", "")
    words = []
    for w in _WORD.findall(text):
        for suffix in _SUFFIXES:
            if len(w) > len(suffix) + 2 and w.endswith(suffix):
                w = w[: -len(suffix)]
                break
        words.append(w)
    return words


def _grounded(query: list[str], turn: list[str]) -> bool:
    if not query or not turn:
        return False
    n = len(query)
    if n >= len(turn):
        return (
            difflib.SequenceMatcher(None, query, turn, autojunk=False).ratio()
            >= GROUNDING_THRESHOLD
        )
    for size in {n, n + 1, max(1, n - 1)}:
        for start in range(0, len(turn) - size + 1):
            window = turn[start : start + size]
            matcher = difflib.SequenceMatcher(None, query, window, autojunk=False)
            if matcher.real_quick_ratio() < GROUNDING_THRESHOLD:
                continue
            if matcher.ratio() >= GROUNDING_THRESHOLD:
                return True
    return False


def ground_queries(
    queries: Iterable[MisunderstoodQuery], user_texts: Iterable[str]
) -> tuple[list[MisunderstoodQuery], list[str]]:
    """Split ``queries`` into those a user turn supports and the invented ones (as text).

    Matching ignores case, punctuation and plural or tense endings, and tolerates small wording
    changes: a query passes when some stretch of one user turn is at least
    :data:`GROUNDING_THRESHOLD` similar, word by word.
    """
    turns = [_words(t) for t in user_texts]
    kept: list[MisunderstoodQuery] = []
    dropped: list[str] = []
    for q in queries:
        words = _words(q.question)
        if any(_grounded(words, t) for t in turns):
            kept.append(q)
        else:
            dropped.append(q.question)
    return kept, dropped
