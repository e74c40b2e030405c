"""Throughput before and after a change, measured side by side in one run on one machine.

    python bench/compare.py --before REV [--runs 3] [--own-bench] [throughput args...]

Checks out REV in a temporary ``git worktree add --detach`` (removed at the end) and runs
bench/throughput.py once per run, alternating: before, after, before, after... so that both
sides see the same machine state (other load, thermal throttling). "After" is this working tree,
uncommitted changes included. Each run imports the ``enrich`` of its own tree (PYTHONPATH, and
the child's working directory set to that tree; the editable install is only on the path after
them) and prints ``enrich.__file__`` to prove it. The arguments compare.py does not know go to
throughput.py (--conversations, --concurrency, --latency, --no-ledger); each run is its
``--runs 1``. At the end: the medians of each side (conversations/s, share of the ideal, enrich's
CPU ms per conversation) and the after/before ratios.

Both sides run this tree's bench/throughput.py, and the fake servers (a separate process) come
from this tree's enrich.testing: the workload, the fakes and the measurement are then the same
on both sides, and only the enrich under test differs. A REV whose API this bench no longer fits
can be measured with ``--own-bench``: each tree runs its own bench/throughput.py and its own fakes.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in the child: checks where enrich comes from, points the fakes' process at the fakes'
# tree, then runs throughput.py as its __main__.
RUNNER = """\
import os, runpy, sys
tree, script, fakes_tree = sys.argv[1:4]
import enrich
print(f"enrich: {enrich.__file__}", flush=True)
if not os.path.realpath(enrich.__file__).startswith(os.path.join(os.path.realpath(tree), "")):
    sys.exit(f"enrich was imported from {enrich.__file__}, not from {tree}")
os.environ["PYTHONPATH"] = fakes_tree
sys.argv = [script, *sys.argv[4:]]
runpy.run_path(script, run_name="__main__")
"""

MEDIAN = re.compile(
    r"median: ([\d.]+) conversations/s = ([\d.]+)% of the ideal [\d.]+/s; "
    r"enrich's CPU ([\d.]+) ms per conversation"
)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def run_once(tree: Path, script: Path, fakes_tree: Path, args: list[str]) -> dict:
    """One throughput.py run against ``tree``'s enrich: its rate, share of the ideal and CPU."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-c", RUNNER, str(tree), str(script), str(fakes_tree)]
    proc = subprocess.run(
        [*command, *args, "--runs", "1"],
        cwd=tree,  # not this checkout: the child's '' on sys.path must not find the other enrich
        env=env,
        capture_output=True,
        text=True,
    )
    found = MEDIAN.search(proc.stdout)
    if proc.returncode or not found:
        sys.exit(f"throughput.py failed against {tree}:\n{proc.stdout}{proc.stderr}")
    source = proc.stdout.splitlines()[0].removeprefix("enrich: ")
    rate, ideal, cpu = (float(x) for x in found.groups())
    return {"rate": rate, "ideal": ideal, "cpu": cpu, "enrich": source, "out": proc.stdout}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", required=True, help="the git revision to compare against")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side (default 3)")
    parser.add_argument(
        "--own-bench",
        action="store_true",
        help="run each tree's own bench/throughput.py and fakes (default: this tree's for both)",
    )
    args, rest = parser.parse_known_args()
    if "--runs" in rest or any(a.startswith("--runs=") for a in rest):
        parser.error("--runs is compare.py's: each throughput.py run is a single run")

    commit = git("rev-parse", "--verify", f"{args.before}^{{commit}}")
    with tempfile.TemporaryDirectory(prefix="enrich-compare-") as tmp:
        before = Path(tmp) / "before"
        git("worktree", "add", "--detach", str(before), commit)
        try:
            trees = {"before": before, "after": ROOT}
            scripts = {
                side: (tree if args.own_bench else ROOT) / "bench" / "throughput.py"
                for side, tree in trees.items()
            }
            fakes = {side: tree if args.own_bench else ROOT for side, tree in trees.items()}
            print(f"before: {args.before} = {commit[:12]} (worktree {before})")
            print(f"after:  this working tree, {ROOT}")
            bench = "each tree's own" if args.own_bench else "this tree's"
            print(f"bench:  {bench} throughput.py and fakes")
            print(f"throughput.py {' '.join(rest) or '(its defaults)'}, {args.runs} run(s) a side")
            results: dict[str, list[dict]] = {"before": [], "after": []}
            for run in range(args.runs):
                for side in ("before", "after"):
                    r = run_once(trees[side], scripts[side], fakes[side], rest)
                    results[side].append(r)
                    print(
                        f"  {side:6} run {run + 1}: {r['rate']:.1f} conv/s "
                        f"({r['ideal']:.1f}% of ideal), {r['cpu']:.2f} ms CPU/conv  "
                        f"[enrich from {r['enrich']}]",
                        flush=True,
                    )
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(before)],
                cwd=ROOT,
                capture_output=True,
            )
            subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)

    medians = {
        side: {k: statistics.median(r[k] for r in rs) for k in ("rate", "ideal", "cpu")}
        for side, rs in results.items()
    }
    print(f"median of {args.runs} run(s)      before      after   after/before")
    for label, key, digits in (
        ("conversations/s", "rate", 1),
        ("% of the ideal", "ideal", 1),
        ("CPU ms/conversation", "cpu", 2),
    ):
        b, a = medians["before"][key], medians["after"][key]
        print(f"  {label:20}  {b:9.{digits}f}  {a:9.{digits}f}  {a / b:13.3f}")


if __name__ == "__main__":
    main()
