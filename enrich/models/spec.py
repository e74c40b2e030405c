"""The analysis spec: what one analysis asks of the model, and every projection of its answer.

An :class:`AnalysisSpec` says what is asked (the taxonomy, the success criteria) and what is
written (the fields of ChatDash's PUT). Everything that depends on the shape of an enrichment is
derived from it, here and nowhere else:

- :meth:`~AnalysisSpec.output_model`: the pydantic model that validates the answer, and
  :meth:`~AnalysisSpec.context`, the validation context it needs;
- :meth:`~AnalysisSpec.json_schema`: the strict JSON schema sent to the model (the taxonomy as
  enums);
- :meth:`~AnalysisSpec.update`: the ChatDash PUT body (wire names, only the fields written);
- :meth:`~AnalysisSpec.columns` and :meth:`~AnalysisSpec.flat`: the flat result row of batch
  outputs (CSV, Parquet) and of ``enrich report``, from a result or from the ledger.

A new kind of analysis (a custom field, a per-criterion verdict) is added here once and reaches
every projection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .enrichment import Enrichment, strict_schema
from .transcript import CallMetadata
from .update import ConversationUpdate, UpdateEvaluation, UpdateQuery

__all__ = ["AnalysisSpec", "Topic", "Subtopic", "WRITABLE_FIELDS", "ENRICHMENT_COLUMNS"]

#: The enriched fields a run can write, by their ChatDash (wire) names.
WRITABLE_FIELDS = ("summary", "topic", "subtopic", "evaluation", "mistunderstoodQueries")

#: The flat columns of an enrichment, in a result row.
ENRICHMENT_COLUMNS = (
    "topic",
    "subtopic",
    "is_success",
    "reason",
    "summary",
    "misunderstood_queries",
)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Subtopic(_Frozen):
    name: str = Field(min_length=1)
    description: str = ""


class Topic(_Frozen):
    """A topic of the taxonomy and the subtopics it admits (none listed: free text)."""

    name: str = Field(min_length=1)
    description: str = ""
    subtopics: list[Subtopic] = Field(default_factory=list)

    @field_validator("subtopics", mode="before")
    @classmethod
    def _strings_are_names(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": s} if isinstance(s, str) else s for s in v]
        return v


class AnalysisSpec(_Frozen):
    """One analysis: what the model is asked for and what is written of its answer."""

    taxonomy: tuple[Topic, ...] = ()
    success_criteria: tuple[str, ...] = ()
    write_fields: tuple[str, ...] = WRITABLE_FIELDS

    @field_validator("write_fields")
    @classmethod
    def _known_fields(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(v) - set(WRITABLE_FIELDS)
        if unknown:
            raise ValueError(f"not enriched fields: {', '.join(sorted(unknown))}")
        return v

    # -- what the model is asked for ------------------------------------------------------------

    def output_model(self) -> type[Enrichment]:
        """The model that validates the answer (with :meth:`context`)."""
        return Enrichment

    def context(self) -> dict[str, Any]:
        """The validation context: the taxonomy the topic and subtopic must belong to."""
        return {"taxonomy": self.taxonomy}

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema the model must follow; with a taxonomy, topics and subtopics are
        enums. Computed once per spec: do not modify the returned dict."""
        return self._schema

    @cached_property
    def _schema(self) -> dict[str, Any]:
        schema = strict_schema(self.output_model())
        if self.taxonomy:
            props = schema["properties"]
            props["topic"]["enum"] = [t.name for t in self.taxonomy]
            if all(t.subtopics for t in self.taxonomy):
                subtopics: list[str] = []
                for t in self.taxonomy:
                    subtopics += [s.name for s in t.subtopics if s.name not in subtopics]
                props["subtopic"]["enum"] = subtopics
                props["subtopic"]["description"] += (
                    " It must be one of the chosen topic's subtopics."
                )
        return schema

    # -- projections of an answer ---------------------------------------------------------------

    def update(
        self, enrichment: Enrichment, metadata: CallMetadata | None = None
    ) -> ConversationUpdate:
        """The PUT for ``enrichment``, narrowed to :attr:`write_fields` (wire names).

        With ``metadata``, the call's platform fields it holds are added under the PUT's own
        names: ``platformId``, ``phone``, ``phoneSecondary``, ``duration`` (minutes),
        ``endedReason`` and ``url`` (the recording).
        """
        wanted = set(self.write_fields)
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

    def columns(self) -> tuple[str, ...]:
        """The enrichment's columns in a flat result row."""
        return ENRICHMENT_COLUMNS

    def flat(self, enrichment: Enrichment | Mapping[str, Any] | None) -> dict[str, Any]:
        """The enrichment's flat columns, from the model or from its JSON form (the ledger's);
        every column is present (``None`` without an enrichment)."""
        if enrichment is None:
            return dict.fromkeys(self.columns())
        e = enrichment.model_dump(mode="json") if isinstance(enrichment, BaseModel) else enrichment
        evaluation = e.get("evaluation") or {}
        return {
            "topic": e.get("topic"),
            "subtopic": e.get("subtopic"),
            "is_success": evaluation.get("is_success"),
            "reason": evaluation.get("reason"),
            "summary": e.get("summary"),
            "misunderstood_queries": " | ".join(
                q["question"] for q in e.get("misunderstood_queries") or []
            ),
        }


def build_update(
    enrichment: Enrichment,
    fields: Iterable[str] = WRITABLE_FIELDS,
    metadata: CallMetadata | None = None,
) -> ConversationUpdate:
    """The PUT for ``enrichment`` narrowed to ``fields``: :meth:`AnalysisSpec.update` of a spec
    that writes those fields."""
    return AnalysisSpec(write_fields=tuple(fields)).update(enrichment, metadata)
