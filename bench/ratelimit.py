"""Rate limit: the fake LLM allows 600 requests a minute and answers 429 past that. A batch
configured with ``rpm: 600`` should run at 90% or more of it with under 2% of its requests
answered 429; the same batch unpaced is shown for comparison.

    python bench/ratelimit.py [--conversations 900] [--unpaced 900]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import dialogues, fakes, machine  # noqa: E402

from enrich import Enricher  # noqa: E402

LIMIT = 600


def run(items, rpm, concurrency):
    with (
        fakes("--rpm-limit", str(LIMIT), "--latency", "0.2") as f,
        tempfile.TemporaryDirectory() as tmp,
    ):
        config = f.config(str(Path(tmp) / "l.db"), rpm=rpm, max_retries=8)
        with Enricher(config) as e:
            start = time.perf_counter()
            results = list(e.enrich_many(items, concurrency=concurrency))
            wall = time.perf_counter() - start
        stats = f.stats()
    return results, wall, stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--conversations", type=int, default=900)
    p.add_argument("--unpaced", type=int, default=900)
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args()
    texts = dialogues()
    print(f"machine: {machine()}")
    print(f"provider limit: {LIMIT} requests a minute (429 past it, with retry-after-ms)")
    for label, n, rpm in (
        ("paced, rpm 600", args.conversations, LIMIT),
        ("unpaced", args.unpaced, None),
    ):
        if n == 0:
            continue
        items = [
            {"agent_id": "a", "conversation_id": f"c{i:05d}", "transcript": texts[i % 600]}
            for i in range(n)
        ]
        results, wall, stats = run(items, rpm, args.concurrency)
        ok = sum(r.ok for r in results)
        per_minute = ok / wall * 60
        share_429 = stats["rate_limited"] / stats["requests"]
        print(
            f"  {label}: {ok}/{n} done in {wall:.1f}s = {per_minute:.0f}/min "
            f"({per_minute / LIMIT:.1%} of the limit); {stats['requests']} requests, "
            f"{stats['rate_limited']} answered 429 ({share_429:.2%})"
        )


if __name__ == "__main__":
    main()
