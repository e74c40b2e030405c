"""The body of ChatDash's *Update Conversation* (a partial PUT), every field of the contract.

Each field is typed and named on the wire exactly as the API spells it (``mistunderstoodQueries``
included); :meth:`ConversationUpdate.body` sends only the fields that were set.
:meth:`enrich.models.spec.AnalysisSpec.update` fills the ones an enrichment produces.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ConversationUpdate", "UpdateEvaluation", "UpdateQuery"]


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
