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
    cell,
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

        cfg = load_config(config)
        spec = cfg.report_spec()  # the custom fields and criteria of every profile
        if results is not None:
            if not results.is_file():
                raise InputError(f"{results}: no such file")
            rows, source = read_results(results, spec), str(results)
        else:
            ledger = open_ledger(cfg)
            rows, source = rows_from_ledger(ledger, spec), ledger.location
        if not rows or not any("status" in r and "topic" in r for r in rows):
            raise InputError(f"{source}: no enrichment results in it (see `enrich batch --output`)")
        rep = summarize(rows, top=top, spec=spec)
        if as_json:
            out(rep.model_dump_json())
            return
        from rich.table import Table
        from rich.text import Text

        # Every name, topic, query and value below came from the model or a user: shown as text
        # (cell), never read as markup nor let drive the terminal.
        screen = console(width=110)
        rate = "-" if rep.success_rate is None else f"{rep.success_rate:.1%}"
        screen.print(
            Text.assemble(
                (cell(source).plain, "bold"),
                f": {rep.conversations:,} conversations, {rep.enriched:,} enriched, "
                f"{rep.skipped:,} skipped (nothing to analyse), {rep.failed:,} failed; "
                f"success rate {rate}",
            )
        )
        t = Table(title="topics")
        for c in ("topic", "subtopic", "conversations", "share"):
            t.add_column(c, justify="right" if c in ("conversations", "share") else "left")
        for topic, subtopic, n in rep.subtopics:
            t.add_row(cell(topic), cell(subtopic), f"{n:,}", f"{n / max(rep.enriched, 1):.1%}")
        screen.print(t)
        if rep.misunderstood:
            q = Table(title="most common misunderstood queries")
            q.add_column("query")
            q.add_column("times", justify="right")
            for text, n in rep.misunderstood:
                q.add_row(cell(text), f"{n:,}")
            screen.print(q)
        else:
            screen.print(Text("most common misunderstood queries: none"))
        if rep.criteria:
            v = Table(title="success criteria")
            for c in ("criterion", "success", "failure", "unknown"):
                v.add_column(c, justify="left" if c == "criterion" else "right")
            for c in rep.criteria:
                v.add_row(cell(c.name), f"{c.success:,}", f"{c.failure:,}", f"{c.unknown:,}")
            screen.print(v)
        if rep.fields:
            f = Table(title="your fields")
            for c in ("field", "type", "answered", "values"):
                f.add_column(c, justify="right" if c == "answered" else "left")
            for field in rep.fields:
                if field.mean is not None:
                    values = f"mean {field.mean:,.4g}, median {field.median:,.4g}"
                else:
                    values = ", ".join(f"{value}: {n:,}" for value, n in field.counts)
                f.add_row(cell(field.name), field.type, f"{field.answered:,}", cell(values))
            screen.print(f)
        print_pairs("tokens and cost", spend_rows(rep), width=110)
