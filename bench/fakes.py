"""Run the fake OpenAI-compatible server and the fake ChatDash in their own process, so that a
benchmark measures enrich's CPU alone. Prints one JSON line with their URLs, then serves until
it is killed (or its standard input closes).

    python bench/fakes.py [--latency 0.5] [--rpm-limit 600]
"""

from __future__ import annotations

import argparse
import json
import sys

from enrich.testing import FakeChatDash, FakeLLM


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rpm-limit", type=int, default=None)
    # enrich serve: a platform id ChatDash was never told of is "imported" this long after it is
    # first asked for (0: at once); see FakeChatDash(import_delay=...)
    parser.add_argument("--import-delay", type=float, default=None)
    args = parser.parse_args()
    with (
        FakeLLM(latency=args.latency, rpm_limit=args.rpm_limit, keep_requests=False) as llm,
        FakeChatDash(api_key="CD.bench", import_delay=args.import_delay) as chatdash,
    ):
        print(json.dumps({"llm": llm.url, "chatdash": chatdash.url, "key": "CD.bench"}), flush=True)
        for line in sys.stdin:  # "stats" prints the counters; EOF stops
            if line.strip() == "stats":
                print(
                    json.dumps(
                        {
                            "requests": llm.count,
                            "rate_limited": llm.rate_limited,
                            "max_in_flight": llm.max_in_flight,
                            "puts": len(chatdash.puts),
                            "put_conversations": len({p[1] for p in chatdash.puts}),
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
