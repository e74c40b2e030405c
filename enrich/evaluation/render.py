"""An eval's report for people and for programs: the side-by-side table (a rich table on a
terminal, plain text without rich) and the JSON.

:func:`table_rows` is the one list of rows every output shows (the HTML page too): the
headline figures with their 95% bootstrap intervals, the fields' accuracy, then what the answers
took (items, invalid answers, re-asks, repairs, tokens, cost, latency).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .scores import HEADLINE, EvalReport, Figure, VariantScores

__all__ = ["table_rows", "figure_text", "terminal_table", "plain_table", "to_json"]


def figure_text(fig: Figure | None) -> str:
    """``0.850 [0.780, 0.910]``; ``-`` when not measured."""
    if fig is None or fig.value is None:
        return "-"
    if fig.low is None or fig.high is None:
        return f"{fig.value:.3f}"
    return f"{fig.value:.3f} [{fig.low:.3f}, {fig.high:.3f}]"


def _label(key: str) -> str:
    if key in HEADLINE:
        return HEADLINE[key]
    return "field " + key.removeprefix("field_").removesuffix("_accuracy") + " accuracy"


def _rate(rate: float | None, count: int) -> str:
    return "-" if rate is None else f"{rate:.1%} ({count:,})"


def _ops_rows(variants: list[VariantScores]) -> list[tuple[str, list[str]]]:
    def row(label: str, cell: Callable[[Any], str]) -> tuple[str, list[str]]:
        return label, [cell(v.ops) for v in variants]

    def cost(o: Any) -> str:
        return "-" if o.cost is None else f"{o.cost:.4f} ({o.paid:.4f})"

    def latency(o: Any) -> str:
        if o.latency_median is None:
            return "- (all reused)" if o.reused else "-"
        return f"{o.latency_median:.2f} / {o.latency_p95:.2f}"

    return [
        row(
            "items: answered / reused / skipped / failed",
            lambda o: f"{o.items:,}: {o.answered:,} / {o.reused:,} / {o.skipped:,} / {o.failed:,}",
        ),
        row(
            "no valid answer (invalid, refused, cut off)",
            lambda o: _rate(o.invalid_rate, o.invalid),
        ),
        row("answers that took a re-ask", lambda o: _rate(o.reask_rate, o.reasked)),
        row("answers read after a JSON repair (this run)", lambda o: f"{o.repairs:,}"),
        row("requests", lambda o: f"{o.requests:,}"),
        row(
            "tokens: prompt + completion",
            lambda o: f"{o.prompt_tokens:,} + {o.completion_tokens:,}",
        ),
        row("cost USD (paid by this run)", cost),
        row("latency s: median / p95 (this run)", latency),
    ]


def table_rows(report: EvalReport) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The header (``metric`` and each variant's name) and the rows of the side-by-side table."""
    header = ["metric", *(v.name for v in report.variants)]
    rows = [
        (_label(key), [figure_text(v.figures.get(key)) for v in report.variants])
        for key in report.figure_names()
    ]
    rows.append(("model", [v.model for v in report.variants]))
    return header, rows + _ops_rows(report.variants)


def terminal_table(report: EvalReport, safe: Callable[[str], str] = str) -> Any:
    """A rich ``Table`` of :func:`table_rows` (every text passed through ``safe`` and never read
    as markup), or, without rich, :func:`plain_table`'s text."""
    try:
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        return plain_table(report, safe)
    header, rows = table_rows(report)
    table = Table(title=Text(safe(f"{report.source}: {report.items:,} items")))
    for i, name in enumerate(header):
        table.add_column(Text(safe(name)), justify="left" if i == 0 else "right")
    for label, cells in rows:
        table.add_row(*(Text(safe(c)) for c in (label, *cells)))
    return table


def plain_table(report: EvalReport, safe: Callable[[str], str] = str) -> str:
    """:func:`table_rows` as aligned plain text."""
    header, rows = table_rows(report)
    lines = [header, *[[label, *cells] for label, cells in rows]]
    lines = [[safe(c) for c in line] for line in lines]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [f"{report.source}: {report.items:,} items"]
    for n, line in enumerate(lines):
        rest = zip(line[1:], widths[1:], strict=True)
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in rest]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return safe("\n".join(out))


def to_json(report: EvalReport) -> str:
    """The whole report as one JSON object (with each variant's rates spelled out)."""
    data = report.model_dump(mode="json")
    for v, out in zip(report.variants, data["variants"], strict=True):
        out["ops"]["invalid_rate"] = v.ops.invalid_rate
        out["ops"]["reask_rate"] = v.ops.reask_rate
    return json.dumps(data, ensure_ascii=False)
