"""What the LLM must return and how it is checked.

- :class:`Enrichment` is the validated answer. Validated with a taxonomy in the context
  (``{"taxonomy": [...]}``), its topic must be one of the taxonomy's and its subtopic one of that
  topic's.
- :func:`strict_schema` makes a model's JSON schema strict-mode compatible (every property
  required, no additional properties); :class:`~enrich.models.spec.AnalysisSpec` adds the
  taxonomy's enums.
- :func:`ground_queries` keeps only the misunderstood queries the user really said.
- :class:`PartNotes` are the notes taken on one part of a call too long for one request.
"""

from __future__ import annotations

import copy
import difflib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

__all__ = [
    "Evaluation",
    "MisunderstoodQuery",
    "Enrichment",
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


class Evaluation(_Strict):
    reason: str = Field(
        min_length=1,
        description="Why the conversation did or did not succeed, judged against the success "
        "criteria, in one or two sentences. Written before the verdict.",
    )
    is_success: bool = Field(description="true if the conversation met the success criteria")


class MisunderstoodQuery(_Strict):
    question: str = Field(
        min_length=1,
        description="The user's own words, quoted from a user turn, that the agent misunderstood "
        "or failed to answer.",
    )


class Enrichment(_Strict):
    """The analytics for one conversation, as the model returns them after validation."""

    summary: str = Field(min_length=1, description="A short, factual summary of the conversation.")
    topic: str = Field(min_length=1, description="The main topic of the conversation.")
    subtopic: str = Field(min_length=1, description="The subtopic, within the topic.")
    misunderstood_queries: list[MisunderstoodQuery] = Field(
        max_length=MAX_QUERIES,
        description="User queries the agent misunderstood or could not answer; empty if none.",
    )
    evaluation: Evaluation

    @model_validator(mode="after")
    def _within_taxonomy(self, info: ValidationInfo) -> Enrichment:
        # the spec's topics (anything with .name and .subtopics[].name)
        taxonomy: Sequence[Any] = (info.context or {}).get("taxonomy") or ()
        if not taxonomy:
            return self
        by_name = {t.name: t for t in taxonomy}
        topic = by_name.get(self.topic)
        if topic is None:
            names = ", ".join(repr(n) for n in by_name)
            raise ValueError(f"topic {self.topic!r} is not in the taxonomy; choose one of {names}")
        allowed = [s.name for s in topic.subtopics]
        if allowed and self.subtopic not in allowed:
            names = ", ".join(repr(n) for n in allowed)
            raise ValueError(
                f"subtopic {self.subtopic!r} does not belong to topic {self.topic!r}; "
                f"choose one of {names}"
            )
        return self


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
    """Inline ``$ref``s, drop titles, and close every object (strict structured outputs)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(copy.deepcopy(defs[node["$ref"].split("/")[-1]]), defs)
        out = {k: _inline(v, defs) for k, v in node.items() if k not in ("title", "$defs")}
        if out.get("type") == "object":
            out["additionalProperties"] = False
            out["required"] = list(out.get("properties", {}))
        for key in ("minLength",):  # not supported by strict mode; enforced by validation
            out.pop(key, None)
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
