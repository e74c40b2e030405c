"""Calls with nothing to analyse: voicemail, no answer, a caller who hung up before speaking.

A transcript with fewer user turns than its profile's ``analysis.min_user_turns`` is skipped
before any LLM call (:func:`skip_reason` says why). Its result (:func:`skipped_result`) has no
enrichment, costs nothing, and carries what is written for it: nothing, or with
``write.metadata`` the call's platform fields, with ``noAnswer: true`` when the payload says the
call was not answered (:func:`~enrich.models.spec.skipped_update`). The ledger keeps it
``skipped``; :func:`sent_before` tells a body ChatDash already took from one still to send.
:class:`~enrich.engine.core.EnricherCore` composes these.
"""

from __future__ import annotations

from ..ledger import LedgerBackend, State
from ..models.results import CostEstimate, EnrichmentResult
from ..models.spec import skipped_update
from ..models.transcript import Transcript
from ..models.usage import Usage
from .profile import Profile

__all__ = ["skip_reason", "skipped_result", "skipped_estimate", "sent_before"]


def skip_reason(transcript: Transcript, profile: Profile) -> str | None:
    """Why ``transcript`` is not worth analysing with ``profile``, or None: it has fewer user
    turns than ``min_user_turns``."""
    need = profile.min_user_turns
    have = len(transcript.user_turns)
    if have >= need:
        return None
    turns = "user turn" if have == 1 else "user turns"
    why = (
        f"the {transcript.format} transcript has {have} {turns} "
        f"(analysis.min_user_turns is {need}): nothing to analyse, no LLM call"
    )
    meta = transcript.metadata
    if meta.answered is False:
        why += f" (the call was not answered: {meta.ended_reason or 'the payload says so'})"
    return why


def skipped_result(
    parsed: Transcript, profile: Profile, agent_id: str | None, conversation_id: str | None
) -> EnrichmentResult | None:
    """The result of a conversation with nothing to analyse, or None if it is to be analysed.
    Its ``update`` is what is written for it (``{}``: nothing)."""
    reason = skip_reason(parsed, profile)
    if reason is None:
        return None
    return EnrichmentResult(
        skipped=reason,
        update=skipped_update(parsed.metadata).body() if profile.write_metadata else {},
        usage=Usage(),
        attempts=0,
        model="",
        cost=0.0,
        transcript_format=parsed.format,
        turns=len(parsed.turns),
        metadata=parsed.metadata,
        agent_id=agent_id,
        conversation_id=conversation_id,
    )


def skipped_estimate(reason: str) -> CostEstimate:
    """The estimate of a conversation with nothing to analyse: no request, nothing to pay."""
    return CostEstimate(
        requests=0,
        prompt_tokens=0,
        completion_tokens=0,
        cost=0.0,
        strategy="skipped",
        skipped=reason,
    )


async def sent_before(ledger: LedgerBackend | None, result: EnrichmentResult) -> bool:
    """Whether ChatDash already took this skipped conversation's body (the ledger says so; the
    history notes it): then it is not sent again."""
    if ledger is None or not result.agent_id or not result.conversation_id:
        return False
    entry = await ledger.aget(result.agent_id, result.conversation_id)
    if (
        entry is None
        or entry.state != State.SKIPPED
        or entry.body != result.update
        or entry.written_at is None
    ):
        return False
    await ledger.anote(
        result.agent_id, result.conversation_id, "skipped", {"why": "already written"}
    )
    return True
