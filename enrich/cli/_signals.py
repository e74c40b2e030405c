"""SIGTERM as the first Ctrl-C: what ``docker stop``, Kubernetes and ``timeout`` send.

Inside :func:`sigterm_as_interrupt`, a SIGTERM raises :class:`KeyboardInterrupt` in the main
thread, exactly where a Ctrl-C would: a batch or backfill stops taking conversations, finishes
and records those in flight, and exits 130. If they are not done within the grace period
(:data:`GRACE_SECONDS`, or ``$ENRICH_STOP_GRACE`` seconds), a second interrupt abandons them,
as a second Ctrl-C does; a second SIGTERM does so at once. The previous handler is restored on
the way out.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["GRACE_SECONDS", "grace_seconds", "sigterm_as_interrupt"]

#: How long the conversations in flight have to finish after a SIGTERM (below Kubernetes'
#: default 30 s before its SIGKILL).
GRACE_SECONDS = 25.0


def grace_seconds() -> float:
    """``$ENRICH_STOP_GRACE`` if set to a number of seconds, else :data:`GRACE_SECONDS`."""
    try:
        return max(0.0, float(os.environ.get("ENRICH_STOP_GRACE", GRACE_SECONDS)))
    except ValueError:
        return GRACE_SECONDS


@contextmanager
def sigterm_as_interrupt(grace: float | None = None) -> Iterator[None]:
    """Turn SIGTERM into :class:`KeyboardInterrupt` while the body runs (main thread only;
    elsewhere, or where SIGTERM cannot be handled, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    grace = grace_seconds() if grace is None else grace
    timers: list[threading.Timer] = []

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if not timers:  # the first: stop taking work, and abandon what is left after grace
            timer = threading.Timer(grace, os.kill, (os.getpid(), signal.SIGTERM))
            timer.daemon = True
            timers.append(timer)
            timer.start()
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except (ValueError, OSError, AttributeError):
        yield
        return
    try:
        yield
    finally:
        for timer in timers:
            timer.cancel()
        signal.signal(signal.SIGTERM, previous)
