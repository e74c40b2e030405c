"""``enrich report``: what a batch's results (or the ledger) add up to."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from ._common import (
    ConfigOpt,
    JsonOpt,
    VerboseOpt,
    console,
    guard,
    load_config,
    open_ledger,
    out,
    print_pairs,
    spend_rows,
)


def report(
    results: Annotated[
        Path | None,
        typer.Argument(
            help="A results file (.jsonl, .csv, .parquet); default: the ledger.", show_default=False
        ),
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Rows in each ranking.")] = 10,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Topics, success rate, the most common misunderstood queries, tokens and cost."""
    with guard(verbose, as_json):
        from ..report import rows_from_ledger, summarize
        from ..resultfiles import read_results

        if results is not None:
            if not results.is_file():
                raise InputError(f"{results}: no such file")
            rows, source = read_results(results), str(results)
        else:
            ledger = open_ledger(load_config(config))
            rows, source = rows_from_ledger(ledger), ledger.location
        if not rows or not any("status" in r and "topic" in r for r in rows):
            raise InputError(f"{source}: no enrichment results in it (see `enrich batch --output`)")
        rep = summarize(rows, top=top)
        if as_json:
            out(rep.model_dump_json())
            return
        from rich.table import Table

        screen = console(width=110)
        rate = "-" if rep.success_rate is None else f"{rep.success_rate:.1%}"
        screen.print(
            f"[bold]{source}[/]: {rep.conversations:,} conversations, {rep.enriched:,} enriched, "
            f"{rep.failed:,} failed; success rate {rate}"
        )
        t = Table(title="topics")
        for c in ("topic", "subtopic", "conversations", "share"):
            t.add_column(c, justify="right" if c in ("conversations", "share") else "left")
        for topic, subtopic, n in rep.subtopics:
            t.add_row(topic, subtopic, f"{n:,}", f"{n / max(rep.enriched, 1):.1%}")
        screen.print(t)
        q = Table(title="most common misunderstood queries")
        q.add_column("query")
        q.add_column("times", justify="right")
        for text, n in rep.misunderstood:
            q.add_row(text, f"{n:,}")
        screen.print(q)
        print_pairs("tokens and cost", spend_rows(rep), width=110)
