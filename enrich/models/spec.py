"""The analysis spec: what one analysis asks of the model, and every projection of its answer.

An :class:`AnalysisSpec` says what is asked (the taxonomy, the success criteria, named or not,
and the agency's own typed fields) and what is written (the fields of ChatDash's PUT, how an
unknown verdict is written). Everything that depends on the shape of an enrichment is derived
from it, here and nowhere else:

- :meth:`~AnalysisSpec.output_model`: the pydantic model that validates the answer (built for
  the spec: the evaluation with a verdict per named criterion, a ``custom_analysis`` object with
  the fields), :meth:`~AnalysisSpec.context`, the validation context it needs, and
  :meth:`~AnalysisSpec.enrichment`, which turns a validated answer into the
  :class:`~enrich.models.enrichment.Enrichment` every other projection reads;
- :meth:`~AnalysisSpec.json_schema`: the strict JSON schema sent to the model (the taxonomy as
  enums);
- :meth:`~AnalysisSpec.update`: the ChatDash PUT body (wire names, only the fields written; the
  fields and the criteria's verdicts under ``customAnalysis``);
- :meth:`~AnalysisSpec.columns` and :meth:`~AnalysisSpec.flat`: the flat result row of batch
  outputs (CSV, Parquet) and of ``enrich report``, from a result or from the ledger.

A new kind of analysis (a custom field, a per-criterion verdict) is added here once and reaches
every projection.

Every text of an answer is bounded (characters; a longer one is invalid, so it is re-asked with
the error, and never stored, printed or written): the summary 4,000
(:data:`~enrich.models.enrichment.MAX_SUMMARY`), the topic and the subtopic 200 each
(``MAX_NAME``), a misunderstood query 1,000 (``MAX_QUERY``), the evaluation's reason and each
criterion's rationale 2,000 (``MAX_REASON``), a custom text field 4,000 (``MAX_TEXT``), a custom
list at most 100 items (``MAX_ITEMS``) of 500 each (``MAX_ITEM``), a custom json value 20,000 as
compact JSON (``MAX_JSON``); a long call's part notes likewise (summary 4,000, each request
1,000, outcome 2,000). The bounds are enforced when the answer is validated, not in the schema
sent: OpenAI's strict mode does not take ``maxLength``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    create_model,
    field_validator,
    model_validator,
)

from .enrichment import (
    MAX_ITEM,
    MAX_ITEMS,
    MAX_JSON,
    MAX_REASON,
    MAX_TEXT,
    AnswerBase,
    AnswerEvaluation,
    CriterionVerdict,
    Enrichment,
    Evaluation,
    MisunderstoodQuery,
    Verdict,
    strict_schema,
)
from .fields import ENRICHMENT_COLUMNS, Criterion, CustomField, check_distinct
from .jsonschema import check
from .transcript import CallMetadata
from .update import ConversationUpdate, UpdateEvaluation, UpdateQuery

__all__ = [
    "AnalysisSpec",
    "Topic",
    "Subtopic",
    "WRITABLE_FIELDS",
    "ENRICHMENT_COLUMNS",
    "build_update",
]

#: The enriched fields a run can write, by their ChatDash (wire) names.
WRITABLE_FIELDS = (
    "summary",
    "topic",
    "subtopic",
    "evaluation",
    "mistunderstoodQueries",
    "customAnalysis",
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


class _Answer(BaseModel):
    """A part of the model's answer built for a spec: closed, whitespace stripped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, populate_by_name=True)


class _CriterionAnswer(_Answer):
    rationale: str = Field(min_length=1, max_length=MAX_REASON)
    verdict: Verdict


_SCALARS: dict[str, Any] = {
    "string": Annotated[StrictStr, Field(max_length=MAX_TEXT)],
    "number": StrictFloat,
    "integer": StrictInt,
    "boolean": StrictBool,
    "list": Annotated[
        list[Annotated[StrictStr, Field(max_length=MAX_ITEM)]], Field(max_length=MAX_ITEMS)
    ],
}


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str))


def _value_type(field: CustomField) -> Any:
    """The Python type that validates ``field``'s value (strict: no "42" for 42)."""
    if field.type == "enum":
        kind: Any = Literal[tuple(field.values or ())]  # type: ignore[valid-type]
    elif field.type == "json":
        schema = field.schema_of_value()

        def conforms(value: Any) -> Any:
            if (size := _json_size(value)) > MAX_JSON:
                raise ValueError(f"{size:,} characters as JSON, over the {MAX_JSON:,} allowed")
            problems = check(value, schema)
            if problems:
                raise ValueError("; ".join(problems))
            return value

        return Annotated[Any, AfterValidator(conforms)]
    else:
        kind = _SCALARS[field.type]
    return kind if field.required else kind | None


class AnalysisSpec(_Frozen):
    """One analysis: what the model is asked for and what is written of its answer."""

    taxonomy: tuple[Topic, ...] = ()
    success_criteria: tuple[str | Criterion, ...] = ()
    fields: tuple[CustomField, ...] = ()
    write_fields: tuple[str, ...] = WRITABLE_FIELDS
    criteria_key: str = Field(
        default="criteria", min_length=1, description="customAnalysis's key for the verdicts"
    )
    unknown_evaluation: Literal["skip", "false"] = Field(
        default="skip",
        description="an overall unknown verdict: skip (evaluation not written) or false "
        "(isSuccess false)",
    )

    @field_validator("write_fields")
    @classmethod
    def _known_fields(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(v) - set(WRITABLE_FIELDS)
        if unknown:
            raise ValueError(f"not enriched fields: {', '.join(sorted(unknown))}")
        return v

    @model_validator(mode="after")
    def _distinct(self) -> AnalysisSpec:
        names = [f.name for f in self.fields]
        check_distinct(names, "field")
        if self.criteria and self.criteria_key in names:
            raise ValueError(
                f"field {self.criteria_key!r} would collide with the criteria's verdicts in "
                "customAnalysis (rename it, or set write.criteria_key)"
            )
        criteria = [c.name for c in self.criteria]
        check_distinct(criteria, "criterion")
        columns = [f"criterion_{c}" for c in criteria]
        clash = sorted(set(names) & set(columns))
        if clash:
            raise ValueError(
                f"field {clash[0]!r} would collide with the column of criterion "
                f"{clash[0].removeprefix('criterion_')!r} in result files; rename it"
            )
        return self

    @property
    def criteria(self) -> tuple[Criterion, ...]:
        """The named success criteria (each gets its own verdict)."""
        return tuple(c for c in self.success_criteria if isinstance(c, Criterion))

    # -- what the model is asked for ------------------------------------------------------------

    def output_model(self) -> type[AnswerBase]:
        """The model that validates the answer (with :meth:`context`)."""
        return self._output_model

    @cached_property
    def _output_model(self) -> type[AnswerBase]:
        extra: dict[str, Any] = {}
        if self.criteria:
            criteria = create_model(  # type: ignore[call-overload]
                "CriteriaAnswer",
                __base__=_Answer,
                **{
                    f"c{i}": (_CriterionAnswer, Field(alias=c.name))
                    for i, c in enumerate(self.criteria)
                },
            )
            extra["evaluation"] = (
                create_model(  # type: ignore[call-overload]
                    "EvaluationAnswer",
                    __base__=_Answer,
                    criteria=(criteria, ...),
                    reason=(str, Field(min_length=1, max_length=MAX_REASON)),
                    verdict=(Verdict, ...),
                ),
                ...,
            )
        else:
            extra["evaluation"] = (AnswerEvaluation, ...)
        if self.fields:
            custom = create_model(  # type: ignore[call-overload]
                "CustomAnalysisAnswer",
                __base__=_Answer,
                **{
                    f"f{i}": (_value_type(f), Field(alias=f.name))
                    for i, f in enumerate(self.fields)
                },
            )
            extra["custom_analysis"] = (custom, ...)
        return create_model("Answer", __base__=AnswerBase, **extra)  # type: ignore[call-overload]

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
        props = schema["properties"]
        if self.taxonomy:
            props["topic"]["enum"] = [t.name for t in self.taxonomy]
            if all(t.subtopics for t in self.taxonomy):
                subtopics: list[str] = []
                for t in self.taxonomy:
                    subtopics += [s.name for s in t.subtopics if s.name not in subtopics]
                props["subtopic"]["enum"] = subtopics
        if self.fields:  # each value's own schema (a json field's is the user's, made strict)
            custom = props["custom_analysis"]
            custom["properties"] = {f.name: f.schema_of_value() for f in self.fields}
            custom["required"] = [f.name for f in self.fields]
        return schema

    def enrichment(self, answer: BaseModel) -> Enrichment:
        """The :class:`Enrichment` of a validated answer of :meth:`output_model`."""
        given = answer.evaluation  # type: ignore[attr-defined]
        if self.criteria:
            verdicts = [
                CriterionVerdict(name=c.name, verdict=v.verdict, rationale=v.rationale)
                for c, v in zip(self.criteria, given.criteria.__dict__.values(), strict=True)
            ]
            evaluation = Evaluation(
                reason=given.reason,
                is_success={"success": True, "failure": False}.get(given.verdict),
                verdict=given.verdict,
                criteria=verdicts,
            )
        else:
            evaluation = Evaluation(reason=given.reason, is_success=given.is_success)
        custom: dict[str, Any] = {}
        if self.fields:
            custom = answer.custom_analysis.model_dump(by_alias=True)  # type: ignore[attr-defined]
        return Enrichment(
            summary=answer.summary,  # type: ignore[attr-defined]
            topic=answer.topic,  # type: ignore[attr-defined]
            subtopic=answer.subtopic,  # type: ignore[attr-defined]
            misunderstood_queries=[
                MisunderstoodQuery(question=q.question)
                for q in answer.misunderstood_queries  # type: ignore[attr-defined]
            ],
            evaluation=evaluation,
            custom=custom,
        )

    # -- projections of an enrichment -----------------------------------------------------------

    def withheld(self, enrichment: Enrichment) -> dict[str, str]:
        """The fields :meth:`update` leaves out of the PUT although asked to write them, and
        why (an unknown verdict is not forced into ``isSuccess: false``)."""
        if (
            "evaluation" in self.write_fields
            and enrichment.evaluation.is_success is None
            and self.unknown_evaluation == "skip"
        ):
            return {
                "evaluation": "the verdict is unknown (the conversation is too short or "
                "off-topic to judge): not written (write.unknown_evaluation: skip)"
            }
        return {}

    def update(
        self, enrichment: Enrichment, metadata: CallMetadata | None = None
    ) -> ConversationUpdate:
        """The PUT for ``enrichment``, narrowed to :attr:`write_fields` (wire names).

        The custom fields are written under ``customAnalysis`` as ``{name: value}``, nulls left
        out, with the named criteria's verdicts under :attr:`criteria_key`. With ``metadata``,
        the call's platform fields it holds are added under the PUT's own names:
        ``platformId``, ``phone``, ``phoneSecondary``, ``duration`` (minutes), ``endedReason``
        and ``url`` (the recording).
        """
        wanted = set(self.write_fields) - set(self.withheld(enrichment))
        values: dict[str, Any] = {}
        if "summary" in wanted:
            values["summary"] = enrichment.summary
        if "topic" in wanted:
            values["topic"] = enrichment.topic
        if "subtopic" in wanted:
            values["subtopic"] = enrichment.subtopic
        if "evaluation" in wanted:
            values["evaluation"] = UpdateEvaluation(
                isSuccess=bool(enrichment.evaluation.is_success),
                reason=enrichment.evaluation.reason,
            )
        if "mistunderstoodQueries" in wanted:
            values["mistunderstoodQueries"] = [
                UpdateQuery(question=q.question) for q in enrichment.misunderstood_queries
            ]
        if "customAnalysis" in wanted:
            custom = {k: v for k, v in enrichment.custom.items() if v is not None}
            if enrichment.evaluation.criteria:
                custom[self.criteria_key] = {
                    c.name: {"verdict": c.verdict, "rationale": c.rationale}
                    for c in enrichment.evaluation.criteria
                }
            if custom:
                values["customAnalysis"] = custom
        if metadata is not None:
            values.update(platform_fields(metadata))
        return ConversationUpdate(**values)

    def columns(self) -> tuple[str, ...]:
        """The enrichment's columns in a flat result row: the fixed ones, then with named
        criteria the overall ``verdict`` and one ``criterion_<name>`` each, then one per field."""
        named = (
            ("verdict", *(f"criterion_{c.name}" for c in self.criteria)) if self.criteria else ()
        )
        return (*ENRICHMENT_COLUMNS, *named, *(f.name for f in self.fields))

    def flat(self, enrichment: Enrichment | Mapping[str, Any] | None) -> dict[str, Any]:
        """The enrichment's flat columns, from the model or from its JSON form (the ledger's);
        every column is present (``None`` without an enrichment). A list is joined with
        ``" | "``; a json field's value is its JSON text."""
        if enrichment is None:
            return dict.fromkeys(self.columns())
        e = enrichment.model_dump(mode="json") if isinstance(enrichment, BaseModel) else enrichment
        evaluation = e.get("evaluation") or {}
        row: dict[str, Any] = {
            "topic": e.get("topic"),
            "subtopic": e.get("subtopic"),
            "is_success": evaluation.get("is_success"),
            "reason": evaluation.get("reason"),
            "summary": e.get("summary"),
            "misunderstood_queries": " | ".join(
                q["question"] for q in e.get("misunderstood_queries") or []
            ),
        }
        if self.criteria:
            row["verdict"] = evaluation.get("verdict")
            given = {c["name"]: c.get("verdict") for c in evaluation.get("criteria") or []}
            for c in self.criteria:
                row[f"criterion_{c.name}"] = given.get(c.name)
        custom = e.get("custom") or {}
        for f in self.fields:
            value = custom.get(f.name)
            if f.type == "list" and isinstance(value, list):
                value = " | ".join(str(v) for v in value)
            elif f.type == "json" and value is not None:
                value = json.dumps(value, ensure_ascii=False, sort_keys=True)
            row[f.name] = value
        return row


def build_update(
    enrichment: Enrichment,
    fields: Iterable[str] = WRITABLE_FIELDS,
    metadata: CallMetadata | None = None,
) -> ConversationUpdate:
    """The PUT for ``enrichment`` narrowed to ``fields``: :meth:`AnalysisSpec.update` of a spec
    that writes those fields."""
    return AnalysisSpec(write_fields=tuple(fields)).update(enrichment, metadata)


def platform_fields(metadata: CallMetadata) -> dict[str, Any]:
    """The call's platform metadata under the PUT's own names (``platformId``, ``phone``,
    ``phoneSecondary``, ``duration`` in minutes, ``endedReason``, ``url``), what it holds only."""
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
    return {k: v for k, v in platform.items() if v not in (None, "")}


def skipped_update(metadata: CallMetadata) -> ConversationUpdate:
    """The PUT for a call that was skipped, not analysed (nothing to analyse), when the call's
    metadata is written: its :func:`platform_fields`, and ``noAnswer: true`` when the payload
    says the call was not answered (:attr:`CallMetadata.answered` is False). No enriched field:
    there is no enrichment."""
    values = platform_fields(metadata)
    if metadata.answered is False:
        values["noAnswer"] = True
    return ConversationUpdate(**values)
