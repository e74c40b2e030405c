"""The agency's own analysis: typed custom fields, named success criteria, and presets.

A :class:`CustomField` is one value the model extracts from every conversation (``string``,
``number``, ``integer``, ``boolean``, ``enum`` with its ``values``, ``list`` of strings, or
``json`` with a JSON Schema for nested data). ``required: false`` means the model may answer
``null`` ("not mentioned"), never a made-up value. A :class:`Criterion` is a named success
criterion: the model gives it its own verdict (``success``, ``failure`` or ``unknown``) and a
one-sentence rationale.

:data:`PRESETS` are packaged field definitions switched on by name (``analysis.presets``);
``enrich presets`` prints them, and a field of the same name in ``analysis.fields`` overrides
one. :func:`resolve_fields` merges the two.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .jsonschema import SchemaError, make_strict, nullable

__all__ = [
    "CustomField",
    "Criterion",
    "FieldType",
    "PRESETS",
    "resolve_fields",
    "check_distinct",
    "RESERVED_NAMES",
    "ROW_HEAD",
    "ROW_TAIL",
    "ENRICHMENT_COLUMNS",
]

FieldType = Literal["string", "number", "integer", "boolean", "enum", "list", "json"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")

#: A flat result row's columns (CSV, Parquet, ``report``): these before the enrichment's,
#: ``skip_reason`` saying why a ``skipped`` conversation had nothing to analyse...
ROW_HEAD = ("agent_id", "conversation_id", "line", "status", "error", "skip_reason")
#: ... the columns of every enrichment (the analysis spec adds its criteria's and fields')...
ENRICHMENT_COLUMNS = (
    "topic",
    "subtopic",
    "is_success",
    "reason",
    "summary",
    "misunderstood_queries",
)
#: ... and these after them.
ROW_TAIL = (
    "dropped_queries",
    "model",
    "strategy",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "requests",
    "cost",
    "reused",
    "seconds",
)

#: Names a field cannot take: the result row's own columns (a field is a column of its own),
#: ``verdict`` (the overall verdict's column with named criteria) and ``skipped``.
RESERVED_NAMES = frozenset({*ROW_HEAD, *ENRICHMENT_COLUMNS, *ROW_TAIL, "verdict", "skipped"})


def check_distinct(names: Iterable[str], what: str) -> None:
    """A ``ValueError`` naming the ``names`` given more than once: ``field listed twice: a``."""
    names = list(names)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{what} listed twice: {', '.join(twice)}")


def _plain_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"{what} {value!r} is not a plain identifier (a letter, then letters, digits or _; "
            "at most 64)"
        )
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class CustomField(_Frozen):
    """One typed value to extract from every conversation (see the module's docstring)."""

    name: str
    type: FieldType
    description: str = ""
    values: tuple[str, ...] | None = Field(default=None, description="enum: the allowed values")
    required: bool = Field(
        default=True, description="false: the model may answer null (not mentioned)"
    )
    json_schema: dict[str, Any] | None = Field(
        default=None, alias="schema", description="json: the JSON Schema of the value"
    )

    @field_validator("name")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if v in RESERVED_NAMES:
            raise ValueError(f"field name {v!r} is taken by a result column; choose another")
        return _plain_name(v, "field name")

    @model_validator(mode="after")
    def _consistent(self) -> CustomField:
        if self.type == "enum":
            if not self.values:
                raise ValueError(f"field {self.name!r}: an enum needs its values")
            if len(set(self.values)) != len(self.values):
                raise ValueError(f"field {self.name!r}: an enum value is listed twice")
        elif self.values is not None:
            raise ValueError(f"field {self.name!r}: values are for type enum only")
        if self.type == "json":
            if self.json_schema is None:
                raise ValueError(f"field {self.name!r}: type json needs a schema")
            try:
                make_strict(self.json_schema)
            except SchemaError as exc:
                raise ValueError(f"field {self.name!r}: schema: {exc}") from None
        elif self.json_schema is not None:
            raise ValueError(f"field {self.name!r}: a schema is for type json only")
        return self

    def schema_of_value(self) -> dict[str, Any]:
        """The strict JSON schema of this field's value (``null`` allowed when not required)."""
        if self.type == "json":
            schema = make_strict(self.json_schema)
        elif self.type == "enum":
            schema = {"type": "string", "enum": list(self.values or ())}
        elif self.type == "list":
            schema = {"type": "array", "items": {"type": "string"}}
        else:
            schema = {"type": self.type}
        return schema if self.required else nullable(schema)

    def describe_type(self) -> str:
        """The type in words, for the prompt."""
        words = {
            "string": "text",
            "number": "a number",
            "integer": "a whole number",
            "boolean": "true or false",
            "list": "a list of short texts, empty if none",
            "json": "an object, as its schema says",
        }
        if self.type == "enum":
            kind = "one of: " + ", ".join(self.values or ())
        else:
            kind = words[self.type]
        return kind if self.required else f"{kind}, or null when the conversation does not say"


class Criterion(_Frozen):
    """A named success criterion: it gets its own verdict and rationale."""

    name: str
    description: str = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _identifier(cls, v: str) -> str:
        return _plain_name(v, "criterion name")


def _preset(name: str, type: FieldType, description: str, **kw: Any) -> CustomField:
    return CustomField(name=name, type=type, description=description, **kw)


#: Field definitions switched on by name in ``analysis.presets``.
PRESETS: dict[str, CustomField] = {
    f.name: f
    for f in (
        _preset(
            "sentiment",
            "enum",
            "The user's overall sentiment by the end of the conversation.",
            values=("positive", "neutral", "negative"),
        ),
        _preset(
            "voicemail",
            "boolean",
            "true if the call reached a voicemail or an answering machine rather than a person.",
        ),
        _preset(
            "callback_requested",
            "boolean",
            "true if the user asked to be called back, or accepted an offer of a callback.",
        ),
        _preset(
            "action_items",
            "list",
            "The follow-up actions the agent or the business committed to, each a short "
            "imperative phrase; empty if none.",
        ),
    )
}


def resolve_fields(
    presets: Iterable[str], fields: Iterable[CustomField]
) -> tuple[CustomField, ...]:
    """The presets named (in order), then the fields; a field named like a preset replaces it
    in the preset's place. Unknown presets and duplicate fields are a ``ValueError``."""
    presets = list(presets)
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise ValueError(
            f"unknown preset(s) {', '.join(map(repr, unknown))}; known: {', '.join(PRESETS)}"
        )
    own = list(fields)
    check_distinct((f.name for f in own), "field")
    mine = {f.name: f for f in own}
    out = [mine.pop(p, PRESETS[p]) for p in dict.fromkeys(presets)]
    return (*out, *(f for f in own if f.name in mine))
