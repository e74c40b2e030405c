"""The ledger's back ends side by side: SQLite (one file) and PostgreSQL (a real local server).

One conversation's ledger work, as the engine does it for an enrichment that is written:
``begin`` (take the enrichment), ``record`` (store the paid result), ``end``, ``claim`` (take the
write), ``written``: five transactions. Measured for 1, 2 and 4 processes at once, each on
conversations of its own, against one ledger: the median time of one conversation's cycle in a
process, and the conversations per second all the processes together keep (the median of
``--runs`` runs). PostgreSQL runs with its durable defaults (``fsync`` on, each commit flushed),
from ``enrich.testing.postgres`` (Debian's ``postgresql`` package), and again with
``synchronous_commit`` off for the ledger's sessions (set in its URL: a commit returns before its
WAL reaches the disk, as SQLite's WAL mode with ``synchronous = NORMAL`` does); SQLite in WAL
mode, on the same disk (a temporary folder).

    python bench/ledger.py [--conversations 400] [--processes 1 2 4] [--runs 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from enrich.ledger import Fingerprint, State, open_ledger  # noqa: E402
from enrich.models.usage import Usage  # noqa: E402
from enrich.testing.postgres import PostgresServer  # noqa: E402

FP = Fingerprint(transcript_hash="t" * 64, model="gpt-4o-mini", prompt_hash="p", taxonomy_hash="x")
BODY = {"summary": "The caller was charged twice; the duplicate was refunded.", "topic": "Billing"}
ENRICHMENT = {"enrichment": {**BODY, "misunderstood_queries": []}, "strategy": "single"}


def cycles(location: str, worker: int, count: int, barrier, out) -> None:
    ledger = open_ledger(location)
    ledger.stats()  # connected (and migrated) before the clock starts
    usage = Usage(prompt_tokens=900, completion_tokens=120, requests=1)
    barrier.wait()
    times = []
    start = time.perf_counter()
    for i in range(count):
        conv = f"w{worker}-c{i}"
        t = time.perf_counter()
        assert ledger.begin("agent", conv, FP.key(), 30)
        ledger.record(
            "agent", conv, FP, enrichment=ENRICHMENT, body=BODY, usage=usage, cost=1e-4,
            state=State.PENDING,
        )  # fmt: skip
        ledger.end("agent", conv)
        assert ledger.claim("agent", conv)
        ledger.written("agent", conv, BODY)
        times.append(time.perf_counter() - t)
    out.put((statistics.median(times), time.perf_counter() - start))


def run(location: str, processes: int, per_process: int) -> tuple[float, float]:
    """(median cycle in ms, conversations per second over all processes)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(processes + 1), ctx.Queue()
    procs = [
        ctx.Process(target=cycles, args=(location, w, per_process, barrier, out))
        for w in range(processes)
    ]
    for p in procs:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    results = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - start
    for p in procs:
        p.join()
    return statistics.median(r[0] for r in results) * 1000, processes * per_process / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=400, help="per process")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"{args.conversations} conversations per process, median of {args.runs} runs")
    print("postgres*: the URL ends ?options=-csynchronous_commit%3Doff (no WAL flush per commit)")
    print(f"{'back end':<12}{'processes':>10}{'cycle ms':>10}{'conv/s':>10}")
    with tempfile.TemporaryDirectory() as tmp, PostgresServer(durable=True) as pg:
        for name in ("sqlite", "postgres", "postgres*"):
            for n in args.processes:
                figures = []
                for r in range(args.runs):
                    if name == "sqlite":
                        location = str(Path(tmp) / f"l-{n}-{r}.sqlite3")
                    else:
                        location = pg.new_database(f"bench_{n}_{r}")
                        if name == "postgres*":
                            location += "?options=-csynchronous_commit%3Doff"
                    figures.append(run(location, n, args.conversations))
                cycle = statistics.median(f[0] for f in figures)
                rate = statistics.median(f[1] for f in figures)
                print(f"{name:<12}{n:>10}{cycle:>10.2f}{rate:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
