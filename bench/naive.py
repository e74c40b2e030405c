"""enrich against the most direct script a user would write without it: a loop of
``client.chat.completions.parse(...)`` then ``httpx.put(...)``, one conversation after another.
The same 200 conversations, the same fake LLM (500 ms an answer) and fake ChatDash; prints both
wall times and their ratio.

    python bench/naive.py [--conversations 200] [--latency 0.5] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import dialogues, fakes, machine  # noqa: E402

from enrich import Enricher  # noqa: E402


class Evaluation(BaseModel):
    isSuccess: bool
    reason: str


class Query(BaseModel):
    question: str


class Analysis(BaseModel):
    summary: str
    topic: str
    subtopic: str
    evaluation: Evaluation
    mistunderstoodQueries: list[Query]


PROMPT = (
    "Analyse this customer conversation. Return a summary, a topic, a subtopic, whether it "
    "was successful and why, and the user questions the agent misunderstood."
)


def naive(f, items) -> float:
    client = openai.OpenAI(base_url=f.llm, api_key="sk-bench")
    start = time.perf_counter()
    for item in items:
        completion = client.chat.completions.parse(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": PROMPT},
                {"role": "user", "content": item["transcript"]},
            ],
            response_format=Analysis,
        )
        parsed = completion.choices[0].message.parsed
        body = parsed.model_dump() if parsed else {}
        httpx.put(
            f"{f.chatdash}/agents/{item['agent_id']}/conversations/{item['conversation_id']}",
            json=body,
            headers={"Authorization": f.key},
        )
    return time.perf_counter() - start


def with_enrich(f, items, concurrency: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        config = f.config(str(Path(tmp) / "l.db"))
        with Enricher(config) as e:
            start = time.perf_counter()
            results = list(e.enrich_many(items, concurrency=concurrency))
            wall = time.perf_counter() - start
    assert all(r.ok for r in results)
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--conversations", type=int, default=200)
    p.add_argument("--latency", type=float, default=0.5)
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args()
    texts = dialogues()
    items = [
        {"agent_id": "agent-1", "conversation_id": f"c{i:04d}", "transcript": texts[i % len(texts)]}
        for i in range(args.conversations)
    ]
    print(f"machine: {machine()}")
    with fakes("--latency", str(args.latency)) as f:
        enrich_wall = with_enrich(f, items, args.concurrency)
        naive_wall = naive(f, items)
    print(f"{args.conversations} conversations, LLM answering in {args.latency}s")
    print(f"  direct script (parse + put in a loop): {naive_wall:.1f}s")
    print(
        f"  enrich (concurrency {args.concurrency}, validated, grounded, ledger): "
        f"{enrich_wall:.1f}s"
    )
    print(
        f"  ratio: enrich takes {enrich_wall / naive_wall:.3f} of the direct script's time "
        f"({naive_wall / enrich_wall:.0f}x faster)"
    )


if __name__ == "__main__":
    main()
