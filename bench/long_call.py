"""A call of 100,000 words through the fake LLM: how many LLM calls, how many prompt tokens, how
long. Prints medians over a few runs; run it from the repository root:

    python bench/long_call.py [--words 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from enrich import Enricher
from enrich.config import load_config
from enrich.llm.tokens import get_counter
from enrich.testing import FakeLLM

DATASETS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "datasets"
FALLBACK = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"


def make_call(words: int) -> str:
    """Real dialogue turns (the labeled datasets), one after another, up to ``words`` words."""
    folder = DATASETS if DATASETS.is_dir() else FALLBACK
    turns = []
    for path in sorted(folder.glob("*/sample.jsonl")):
        for line in path.read_text().splitlines():
            turns += json.loads(line)["turns"]
    lines, count, i = [], 0, 0
    while count < words:
        turn = turns[i % len(turns)]
        text = " ".join(turn["text"].split())
        if text:
            lines.append(f"{'User' if turn['role'] == 'user' else 'Agent'}: {text}")
            count += len(lines[-1].split())
        i += 1
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--words", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    text = make_call(args.words)
    print(
        f"call: {len(text.split()):,} words, {len(text):,} characters, "
        f"{get_counter('estimate').count(text):,} tokens (estimate)"
    )
    print(
        f"{'context':>8} {'parts':>6} {'LLM calls':>10} {'prompt tokens':>14} "
        f"{'completion':>11} {'median s':>9}"
    )
    for context in (128_000, 32_000, 8_192):
        times, result, requests = [], None, 0
        for _ in range(args.runs):
            with FakeLLM() as llm:
                config = load_config(
                    None,
                    {"llm": {"base_url": llm.url, "api_key": "unused", "context_tokens": context}},
                    environ={},
                )
                with Enricher(config) as enricher:
                    start = time.perf_counter()
                    result = enricher.enrich(text)
                    times.append(time.perf_counter() - start)
                requests = len(llm.requests)
        assert result is not None and result.usage.requests == requests
        print(
            f"{context:>8,} {result.parts:>6} {requests:>10} {result.usage.prompt_tokens:>14,} "
            f"{result.usage.completion_tokens:>11,} {statistics.median(times):>9.2f}"
        )
    print(
        "(the fake LLM counts a token per 4 characters of the request; it answers at once, so "
        "the time is enrich's own work plus loopback HTTP)"
    )


if __name__ == "__main__":
    main()
