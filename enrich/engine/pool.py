"""One batch over N worker processes: ``enrich batch --workers N`` (and ``backfill``).

:class:`PoolRun` reads like :class:`~enrich.engine.batch.BatchRun` (iterate it for
:class:`~enrich.models.results.BatchResult` s; :meth:`~PoolRun.stop` winds it down,
:meth:`~PoolRun.cancel` abandons it), but the conversations are enriched by ``workers`` child
processes (``spawn``: each starts a fresh interpreter and builds its own
:class:`~enrich.engine.core.EnricherCore` from the same, pickled, configuration), each running
up to ``concurrency`` conversations at once with the same per-item step as the in-process batch
(:func:`~enrich.engine.items.enrich_item`). They share what one process shares with itself
through the ledger, which is therefore required: one LLM call and one write per conversation
(its leases and claimed writes), and ``llm.rpm``/``llm.tpm`` held by all of them together (its
shared pacing).

**Who does what.** This process reads the input (a thread pulls it lazily, as the engine does:
``--limit``, ``--sample`` and the ``--max-cost`` gate apply as they are pulled), answers an
item it cannot send (a line that cannot be read, a conversation already seen in this batch)
itself, exactly as the in-process batch would, and hands the rest to the workers on demand:
each holds its ``concurrency`` in flight and a few more queued, no more. Every result comes back
here, in the order the conversations complete, so there is one stream for the one results file,
the one progress bar and the one summary, with the same rows and columns as with one process;
the order is completion order, as with one process (not input order).

**Nothing is lost when a worker dies.** This process keeps every item it handed out until its
result is back. When a worker dies (killed, out of memory), its results already sent are taken,
and each of its unfinished conversations is handed to another worker once (a fresh worker is
started in its place while there is work, at most ``workers`` times in the run); one whose
second worker dies too is a failed result saying so. What the dead worker paid for is in the
ledger: the retry reuses it (no second LLM call), and its leases are free at once (their holder
is gone). Should every worker be gone with work left and no restart left, the run stops taking
conversations, reports what it held as failed, and ends with an :class:`~enrich.errors.EnrichError`.

**Stopping.** :meth:`PoolRun.stop` (the first Ctrl-C, a SIGTERM): the workers take nothing new
and finish what they hold in flight, whose results come back; what they had queued and not
started is not taken, as with one process. :meth:`PoolRun.cancel` (the second): the workers
cancel what is in flight and exit. A Ctrl-C in a terminal reaches the whole process group: the
workers ignore it, and this process decides (see :mod:`~enrich.engine.worker`). Their log
records are logged here, by this process's loggers (its filters, redaction included, apply).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import multiprocessing
import queue
import signal
import threading
from collections.abc import AsyncIterable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

from ..errors import ConfigError, EnrichError
from ..models.results import BadItem, BatchItem, BatchResult
from .core import EnricherCore
from .items import bad_result, to_item
from .worker import SIGNALS, work

__all__ = ["PoolRun"]

log = logging.getLogger("enrich.pool")

_END = object()


@dataclasses.dataclass
class _Held:
    """An item handed to a worker, kept until its result is back."""

    item: BatchItem
    index: int  # its place in what its worker was sent: below the worker's `took`, started
    attempts: int = 0


@dataclasses.dataclass
class _Worker:
    number: int
    process: Any
    inbox: Connection  # ours to send on
    outbox: Connection  # ours to read
    ready: bool = False
    done: bool = False
    ended: bool = False
    stopped: bool = False
    gone: bool = False  # settled: its results taken, what it held retried or reported
    sent: int = 0
    took: int = 0
    fatal: str | None = None
    held: dict[int, _Held] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        code = self.process.exitcode
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                how = f"killed by {signal.Signals(-code).name}"
                return f"worker {self.number} (pid {self.process.pid}) {how}"
        if code == 0:  # it stopped on its own (a SIGTERM sent to it alone)
            return f"worker {self.number} (pid {self.process.pid}) exited"
        how = f"exit code {code}" + (f": {self.fatal}" if self.fatal else "")
        return f"worker {self.number} (pid {self.process.pid}) died ({how})"


class PoolRun:
    """A batch over ``workers`` processes, read from synchronous code like a
    :class:`~enrich.engine.batch.BatchRun` (see the module's docstring).

    >>> run = PoolRun(enricher, items, workers=4, concurrency=64)   # doctest: +SKIP
    >>> for result in run: ...                                      # doctest: +SKIP
    >>> run.close()                                                 # doctest: +SKIP
    """

    def __init__(
        self,
        enricher: EnricherCore,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        workers: int,
        concurrency: int = 8,
        write: bool = True,
        force: bool = False,
        restarts: int | None = None,
    ) -> None:
        if workers < 1 or concurrency < 1:
            raise ValueError("workers and concurrency must be at least 1")
        if enricher.ledger is None:
            raise ConfigError("worker processes share their work through the ledger: it is off")
        self._enricher = enricher
        self._items = items
        self._args = (enricher.config, concurrency, write, force)
        self._concurrency = concurrency
        #: items a worker holds queued beyond those it runs (none below 16: with ``--max-cost``,
        #: what was handed out counts as started, as what runs does with one process)
        self._prefetch = concurrency // 16
        self._context = multiprocessing.get_context("spawn")
        self._size = workers
        self._restarts = workers if restarts is None else restarts
        self._out: queue.Queue[Any] = queue.Queue(maxsize=max(64, concurrency * 4))
        self._fed: queue.Queue[BatchItem] = queue.Queue()  # read, not yet handed out
        self._demand = threading.Condition()
        self._want = 0  # items the workers have room for, beyond those read (under _demand)
        self._reading = 0  # an item the feeder is reading now (under _demand)
        self._retry: collections.deque[_Held] = collections.deque()
        self._workers: list[_Worker] = []
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        self._wake_lock = threading.Lock()
        self._seq = 0
        self._numbers = 0
        self._fed_all = False  # the source is exhausted (or failed) and all of it is in _fed
        self._error: BaseException | None = None
        self._finished = False
        self.stopped = False
        self._cancelled = False
        self._feeder = threading.Thread(target=self._feed, name="enrich-pool-feed", daemon=True)
        self._coordinator = threading.Thread(
            target=self._coordinate, name="enrich-pool", daemon=True
        )
        self._feeder.start()
        self._coordinator.start()

    # -- what the reading thread calls ----------------------------------------------------------

    def stop(self) -> None:
        """Take no new items; the ones in flight still finish and are yielded."""
        self.stopped = True
        self._wake()

    def cancel(self) -> None:
        """Stop at once: the workers cancel what they have in flight and exit (what was paid
        for is in the ledger). Returns once they are gone."""
        self.stopped = self._cancelled = True
        self._wake()
        self._coordinator.join(timeout=30)

    def close(self) -> None:
        """Wait for the workers to be gone (cancelling them if the run was not read to its
        end)."""
        if self._coordinator.is_alive() and not self._finished:
            self.cancel()
        self._coordinator.join(timeout=30)
        for w in self._workers:
            if w.process.is_alive():
                w.process.kill()
            w.process.join(timeout=5)
        with self._wake_lock:
            self._wake_r.close()
            self._wake_w.close()

    def __iter__(self) -> Iterator[BatchResult]:
        return self

    def __next__(self) -> BatchResult:
        # As BatchRun: a KeyboardInterrupt while waiting leaves the run readable.
        if self._finished:
            raise StopIteration
        while True:
            try:
                value = self._out.get(timeout=0.2)
            except queue.Empty:
                continue
            if value is _END:
                self._finished = True
                raise StopIteration
            if isinstance(value, BaseException):
                self._finished = True
                raise value
            return value

    # -- the feeding thread: the source, pulled lazily ------------------------------------------

    def _wake(self) -> None:
        with self._wake_lock, contextlib.suppress(OSError):
            self._wake_w.send_bytes(b"")

    def _put(self, value: Any) -> bool:
        """Hand ``value`` to the reader, unless the run is cancelled meanwhile (False then)."""
        while not self._cancelled:
            try:
                self._out.put(value, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _feed(self) -> None:
        """Read the source as the workers have room: no item is read before one of them can
        take it (so ``--max-cost`` counts as started what runs, or is about to)."""
        seen: dict[tuple[str, str], int | None] = {}
        source = self._source()
        try:
            while True:
                with self._demand:
                    while self._want <= 0 and not self.stopped:
                        self._demand.wait(0.5)
                    if self.stopped:
                        return
                    self._want -= 1
                    self._reading = 1
                try:
                    raw = next(source)
                except StopIteration:
                    return
                item = to_item(raw)
                if isinstance(item, BadItem):
                    result: BatchResult | None = bad_result(item)
                else:
                    key = (item.agent_id, item.conversation_id or f"platform:{item.platform_id}")
                    result = _duplicate(item, seen[key]) if key in seen else None
                    seen.setdefault(key, item.line)
                with self._demand:
                    self._reading = 0
                    if result is None:
                        self._fed.put(item)  # type: ignore[arg-type]
                    else:  # answered here, as the in-process batch does: room for another
                        self._want += 1
                if result is not None:
                    self._put(result)
                self._wake()
        except BaseException as exc:  # noqa: BLE001 - raised to the reader once the rest is in
            self._error = exc
        finally:
            with self._demand:
                self._reading = 0
            self._fed_all = True
            self._wake()

    def _source(self) -> Iterator[Any]:
        items = self._items
        if not isinstance(items, AsyncIterable):
            yield from items
            return
        iterator = items.__aiter__()
        loop = self._enricher.sync.loop  # an async source (a backfill's listing) runs there
        while True:
            try:
                yield asyncio.run_coroutine_threadsafe(iterator.__anext__(), loop).result()
            except StopAsyncIteration:
                return

    # -- the coordinating thread: the workers ---------------------------------------------------

    def _spawn(self) -> None:
        self._numbers += 1
        to_worker_r, to_worker_w = self._context.Pipe(duplex=False)
        from_worker_r, from_worker_w = self._context.Pipe(duplex=False)
        config, concurrency, write, force = self._args
        process = self._context.Process(
            target=work,
            args=(
                config,
                to_worker_r,
                from_worker_w,
                concurrency,
                write,
                force,
                logging.getLogger("enrich").getEffectiveLevel(),
            ),
            name=f"enrich-worker-{self._numbers}",
            daemon=True,
        )
        process.start()  # with this thread's signals blocked: the worker starts with them so
        to_worker_r.close()
        from_worker_w.close()
        self._workers.append(_Worker(self._numbers, process, to_worker_w, from_worker_r))

    def _coordinate(self) -> None:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            for _ in range(self._size):
                self._spawn()
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - a bug here must not hang the reader
            self._error = self._error or exc
            for w in self._workers:
                with contextlib.suppress(Exception):
                    w.process.kill()
        finally:
            self._shutdown()
            if self._error is not None:
                self._put(self._error)
            self._put(_END)

    def _live(self) -> list[_Worker]:
        return [w for w in self._workers if not w.gone]

    def _loop(self) -> None:
        told_stop = told_cancel = False
        while True:
            if self._cancelled and not told_cancel:
                told_cancel = told_stop = True
                for w in self._live():
                    self._tell(w, ("cancel",))
                self._fail_all(self._retry, "the run was abandoned")
            elif self.stopped and not told_stop:
                told_stop = True
                for w in self._live():
                    self._tell(w, ("stop",))
                    w.stopped = True
                self._fail_all(self._retry, "the run was stopped")
            if not self.stopped:
                self._dispatch()
            live = self._live()
            if not live and (self.stopped or self._idle()):
                return
            if self._cancelled and all(w.process.exitcode is not None for w in self._workers):
                return
            waiting: list[Any] = [self._wake_r]
            for w in live:
                waiting += [w.outbox, w.process.sentinel]
            for ready in wait(waiting, timeout=1.0):
                if ready is self._wake_r:
                    with contextlib.suppress(EOFError, OSError):
                        while self._wake_r.poll():
                            self._wake_r.recv_bytes()
                    continue
                w = next(
                    (x for x in live if ready is x.outbox or ready == x.process.sentinel), None
                )
                if w is None or w.gone:
                    continue
                if ready is w.outbox:
                    try:
                        self._receive(w, w.outbox.recv())
                    except (EOFError, OSError):
                        self._exited(w)
                else:
                    self._exited(w)

    def _idle(self) -> bool:
        """No work left: the source is exhausted and handed out, nothing to retry."""
        return self._fed_all and self._fed.empty() and not self._retry

    def _tell(self, w: _Worker, message: Any) -> bool:
        try:
            w.inbox.send(message)
            return True
        except (OSError, ValueError):
            return False  # it is gone: its sentinel says so

    def _dispatch(self) -> None:
        """Hand each worker what it has room for (retries first), and ask the feeder for what
        they still have room for."""
        room_left = 0
        for w in self._live():
            if not w.ready or w.stopped or w.ended:
                continue
            room = self._concurrency + self._prefetch - len(w.held)
            batch: list[tuple[int, BatchItem]] = []
            while room > 0:
                if self._retry:
                    held = self._retry.popleft()
                else:
                    try:
                        held = _Held(self._fed.get_nowait(), 0)
                    except queue.Empty:
                        break
                self._seq += 1
                held.index = w.sent
                w.sent += 1
                w.held[self._seq] = held
                batch.append((self._seq, held.item))
                room -= 1
            room_left += room
            if batch:
                self._tell(w, ("items", batch))
            elif not w.held and self._idle():
                w.ended = self._tell(w, ("end",))
        with self._demand:
            self._want = room_left - self._fed.qsize() - self._reading
            if self._want > 0:
                self._demand.notify()

    def _receive(self, w: _Worker, message: Any) -> None:
        kind = message[0]
        if kind == "results":
            for seq, result in message[1]:
                w.held.pop(seq, None)
                self._put(result)
            w.took = max(w.took, message[2])
        elif kind == "log":
            _, name, level, text = message
            logging.getLogger(name).log(level, "%s", text)
        elif kind == "ready":
            w.ready = True
        elif kind == "fatal":
            w.fatal = message[1]
        elif kind == "done":
            w.took = max(w.took, message[1])
            w.done = True
            self._exited(w)

    def _exited(self, w: _Worker) -> None:
        """``w`` is done, or gone: take what it still sent, then settle what it held."""
        if w.gone:
            return
        with contextlib.suppress(EOFError, OSError):
            while not w.done and w.outbox.poll():
                self._receive(w, w.outbox.recv())
                if w.gone:
                    return
        w.gone = True
        w.process.join(timeout=10)
        held, w.held = w.held, {}
        if self.stopped:
            # A worker that finished after a stop never started what it had not taken.
            lost = [h for h in held.values() if not w.done or h.index < w.took]
            self._fail_all(lost, f"{w.describe()} while the run was stopping")
            return
        if held:
            log.warning(
                "%s; its %d unfinished conversation(s) go to another worker",
                w.describe(),
                len(held),
            )
        for h in held.values():
            if h.attempts >= 1:
                self._fail_all([h], f"{w.describe()}, the second worker to die with it")
            else:
                h.attempts += 1
                self._retry.append(h)
        if self._idle():
            return  # (a worker that was told the end exits when there is no work left)
        if self._restarts > 0:
            self._restarts -= 1
            self._spawn()
        elif not self._live():
            self._error = EnrichError(
                f"the worker processes keep dying (last: {w.describe()}): stopped taking "
                "conversations; run the same command again to resume (what was paid for is in "
                "the ledger, and is not paid for twice)"
            )
            self.stopped = True
            self._fail_all(self._retry, "no worker process was left to enrich it")

    def _fail_all(self, held: Iterable[_Held], why: str) -> None:
        for h in list(held):
            self._put(_lost(h.item, why))
        if held is self._retry:
            self._retry.clear()

    def _shutdown(self) -> None:
        for w in self._workers:
            if w.process.exitcode is None:
                w.process.join(timeout=10 if not self._cancelled else 5)
            if w.process.exitcode is None:
                w.process.kill()
                w.process.join(timeout=5)
            for conn in (w.inbox, w.outbox):
                conn.close()


def _duplicate(item: BatchItem, first: int | None) -> BatchResult:
    return BatchResult(
        agent_id=item.agent_id,
        conversation_id=item.conversation_id,
        line=item.line,
        status="skipped",
        ok=True,
        error=f"the same conversation as line {first} of this batch"
        if first
        else "the same conversation appears earlier in this batch",
    )


def _lost(item: BatchItem, why: str) -> BatchResult:
    return BatchResult(
        agent_id=item.agent_id,
        conversation_id=item.conversation_id,
        line=item.line,
        status="failed",
        ok=False,
        error=f"not enriched: {why}; run the same command again to resume (what was paid for "
        "is in the ledger, and is not paid for twice)",
        error_type="WorkerLost",
        stage="internal",
    )
