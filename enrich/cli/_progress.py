"""How a job looks while it runs and when it ends: progress, summary, cost estimate."""

from __future__ import annotations

import sys
from typing import Any

from ..errors import redact
from ._common import State, cell, console, err, print_pairs, spend_rows


class Progress:
    """A progress bar on a terminal; a plain line every ``every`` seconds otherwise."""

    def __init__(self, total: int | None, *, every: float = 10.0) -> None:
        import time

        self.total = total
        self.every = every
        self.start = self.last = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self.bar = Bar(
                TextColumn("enriching"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console(stderr=True),
            )
            self.task = self.bar.add_task("enrich", total=total, info="")
            self.bar.start()

    def _info(self, t: Any, elapsed: float) -> str:
        rate = t.done / elapsed if elapsed > 0 else 0.0
        tokens = t.prompt_tokens + t.completion_tokens
        return f"{rate:.1f}/s  {tokens:,} tokens  ${t.cost:.4f}  {t.failed} failed"

    def update(self, t: Any, *, force: bool = False) -> None:
        import time

        now = time.monotonic()
        elapsed = now - self.start
        if self.bar is not None:
            self.bar.update(self.task, completed=t.done, info=self._info(t, elapsed))
        elif force or now - self.last >= self.every:
            self.last = now
            share = f"/{self.total} ({t.done / self.total:.0%})" if self.total else ""
            eta = ""
            if self.total and t.done:
                left = (self.total - t.done) * elapsed / t.done
                eta = f", ETA {left:.0f}s"
            err(f"enrich: {t.done}{share} done{eta}; {self._info(t, elapsed)}")

    def say(self, text: str) -> None:
        """A line on stderr: with the bar drawn, on a line of its own above it (never glued to
        the bar, nor to the ``^C`` the terminal echoed)."""
        if self.bar is not None and self.bar.live.is_started:
            self.bar.console.print(cell(redact(text, State.secrets)), soft_wrap=True)
        else:
            err(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_summary(totals: Any, seconds: float) -> None:
    """The table that ends a job, on stderr (stdout may carry its results)."""
    rows = [
        ("conversations", f"{totals.done:,}"),
        ("written", f"{totals.written:,}"),
        ("enriched, not written", f"{totals.enriched:,}"),
        ("skipped (already done)", f"{totals.skipped:,}"),
        ("skipped (nothing to analyse)", f"{totals.nothing_to_analyse:,}"),
        ("failed", f"{totals.failed:,}"),
        *spend_rows(totals),
        (
            "of which failed conversations (USD)",
            f"{totals.failed_cost:.4f} ({totals.failed_requests:,} LLM requests)",
        ),
        ("time", f"{seconds:.1f}s ({totals.done / seconds:.1f}/s)" if seconds > 0 else "-"),
    ]
    print_pairs("enrich: batch summary", rows, stderr=True, width=100)


def print_estimate(enricher: Any, rows: list[Any], *, stderr: bool) -> None:
    """What the estimated ``rows`` add up to: the output of ``--estimate``."""
    import statistics

    config = enricher.config
    good = [r for r in rows if r.ok and r.strategy != "skipped"]
    costs = [r.cost for r in good if r.cost is not None]
    print_pairs(
        f"enrich: cost estimate ({config.llm.model}, no LLM called)",
        [
            ("conversations", f"{len(rows):,}"),
            ("to enrich", f"{len(good):,}"),
            (
                "already done (free)",
                f"{sum(r.strategy == 'skipped' and not r.skipped for r in rows):,}",
            ),
            ("nothing to analyse (free)", f"{sum(bool(r.skipped) for r in rows):,}"),
            ("cannot be enriched", f"{sum(not r.ok for r in rows):,}"),
            ("LLM requests", f"{sum(r.requests for r in good):,}"),
            ("prompt tokens", f"{sum(r.prompt_tokens for r in good):,}"),
            ("completion tokens (~250 an answer)", f"{sum(r.completion_tokens for r in good):,}"),
            (
                "cost per conversation (median)",
                f"${statistics.median(costs):.6f}" if costs else "-",
            ),
            (
                "cost in all (USD)",
                f"${sum(costs):.4f}"
                if config.price(config.llm.model) is not None
                else "no price for this model (see pricing in the configuration)",
            ),
        ],
        stderr=stderr,
        width=100,
    )
