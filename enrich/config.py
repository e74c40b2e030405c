"""Configuration, resolved once: flags, then environment, then the YAML file, then defaults.

:func:`load_config` builds a :class:`Config` from those layers. Every value remembers which layer
gave it, so an invalid one is reported as ``ENRICH_LLM_MODE: ...`` or ``config.yaml: llm.mode:
...`` rather than as a bare validation error. Secrets are :class:`pydantic.SecretStr`: they show as
``'**********'`` in reprs and dumps.

``config.example.yaml`` at the top of the repository documents every key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .errors import ConfigError, validation_errors, validation_problems
from .models.fields import Criterion, CustomField, resolve_fields
from .models.spec import WRITABLE_FIELDS, AnalysisSpec, Subtopic, Topic

__all__ = [
    "Config",
    "LLMSettings",
    "ChatDashSettings",
    "AnalysisSettings",
    "Topic",
    "Subtopic",
    "WriteSettings",
    "InputSettings",
    "LedgerSettings",
    "Price",
    "load_config",
    "ENV_VARS",
    "WRITABLE_FIELDS",
    "DEFAULT_CHATDASH_BASE_URL",
]

DEFAULT_CHATDASH_BASE_URL = "https://api.chat-dash.com/v1/public"

#: Environment variables and the setting each one fills.
ENV_VARS: dict[str, tuple[str, ...]] = {
    "OPENAI_API_KEY": ("llm", "api_key"),
    "OPENAI_BASE_URL": ("llm", "base_url"),
    "ENRICH_MODEL": ("llm", "model"),
    "ENRICH_LLM_MODE": ("llm", "mode"),
    "CHATDASH_API_KEY": ("chatdash", "api_key"),
    "CHATDASH_BASE_URL": ("chatdash", "base_url"),
    "ENRICH_PROMPTS_DIR": ("analysis", "prompts_dir"),
    "ENRICH_LEDGER": ("ledger", "path"),
}

LLMMode = Literal["json_schema", "json_object", "tools"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_CONTROL_NAMES = {"\r": "a carriage return (\\r)", "\n": "a line feed (\\n)", "\t": "a tab"}


def key_problem(value: str) -> str | None:
    """What makes ``value`` unusable as an API key in an HTTP header, in words that never show
    the key: a control character (a ``\\r`` left by a Windows ``.env`` file), a character that is
    not ASCII, or whitespace around it. ``None`` for a usable key."""
    for i, char in enumerate(value):
        if ord(char) < 0x20 or ord(char) == 0x7F:
            what = _CONTROL_NAMES.get(char, f"a control character (U+{ord(char):04X})")
            where = "at its end" if not value[i:].strip() else f"at position {i + 1}"
            hint = {"\r": " (a Windows line ending?)", "\n": " (a line ending?)"}.get(char, "")
            return f"the key contains {what} {where}{hint}: remove it"
        if ord(char) > 0x7E:
            return (
                f"the key contains a character that is not ASCII (U+{ord(char):04X}, at position "
                f"{i + 1}): an HTTP header cannot carry it; copy the key again"
            )
    if value != value.strip():
        return "the key starts or ends with a space: remove it"
    return None


def _checked_key(v: SecretStr | None) -> SecretStr | None:
    if v is not None and (problem := key_problem(v.get_secret_value())) is not None:
        raise ValueError(problem)
    return v


class LLMSettings(_Section):
    """The model and how to reach it (any OpenAI-compatible server)."""

    model: str = "gpt-4o-mini"
    mode: LLMMode = "json_schema"
    api_key: SecretStr | None = None
    base_url: str | None = None
    temperature: float | None = Field(default=0.0, ge=0, le=2)
    max_tokens: int = Field(default=2000, ge=16)
    timeout: float = Field(
        default=60.0,
        gt=0,
        description="seconds for one request, its whole answer included (each try)",
    )
    max_retries: int = Field(default=2, ge=0, le=10, description="transport retries (429, 5xx)")
    max_reasks: int = Field(default=2, ge=0, le=10, description="re-asks after invalid output")
    context_tokens: int = Field(
        default=128_000, ge=1024, description="the model's context window, in tokens"
    )
    tokenizer: str = Field(default="estimate", description="'estimate' or 'tiktoken:ENCODING'")
    part_concurrency: int = Field(
        default=4, ge=1, le=64, description="parts of a long call summarised at once"
    )
    rpm: float | None = Field(default=None, gt=0, description="requests per minute allowed")
    tpm: float | None = Field(default=None, gt=0, description="tokens per minute allowed")

    # a rejected key must not show in a pydantic error's input_value either
    model_config = ConfigDict(hide_input_in_errors=True)

    @field_validator("api_key")
    @classmethod
    def _usable_key(cls, v: SecretStr | None) -> SecretStr | None:
        return _checked_key(v)

    @field_validator("base_url", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return v or None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v


class ChatDashSettings(_Section):
    """Where enrichments are written."""

    api_key: SecretStr | None = None
    base_url: str = DEFAULT_CHATDASH_BASE_URL
    timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds for one request, its whole answer included (each try)",
    )
    max_attempts: int = Field(default=4, ge=1, le=20, description="tries of one request")
    max_total_seconds: float = Field(
        default=120.0, gt=0, description="no retry starts after this long on one request"
    )
    backoff: float = Field(default=0.5, ge=0, description="first retry delay in seconds")
    max_backoff: float = Field(default=30.0, ge=0, description="longest single wait")
    max_connections: int = Field(
        default=16, ge=1, le=256, description="requests to ChatDash at once (each is quick)"
    )

    # a rejected key must not show in a pydantic error's input_value either
    model_config = ConfigDict(hide_input_in_errors=True)

    @field_validator("api_key")
    @classmethod
    def _usable_key(cls, v: SecretStr | None) -> SecretStr | None:
        return _checked_key(v)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class AnalysisSettings(_Section):
    """What the prompts know about the business."""

    language: str = "English"
    business_context: str = ""
    success_criteria: list[str | Criterion] = Field(
        default_factory=lambda: [
            "The user's request was resolved, or correctly routed to someone who can resolve it.",
            "The agent gave correct information and did not invent facts.",
            "The user did not leave frustrated or without an answer.",
        ],
        description="plain sentences, or {name, description}: a named criterion gets its own "
        "verdict (success, failure, unknown) and rationale",
    )
    taxonomy: list[Topic] = Field(default_factory=list)
    fields: list[CustomField] = Field(
        default_factory=list,
        description="your own typed fields: {name, type, description, values?, required?, schema?}",
    )
    presets: list[str] = Field(
        default_factory=list, description="packaged fields switched on by name (enrich presets)"
    )
    prompts_dir: Path | None = None
    min_user_turns: int = Field(
        default=1,
        ge=0,
        description="a transcript with fewer user turns is skipped (voicemail, no answer, a "
        "caller who hung up before speaking): no LLM call, nothing paid",
    )

    @field_validator("success_criteria", mode="before")
    @classmethod
    def _one_string_is_a_list(cls, v: Any) -> Any:
        v = [v] if isinstance(v, str) else v
        if not isinstance(v, list):
            return v
        out = []
        for i, item in enumerate(v):  # a mapping is a named criterion: say what is wrong with it
            if isinstance(item, Mapping):
                try:
                    item = Criterion.model_validate(item)
                except ValidationError as exc:
                    raise ValueError(f"item {i}: {validation_errors(exc)[0]}") from None
            out.append(item)
        return out

    @field_validator("taxonomy")
    @classmethod
    def _unique_topics(cls, v: list[Topic]) -> list[Topic]:
        names = [t.name for t in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"topic listed twice: {', '.join(dupes)}")
        return v

    @field_validator("success_criteria")
    @classmethod
    def _unique_criteria(cls, v: list[str | Criterion]) -> list[str | Criterion]:
        names = [c.name for c in v if isinstance(c, Criterion)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"criterion listed twice: {', '.join(dupes)}")
        return v

    @field_validator("presets")
    @classmethod
    def _known_presets(cls, v: list[str]) -> list[str]:
        resolve_fields(v, ())  # an unknown preset names the known ones
        return v

    @field_validator("fields")
    @classmethod
    def _unique_fields(cls, v: list[CustomField]) -> list[CustomField]:
        resolve_fields((), v)  # a field listed twice
        return v

    def resolved_fields(self) -> tuple[CustomField, ...]:
        """The presets switched on, then the fields (one of the same name overrides a preset)."""
        return resolve_fields(self.presets, self.fields)


class WriteSettings(_Section):
    """Which enriched fields are written to ChatDash (their wire names)."""

    fields: list[
        Literal[
            "summary", "topic", "subtopic", "evaluation", "mistunderstoodQueries", "customAnalysis"
        ]
    ] = Field(default_factory=lambda: list(WRITABLE_FIELDS), min_length=1)
    unknown_evaluation: Literal["skip", "false"] = Field(
        default="skip",
        description="an overall unknown verdict (named criteria): skip leaves evaluation "
        "unwritten; false writes isSuccess false",
    )
    criteria_key: str = Field(
        default="criteria",
        min_length=1,
        description="the key of customAnalysis under which the named criteria's verdicts go",
    )
    metadata: bool = Field(
        default=False,
        description="also write the call's platform metadata (platformId, phone, phoneSecondary, "
        "duration, endedReason, url) when the transcript's payload has it",
    )


class InputSettings(_Section):
    max_bytes: int = Field(default=50 * 1024 * 1024, gt=0)


class LedgerSettings(_Section):
    """Where results are kept (see :mod:`enrich.ledger`)."""

    enabled: bool = True
    path: Path | None = Field(default=None, description="default: the user's data directory")

    @field_validator("path", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return v or None


class Price(_Section):
    """US dollars per million tokens."""

    input: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0, description="default: input")
    output: float = Field(ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        cached = self.input if self.cached_input is None else self.cached_input
        fresh = max(0, prompt_tokens - cached_tokens)
        return (fresh * self.input + cached_tokens * cached + completion_tokens * self.output) / 1e6


#: OpenAI's list prices (USD per million tokens) as published in 2025; set `pricing` in the
#: configuration for your own models, discounts or newer prices.
DEFAULT_PRICING: dict[str, dict[str, float]] = {
    "gpt-4o-mini": {"input": 0.15, "cached_input": 0.075, "output": 0.60},
    "gpt-4o": {"input": 2.50, "cached_input": 1.25, "output": 10.00},
    "gpt-4.1": {"input": 2.00, "cached_input": 0.50, "output": 8.00},
    "gpt-4.1-mini": {"input": 0.40, "cached_input": 0.10, "output": 1.60},
    "gpt-4.1-nano": {"input": 0.10, "cached_input": 0.025, "output": 0.40},
}


class Config(_Section):
    """Everything a run needs. Build it with :func:`load_config`, or directly in code."""

    llm: LLMSettings = Field(default_factory=LLMSettings)
    chatdash: ChatDashSettings = Field(default_factory=ChatDashSettings)
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    agents: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per ChatDash agent id, overrides of `analysis` merged over it "
        "(see :meth:`Config.for_agent`)",
    )
    write: WriteSettings = Field(default_factory=WriteSettings)
    input: InputSettings = Field(default_factory=InputSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    pricing: dict[str, Price] = Field(
        default_factory=lambda: {k: Price(**v) for k, v in DEFAULT_PRICING.items()}
    )
    source: str | None = Field(default=None, description="the YAML file read, if any")

    @field_validator("pricing", mode="before")
    @classmethod
    def _on_top_of_defaults(cls, v: Any) -> Any:
        return {**DEFAULT_PRICING, **v} if isinstance(v, dict) else v

    @field_validator("agents", mode="before")
    @classmethod
    def _agent_overrides(cls, v: Any) -> Any:
        if v is None:  # `agents:` with every agent commented out
            return {}
        if not isinstance(v, Mapping):
            return v  # pydantic says what is wrong
        out: dict[Any, Any] = {}
        for agent_id, overrides in v.items():
            if not isinstance(agent_id, str):
                raise ValueError(f"agent id {agent_id!r} is not a string: quote it in the YAML")
            # an agent whose overrides are all commented out uses the defaults
            out[agent_id] = {} if overrides is None else overrides
        return out

    def for_agent(self, agent_id: str | None) -> Config:
        """The configuration of the conversations of ``agent_id``: its ``agents`` overrides
        merged over ``analysis`` (mappings key by key; lists and scalars replaced). An agent
        without overrides (or ``None``) gets the defaults. The result has no ``agents`` of its
        own: it is the set-up of one profile."""
        overrides = self.agents.get(agent_id) if agent_id is not None else None
        if not overrides:
            return self.model_copy(update={"agents": {}}) if self.agents else self
        return self._with_overrides(overrides)

    def _with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        analysis = _overlay(self.analysis.model_dump(round_trip=True, by_alias=True), overrides)
        sections = {name: getattr(self, name) for name in type(self).model_fields}
        return type(self).model_validate({**sections, "analysis": analysis, "agents": {}})

    def price(self, model: str) -> Price | None:
        """The price of ``model``: an exact entry, else the longest entry it starts with
        (``gpt-4o-mini-2024-07-18`` is priced as ``gpt-4o-mini``)."""
        if model in self.pricing:
            return self.pricing[model]
        matches = [name for name in self.pricing if model.startswith(name)]
        return self.pricing[max(matches, key=len)] if matches else None

    def cost(self, model: str, usage: Any) -> float | None:
        price = self.price(model)
        if price is None:
            return None
        return price.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)

    @model_validator(mode="after")
    def _spec_builds(self) -> Self:
        """The analysis must make a spec (a field colliding with write.criteria_key...)."""
        try:
            self.spec()
        except ValidationError as exc:
            raise PydanticCustomError("spec", "; ".join(validation_errors(exc))) from None
        return self

    @model_validator(mode="after")
    def _agent_profiles_are_valid(self) -> Self:
        """Every agent's analysis, merged, is checked now (after the default's own checks): a
        broken profile fails at load time, before any call, as ``agents.<id>.<key>``."""
        for agent_id, overrides in self.agents.items():
            try:
                self._with_overrides(overrides)
            except ValidationError as exc:
                raise _under_agent(exc, agent_id) from None
        return self

    def spec(self) -> AnalysisSpec:
        """The analysis this configuration asks for and writes (see :mod:`enrich.models.spec`)."""
        return AnalysisSpec(
            taxonomy=tuple(self.analysis.taxonomy),
            success_criteria=tuple(self.analysis.success_criteria),
            fields=self.analysis.resolved_fields(),
            write_fields=tuple(self.write.fields),
            criteria_key=self.write.criteria_key,
            unknown_evaluation=self.write.unknown_evaluation,
        )

    def report_spec(self) -> AnalysisSpec:
        """A spec for reading results of every profile at once (result files, ``report``): the
        default analysis's, with the custom fields and named criteria of every agent's profile
        added (the first definition of a name wins)."""
        spec = self.spec()
        fields, criteria = list(spec.fields), list(spec.criteria)
        for agent_id in self.agents:
            other = self.for_agent(agent_id).spec()
            fields += [f for f in other.fields if f.name not in {g.name for g in fields}]
            criteria += [c for c in other.criteria if c.name not in {d.name for d in criteria}]
        if len(fields) == len(spec.fields) and len(criteria) == len(spec.criteria):
            return spec
        plain = tuple(c for c in spec.success_criteria if isinstance(c, str))
        return AnalysisSpec(  # a new spec, not a copy: a spec caches its models and schema
            taxonomy=spec.taxonomy,
            success_criteria=(*plain, *criteria),
            fields=tuple(fields),
            write_fields=spec.write_fields,
            criteria_key=spec.criteria_key,
            unknown_evaluation=spec.unknown_evaluation,
        )

    def secrets(self) -> list[SecretStr]:
        return [s for s in (self.llm.api_key, self.chatdash.api_key) if s is not None]

    def redacted(self) -> dict[str, Any]:
        """The configuration as plain data, with secrets shown as ``'***'`` (or ``null``)."""
        data = self.model_dump(mode="json")
        for section in ("llm", "chatdash"):
            if data[section]["api_key"] is not None:
                data[section]["api_key"] = "***"
        return data


def _overlay(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` over ``base``: mappings merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _overlay(out[key], value)
        else:
            out[key] = value
    return out


def _under_agent(exc: ValidationError, agent_id: str) -> ValidationError:
    """The errors of one agent's configuration, placed where its overrides are written:
    ``analysis.taxonomy`` becomes ``agents.<id>.taxonomy``."""
    details: list[Any] = []
    for e in exc.errors(include_url=False):
        loc = tuple(e["loc"])
        loc = loc[1:] if loc[:1] == ("analysis",) else loc
        kind = PydanticCustomError(e["type"], e["msg"])  # the same type and message
        details.append({"type": kind, "loc": ("agents", agent_id, *loc), "input": e["input"]})
    return ValidationError.from_exception_data(exc.title, details)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping of sections")
    # A section whose keys are all commented out reads as null: it means "all defaults".
    return {k: v for k, v in data.items() if v is not None}


def _merge(into: dict[str, Any], layer: Mapping[str, Any], origin: str, origins: dict) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping):
            if not isinstance(into.get(key), dict):
                into[key] = {}
            if not isinstance(origins.get(key), dict):
                origins[key] = {}
            _merge(into[key], value, origin, origins[key])
        else:
            into[key] = value
            origins[key] = origin


def _origin(origins: Any, loc: tuple[Any, ...]) -> str | None:
    for part in loc:
        if not isinstance(origins, dict) or part not in origins:
            break
        origins = origins[part]
    return origins if isinstance(origins, str) else None


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Resolve the configuration.

    ``overrides`` (the CLI's flags) win over ``environ`` (default ``os.environ``), which wins over
    the YAML file (``path``, else ``$ENRICH_CONFIG``), which wins over the defaults. ``overrides``
    is nested like the file: ``{"llm": {"model": "gpt-4.1-mini"}}``.
    """
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    origins: dict[str, Any] = {}

    file_path = path if path is not None else (env.get("ENRICH_CONFIG") or None)
    if file_path is not None:
        file_path = Path(file_path).expanduser()
        data = _read_yaml(file_path)
        _merge(merged, data, str(file_path), origins)
        merged["source"] = str(file_path)

    for var, (section, key) in ENV_VARS.items():
        value = env.get(var)
        if value:  # an empty variable counts as unset
            _merge(merged, {section: {key: value}}, var, origins)

    ledger_path = str((merged.get("ledger") or {}).get("path") or "")
    if ledger_path.lower() in ("off", "none", "false", "0"):
        merged["ledger"]["path"] = None
        merged["ledger"]["enabled"] = False

    if overrides:
        _merge(merged, _drop_none(overrides), "command line", origins)

    # a relative prompts folder, in `analysis` or in an agent's overrides, is relative to the file
    sections: list[tuple[Any, ...]] = [("analysis",)]
    if isinstance(merged.get("agents"), dict):
        sections += [("agents", agent_id) for agent_id in merged["agents"]]
    for loc in sections:
        section = merged.get(loc[0]) if len(loc) == 1 else merged["agents"][loc[1]]
        value = section.get("prompts_dir") if isinstance(section, dict) else None
        if not value or not isinstance(value, str | Path):
            continue  # unset, or not a path (validation says so)
        prompts_dir = Path(value).expanduser()
        origin = _origin(origins, (*loc, "prompts_dir"))
        if file_path is not None and origin == str(file_path) and not prompts_dir.is_absolute():
            prompts_dir = Path(file_path).parent / prompts_dir  # relative to the file
        section["prompts_dir"] = prompts_dir

    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        loc, msg, kind = validation_problems(exc)[0]
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        origin = _origin(origins, loc) or (str(file_path) if file_path else "configuration")
        if kind == "extra_forbidden":
            msg = "unknown setting (see config.example.yaml for every key)"
        if origin in ENV_VARS:
            where = origin
        else:
            where = f"{origin}: {dotted}"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{where}: {msg}{more}") from None


def _drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            sub = _drop_none(v)
            if sub:
                out[k] = sub
        elif v is not None:
            out[k] = v
    return out
