"""The ledger's one interface, and the models every back end reads and writes.

The ledger keeps what happened to each conversation, keyed by ``(agent_id, conversation_id)``.
Every back end (SQLite today, :mod:`enrich.ledger.sqlite`; perhaps Postgres later) keeps the
same semantics, which the engine relies on:

**Stored before written.** :meth:`LedgerBackend.record` is called the moment the LLM's answer
is validated, before any write to ChatDash is tried, and returns only once the enrichment is
committed: a result that was paid for survives a failed write, a crash or a ``kill -9``. It keeps
the inputs' fingerprint (transcript, model, prompts and analysis, taxonomy, and the version of
the hashing scheme), the enrichment, the tokens and cost, and the PUT body.

**States.** Each conversation is in one of:

``enriched``  paid for, not asked to be written (``--dry-run``)
``pending``   to be written: not yet tried, or failed for a reason that may pass (replay it)
``written``   ChatDash took it
``failed``    ChatDash refused it (4xx): replay it with ``--failed`` once the cause is fixed
``skipped``   nothing to analyse (no answer, voicemail, a caller who never spoke): no LLM call,
              nothing paid (:meth:`~LedgerBackend.skip`)

A fresh :meth:`~LedgerBackend.record` replaces the conversation's older enrichment and resets
its attempts, except that a dry run's (``enriched``) never replaces an entry ``written``,
``pending`` or ``failed``: that entry says what ChatDash holds or is still to receive, which a
dry run does not change (it is only noted in the history, with what it cost).
:meth:`~LedgerBackend.written` marks it written only if the body sent is still
the stored one (a newer enrichment recorded meanwhile stays to be written).

**Skipped conversations** keep their fingerprint and why they were skipped (``enrichment`` is
``{"skipped": why}``), no usage, a cost of 0, and the body written for them (the ``noAnswer``
one, or none): they stay ``skipped`` whatever becomes of that write (``written_at`` says it was
taken; a failed one is tried again by the next run, not by replay). A skip never replaces an
enrichment that was paid for: it is then only noted in the history.

**History.** Every step is also appended to the conversation's events
(:meth:`~LedgerBackend.history`), in the order it happened.

**Reuse.** An entry is reused only when its fingerprint equals the one asked, version included:
hashes computed another way never match, so they are enriched afresh rather than reused.

**Leases.** Several processes may share one ledger (a webhook fleet, a batch and a replay).
:meth:`~LedgerBackend.claim` takes the write of one conversation for ``lease_seconds`` in its
holder's name, so two processes never send the same write at once (the engine claims every
write; the loser waits and reports the winner's); :meth:`~LedgerBackend.begin`
takes the *enrichment* of a conversation for a fingerprint, so two processes asked the same
question do not both pay for it (the second waits for the first's result). A lease that runs
out is free again. An enrichment's lease names its holder (host, pid and when the process
started: :mod:`enrich.ledger.holder`) and is short, renewed (:meth:`~LedgerBackend.renew`) while
the holder waits for the LLM: a lease whose holder on this host is gone is free at once, and one
whose holder on another host died runs out within seconds. Every change is
atomic: one transaction, never half applied.

**Shared pacing.** :meth:`~LedgerBackend.pace` keeps a rate limit's schedule (GCRA) in one row
per limit, updated atomically, so every process that shares the ledger shares ``--rpm/--tpm``;
:meth:`~LedgerBackend.pace_penalize` pauses and slows them all after a 429 anywhere.

**Batch API jobs.** A job created at OpenAI is recorded (:meth:`~LedgerBackend.record_batch_job`)
before its results are awaited, so an interrupted run collects it later instead of paying again.

**Async twins.** Each operation the engine calls from its event loop has a twin prefixed ``a``
(:meth:`~LedgerBackend.aget`, :meth:`~LedgerBackend.arecord`...). By default it runs the
synchronous one in a worker thread (:func:`asyncio.to_thread`), so a wait for another process's
lock never blocks the event loop; a back end overrides ``_call`` to do better (SQLite runs an
operation at once when it needs no wait, and moves it to a thread only when it would), or the
twins themselves with a native async driver.

**Webhook queue.** ``enrich serve`` keeps every verified call-end webhook as one item keyed by
``(platform, call_id)`` (:class:`WebhookItem`), committed before the webhook is answered 2xx;
background workers of every process sharing the ledger take items from it. An item is
``queued`` (to be taken once ``due_at`` has come), ``done`` (it went the usual way: its
conversation has its own entry, written, failed or skipped) or ``failed`` (given up: its call
never showed up in ChatDash within the retry window, or its payload cannot be used).
:meth:`~LedgerBackend.webhook_enqueue` of a key already known stores nothing new and only counts
the delivery: a duplicate or retried delivery costs no LLM call and no write.
:meth:`~LedgerBackend.webhook_take` leases the next due item (earliest ``due_at`` first) to this
process's holder for some seconds, like :meth:`~LedgerBackend.begin`: a holder on this host whose
process is gone holds nothing (a ``kill -9``'d server's items are taken again at once), one on
another host holds it until the lease runs out. :meth:`~LedgerBackend.webhook_done`,
:meth:`~LedgerBackend.webhook_retry` and :meth:`~LedgerBackend.webhook_fail` release it and
apply only to a ``queued`` item (a late answer from a holder whose lease ran out changes
nothing that another holder finished). :meth:`~LedgerBackend.webhook_requeue` puts ``failed``
items back, due at once, their retry window started afresh (``queued_at``).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from enum import StrEnum
from types import TracebackType
from typing import Any, Self, TypeVar

from pydantic import BaseModel, Field

from ..models.fingerprint import Fingerprint
from ..models.usage import Usage

__all__ = [
    "book_slot",
    "LedgerBackend",
    "LedgerEntry",
    "LedgerEvent",
    "State",
    "WebhookItem",
    "WebhookState",
]

T = TypeVar("T")


class State(StrEnum):
    """Where a conversation's enrichment stands (see the module's docstring)."""

    ENRICHED = "enriched"
    PENDING = "pending"
    WRITTEN = "written"
    FAILED = "failed"
    SKIPPED = "skipped"


class LedgerEntry(Fingerprint):
    """One conversation's stored enrichment: its fingerprint (with its ``version``), what was
    paid for, the PUT body, and the write's state."""

    agent_id: str
    conversation_id: str
    enrichment: dict[str, Any]
    body: dict[str, Any]
    usage: Usage
    cost: float | None = None
    state: State
    attempts: int = 0
    last_error: str | None = None
    created_at: str
    updated_at: str
    written_at: str | None = None

    @property
    def fingerprint(self) -> Fingerprint:
        """What this enrichment depended on; equal to a fresh fingerprint only if the same
        inputs were hashed the same way (same ``version``)."""
        return Fingerprint(
            transcript_hash=self.transcript_hash,
            model=self.model,
            prompt_hash=self.prompt_hash,
            taxonomy_hash=self.taxonomy_hash,
            version=self.version,
        )


class LedgerEvent(BaseModel):
    """One step of a conversation's history."""

    at: str
    event: str
    detail: dict[str, Any] = Field(default_factory=dict)


def book_slot(
    row: dict[str, Any] | Any,
    now: float,
    *,
    request_interval: float,
    token_interval: float,
    burst: float,
) -> tuple[float, float, float]:
    """The arithmetic of :meth:`LedgerBackend.pace`, for a back end to run inside its
    transaction: from the limit's row (``req_tat``, ``tok_tat``, ``paused_until``, ``factor``)
    and ``now``, the slot's start and the two schedules' new times ``(start, req_tat,
    tok_tat)``."""
    paused = row["paused_until"]  # after a pause the schedules restart from its end
    req, tok = max(row["req_tat"], now, paused), max(row["tok_tat"], now, paused)
    start = max(
        now,
        paused,
        req - burst if request_interval else now,
        tok - burst if token_interval else now,
    )
    factor = row["factor"]
    return start, req + request_interval / factor, tok + token_interval / factor


class LedgerBackend(ABC):
    """The ledger, whatever keeps it. Safe to share between threads and between processes.

    Sub-classes implement the synchronous operations; the ``a``-prefixed twins run them in a
    worker thread unless overridden.
    """

    #: How long :meth:`claim` holds a write for this process.
    lease_seconds: float

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the ledger is, for messages (a file path; never a password)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @abstractmethod
    def close(self) -> None:
        """Release what the calling thread holds (it reconnects if used again)."""

    # -- reading --------------------------------------------------------------------------------

    @abstractmethod
    def get(self, agent_id: str, conversation_id: str) -> LedgerEntry | None:
        """The conversation's entry, or None if it was never enriched."""

    @abstractmethod
    def find(self, conversation_id: str, agent_id: str | None = None) -> list[LedgerEntry]:
        """The entries of a conversation id, of every agent unless ``agent_id`` is given."""

    @abstractmethod
    def history(self, agent_id: str, conversation_id: str) -> list[LedgerEvent]:
        """The conversation's events, oldest first."""

    @abstractmethod
    def entries(self, state: State | None = None) -> list[LedgerEntry]:
        """Every entry (in ``state``, if given), least recently updated first."""

    @abstractmethod
    def stats(self) -> list[dict[str, Any]]:
        """Per state, ordered by state: ``state``, ``conversations``, ``prompt_tokens``,
        ``completion_tokens``, ``cached_tokens``, ``requests``, ``cost`` (the sum of the known
        costs) and ``costed`` (how many have one)."""

    # -- writing --------------------------------------------------------------------------------

    @abstractmethod
    def record(
        self,
        agent_id: str,
        conversation_id: str,
        fingerprint: Fingerprint,
        *,
        enrichment: dict[str, Any],
        body: dict[str, Any],
        usage: Usage,
        cost: float | None,
        state: State,
    ) -> None:
        """Store a fresh enrichment (replacing an older one), durably, before any write."""

    @abstractmethod
    def skip(
        self,
        agent_id: str,
        conversation_id: str,
        fingerprint: Fingerprint,
        *,
        reason: str,
        body: dict[str, Any],
    ) -> None:
        """Keep a conversation that was not analysed (nothing to analyse) as ``skipped``, with
        ``reason`` in its history and ``body`` to write (``{}``: nothing). An entry already
        skipped with the same body keeps its ``written_at``; an enrichment that was paid for is
        kept as it is (the skip is only noted)."""

    @abstractmethod
    def queue(self, agent_id: str, conversation_id: str, body: dict[str, Any], event: str) -> None:
        """Mark a stored enrichment ``pending`` with ``body`` (reused, or re-narrowed); ``event``
        names why in the history. An entry already ``written`` with this very body (another
        process wrote it meanwhile) stays written: its write is not sent twice."""

    @abstractmethod
    def claim(self, agent_id: str, conversation_id: str) -> bool:
        """Take the write of one conversation for ``lease_seconds``, in this process's name
        (:func:`~enrich.ledger.holder.this_holder`): one ``pending`` or ``failed``, or one
        ``skipped`` whose body (not ``{}``) was never written. False if another holder has it
        (one on this host whose process is gone holds nothing), or it is no longer waiting to
        be written. :meth:`written` and :meth:`write_failed` release it."""

    @abstractmethod
    def written(self, agent_id: str, conversation_id: str, body: dict[str, Any]) -> None:
        """ChatDash took ``body``: the entry is ``written`` if ``body`` is still the stored one
        (a ``skipped`` one stays skipped, its ``written_at`` set)."""

    @abstractmethod
    def write_failed(
        self, agent_id: str, conversation_id: str, error: str, *, permanent: bool
    ) -> None:
        """The write failed: ``failed`` if ChatDash refused it (``permanent``), else
        ``pending`` (a ``skipped`` entry stays skipped); the lease is released and the error
        kept."""

    # -- enrichments in flight ------------------------------------------------------------------

    @abstractmethod
    def begin(self, agent_id: str, conversation_id: str, fingerprint: str, seconds: float) -> bool:
        """Take the enrichment of a conversation for ``seconds``; False while another process
        holds it for the same ``fingerprint`` (a :meth:`Fingerprint.key`)."""

    @abstractmethod
    def end(self, agent_id: str, conversation_id: str) -> None:
        """Release what :meth:`begin` took."""

    def renew(self, agent_id: str, conversation_id: str, seconds: float) -> bool:
        """Hold what this process took with :meth:`begin` for ``seconds`` more (its holder is
        alive); False if it no longer holds it. A back end that cannot renew keeps the lease
        :meth:`begin` took, as long as it was asked for (the default: True)."""
        return True

    # -- shared pacing: one rate limit for every process that shares the ledger ---------------

    @abstractmethod
    def pace(
        self, name: str, *, request_interval: float, token_interval: float, burst: float
    ) -> float:
        """Reserve the next start under the shared limit ``name`` (GCRA, wall-clock seconds):
        a request costs ``request_interval`` of the request schedule and ``token_interval`` of
        the token schedule, each divided by the limit's current speed ``factor`` (1.0 unless
        slowed by :meth:`pace_penalize`). Each schedule restarts from the later of its own
        time, now, and the end of a pause (``paused_until``). Returns how long the caller waits
        before it starts: the later of now, the pause's end, and each schedule minus ``burst``.
        Atomic: N processes calling it at once get N distinct slots."""

    @abstractmethod
    def pace_settle(self, name: str, token_interval: float) -> None:
        """A request of ``name`` succeeded: move its token schedule by ``token_interval`` (the
        real usage minus the estimate, may be negative), and let a slowed limit recover a
        little (``factor`` += 0.0025, at most 1.0)."""

    @abstractmethod
    def pace_penalize(self, name: str, pause: float) -> float:
        """The provider answered 429 to one sharer: every sharer waits ``pause`` seconds from
        now (an earlier pause is never shortened) and the limit slows (``factor`` × 0.8, at
        least 0.25). Returns the pause."""

    # -- Batch API jobs -------------------------------------------------------------------------

    @abstractmethod
    def record_batch_job(self, batch_id: str, rows: dict[str, list[str]]) -> None:
        """A Batch API job just created; ``rows`` maps each custom_id to the key of what it
        enriches (agent, conversation, and the fingerprint's hashes)."""

    @abstractmethod
    def open_batch_jobs(self) -> dict[str, dict[str, list[str]]]:
        """The jobs not yet collected, oldest first: batch id → its ``rows``."""

    @abstractmethod
    def close_batch_job(self, batch_id: str, status: str) -> None:
        """The job is done with (``status``: ``collected``...); no longer open."""

    @abstractmethod
    def note(self, agent_id: str, conversation_id: str, event: str, detail: Any = None) -> None:
        """Append an event to the conversation's history, changing nothing else."""

    # -- async twins: the synchronous operation, off the event loop ------------------------------

    async def _call(self, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one synchronous operation for an async twin: by default in a worker thread, so
        a wait for another process's lock never blocks the event loop. A back end may do better
        (SQLite runs it at once when it cannot wait; a native async driver awaits it)."""
        return await asyncio.to_thread(operation, *args, **kwargs)

    async def aget(self, agent_id: str, conversation_id: str) -> LedgerEntry | None:
        return await self._call(self.get, agent_id, conversation_id)

    async def afind(self, conversation_id: str, agent_id: str | None = None) -> list[LedgerEntry]:
        return await self._call(self.find, conversation_id, agent_id)

    async def ahistory(self, agent_id: str, conversation_id: str) -> list[LedgerEvent]:
        return await self._call(self.history, agent_id, conversation_id)

    async def aentries(self, state: State | None = None) -> list[LedgerEntry]:
        return await self._call(self.entries, state)

    async def astats(self) -> list[dict[str, Any]]:
        return await self._call(self.stats)

    async def arecord(
        self,
        agent_id: str,
        conversation_id: str,
        fingerprint: Fingerprint,
        *,
        enrichment: dict[str, Any],
        body: dict[str, Any],
        usage: Usage,
        cost: float | None,
        state: State,
    ) -> None:
        await self._call(
            self.record,
            agent_id,
            conversation_id,
            fingerprint,
            enrichment=enrichment,
            body=body,
            usage=usage,
            cost=cost,
            state=state,
        )

    async def askip(
        self,
        agent_id: str,
        conversation_id: str,
        fingerprint: Fingerprint,
        *,
        reason: str,
        body: dict[str, Any],
    ) -> None:
        await self._call(
            self.skip, agent_id, conversation_id, fingerprint, reason=reason, body=body
        )

    async def aqueue(
        self, agent_id: str, conversation_id: str, body: dict[str, Any], event: str
    ) -> None:
        await self._call(self.queue, agent_id, conversation_id, body, event)

    async def aclaim(self, agent_id: str, conversation_id: str) -> bool:
        return await self._call(self.claim, agent_id, conversation_id)

    async def awritten(self, agent_id: str, conversation_id: str, body: dict[str, Any]) -> None:
        await self._call(self.written, agent_id, conversation_id, body)

    async def awrite_failed(
        self, agent_id: str, conversation_id: str, error: str, *, permanent: bool
    ) -> None:
        await self._call(self.write_failed, agent_id, conversation_id, error, permanent=permanent)

    async def abegin(
        self, agent_id: str, conversation_id: str, fingerprint: str, seconds: float
    ) -> bool:
        return await self._call(self.begin, agent_id, conversation_id, fingerprint, seconds)

    async def aend(self, agent_id: str, conversation_id: str) -> None:
        await self._call(self.end, agent_id, conversation_id)

    async def arenew(self, agent_id: str, conversation_id: str, seconds: float) -> bool:
        return await self._call(self.renew, agent_id, conversation_id, seconds)

    async def apace(
        self, name: str, *, request_interval: float, token_interval: float, burst: float
    ) -> float:
        return await self._call(
            self.pace,
            name,
            request_interval=request_interval,
            token_interval=token_interval,
            burst=burst,
        )

    async def apace_settle(self, name: str, token_interval: float) -> None:
        await self._call(self.pace_settle, name, token_interval)

    async def apace_penalize(self, name: str, pause: float) -> float:
        return await self._call(self.pace_penalize, name, pause)

    async def arecord_batch_job(self, batch_id: str, rows: dict[str, list[str]]) -> None:
        await self._call(self.record_batch_job, batch_id, rows)

    async def aopen_batch_jobs(self) -> dict[str, dict[str, list[str]]]:
        return await self._call(self.open_batch_jobs)

    async def aclose_batch_job(self, batch_id: str, status: str) -> None:
        await self._call(self.close_batch_job, batch_id, status)

    async def anote(
        self, agent_id: str, conversation_id: str, event: str, detail: Any = None
    ) -> None:
        await self._call(self.note, agent_id, conversation_id, event, detail)

    # -- webhook queue --------------------------------------------------------------------------
    # (``enrich serve``'s durable queue; the semantics are in the module's docstring)

    @abstractmethod
    def webhook_enqueue(
        self, platform: str, call_id: str, agent_id: str, payload: bytes, received_at: str
    ) -> bool:
        """Keep a verified webhook's raw ``payload`` as a ``queued`` item due at once, durably
        (committed when this returns). True if ``(platform, call_id)`` is new; False if it was
        already known, in whatever state: then only its ``deliveries`` is counted up."""

    @abstractmethod
    def webhook_take(self, seconds: float) -> WebhookItem | None:
        """Lease the next ``queued`` item whose ``due_at`` has come (earliest first) to this
        process's holder for ``seconds``, counting an attempt; None if there is none. An item
        another live holder has leased is not taken until its lease runs out (or its holder,
        on this host, is gone)."""

    @abstractmethod
    def webhook_renew(self, platform: str, call_id: str, seconds: float) -> bool:
        """Hold a taken item ``seconds`` more; False if this process no longer holds it."""

    @abstractmethod
    def webhook_done(
        self, platform: str, call_id: str, conversation_id: str | None, note: str
    ) -> None:
        """The item went the usual way: ``done``, with the ChatDash ``conversation_id`` it was
        resolved to and ``note`` (``written``, ``skipped: ...``, ``write failed: ...``) kept as
        its outcome; its lease released."""

    @abstractmethod
    def webhook_retry(self, platform: str, call_id: str, delay: float, error: str) -> None:
        """Not yet (ChatDash does not know the call yet, or could not be reached): ``queued``
        again, due in ``delay`` seconds, ``error`` kept; its lease released."""

    @abstractmethod
    def webhook_fail(self, platform: str, call_id: str, error: str) -> None:
        """Given up: ``failed`` with ``error``; its lease released."""

    @abstractmethod
    def webhook_requeue(self, platform: str | None = None, call_id: str | None = None) -> int:
        """Put ``failed`` items (of ``platform``, and that ``call_id``, if given) back in the
        queue, due at once, ``attempts`` reset and ``queued_at`` now (their retry window starts
        afresh). Returns how many."""

    @abstractmethod
    def webhook_items(self, state: WebhookState | None = None) -> list[WebhookItem]:
        """Every item (in ``state``, if given), earliest ``received_at`` first."""

    @abstractmethod
    def webhook_counts(self) -> dict[str, int]:
        """How many items are in each state (every :class:`WebhookState`'s value is a key, 0 if
        none), and ``deliveries``: every delivery accepted, duplicates included."""

    async def awebhook_enqueue(
        self, platform: str, call_id: str, agent_id: str, payload: bytes, received_at: str
    ) -> bool:
        return await self._call(
            self.webhook_enqueue, platform, call_id, agent_id, payload, received_at
        )

    async def awebhook_take(self, seconds: float) -> WebhookItem | None:
        return await self._call(self.webhook_take, seconds)

    async def awebhook_renew(self, platform: str, call_id: str, seconds: float) -> bool:
        return await self._call(self.webhook_renew, platform, call_id, seconds)

    async def awebhook_done(
        self, platform: str, call_id: str, conversation_id: str | None, note: str
    ) -> None:
        await self._call(self.webhook_done, platform, call_id, conversation_id, note)

    async def awebhook_retry(self, platform: str, call_id: str, delay: float, error: str) -> None:
        await self._call(self.webhook_retry, platform, call_id, delay, error)

    async def awebhook_fail(self, platform: str, call_id: str, error: str) -> None:
        await self._call(self.webhook_fail, platform, call_id, error)

    async def awebhook_requeue(
        self, platform: str | None = None, call_id: str | None = None
    ) -> int:
        return await self._call(self.webhook_requeue, platform, call_id)

    async def awebhook_items(self, state: WebhookState | None = None) -> list[WebhookItem]:
        return await self._call(self.webhook_items, state)

    async def awebhook_counts(self) -> dict[str, int]:
        return await self._call(self.webhook_counts)


# -- webhook queue: its models ----------------------------------------------------------------


class WebhookState(StrEnum):
    """Where a queued webhook stands (see the module's docstring)."""

    QUEUED = "queued"
    DONE = "done"
    FAILED = "failed"


class WebhookItem(BaseModel):
    """One call-end webhook kept by ``enrich serve``: the verified raw body, where it stands.
    ``last_error`` is the last error (``queued``, ``failed``), or a ``done`` item's outcome.
    Times are ISO 8601 in UTC."""

    platform: str
    call_id: str
    agent_id: str
    payload: bytes
    state: WebhookState
    deliveries: int = 1
    attempts: int = 0
    conversation_id: str | None = None
    last_error: str | None = None
    received_at: str
    queued_at: str
    due_at: str
    updated_at: str
