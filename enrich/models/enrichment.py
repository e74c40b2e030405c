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
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Annotated, Any, Literal

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
    "MAX_SUMMARY",
    "MAX_REASON",
    "MAX_NAME",
    "MAX_QUERY",
    "MAX_TEXT",
    "MAX_ITEM",
    "MAX_ITEMS",
    "MAX_JSON",
    "AnswerQuery",
    "GROUNDING_THRESHOLD",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


#: At most this many misunderstood queries (and part requests): a bound on the answer's length
#: that also stops a weak model from repeating itself until it runs out of tokens.
MAX_QUERIES = 10

#: The longest text the model may give for each field of an answer (characters). A longer one
#: is invalid, so it is re-asked with the error: a hostile or runaway server cannot make a huge
#: value stored, printed or written. Enforced in validation only: OpenAI's strict mode does not
#: take ``maxLength`` (nor ``minLength``), so the schema sent leaves them out.
MAX_SUMMARY = 4000
MAX_REASON = 2000  # the evaluation's reason, a criterion's rationale, a part's outcome
MAX_NAME = 200  # topic and subtopic
MAX_QUERY = 1000  # a misunderstood query, a user request of a part's notes
MAX_TEXT = 4000  # a custom text field
MAX_ITEM = 500  # an item of a custom list field
MAX_ITEMS = 100  # items of a custom list field
MAX_JSON = 20_000  # a custom json field's value, as compact JSON


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

    reason: str = Field(min_length=1, max_length=MAX_REASON)
    is_success: bool


class MisunderstoodQuery(_Strict):
    question: str = Field(
        min_length=1,
        description="The user's own words, quoted from a user turn, that the agent misunderstood "
        "or failed to answer.",
    )


class AnswerQuery(MisunderstoodQuery):
    """A misunderstood query as the model gives it: at most :data:`MAX_QUERY` characters."""

    question: str = Field(min_length=1, max_length=MAX_QUERY)


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

    summary: str = Field(min_length=1, max_length=MAX_SUMMARY)
    topic: str = Field(min_length=1, max_length=MAX_NAME)
    subtopic: str = Field(min_length=1, max_length=MAX_NAME)
    misunderstood_queries: list[AnswerQuery] = Field(max_length=MAX_QUERIES)


class PartNotes(_Strict):
    """Notes on one part of a conversation too long for one call (the map step)."""

    summary: str = Field(
        min_length=1, max_length=MAX_SUMMARY, description="What happened in this part, factually."
    )
    user_requests: list[Annotated[str, Field(max_length=MAX_QUERY)]] = Field(
        max_length=MAX_QUERIES, description="What the user asked for in this part."
    )
    misunderstood_queries: list[AnswerQuery] = Field(
        max_length=MAX_QUERIES,
        description="User queries in this part that the agent misunderstood or did not answer; "
        "quoted from user turns; empty if none.",
    )
    outcome: str = Field(
        min_length=1,
        max_length=MAX_REASON,
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
            if key in ("title", "$defs", "description", "minLength", "maxLength"):
                continue  # minLength, maxLength: not in strict mode; validation enforces them
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
#: A plural or tense ending, taken off a word that keeps at least three characters without it
#: (the longest that fits: "classes" is "class", "uses" is "use").
_SUFFIX = re.compile(r"(?<=\w{3})(?:ing|ed|es|s)\b", re.UNICODE)

#: How close a query must be to some stretch of a user turn (difflib ratio over words).
GROUNDING_THRESHOLD = 0.75


def _words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).casefold().replace("'", "").replace("\u2019", "")
    return _WORD.findall(_SUFFIX.sub("", text))


def _index(turn: list[str]) -> dict[str, list[int]]:
    """Where each word of a turn is, in order."""
    index: dict[str, list[int]] = {}
    for i, w in enumerate(turn):
        index.setdefault(w, []).append(i)
    return index


def _grounded(query: list[str], turn: list[str], index: dict[str, list[int]]) -> bool:
    """Whether some stretch of ``turn`` (of the query's length, or one word more or less) is
    :data:`GROUNDING_THRESHOLD` similar to ``query``.

    Only the stretches that hold one of the query's words can match, and only those whose
    multiset of words shares enough with the query's (difflib's ``quick_ratio``, an upper bound
    of ``ratio``) are compared word by word: near-linear in the turn's length, with the results
    of comparing every stretch.
    """
    if not query or not turn:
        return False
    n = len(query)
    if n >= len(turn):
        return (
            difflib.SequenceMatcher(None, query, turn, autojunk=False).ratio()
            >= GROUNDING_THRESHOLD
        )
    need = Counter(query)
    positions = sorted(p for w in need for p in index.get(w, ()))
    for size in {n, n + 1, max(1, n - 1)}:
        last = len(turn) - size
        following = 0  # the first start not tried yet
        for p in positions:
            for start in range(max(following, p - size + 1), min(p, last) + 1):
                window = turn[start : start + size]
                shared = sum((Counter(window) & need).values())
                if 2.0 * shared / (n + size) < GROUNDING_THRESHOLD:
                    continue  # as difflib's quick_ratio: ratio cannot reach the threshold
                matcher = difflib.SequenceMatcher(None, query, window, autojunk=False)
                if matcher.ratio() >= GROUNDING_THRESHOLD:
                    return True
            following = max(following, min(p, last) + 1)
    return False


def ground_queries(
    queries: Iterable[MisunderstoodQuery], user_texts: Iterable[str]
) -> tuple[list[MisunderstoodQuery], list[str]]:
    """Split ``queries`` into those a user turn supports and the invented ones (as text).

    Matching ignores case, punctuation and plural or tense endings, and tolerates small wording
    changes: a query passes when some stretch of one user turn is at least
    :data:`GROUNDING_THRESHOLD` similar, word by word. Near-linear in the user's words (an
    index of each turn's words picks the stretches worth comparing).
    """
    texts = iter(user_texts)
    seen: list[tuple[list[str], dict[str, list[int]]]] = []

    def turns() -> Iterator[tuple[list[str], dict[str, list[int]]]]:
        """The user's turns as words, each read the first time a query needs it."""
        yield from seen
        for text in texts:
            words = _words(text)
            seen.append((words, _index(words)))
            yield seen[-1]

    kept: list[MisunderstoodQuery] = []
    dropped: list[str] = []
    for q in queries:
        words = _words(q.question)
        if any(_grounded(words, t, index) for t, index in turns()):
            kept.append(q)
        else:
            dropped.append(q.question)
    return kept, dropped
