"""The conversation rows both SQL back ends write alike: the statements of
:meth:`~enrich.ledger.LedgerBackend.record` and :meth:`~enrich.ledger.LedgerBackend.skip`, of
the write's steps (:meth:`~enrich.ledger.LedgerBackend.queue`, ``claim``, ``written``,
``write_failed``) and of a lease's end, in SQLite's ``?`` placeholders (:func:`pg` makes them
PostgreSQL's ``%s``); their arguments, and the event a record leaves in the history. One copy,
so that the two back ends keep one semantics: a dry run never replaces an entry that is written
or to be written, a skipped entry never replaces a paid one, a body written meanwhile by
another process stays written, and a write is marked written only for the body it sent.
"""

from __future__ import annotations

import json
from typing import Any

from ..models.fingerprint import Fingerprint
from ..models.usage import Usage
from .base import State

__all__ = [
    "RECORD",
    "SKIP",
    "QUEUE",
    "CLAIMABLE",
    "CLAIM",
    "WRITTEN",
    "STATE",
    "WRITE_FAILED",
    "END",
    "pg",
    "record_args",
    "recorded_event",
    "skip_args",
    "failed_state",
]

_COLUMNS = """
    agent_id, conversation_id, transcript_hash, model, prompt_hash, taxonomy_hash,
    fingerprint_version, enrichment, body, prompt_tokens, completion_tokens,
    cached_tokens, requests, cost, state, attempts, last_error, claimed_until,
    claimed_by, created_at, updated_at, written_at
"""

_SAME_FINGERPRINT = """
    transcript_hash = excluded.transcript_hash, model = excluded.model,
    prompt_hash = excluded.prompt_hash, taxonomy_hash = excluded.taxonomy_hash,
    fingerprint_version = excluded.fingerprint_version,
    enrichment = excluded.enrichment, body = excluded.body,
"""

#: A fresh enrichment, replacing an older one, unless it is a dry run's over an entry written,
#: pending or failed (then no row changes: the caller notes the dry run instead).
RECORD = f"""
INSERT INTO conversations ({_COLUMNS})
VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0,NULL,NULL,NULL,?,?,NULL)
ON CONFLICT (agent_id, conversation_id) DO UPDATE SET {_SAME_FINGERPRINT}
    prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens,
    cached_tokens = excluded.cached_tokens, requests = excluded.requests,
    cost = excluded.cost, state = excluded.state, attempts = 0,
    last_error = NULL, claimed_until = NULL, claimed_by = NULL,
    updated_at = excluded.updated_at, written_at = NULL
WHERE excluded.state != 'enriched'
    OR conversations.state NOT IN ('written', 'pending', 'failed')
"""

#: A conversation with nothing to analyse, over nothing but another skipped one; a body that
#: was written already stays written.
SKIP = f"""
INSERT INTO conversations ({_COLUMNS})
VALUES (?,?,?,?,?,?,?,?,?,0,0,0,0,0.0,'skipped',0,NULL,NULL,NULL,?,?,NULL)
ON CONFLICT (agent_id, conversation_id) DO UPDATE SET {_SAME_FINGERPRINT}
    updated_at = excluded.updated_at, last_error = NULL, claimed_until = NULL,
    claimed_by = NULL,
    written_at = CASE WHEN conversations.body = excluded.body
        THEN conversations.written_at END
WHERE conversations.state = 'skipped'
"""


#: A stored enrichment marked ``pending`` with a body (reused, or re-narrowed); one written
#: with this very body meanwhile (by another process) stays written. Arguments: body, now,
#: agent, conversation, body.
QUEUE = """
UPDATE conversations SET state = 'pending', body = ?, updated_at = ?
WHERE agent_id = ? AND conversation_id = ? AND NOT (state = 'written' AND body = ?)
"""

#: The entries whose write can be claimed: waiting to be written, or skipped with a body that
#: was never written (a condition, for the back end's SELECT of the claim).
CLAIMABLE = (
    "(state IN ('pending', 'failed') "
    "OR (state = 'skipped' AND written_at IS NULL AND body != '{}'))"
)

#: The claim taken. Arguments: until, holder, agent, conversation.
CLAIM = """
UPDATE conversations SET claimed_until = ?, claimed_by = ?
WHERE agent_id = ? AND conversation_id = ?
"""

#: Written, for the body that was sent only (a skipped entry stays skipped, its write done).
#: Arguments: now, now, agent, conversation, body.
WRITTEN = """
UPDATE conversations SET
    state = CASE state WHEN 'skipped' THEN 'skipped' ELSE 'written' END,
    attempts = attempts + 1, last_error = NULL, claimed_until = NULL, claimed_by = NULL,
    updated_at = ?, written_at = ?
WHERE agent_id = ? AND conversation_id = ? AND body = ?
"""

#: An entry's state (for :func:`failed_state`). Arguments: agent, conversation.
STATE = "SELECT state FROM conversations WHERE agent_id = ? AND conversation_id = ?"

#: A write that failed. Arguments: state (:func:`failed_state`), error, now, agent, conversation.
WRITE_FAILED = """
UPDATE conversations SET state = ?, attempts = attempts + 1, last_error = ?,
    claimed_until = NULL, claimed_by = NULL, updated_at = ?
WHERE agent_id = ? AND conversation_id = ?
"""

#: A lease on an enrichment in flight given up. Arguments: agent, conversation.
END = "DELETE FROM inflight WHERE agent_id = ? AND conversation_id = ?"


def failed_state(current: str | None, *, permanent: bool) -> State:
    """The state of an entry (now ``current``) whose write failed: ``failed`` when ChatDash
    refused it, else ``pending``; a skipped entry stays skipped (its write is tried again by
    the next run)."""
    if current == State.SKIPPED.value:
        return State.SKIPPED
    return State.FAILED if permanent else State.PENDING


def pg(sql: str) -> str:
    """``sql`` with PostgreSQL's placeholders (these statements hold no other ``?``)."""
    return sql.replace("?", "%s")


def _key(agent_id: str, conversation_id: str, fingerprint: Fingerprint) -> tuple[Any, ...]:
    return (
        agent_id,
        conversation_id,
        fingerprint.transcript_hash,
        fingerprint.model,
        fingerprint.prompt_hash,
        fingerprint.taxonomy_hash,
        fingerprint.version,
    )


def record_args(
    agent_id: str,
    conversation_id: str,
    fingerprint: Fingerprint,
    *,
    enrichment: dict[str, Any],
    body: dict[str, Any],
    usage: Usage,
    cost: float | None,
    state: State,
    now: str,
) -> tuple[Any, ...]:
    """The arguments of :data:`RECORD`."""
    return (
        *_key(agent_id, conversation_id, fingerprint),
        json.dumps(enrichment, ensure_ascii=False),
        json.dumps(body, ensure_ascii=False),
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens,
        usage.requests,
        cost,
        state.value,
        now,
        now,
    )


def recorded_event(
    kept: bool, fingerprint: Fingerprint, usage: Usage, cost: float | None, state: State
) -> tuple[str, dict[str, Any]]:
    """The history event of a record: ``enriched``, or ``dry_run`` when the entry was ``kept``
    as it was (a dry run over an entry written or to be written)."""
    detail: dict[str, Any] = (
        {"why": "not recorded: the entry is written or to be written"} if kept else {}
    )
    detail |= {
        "model": fingerprint.model,
        "usage": usage.model_dump(),
        "cost": cost,
        "state": state.value,
    }
    return ("dry_run" if kept else "enriched"), detail


def skip_args(
    agent_id: str,
    conversation_id: str,
    fingerprint: Fingerprint,
    *,
    reason: str,
    body: dict[str, Any],
    now: str,
) -> tuple[Any, ...]:
    """The arguments of :data:`SKIP`."""
    return (
        *_key(agent_id, conversation_id, fingerprint),
        json.dumps({"skipped": reason}, ensure_ascii=False),
        json.dumps(body, ensure_ascii=False),
        now,
        now,
    )
