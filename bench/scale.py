"""Scaling out, side by side in one run: ``enrich batch --workers N``.

1. Throughput for 1, 2 and 4 workers, each running ``--concurrency`` (256) conversations at
   once, against a fake LLM answering in ``--latency`` (500 ms), writes and the ledger on,
   beside the ideal: workers x concurrency / latency (no rate limit here).
2. A shared rate limit: 4 workers (and 1 beside them) with ``--rpm 600`` against a fake
   provider that allows 600 requests a minute and answers 429 past it (``retry-after-ms``): the
   rate they achieve together, against the ideal of 600 a minute, and the share of requests
   answered 429.
3. The Spark engine on the same workload (``bench/spark.py``'s ``run(n, latency)``), when it is
   there; otherwise the row says so.
4. One process's CPU per conversation (``bench/throughput.py``'s workload, 64 at a time), beside
   what the two HTTP requests of a conversation cost in the ``openai`` SDK and ``httpx`` alone
   (``bench/http_floor.py``): the rest is enrich's own.

Each figure is the median of ``--runs`` runs of the real command (``python -m enrich batch``),
with the fake servers in a process of their own: the CPU figure is enrich's own (the command and
its workers, from ``getrusage(RUSAGE_CHILDREN)``; Python's start-up and the workers' included),
per conversation, beside the fakes' own (read from ``/proc``): where the cores are the limit,
they bound the rate at cores / (both per conversation). Two rates are shown: end to end (the
whole command, start-up included), and as the run's own summary counts it (from when it starts
taking conversations, the workers' start included).

    python bench/scale.py [--conversations 4096] [--concurrency 256] [--latency 0.5]
        [--workers 1 2 4] [--rate-conversations 600] [--rate-workers 1 4] [--runs 3]
        [--spark-conversations 1000] [--skip throughput rate spark cpu]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, dialogues, fakes, machine  # noqa: E402

RPM = 600
TICK = os.sysconf("SC_CLK_TCK")
SUMMARY_TIME = re.compile(r"time\s*│\s*([\d.]+)s \(")


def write_input(path: Path, n: int, prefix: str = "c") -> None:
    texts = dialogues()
    with path.open("w") as out:
        for i in range(n):
            row = {
                "agent_id": "agent-1",
                "conversation_id": f"{prefix}{i:06d}",
                "transcript": texts[i % len(texts)],
            }
            out.write(json.dumps(row) + "\n")


def cpu_of(pid: int) -> float:
    """The CPU seconds process ``pid`` used so far (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def batch(f, tmp: Path, n: int, args: list[str], config: str = "") -> dict:
    """One ``enrich batch`` over ``n`` conversations against the fakes ``f``, with a fresh
    ledger; its wall time, in-run time, CPU (the command and its workers) and the fakes' counts
    over that run."""
    src, out, ledger = tmp / "in.jsonl", tmp / "out.jsonl", tmp / "ledger.sqlite3"
    for stale in tmp.glob("ledger.sqlite3*"):
        stale.unlink()
    write_input(src, n)
    cfg = tmp / "enrich.yaml"
    cfg.write_text(config or "{}\n")
    before = f.stats()
    fakes0 = cpu_of(f.proc.pid)
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "enrich", "batch", str(src), "-o", str(out), *args],
        env=f.env(ENRICH_LEDGER=str(ledger), ENRICH_CONFIG=str(cfg)),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the fakes are not reaped yet
    after = f.stats()
    fakes_cpu = cpu_of(f.proc.pid) - fakes0
    if done.returncode != 0:
        sys.exit(f"enrich batch {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    failed = [r for r in rows if not r["ok"]]
    assert len(rows) == n and not failed, failed[:3]
    found = SUMMARY_TIME.search(done.stderr)
    counts = {k: after[k] - before[k] for k in ("requests", "rate_limited", "puts")}
    assert counts["puts"] == n, counts
    return {
        "wall": wall,
        "in_run": float(found.group(1)) if found else wall,
        "cpu": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "fakes_cpu": fakes_cpu,
        "max_in_flight": after["max_in_flight"],
        **counts,
    }


def throughput(args: argparse.Namespace, tmp: Path) -> None:
    print(
        f"\n1. throughput: {args.conversations} conversations, concurrency {args.concurrency} "
        f"per worker, LLM latency {args.latency}s, writes and ledger on"
    )
    with fakes("--latency", str(args.latency)) as f:
        for workers in args.workers:
            ideal = workers * args.concurrency / args.latency
            runs = []
            for _ in range(args.runs):
                runs.append(
                    batch(
                        f,
                        tmp,
                        args.conversations,
                        ["--workers", str(workers), "-j", str(args.concurrency)],
                    )
                )
            n = args.conversations
            end_to_end = statistics.median(n / r["wall"] for r in runs)
            in_run = statistics.median(n / r["in_run"] for r in runs)
            cpu = statistics.median(r["cpu"] / n * 1000 for r in runs)
            fakes_cpu = statistics.median(r["fakes_cpu"] / n * 1000 for r in runs)
            ceiling = (os.cpu_count() or 1) * 1000 / (cpu + fakes_cpu)
            print(
                f"  {workers} worker(s): {end_to_end:7.1f} conv/s end to end "
                f"({end_to_end / ideal:5.1%} of the ideal {ideal:,.0f}/s); {in_run:7.1f} conv/s "
                f"in the run ({in_run / ideal:5.1%}); enrich's CPU {cpu:.2f} ms/conv, the "
                f"fakes' {fakes_cpu:.2f}: this machine's cores allow {ceiling:.0f}/s at most; "
                f"max {max(r['max_in_flight'] for r in runs)} LLM requests in flight"
            )


def rate_limit(args: argparse.Namespace, tmp: Path) -> None:
    n = args.rate_conversations
    print(
        f"\n2. rate limit: --rpm {RPM} shared by the workers, against a provider allowing {RPM} "
        f"requests a minute (429 past it); {n} conversations, concurrency 64 per worker"
    )
    for workers in args.rate_workers:
        runs = []
        for _ in range(args.runs):
            # a fresh provider each run: its 60-second window starts empty
            with fakes("--rpm-limit", str(RPM), "--latency", "0.2") as f:
                runs.append(
                    batch(
                        f,
                        tmp,
                        n,
                        ["--workers", str(workers), "-j", "64", "--rpm", str(RPM)],
                        config="llm:\n  max_retries: 8\n",
                    )
                )
        end_to_end = statistics.median(n / r["wall"] * 60 for r in runs)
        in_run = statistics.median(n / r["in_run"] * 60 for r in runs)
        share = statistics.median(r["rate_limited"] / r["requests"] for r in runs)
        limited = statistics.median(r["rate_limited"] for r in runs)
        print(
            f"  {workers} worker(s): {in_run:.0f} conversations a minute in the run "
            f"({in_run / RPM:.1%} of the limit), {end_to_end:.0f} end to end; "
            f"{limited:.0f} request(s) answered 429 = {share:.2%} of requests"
        )


def spark(args: argparse.Namespace) -> None:
    n = args.spark_conversations
    print(f"\n3. Spark (bench/spark.py): {n} conversations, LLM latency {args.latency}s")
    path = ROOT / "bench" / "spark.py"
    if not path.exists():
        print("  skipped: bench/spark.py is not there yet")
        return
    spec = importlib.util.spec_from_file_location("bench_spark", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    runs = [module.run(n, args.latency) for _ in range(args.runs)]

    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    first = runs[0]
    print(
        f"\n  {first['master']}, {first['partitions']} partitions x {first['concurrency']} at "
        f"once: {median('rate'):.1f} conv/s ({median('share_of_ideal'):.1%} of its ideal "
        f"{first['ideal']:.0f}/s), Spark's start-up {median('startup_seconds'):.1f}s apart; "
        f"failed {max(r['failed'] for r in runs)}, duplicate LLM calls "
        f"{max(r['duplicate_calls'] for r in runs)}, duplicate PUTs "
        f"{max(r['duplicate_puts'] for r in runs)}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--conversations", type=int, default=4096)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--latency", type=float, default=0.5)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--rate-conversations", type=int, default=600)
    p.add_argument("--rate-workers", type=int, nargs="+", default=[1, 4])
    p.add_argument("--spark-conversations", type=int, default=1000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--skip", nargs="*", default=[], choices=["throughput", "rate", "spark", "cpu"])
    args = p.parse_args()
    print(f"machine: {machine()}; medians of {args.runs} run(s)")
    with tempfile.TemporaryDirectory() as tmp:
        if "throughput" not in args.skip:
            throughput(args, Path(tmp))
        if "rate" not in args.skip and args.rate_conversations:
            rate_limit(args, Path(tmp))
    if "spark" not in args.skip:
        spark(args)
    if "cpu" not in args.skip:
        cpu(args)


def _median_line(script: str, runs: int) -> str:
    """The last line (``median: ...``) of one of the other bench scripts, run as it is."""
    here = Path(__file__).resolve().parent
    out = subprocess.run(
        [sys.executable, str(here / script), "--runs", str(runs)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().splitlines()[-1]


def cpu(args: argparse.Namespace) -> None:
    print("\n4. one process's CPU per conversation, and the HTTP clients' share of it")
    whole = _median_line("throughput.py", args.runs)
    floor = _median_line("http_floor.py", args.runs)
    total = float(re.search(r"CPU ([\d.]+) ms", whole)[1])  # type: ignore[index]
    http = float(re.search(r"per conversation ([\d.]+) ms", floor)[1])  # type: ignore[index]
    print(f"  bench/throughput.py  {whole}")
    print(f"  bench/http_floor.py  {floor}")
    print(
        f"  enrich's CPU {total:.2f} ms per conversation = the HTTP clients' {http:.2f} ms "
        f"({http / total:.0%}) + enrich's own {total - http:.2f} ms: one core feeds at most "
        f"{1000 / total:.0f} conversations a second (with no enrich code at all, {1000 / http:.0f})"
    )


if __name__ == "__main__":
    main()
