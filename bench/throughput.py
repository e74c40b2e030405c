"""Throughput: 2,000 conversations against a fake LLM answering in 500 ms, 64 at a time, with
writes to the fake ChatDash on. The ideal is 64 / 0.5 s = 128 conversations a second.

Prints the rate, its ratio to the ideal, and enrich's own CPU per conversation (the fakes run
in another process). Median of --runs runs. Each run first enriches --warmup other
conversations with the same Enricher, outside the figures: what is paid once per process (the
``openai`` SDK's import on first use, the first connections) is not a conversation's cost.

    python bench/throughput.py [--conversations 2000] [--concurrency 64] [--latency 0.5]
                               [--warmup 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import dialogues, fakes, machine  # noqa: E402

from enrich import Enricher  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--conversations", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--latency", type=float, default=0.5)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--no-ledger", action="store_true")
    p.add_argument("--warmup", type=int, default=64, help="conversations before the measure")
    args = p.parse_args()

    texts = dialogues()
    items = [
        {"agent_id": "agent-1", "conversation_id": f"c{i:05d}", "transcript": texts[i % len(texts)]}
        for i in range(args.conversations)
    ]
    ideal = args.concurrency / args.latency
    print(f"machine: {machine()}")
    print(
        f"{args.conversations} conversations, concurrency {args.concurrency}, "
        f"LLM latency {args.latency}s, writes on, ledger {'off' if args.no_ledger else 'on'}"
    )
    rates, cpus = [], []
    for run in range(args.runs):
        with fakes("--latency", str(args.latency)) as f, tempfile.TemporaryDirectory() as tmp:
            config = f.config(None if args.no_ledger else str(Path(tmp) / "l.db"))
            with Enricher(config) as e:
                warmup = [{**item, "conversation_id": f"w{i:05d}"} for i, item in enumerate(items)]
                for r in e.enrich_many(warmup[: args.warmup], concurrency=args.concurrency):
                    assert r.ok, r.error
                cpu0, t0 = time.process_time(), time.perf_counter()
                results = list(e.enrich_many(items, concurrency=args.concurrency))
                wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            stats = f.stats()
        failed = sum(not r.ok for r in results)
        assert failed == 0, [r.error for r in results if not r.ok][:3]
        assert stats["puts"] == args.conversations + min(args.warmup, args.conversations)
        rate = args.conversations / wall
        rates.append(rate)
        cpus.append(cpu / args.conversations * 1000)
        print(
            f"  run {run + 1}: {wall:.1f}s, {rate:.1f} conv/s ({rate / ideal:.0%} of ideal), "
            f"{cpus[-1]:.2f} ms CPU/conv, max {stats['max_in_flight']} LLM requests in flight"
        )
    rate = statistics.median(rates)
    print(
        f"median: {rate:.1f} conversations/s = {rate / ideal:.1%} of the ideal {ideal:.0f}/s; "
        f"enrich's CPU {statistics.median(cpus):.2f} ms per conversation"
    )


if __name__ == "__main__":
    main()
