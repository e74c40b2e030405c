"""A profile: one analysis set-up, resolved once and used for every conversation it covers.

It holds what the engine needs to ask and to write for a conversation: the analysis spec (and
so the output model, the JSON schema and the PUT body), the prompt templates, the analysis
settings the templates read, the LLM settings that bound a request, and the part of every
fingerprint that does not depend on the transcript. :class:`~enrich.Enricher` keeps one profile
per set-up and picks the conversation's by its agent.
"""

from __future__ import annotations

from typing import Any

from ..config import AnalysisSettings, Config, LLMSettings
from ..models.fingerprint import Fingerprint, digest
from ..models.spec import AnalysisSpec
from ..models.transcript import Transcript
from ..prompts import Prompts

__all__ = ["Profile"]


class Profile:
    """The resolved analysis of one set-up (today, the configuration's ``analysis``)."""

    def __init__(self, config: Config, *, name: str = "default") -> None:
        self.name = name
        self.analysis: AnalysisSettings = config.analysis
        self.llm: LLMSettings = config.llm
        self.spec: AnalysisSpec = config.spec()
        self.prompts = Prompts(config.analysis.prompts_dir)
        self.write_metadata = config.write.metadata
        self.min_user_turns = config.analysis.min_user_turns
        self._static: tuple[str, str, str] | None = None

    def __repr__(self) -> str:
        return f"Profile({self.name!r})"

    @property
    def schema(self) -> dict[str, Any]:
        """The JSON schema the model is asked to follow."""
        return self.spec.json_schema()

    @property
    def mode(self) -> str:
        return self.llm.mode

    def messages(self, transcript: Transcript) -> list[dict[str, str]]:
        """The chat messages for one conversation that fits one request."""
        return self.prompts.messages(
            transcript, self.analysis, schema=self.schema, mode=self.llm.mode
        )

    def update(self, enrichment: Any, transcript: Transcript) -> dict[str, Any]:
        """The PUT body for ``enrichment`` of ``transcript`` (metadata too, when configured)."""
        metadata = transcript.metadata if self.write_metadata else None
        return self.spec.update(enrichment, metadata).body()

    def static_fingerprint(self) -> tuple[str, str, str]:
        """The model, prompts-and-analysis and taxonomy hashes of every fingerprint (read once).

        Computed as release 0.1 computed them (fingerprint version 1), so ledgers it wrote are
        reused."""
        if self._static is None:
            a = self.analysis
            self._static = (
                self.llm.model,
                digest(
                    [self.prompts.fingerprint(), a.language, a.business_context, a.success_criteria]
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
