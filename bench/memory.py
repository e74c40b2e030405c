"""Memory: a 100,000-line batch input streams. Runs ``enrich batch`` on a generated JSON Lines
file of short conversations against the fakes (in another process, answering at once), and
prints the command's peak resident memory and its rate.

    python bench/memory.py [--lines 100000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import dialogues, fakes, machine  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lines", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args()
    texts = dialogues()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp, fakes() as f:
        src = Path(tmp) / "in.jsonl"
        with src.open("w") as out:
            for i in range(args.lines):
                row = {
                    "agent_id": "agent-1",
                    "conversation_id": f"c{i:06d}",
                    "transcript": texts[i % len(texts)],
                }
                out.write(json.dumps(row) + "\n")
        size = src.stat().st_size
        print(f"input: {args.lines:,} lines, {size / 1e6:.0f} MB")
        env = f.env(ENRICH_LEDGER=str(Path(tmp) / "ledger.sqlite3"))
        start = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "enrich",
                "batch",
                str(src),
                "-j",
                str(args.concurrency),
                "-o",
                str(Path(tmp) / "out.csv"),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        stats = f.stats()
    if done.returncode != 0:
        print(done.stderr[-2000:])
        raise SystemExit(done.returncode)
    print(
        f"enrich batch: {wall:.0f}s, {args.lines / wall:.0f} conversations/s, "
        f"{stats['puts']:,} written"
    )
    print(
        f"peak resident memory of the enrich process: {peak_mb:.0f} MB "
        f"(input {size / 1e6:.0f} MB; target < 300 MB)"
    )


if __name__ == "__main__":
    main()
