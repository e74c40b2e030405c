"""Trying a few first, and a spending cap: ``--limit``, ``--sample``/``--seed`` and ``--max-cost``
for ``batch`` and ``backfill``.

``--limit N`` takes the first N items; ``--sample N`` takes N items at random (reservoir
sampling, so a long input streams through in one pass; ``--seed`` makes it repeatable).
:class:`Budget` stops the items the engine takes once the next one could make the run spend
more than ``--max-cost``; those already started finish (they are paid for), like the first
Ctrl-C.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

__all__ = ["select", "Budget"]


def _first(items: Iterable[Any], n: int) -> Iterator[Any]:
    for i, item in enumerate(items):
        if i >= n:
            return
        yield item


def _reservoir(items: Iterable[Any], n: int, seed: int) -> list[Any]:
    rng = random.Random(seed)
    kept: list[Any] = []
    for i, item in enumerate(items):
        if i < n:
            kept.append(item)
        else:
            j = rng.randint(0, i)
            if j < n:
                kept[j] = item
    return kept


async def _afirst(items: AsyncIterable[Any], n: int) -> AsyncIterator[Any]:
    i = 0
    async for item in items:
        if i >= n:
            return
        i += 1
        yield item


async def _areservoir(items: AsyncIterable[Any], n: int, seed: int) -> AsyncIterator[Any]:
    collected = [item async for item in items]
    for item in _reservoir(collected, n, seed):
        yield item


def select(items: Any, *, limit: int | None, sample: int | None, seed: int) -> Any:
    """``items`` (an iterable or async iterable), narrowed by ``sample`` then ``limit``."""
    if isinstance(items, AsyncIterable):
        if sample is not None:
            items = _areservoir(items, sample, seed)
        if limit is not None:
            items = _afirst(items, limit)
        return items
    if sample is not None:
        items = _reservoir(items, sample, seed)
    if limit is not None:
        items = _first(items, limit)
    return items


class Budget:
    """A spending cap in USD. :meth:`gate` lets the engine take a conversation only while what
    was spent, plus every conversation started and not yet counted (in flight, or done and on its
    way) at the average cost so far, plus this one, stays within the cap. Before anything is
    paid the average is unknown: the first wave (as many as run at once) starts."""

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.reached = False
        self.spent = 0.0
        self.costed = 0
        self.counted = 0
        self.started = 0

    def record(self, cost: float | None, paid: bool) -> None:
        """A result came back (``paid``: it cost something this run)."""
        self.counted += 1
        if paid and cost is not None:
            self.spent += cost
            self.costed += 1

    def _admit(self) -> bool:
        average = self.spent / self.costed if self.costed else 0.0
        pending = self.started - self.counted
        if self.spent + average * (pending + 1) > self.cap:
            self.reached = True
        return not self.reached

    def gate(self, items: Any) -> Any:
        """``items``, stopping at the first one the cap does not admit."""
        if isinstance(items, AsyncIterable):
            return self._agate(items)
        return self._gate(items)

    def _gate(self, items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            if not self._admit():
                return
            self.started += 1
            yield item

    async def _agate(self, items: AsyncIterable[Any]) -> AsyncIterator[Any]:
        async for item in items:
            if not self._admit():
                return
            self.started += 1
            yield item
