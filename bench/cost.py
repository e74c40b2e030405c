"""Cost: what a conversation costs in prompt tokens, against the transcript's own tokens, and how
many LLM calls it takes. The 600 labeled dialogues go through the fake LLM (one request each
unless over the context budget); tokens are counted with the offline estimate, and priced as
gpt-4o-mini from the configuration's price table.

    python bench/cost.py
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import dialogues  # noqa: E402

from enrich import Enricher  # noqa: E402
from enrich.config import load_config  # noqa: E402
from enrich.llm.tokens import get_counter  # noqa: E402
from enrich.testing import FakeLLM  # noqa: E402


def main() -> None:
    texts = dialogues()
    counter = get_counter("estimate")
    with FakeLLM() as llm:
        config = load_config(
            None,
            {"llm": {"base_url": llm.url, "api_key": "x"}, "ledger": {"enabled": False}},
            environ={},
        )
        with Enricher(config) as e:
            results = list(
                e.enrich_many(
                    [
                        {"agent_id": "a", "conversation_id": f"c{i}", "transcript": t}
                        for i, t in enumerate(texts)
                    ],
                    write=False,
                    concurrency=16,
                )
            )
        requests = list(llm.requests)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    transcript = [counter.count(t) for t in texts]
    prompt = []
    for r in requests:
        sent = "".join(m["content"] for m in r["messages"])
        schema = json.dumps(r["response_format"]["json_schema"]["schema"])
        prompt.append(counter.count(sent) + counter.count(schema))
    calls = [r.result.usage.requests for r in results]
    overhead = [p - t for p, t in zip(sorted(prompt), sorted(transcript), strict=True)]
    price = config.price("gpt-4o-mini")
    completion = 220  # a typical answer's tokens
    costs = [price.cost(p, completion) for p in prompt]
    print(
        f"{len(texts)} dialogues; LLM calls per conversation: "
        f"median {statistics.median(calls):.0f}, max {max(calls)} ({sum(calls)} in all)"
    )
    print(
        f"transcript tokens: median {statistics.median(transcript):.0f}; prompt tokens sent "
        f"(instructions, schema, transcript): median {statistics.median(prompt):.0f}"
    )
    ratio = statistics.median(p / t for p, t in zip(prompt, transcript, strict=True))
    print(
        f"ratio prompt / transcript: median {ratio:.2f}; "
        f"fixed overhead about {statistics.median(overhead):.0f} tokens a conversation"
    )
    print(
        f"estimated cost with gpt-4o-mini list prices and ~{completion} completion tokens: "
        f"${statistics.median(costs) * 1000:.3f} per 1,000 conversations at the median "
        f"(${sum(costs):.4f} for all {len(texts)})"
    )


if __name__ == "__main__":
    main()
