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
from typing import Any, Self

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..errors import ConfigError, validation_errors, validation_problems
from ..models.spec import WRITABLE_FIELDS, AnalysisSpec, Subtopic, Topic
from .sections import (
    DEFAULT_CHATDASH_BASE_URL,
    DEFAULT_PRICING,
    ENV_VARS,
    AnalysisSettings,
    ChatDashSettings,
    EvalSettings,
    InputSettings,
    LedgerSettings,
    LLMSettings,
    Price,
    Section,
    ServeSettings,
    WriteSettings,
    key_problem,
)

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
    "ServeSettings",
    "EvalSettings",
    "Price",
    "load_config",
    "ENV_VARS",
    "WRITABLE_FIELDS",
    "DEFAULT_CHATDASH_BASE_URL",
    "key_problem",
    "config_candidates",
]


class Config(Section):
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
    serve: ServeSettings = Field(default_factory=ServeSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
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
        keys = [s for s in (self.llm.api_key, self.chatdash.api_key) if s is not None]
        return keys + self.serve.secrets() + self.ledger.secrets()

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


def config_candidates() -> list[Path]:
    """Where a configuration file is looked for when none is named, in order:
    ``./enrich.yaml`` (the current directory), then the user's configuration directory
    (``~/.config/enrich/enrich.yaml`` on Linux, honouring ``XDG_CONFIG_HOME``)."""
    from platformdirs import user_config_path

    return [
        Path.cwd() / "enrich.yaml",
        user_config_path("enrich", appauthor=False) / "enrich.yaml",
    ]


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    discover: bool = True,
) -> Config:
    """Resolve the configuration.

    ``overrides`` (the CLI's flags) win over ``environ`` (default ``os.environ``), which wins over
    the YAML file, which wins over the defaults. ``overrides`` is nested like the file:
    ``{"llm": {"model": "gpt-4.1-mini"}}``.

    The file is ``path``, else ``$ENRICH_CONFIG`` (``none`` or ``off``: no file), else, with
    ``discover``, the first of :func:`config_candidates` that exists: ``./enrich.yaml``, then
    ``enrich.yaml`` in the user's configuration directory. ``Config.source`` says which.
    """
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    origins: dict[str, Any] = {}

    file_path = path if path is not None else (env.get("ENRICH_CONFIG") or None)
    if path is None and str(file_path or "").lower() in ("off", "none"):
        file_path = None  # ENRICH_CONFIG=none: no file, not even one found
    elif file_path is None and discover:
        file_path = next((p for p in config_candidates() if p.is_file()), None)
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
