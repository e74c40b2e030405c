"""A profile: one analysis set-up, resolved once and used for every conversation it covers.

It holds what the engine needs to ask and to write for a conversation: the analysis spec (and
so the output model, the JSON schema and the PUT body), the prompt templates, the analysis
settings the templates read, the LLM settings that bound a request, and the part of every
fingerprint that does not depend on the transcript. :class:`~enrich.Enricher` keeps one profile
per set-up and picks the conversation's by its agent: the default one (``analysis``), and one for
each agent whose ``agents`` overrides change it (:meth:`~enrich.config.Config.for_agent`). As the
fingerprint's prompts-and-analysis and taxonomy hashes are the profile's, changing one agent's
set-up re-enriches that agent's conversations only.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

from ..config import AnalysisSettings, Config, LLMSettings
from ..errors import TemplateError
from ..models.fingerprint import Fingerprint, digest
from ..models.spec import AnalysisSpec
from ..models.transcript import Transcript
from ..prompts import BASE_TEMPLATES, Prompts, conversation_context, system_templates

__all__ = ["Profile", "Profiles", "DEFAULT_PROFILE"]

#: The name of the profile of ``analysis`` itself (an agent's profile is named by its id).
DEFAULT_PROFILE = "default"
#: The most instructions a profile keeps rendered (one per value of the variables they read).
_MAX_SYSTEMS = 16


class Profile:
    """The resolved analysis of one set-up: ``config.analysis`` (for an agent, ``config`` is
    :meth:`Config.for_agent <enrich.config.Config.for_agent>`'s)."""

    def __init__(self, config: Config, *, name: str = DEFAULT_PROFILE) -> None:
        self.name = name
        self.analysis: AnalysisSettings = config.analysis
        self.llm: LLMSettings = config.llm
        self.spec: AnalysisSpec = config.spec()
        try:
            self.prompts = Prompts(config.analysis.prompts_dir)
        except TemplateError as exc:
            if name == DEFAULT_PROFILE:
                raise
            where = f"(agents.{name}.prompts_dir)"
            message = str(exc).replace("(analysis.prompts_dir)", where)
            raise TemplateError(
                message if where in message else f"agent {name}: {message}"
            ) from None
        self.write_metadata = config.write.metadata
        self.min_user_turns = config.analysis.min_user_turns
        self._static: tuple[str, str, str] | None = None
        self._systems: dict[tuple[Any, ...], str] = {}

    def __repr__(self) -> str:
        return f"Profile({self.name!r})"

    @property
    def schema(self) -> dict[str, Any]:
        """The JSON schema the model is asked to follow."""
        return self.spec.json_schema()

    @property
    def mode(self) -> str:
        return self.llm.mode

    @cached_property
    def schema_json(self) -> str:
        """:attr:`schema` as JSON (ASCII), as the context budget counts it."""
        return json.dumps(self.schema)

    @cached_property
    def static_context(self) -> dict[str, Any]:
        """The templates' variables that are the same for every conversation (computed once;
        the templates' sandbox is immutable, so they cannot change it)."""
        return self.prompts.static_context(
            self.analysis, schema=self.schema, mode=self.llm.mode, spec=self.spec
        )

    def context(
        self, transcript: Transcript | None = None, turns: Any = None, **extra: Any
    ) -> dict[str, Any]:
        """Every template's variables for ``transcript`` (or its ``turns``), as
        :meth:`Prompts.context <enrich.prompts.Prompts.context>` makes them."""
        return {**self.static_context, **conversation_context(transcript, turns), **extra}

    @cached_property
    def _system_reads(self) -> tuple[str, ...] | None:
        reads = self.prompts.conversation_variables(system_templates(self.static_context))
        return None if reads is None else tuple(sorted(reads))

    def system(self, context: dict[str, Any]) -> str:
        """The instructions for ``context`` (:meth:`Prompts.system
        <enrich.prompts.Prompts.system>`). Templates that read no conversation's variables (the
        packaged ones read only ``strategy``) render the same text for every conversation: it
        is rendered once per value of those they read, and reused."""
        reads = self._system_reads
        if reads is None:
            return self.prompts.system(context)
        try:
            key = tuple(context[name] for name in reads)
            text = self._systems.get(key)
        except (KeyError, TypeError):  # a variable missing, or one that is not hashable
            return self.prompts.system(context)
        if text is None:
            text = self.prompts.system(context)
            if len(self._systems) < _MAX_SYSTEMS:
                self._systems[key] = text
        return text

    def messages(self, transcript: Transcript) -> list[dict[str, str]]:
        """The chat messages for one conversation that fits one request."""
        return self.prompts.messages(
            transcript, self.analysis, schema=self.schema, mode=self.llm.mode, spec=self.spec
        )

    def update(self, enrichment: Any, transcript: Transcript) -> dict[str, Any]:
        """The PUT body for ``enrichment`` of ``transcript`` (metadata too, when configured)."""
        metadata = transcript.metadata if self.write_metadata else None
        return self.spec.update(enrichment, metadata).body()

    def static_fingerprint(self) -> tuple[str, str, str]:
        """The model, prompts-and-analysis and taxonomy hashes of every fingerprint (read once).

        An analysis with neither its own fields nor named criteria hashes as release 0.1 did
        (fingerprint version 1), so ledgers it wrote are reused; the fields, the named criteria
        and ``analysis.j2`` count only where they are used."""
        if self._static is None:
            a, spec = self.analysis, self.spec
            criteria = [c if isinstance(c, str) else c.model_dump() for c in a.success_criteria]
            names = list(BASE_TEMPLATES)
            extra: list[Any] = []
            if spec.fields or spec.criteria:
                names.append("analysis.j2")
                extra = [[f.model_dump(mode="json", by_alias=True) for f in spec.fields]]
            self._static = (
                self.llm.model,
                digest(
                    [self.prompts.fingerprint(names), a.language, a.business_context, criteria]
                    + extra
                ),
                digest([t.model_dump() for t in a.taxonomy]),
            )
        return self._static

    def fingerprint(self, transcript: Transcript) -> Fingerprint:
        """What the enrichment of ``transcript`` depends on."""
        model, prompt_hash, taxonomy_hash = self.static_fingerprint()
        turns = [(t.role.value, t.text) for t in transcript.turns]
        return Fingerprint(
            transcript_hash=digest(turns),
            model=model,
            prompt_hash=prompt_hash,
            taxonomy_hash=taxonomy_hash,
        )


class Profiles:
    """Every profile of a configuration, built at once (a broken one fails before any call):
    the default, and one per agent whose ``agents`` overrides change the analysis. An agent
    without overrides, or whose overrides change nothing, shares the default."""

    def __init__(self, config: Config) -> None:
        self.default = Profile(config)
        self._by_agent: dict[str, Profile] = {}
        for agent_id in config.agents:
            agent = config.for_agent(agent_id)
            same = agent.analysis == config.analysis
            self._by_agent[agent_id] = self.default if same else Profile(agent, name=agent_id)

    def __repr__(self) -> str:
        return f"Profiles({len(self._by_agent)} agent(s) with overrides)"

    def get(self, agent_id: str | None) -> Profile:
        """The profile of ``agent_id``'s conversations (``None``: the default)."""
        if agent_id is None:
            return self.default
        return self._by_agent.get(agent_id, self.default)
