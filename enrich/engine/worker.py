"""A worker process of :class:`~enrich.engine.pool.PoolRun`: items in, results out.

:func:`work` is the body of a process started with ``spawn``: it builds its own
:class:`~enrich.engine.core.EnricherCore` from the pickled configuration, takes ``(seq, item)``
batches from its parent through one pipe, runs up to ``concurrency`` of them at once with the
in-process batch's per-item step (:func:`~enrich.engine.items.enrich_item`, which never raises),
and sends each completed ``(seq, result)`` back through the other, at once. Messages in:
``("items", [(seq, item), ...])``, ``("end",)`` (no more: finish and exit), ``("stop",)``
(start nothing more: finish what runs), ``("cancel",)`` (cancel what runs); the parent's pipe
closing is a cancel (it is gone: nobody would take the results). Messages out: ``("ready",)``,
``("results", [(seq, result), ...], took)`` (``took``: how many items it has started so far),
``("log", name, level, text)`` (its log records, logged by the parent), ``("fatal", text)``
and, last, ``("done", took)``.

It ignores SIGINT (a Ctrl-C in a terminal reaches the whole process group: the parent decides),
and takes a SIGTERM sent to it alone as a stop, a second one as a cancel. It is started with
:data:`SIGNALS` blocked, and unblocks them once it handles them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import threading
from multiprocessing.connection import Connection
from typing import Any

from ..config import Config
from ..models.results import BatchResult
from .core import EnricherCore
from .items import enrich_item

__all__ = ["work", "SIGNALS"]

#: Signals the parent keeps from its workers while it starts them.
SIGNALS = {signal.SIGINT, signal.SIGTERM}


class _Forward(logging.Handler):
    """A worker's log records, sent to the parent to be logged there."""

    def __init__(self, send: Any) -> None:
        super().__init__()
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send(("log", record.name, record.levelno, record.getMessage()))
        except Exception:  # noqa: BLE001 - logging must never break the work
            pass


def work(
    config: Config,
    inbox: Connection,
    outbox: Connection,
    concurrency: int,
    write: bool,
    force: bool,
    level: int,
) -> None:
    """A worker process's body: items in through ``inbox``, results out through ``outbox``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what a Ctrl-C does
    lock = threading.Lock()

    def send(message: Any) -> None:
        with lock:
            outbox.send(message)

    root = logging.getLogger("enrich")
    root.handlers[:] = [_Forward(send)]
    root.setLevel(level)
    root.propagate = False
    try:
        asyncio.run(_serve(config, inbox, send, concurrency, write, force))
    except BaseException as exc:  # noqa: BLE001 - said to the parent, which reports it
        with contextlib.suppress(Exception):
            send(("fatal", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None


async def _serve(
    config: Config, inbox: Connection, send: Any, concurrency: int, write: bool, force: bool
) -> None:
    loop = asyncio.get_running_loop()
    queued: collections.deque[tuple[int, Any]] = collections.deque()
    wake = asyncio.Event()
    state = {"end": False, "stop": False, "cancel": False}

    def deliver(message: Any) -> None:
        if message[0] == "items":
            queued.extend(message[1])
        else:  # "end", "stop" or "cancel"
            state[message[0]] = True
        wake.set()

    def read() -> None:
        try:
            while True:
                message = inbox.recv()
                loop.call_soon_threadsafe(deliver, message)
        except (EOFError, OSError):  # the parent is gone: nobody will take the results
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, ("cancel",))

    def on_sigterm() -> None:  # a SIGTERM sent to this worker alone: a stop, then a cancel
        deliver(("cancel",) if state["stop"] else ("stop",))

    threading.Thread(target=read, name="enrich-worker-inbox", daemon=True).start()
    with contextlib.suppress(NotImplementedError, AttributeError, ValueError):  # POSIX only
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    running: dict[asyncio.Task[BatchResult], int] = {}
    took = 0
    async with EnricherCore(config) as enricher:
        send(("ready",))
        while not state["cancel"]:
            while queued and len(running) < concurrency and not state["stop"]:
                seq, item = queued.popleft()
                task = asyncio.ensure_future(enrich_item(enricher, item, write=write, force=force))
                running[task] = seq
                took += 1
            if not running and (state["stop"] or (state["end"] and not queued)):
                break
            wake.clear()
            waiter = asyncio.ensure_future(wake.wait())
            done, _ = await asyncio.wait([*running, waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            finished = [(running.pop(t), t.result()) for t in done if t is not waiter]
            if finished:  # at once: the parent counts them out of what this worker holds
                send(("results", finished, took))
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    send(("done", took))
