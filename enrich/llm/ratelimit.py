"""Client-side pacing for the LLM provider's rate limits: requests and tokens per minute.

:class:`RateLimiter` schedules requests with GCRA (the "virtual scheduling" form of a token
bucket): each request may start once both its request slot and its token slot are due, so a
batch runs evenly at the limit instead of bursting into a storm of 429s. A small burst is
allowed (``burst_seconds`` of either budget).

Token costs are estimated before the call (the prompt, plus the answer expected) and corrected
with the real usage afterwards (:meth:`RateLimiter.settle`). When the provider answers 429
anyway (another process shares the key, the estimate was low), :meth:`RateLimiter.penalize`
pauses every caller until ``Retry-After`` has passed and lowers the pace; it recovers gradually
after successes (additive increase, multiplicative decrease).

:class:`RateLimiter` paces one event loop (one process). :class:`SharedRateLimiter` keeps the
same schedule in a store that every process shares (the ledger: a row per limit, updated
atomically, see :meth:`~enrich.ledger.LedgerBackend.pace`), so N workers on one or many hosts
together stay under the provider's limit, and a 429 answered to any of them slows them all.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["RateLimiter", "SharedRateLimiter", "PaceStore", "LimiterStats"]


@dataclass
class LimiterStats:
    requests: int = 0
    tokens: int = 0
    waited_seconds: float = 0.0
    penalties: int = 0
    started: float = field(default_factory=time.monotonic)


class RateLimiter:
    """Pace calls to at most ``rpm`` requests and ``tpm`` tokens per minute (either may be None).

    ``target`` aims a little under the limit, so clock skew and rounding never cross it.
    """

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        target: float = 0.97,
        burst_seconds: float = 1.0,
        clock=time.monotonic,
    ) -> None:
        if rpm is not None and rpm <= 0 or tpm is not None and tpm <= 0:
            raise ValueError("rpm and tpm must be positive")
        self.rpm, self.tpm = rpm, tpm
        self.target = target
        self.burst = burst_seconds
        self.clock = clock
        self.factor = 1.0  # lowered after a 429, recovered after successes
        self._req_tat = self._tok_tat = clock()
        self._paused_until = 0.0
        self._successes = 0
        self.stats = LimiterStats()

    def __repr__(self) -> str:
        return f"RateLimiter(rpm={self.rpm}, tpm={self.tpm}, factor={self.factor:.2f})"

    def _interval(self, per_minute: float | None, cost: float) -> float:
        if per_minute is None:
            return 0.0
        return cost * 60.0 / (per_minute * self.target * self.factor)

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request of about ``tokens`` tokens may start."""
        while True:
            now = self.clock()
            due = max(
                self._paused_until,
                self._req_tat - self.burst if self.rpm else now,
                self._tok_tat - self.burst if self.tpm else now,
            )
            if due <= now:
                break
            self.stats.waited_seconds += due - now
            await asyncio.sleep(due - now)
        now = self.clock()
        self._req_tat = max(self._req_tat, now) + self._interval(self.rpm, 1)
        self._tok_tat = max(self._tok_tat, now) + self._interval(self.tpm, tokens)
        self.stats.requests += 1
        self.stats.tokens += tokens

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token schedule once the real usage is known; count a success."""
        self._tok_tat += self._interval(self.tpm, actual - estimated)
        self.stats.tokens += actual - estimated
        self._successes += 1
        if self.factor < 1.0 and self._successes >= 20:
            self.factor = min(1.0, self.factor + 0.05)
            self._successes = 0

    def penalize(self, retry_after: float | None) -> float:
        """The provider said 429: pause everyone, slow down; returns the pause in seconds."""
        pause = retry_after if retry_after is not None else 1.0
        self._paused_until = max(self._paused_until, self.clock() + pause)
        self.factor = max(0.25, self.factor * 0.8)
        self._successes = 0
        self.stats.penalties += 1
        return pause

    # The client awaits these: a shared limiter's schedule is a round trip away.
    async def asettle(self, estimated: int, actual: int) -> None:
        self.settle(estimated, actual)

    async def apenalize(self, retry_after: float | None) -> float:
        return self.penalize(retry_after)


class PaceStore(Protocol):
    """Where a :class:`SharedRateLimiter` keeps its schedule (the ledger is one)."""

    async def apace(
        self, name: str, *, request_interval: float, token_interval: float, burst: float
    ) -> float: ...

    async def apace_settle(self, name: str, token_interval: float) -> None: ...

    async def apace_penalize(self, name: str, pause: float) -> float: ...


class SharedRateLimiter(RateLimiter):
    """:class:`RateLimiter`'s pacing with its schedule in ``store``, shared by every process
    that uses the same ``name`` (one provider key and model): each request reserves its start
    there in one atomic step, then waits for it here. The speed ``factor`` after a 429, and its
    recovery, are the store's too."""

    def __init__(
        self,
        store: PaceStore,
        name: str,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        target: float = 0.97,
        burst_seconds: float = 1.0,
    ) -> None:
        super().__init__(rpm, tpm, target=target, burst_seconds=burst_seconds)
        self.store, self.name = store, name

    def __repr__(self) -> str:
        return f"SharedRateLimiter(rpm={self.rpm}, tpm={self.tpm}, name={self.name!r})"

    def _shared_interval(self, per_minute: float | None, cost: float) -> float:
        return 0.0 if per_minute is None else cost * 60.0 / (per_minute * self.target)

    async def acquire(self, tokens: int = 0) -> None:
        wait = await self.store.apace(
            self.name,
            request_interval=self._shared_interval(self.rpm, 1),
            token_interval=self._shared_interval(self.tpm, tokens),
            burst=self.burst,
        )
        self.stats.requests += 1
        self.stats.tokens += tokens
        if wait > 0:
            self.stats.waited_seconds += wait
            await asyncio.sleep(wait)

    async def asettle(self, estimated: int, actual: int) -> None:
        self.stats.tokens += actual - estimated
        await self.store.apace_settle(
            self.name, self._shared_interval(self.tpm, actual - estimated)
        )

    async def apenalize(self, retry_after: float | None) -> float:
        self.stats.penalties += 1
        pause = retry_after if retry_after is not None else 1.0
        return await self.store.apace_penalize(self.name, pause)
