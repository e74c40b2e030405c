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
:meth:`~LedgerBackend.claim` takes the write of one ``pending`` or ``failed`` conversation for
``lease_seconds``, so two replays do not send the same write at once; :meth:`~LedgerBackend.begin`
takes the *enrichment* of a conversation for a fingerprint, so two processes asked the same
question do not both pay for it (the second waits for the first's result). A lease that runs
out is free again. An enrichment's lease names its holder (host, pid and when the process
started: :mod:`enrich.ledger.holder`) and is short, renewed (:meth:`~LedgerBackend.renew`) while
the holder waits for the LLM: a lease whose holder on this host is gone is free at once, and one
whose holder on another host died runs out within seconds. Every change is
atomic: one transaction, never half applied.

**Batch API jobs.** A job created at OpenAI is recorded (:meth:`~LedgerBackend.record_batch_job`)
before its results are awaited, so an interrupted run collects it later instead of paying again.

**Async twins.** Each operation the engine calls from its event loop has a twin prefixed ``a``
(:meth:`~LedgerBackend.aget`, :meth:`~LedgerBackend.arecord`...). By default it runs the
synchronous one in a worker thread (:func:`asyncio.to_thread`), so a wait for another process's
lock never blocks the event loop; a back end overrides ``_call`` to do better (SQLite runs an
operation at once when it needs no wait, and moves it to a thread only when it would), or the
twins themselves with a native async driver.
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

__all__ = ["LedgerBackend", "LedgerEntry", "LedgerEvent", "State"]

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
        names why in the history."""

    @abstractmethod
    def claim(self, agent_id: str, conversation_id: str) -> bool:
        """Take the write of one ``pending`` or ``failed`` conversation for ``lease_seconds``;
        False if another process holds it or it is no longer waiting to be written."""

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
