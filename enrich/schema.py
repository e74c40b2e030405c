"""What the LLM must return, how it is checked, and the ChatDash PUT body it becomes.

- :class:`Enrichment` is the validated answer. Validated with a taxonomy in the context
  (``{"taxonomy": [...]}``), its topic must be one of the taxonomy's and its subtopic one of that
  topic's.
- :func:`output_schema` is the JSON schema sent to the model: strict-mode compatible (every
  property required, no additional properties), with the taxonomy as enums.
- :func:`ground_queries` keeps only the misunderstood queries the user really said.
- :class:`ConversationUpdate` is the whole PUT body of ChatDash's *Update Conversation*, every
  field typed and named on the wire exactly as the API spells it (``mistunderstoodQueries``
  included). :func:`build_update` fills only the enriched fields a run produced.
"""

from __future__ import annotations

import copy
import difflib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .config import WRITABLE_FIELDS, Topic
from .transcript import CallMetadata

__all__ = [
    "Evaluation",
    "MisunderstoodQuery",
    "Enrichment",
    "output_schema",
    "strict_schema",
    "PartNotes",
    "ground_queries",
    "ConversationUpdate",
    "UpdateEvaluation",
    "UpdateQuery",
    "build_update",
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
        taxonomy: Sequence[Topic] = (info.context or {}).get("taxonomy") or ()
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


def output_schema(taxonomy: Sequence[Topic] = ()) -> dict[str, Any]:
    """The JSON schema the model must follow; with a taxonomy, topics and subtopics are enums."""
    schema = strict_schema(Enrichment)
    if taxonomy:
        props = schema["properties"]
        props["topic"]["enum"] = [t.name for t in taxonomy]
        if all(t.subtopics for t in taxonomy):
            subtopics: list[str] = []
            for t in taxonomy:
                subtopics += [s.name for s in t.subtopics if s.name not in subtopics]
            props["subtopic"]["enum"] = subtopics
            props["subtopic"]["description"] += " It must be one of the chosen topic's subtopics."
    return schema


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


# --------------------------------------------------------------------------------------------
# The ChatDash PUT body, every field of the contract


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class UpdateEvaluation(_Wire):
    is_success: bool | None = Field(default=None, alias="isSuccess")
    reason: str | None = None


class UpdateQuery(_Wire):
    question: str | None = None


class ConversationUpdate(_Wire):
    """The body of ``PUT /agents/{agentId}/conversations/{conversationId}``.

    Every field of the contract is here, optional, under its wire name (``by_alias``). Only the
    fields that were set are sent: :meth:`body` excludes unset fields and nulls.
    """

    platform_id: str | None = Field(default=None, alias="platformId")
    lead_id: str | None = Field(default=None, alias="leadId")
    name: str | None = None
    read: bool | None = None
    ended_at: datetime | None = Field(default=None, alias="endedAt")
    browser: str | None = None
    device: str | None = None
    os: str | None = None
    country_code: str | None = Field(default=None, alias="countryCode")
    ip_address: str | None = Field(default=None, alias="ipAddress")
    record: bool | None = None
    interacted: bool | None = None
    channel: str | None = None
    phone: str | None = None
    phone_secondary: str | None = Field(default=None, alias="phoneSecondary")
    instagram_id: str | None = Field(default=None, alias="instagramId")
    instagram_username: str | None = Field(default=None, alias="instagramUsername")
    cost: float | None = None
    duration: float | None = None
    url: str | None = None
    ended_reason: str | None = Field(default=None, alias="endedReason")
    no_answer: bool | None = Field(default=None, alias="noAnswer")
    status: Literal["ai", "pending", "human"] | None = None
    live_agent_name: str | None = Field(default=None, alias="liveAgentName")
    live_agent_id: str | None = Field(default=None, alias="liveAgentId")
    is_live: bool | None = Field(default=None, alias="isLive")
    note: str | None = None
    topic: str | None = None
    subtopic: str | None = None
    summary: str | None = None
    evaluation: UpdateEvaluation | None = None
    mistunderstood_queries: list[UpdateQuery] | None = Field(
        default=None, alias="mistunderstoodQueries"
    )
    custom_analysis: dict[str, Any] | None = Field(default=None, alias="customAnalysis")
    metadata: dict[str, Any] | None = None

    @field_validator("country_code")
    @classmethod
    def _alpha2(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z]{2}", v):
            raise ValueError("must be an ISO 3166-1 alpha-2 code such as 'US'")
        return v

    def body(self) -> dict[str, Any]:
        """The JSON body: wire names, only the fields that were set, no nulls."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)


def build_update(
    enrichment: Enrichment,
    fields: Iterable[str] = WRITABLE_FIELDS,
    metadata: CallMetadata | None = None,
) -> ConversationUpdate:
    """The PUT for ``enrichment``, narrowed to ``fields`` (wire names).

    With ``metadata``, the call's platform fields it holds are added under the PUT's own names:
    ``platformId``, ``phone``, ``phoneSecondary``, ``duration`` (minutes), ``endedReason`` and
    ``url`` (the recording).
    """
    wanted = set(fields)
    unknown = wanted - set(WRITABLE_FIELDS)
    if unknown:
        raise ValueError(f"not enriched fields: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    if "summary" in wanted:
        values["summary"] = enrichment.summary
    if "topic" in wanted:
        values["topic"] = enrichment.topic
    if "subtopic" in wanted:
        values["subtopic"] = enrichment.subtopic
    if "evaluation" in wanted:
        values["evaluation"] = UpdateEvaluation(
            isSuccess=enrichment.evaluation.is_success, reason=enrichment.evaluation.reason
        )
    if "mistunderstoodQueries" in wanted:
        values["mistunderstoodQueries"] = [
            UpdateQuery(question=q.question) for q in enrichment.misunderstood_queries
        ]
    if metadata is not None:
        platform = {
            "platformId": metadata.platform_id,
            "phone": metadata.phone,
            "phoneSecondary": metadata.phone_secondary,
            "duration": (
                round(metadata.duration_seconds / 60, 2)
                if metadata.duration_seconds is not None
                else None
            ),
            "endedReason": metadata.ended_reason,
            "url": metadata.recording_url,
        }
        values.update({k: v for k, v in platform.items() if v not in (None, "")})
    return ConversationUpdate(**values)
