"""Spark: N conversations through ``enrich.integrations.spark.enrich_dataframe`` on a local Spark
cluster (``local-cluster[2,1,1024]``: two executor JVMs of one core, each with its Python
worker), against a fake LLM answering in --latency seconds, writes on, one SQLite ledger in WAL
shared by every task. The fakes run in their own process.

The ideal is the tasks running at once (partitions, at most the cluster's cores) times the
per-task concurrency over the latency, capped by --rpm when one is set: with the defaults
2 x 32 / 0.5 s = 128 conversations a second, the ideal of ``bench/throughput.py`` (64 at once in
one process). Prints the job's rate (Spark's start-up not counted; printed apart), its share of
the ideal, the LLM calls and PUTs, and the duplicates (calls and PUTs beyond one a conversation).
With --rpm the fake provider answers 429 past that many requests a minute, and the share of the
limit reached and the 429s are printed (run over a minute to test the limit: --rpm 600 with 900
conversations).

    python bench/spark.py [--conversations 1000] [--latency 0.5] [--concurrency 32]
                          [--partitions 2] [--master 'local-cluster[2,1,1024]'] [--rpm N]

``run(n, latency, ...)`` returns the figures as a dict, for other benchmarks to import.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import dialogues, fakes, machine  # noqa: E402

MASTER = "local-cluster[2,1,1024]"


def cores(master: str) -> int:
    """Task slots of a local master: local[N], local[*], local-cluster[workers,cores,mem]."""
    if m := re.fullmatch(r"local-cluster\[(\d+),\s*(\d+),\s*\d+\]", master):
        return int(m[1]) * int(m[2])
    if m := re.fullmatch(r"local\[(\d+)\]", master):
        return int(m[1])
    if master == "local[*]":
        return os.cpu_count() or 1
    return 1


def session(master: str = MASTER):
    """A Spark session on ``master`` whose Python workers run this interpreter."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = (
        SparkSession.builder.master(master)
        .appName("enrich-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.pyspark.driver.python", sys.executable)
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def answer_times(ledger: str) -> list[float]:
    """When each conversation's answer was recorded in the ledger (seconds, sorted)."""
    from datetime import datetime

    from enrich.ledger import open_ledger

    led = open_ledger(ledger)
    try:
        return sorted(datetime.fromisoformat(e.created_at).timestamp() for e in led.entries())
    finally:
        led.close()


def run(
    n: int = 1000,
    latency: float = 0.5,
    *,
    concurrency: int = 32,
    partitions: int | None = None,
    master: str = MASTER,
    rpm: int | None = None,
    spark=None,
) -> dict:
    """Enrich ``n`` conversations on Spark; the figures. ``spark``: a session to reuse (its
    master is then the one used); otherwise one is started on ``master`` and stopped."""
    from pyspark.sql import types as T

    from enrich.integrations.spark import enrich_dataframe

    warnings.filterwarnings("ignore", category=FutureWarning)  # pyspark's note on pandas 3
    texts = dialogues()
    rows = [("agent-1", f"c{i:05d}", texts[i % len(texts)]) for i in range(n)]
    started = time.perf_counter()
    own = spark is None
    if own:
        spark = session(master)
    startup = time.perf_counter() - started
    master = spark.sparkContext.master
    slots = cores(master)
    partitions = partitions or slots
    schema = T.StructType(
        [T.StructField(c, T.StringType()) for c in ("agent_id", "conversation_id", "transcript")]
    )
    try:
        df = spark.sparkContext.parallelize(rows, partitions).toDF(schema)
        limit = ("--rpm-limit", str(rpm)) if rpm else ()  # the provider answers 429 past it
        with fakes("--latency", str(latency), *limit) as f, tempfile.TemporaryDirectory() as tmp:
            config = f.config(str(Path(tmp) / "ledger.sqlite3"), rpm=rpm)
            out = enrich_dataframe(df, config, concurrency=concurrency)
            t0 = time.perf_counter()
            results = out.select("conversation_id", "status", "reused", "error").collect()
            seconds = time.perf_counter() - t0
            stats = f.stats()
            answered = answer_times(str(Path(tmp) / "ledger.sqlite3"))
    finally:
        if own:
            spark.stop()
    ideal = min(partitions, slots) * concurrency / latency if latency else float("inf")
    if rpm:
        ideal = min(ideal, rpm / 60)
    failed = [r for r in results if r.status == "failed"]
    # in the run: from the first answer recorded in the ledger to the last (no start-up)
    span = answered[-1] - answered[0] if len(answered) > 1 else 0.0
    in_run = (len(answered) - 1) / span if span else float("nan")
    return {
        "conversations": n,
        "master": master,
        "partitions": partitions,
        "concurrency": concurrency,
        "latency": latency,
        "rpm": rpm,
        "startup_seconds": round(startup, 1),
        "seconds": round(seconds, 2),
        "rate": n / seconds,
        "rate_in_run": in_run,
        "ideal": ideal,
        "share_of_ideal": n / seconds / ideal,
        "rows": len(results),
        "written": sum(r.status == "written" for r in results),
        "failed": len(failed),
        "errors": sorted({r.error for r in failed})[:3],
        "llm_calls": stats["requests"],
        "puts": stats["puts"],
        "duplicate_calls": stats["requests"] - n,
        "duplicate_puts": stats["puts"] - n,
        "max_in_flight": stats["max_in_flight"],
        "rate_limited": stats["rate_limited"],
        "load_average": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--conversations", type=int, default=1000)
    p.add_argument("--latency", type=float, default=0.5)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--partitions", type=int, default=None)
    p.add_argument("--master", default=MASTER)
    p.add_argument("--rpm", type=int, default=None)
    args = p.parse_args()
    print(f"machine: {machine()}")
    r = run(
        args.conversations,
        args.latency,
        concurrency=args.concurrency,
        partitions=args.partitions,
        master=args.master,
        rpm=args.rpm,
    )
    print(
        f"{r['conversations']} conversations on {r['master']} ({r['partitions']} partitions, "
        f"{r['concurrency']} at once per task), LLM latency {r['latency']}s"
        + (f", rpm {r['rpm']}" if r["rpm"] else "")
        + f"; Spark started in {r['startup_seconds']}s"
    )
    print(
        f"  {r['rate']:.1f} conversations/s = {r['share_of_ideal']:.1%} of the ideal "
        f"{r['ideal']:.0f}/s ({r['seconds']}s); {r['written']} written, {r['failed']} failed"
        + (f" {r['errors']}" if r["errors"] else "")
    )
    print(
        f"  LLM calls {r['llm_calls']}, PUTs {r['puts']}, duplicates: {r['duplicate_calls']} "
        f"calls, {r['duplicate_puts']} PUTs; at most {r['max_in_flight']} LLM requests in flight"
    )
    print(
        f"  in the run (first answer to last, without the tasks' start): "
        f"{r['rate_in_run']:.1f} conversations/s = {r['rate_in_run'] / r['ideal']:.1%} of the ideal"
    )
    if r["rpm"]:
        print(
            f"  {r['rate'] * 60:.0f} a minute end to end = {r['rate'] * 60 / r['rpm']:.1%} of the "
            f"limit, {r['rate_in_run'] * 60:.0f} in the run = "
            f"{r['rate_in_run'] * 60 / r['rpm']:.1%}; {r['rate_limited']} requests answered 429 "
            f"by the provider (limit {r['rpm']}/min)"
        )
    print(f"  load average at the end: {r['load_average']} (a busy machine slows every figure)")


if __name__ == "__main__":
    main()
