"""One client per event loop, created on first use: what the LLM and ChatDash clients share.

An HTTP client belongs to the event loop it was created on. An :class:`~enrich.Enricher` may
be used from several loops (its own background loop for the synchronous API, a caller's loop
for the async one), and pickled to another process, so clients are kept per loop and never
pickled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, TypeVar

C = TypeVar("C")


class PerLoop(Generic[C]):
    def __init__(self) -> None:
        self._by_loop: dict[int, tuple[asyncio.AbstractEventLoop, C]] = {}

    def get(self, make: Callable[[], C]) -> C:
        """The running loop's client, made with ``make()`` the first time."""
        loop = asyncio.get_running_loop()
        cached = self._by_loop.get(id(loop))
        if cached is not None and cached[0] is loop:
            return cached[1]
        client = make()
        self._by_loop = {k: v for k, v in self._by_loop.items() if not v[0].is_closed()}
        self._by_loop[id(loop)] = (loop, client)
        return client

    def pop(self) -> C | None:
        """Forget the running loop's client and hand it back, to be closed."""
        cached = self._by_loop.pop(id(asyncio.get_running_loop()), None)
        return cached[1] if cached is not None else None

    def __getstate__(self) -> dict[str, Any]:
        return {}  # clients stay in their process

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._by_loop = {}
