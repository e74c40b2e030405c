"""A transcript: the ordered turns of one conversation, and what the platform said of the call.

Every supported format (:mod:`enrich.formats`) becomes a :class:`Transcript`: turns with a
:class:`Role` (user, AI agent, human agent, tool), their start times where the payload has them,
and the call's :class:`CallMetadata`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["Role", "ROLE_LABELS", "Turn", "Transcript", "CallMetadata", "has_words"]


def has_words(text: str | None) -> bool:
    """Whether ``text`` holds anything to read (a letter or a digit): ``...`` does not."""
    return bool(text) and any(ch.isalnum() for ch in text)  # type: ignore[union-attr]


class Role(StrEnum):
    """Who spoke a turn."""

    USER = "user"
    AGENT = "agent"  # the AI agent
    HUMAN_AGENT = "human_agent"  # a person who took over from the AI
    TOOL = "tool"  # a tool's result, offered as context, never as dialogue


ROLE_LABELS = {
    Role.USER: "User",
    Role.AGENT: "Agent",
    Role.HUMAN_AGENT: "Human agent",
    Role.TOOL: "Tool",
}


class Turn(BaseModel):
    """One turn of the dialogue. ``start`` is seconds from the start of the call, when known."""

    role: Role
    text: str
    start: float | None = None


class CallMetadata(BaseModel):
    """What a platform's payload says about the call, beyond the dialogue. All optional.

    ``phone`` and ``phone_secondary`` follow ChatDash's meaning: for Retell the FROM and the TO
    number; for Vapi and ElevenLabs the CUSTOMER and the AGENT number. ``answered`` is what the
    payload says of the call being picked up (``None``: it does not say); a call that was not
    answered has nothing to analyse, and is written back as ``noAnswer`` when metadata is written.
    """

    platform: str | None = None
    platform_id: str | None = None
    agent_id: str | None = Field(default=None, description="the platform's own agent id")
    phone: str | None = None
    phone_secondary: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_seconds: float | None = None
    ended_reason: str | None = None
    recording_url: str | None = None
    cost: float | None = None
    answered: bool | None = Field(
        default=None,
        description="whether the call was answered: False when the payload says it was not (no "
        "answer, busy, voicemail...), True when it says the call connected, None when it does "
        "not say (each platform format lists what it reads)",
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="anything else worth keeping (the platform's analysis...)"
    )

    def is_empty(self) -> bool:
        return not any(v for v in self.model_dump().values())


class Transcript(BaseModel):
    """An ordered dialogue, the format it was read from, and the call's metadata (if any)."""

    turns: list[Turn]
    format: str
    metadata: CallMetadata = Field(default_factory=CallMetadata)

    @property
    def user_turns(self) -> list[Turn]:
        return [t for t in self.turns if t.role == Role.USER]

    @property
    def dialogue(self) -> list[Turn]:
        """The spoken turns: users, the AI agent and human agents (tools left out)."""
        return [t for t in self.turns if t.role != Role.TOOL]

    def as_text(self) -> str:
        """The dialogue as ``Label: text`` lines, the way the default prompt shows it."""
        return "\n".join(f"{ROLE_LABELS[t.role]}: {t.text}" for t in self.dialogue)
