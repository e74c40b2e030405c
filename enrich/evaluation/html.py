"""An eval's report as one self-contained HTML page: inline CSS and SVG, no script, nothing
fetched from the network, so it opens anywhere (a CI artifact, an e-mail attachment).

The page shows the side-by-side table (:func:`~enrich.evaluation.render.table_rows`), the
headline figures and the per-topic accuracy as bar charts (a colour per variant), and the
confusion matrices (a row per label, a column per answer, each cell shaded by its share of the
row). Every text from outside (labels, answers, names) is escaped.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from .render import figure_text, table_rows
from .scores import HEADLINE, Confusion, EvalReport

__all__ = ["render_html", "write_html", "PALETTE"]

#: The colour of each variant, in order (then again from the start).
PALETTE = ("#2a6fdb", "#e8743b", "#19a979", "#945ecf", "#ed4a7b", "#13a4b4")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem;color:#1d1d1f;
  max-width:1200px}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem}
h3{font-size:1rem;margin:1.2rem 0 .4rem}
p.meta{color:#555;margin-top:0}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
table.headline td,table.headline th{padding:.3rem .7rem;border-bottom:1px solid #e3e3e3;
  text-align:right}
table.headline td:first-child,table.headline th:first-child{text-align:left}
table.cm{font-size:.8rem}
table.cm td,table.cm th{border:1px solid #d0d0d0;padding:.15rem .35rem;text-align:center;
  min-width:1.6rem}
table.cm th.row{text-align:right;white-space:nowrap}
table.cm th.col{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;
  vertical-align:bottom}
.legend{display:flex;gap:1.2rem;flex-wrap:wrap;margin:.4rem 0}
.legend i{display:inline-block;width:.9rem;height:.9rem;margin-right:.35rem;
  vertical-align:-.1rem}
.matrices{display:flex;gap:2rem;flex-wrap:wrap;align-items:flex-start}
figure{margin:0}figcaption{font-weight:600;margin-bottom:.3rem}
"""


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _legend(report: EvalReport) -> str:
    items = "".join(
        f'<span><i style="background:{_colour(i)}"></i>{escape(v.name)}</span>'
        for i, v in enumerate(report.variants)
    )
    return f'<div class="legend">{items}</div>'


def _bars(groups: list[tuple[str, list[tuple[float | None, str]]]], title: str) -> str:
    """A horizontal bar chart: for each group (a label), a bar per variant of a value in 0..1
    (``None``: no bar), with its text after it."""
    label_w, bar_w, text_w, bar_h, gap = 230, 380, 150, 14, 10
    rows = sum(len(bars) for _, bars in groups)
    height = rows * (bar_h + 2) + len(groups) * gap + 4
    width = label_w + bar_w + text_w
    parts = [
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        'font-family="system-ui,sans-serif" font-size="12">'
    ]
    y = 2
    for label, bars in groups:
        top = y
        for i, (value, text) in enumerate(bars):
            parts.append(
                f'<rect x="{label_w}" y="{y}" width="{bar_w}" height="{bar_h}" fill="#eeeeee"/>'
            )
            if value is not None:
                w = round(max(0.0, min(1.0, value)) * bar_w, 1)
                parts.append(
                    f'<rect class="bar" x="{label_w}" y="{y}" width="{w}" height="{bar_h}" '
                    f'fill="{_colour(i)}"><title>{escape(label)}: {escape(text)}</title></rect>'
                )
            parts.append(
                f'<text x="{label_w + bar_w + 6}" y="{y + bar_h - 3}" fill="#333">'
                f"{escape(text)}</text>"
            )
            y += bar_h + 2
        middle = (top + y) / 2 + 4
        short = label if len(label) <= 34 else label[:33] + "…"
        parts.append(
            f'<text x="{label_w - 8}" y="{middle:.1f}" text-anchor="end" fill="#1d1d1f">'
            f"{escape(short)}</text>"
        )
        y += gap
    parts.append("</svg>")
    return "".join(parts)


def _headline_chart(report: EvalReport) -> str:
    groups = []
    for key in report.figure_names():
        figs = [v.figures.get(key) for v in report.variants]
        label = HEADLINE.get(key) or key.removeprefix("field_").replace("_", " ")
        groups.append((label, [(f.value if f else None, figure_text(f)) for f in figs]))
    return _bars(groups, "headline figures") if groups else ""


def _topic_chart(report: EvalReport) -> str:
    topics: dict[str, int] = {}
    for v in report.variants:
        for bar in v.per_topic:
            topics[bar.topic] = max(topics.get(bar.topic, 0), bar.n)
    if not topics:
        return ""
    groups = []
    for topic in sorted(topics, key=lambda t: (-topics[t], t)):
        bars = []
        for v in report.variants:
            found = next((b for b in v.per_topic if b.topic == topic), None)
            if found is None:
                bars.append((None, "-"))
            else:
                bars.append((found.accuracy, f"{found.correct}/{found.n} ({found.accuracy:.0%})"))
        groups.append((f"{topic} ({topics[topic]})", bars))
    return _bars(groups, "topic accuracy by labeled topic")


def _matrix(cm: Confusion) -> str:
    head = "".join(f'<th class="col">{escape(c)}</th>' for c in cm.labels)
    rows = []
    for label, row in zip(cm.labels, cm.matrix, strict=True):
        total = sum(row)
        if not total:
            continue  # a class only ever answered, never labeled
        cells = []
        for j, n in enumerate(row):
            share = n / total
            diagonal = cm.labels[j] == label
            rgb = "0,128,96" if diagonal else "200,40,40"
            ink = "#fff" if share > 0.6 else "#1d1d1f"
            style = f"background:rgba({rgb},{share:.3f});color:{ink}" if n else ""
            cells.append(f'<td style="{style}">{n or ""}</td>')
        rows.append(f'<tr><th class="row">{escape(label)}</th>{"".join(cells)}</tr>')
    return (
        '<table class="cm"><thead><tr><th>label \\ answer</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def render_html(report: EvalReport) -> str:
    """The page, as text."""
    header, rows = table_rows(report)
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in (label, *cells)) + "</tr>"
        for label, cells in rows
    )
    labels = ", ".join(f"{escape(k)} → {escape(v)}" for k, v in report.labels.items()) or "none"
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>enrich eval: {escape(report.source)}</title><style>{_CSS}</style></head><body>",
        f"<h1>enrich eval: {escape(report.source)}</h1>",
        f'<p class="meta">{report.items:,} items; labels scored: {labels}. Intervals: 95% '
        f"bootstrap over items ({report.rounds:,} resamples, seed {report.seed}).</p>",
        "<h2>Side by side</h2>",
        f'<table class="headline"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>',
    ]
    chart = _headline_chart(report)
    if chart:
        parts += ["<h2>Headline figures</h2>", _legend(report), chart]
    chart = _topic_chart(report)
    if chart:
        parts += ["<h2>Topic accuracy by labeled topic</h2>", _legend(report), chart]
    for target in ("topic", "subtopic", "success"):
        matrices = [
            (v.name, v.confusions[target]) for v in report.variants if target in v.confusions
        ]
        if not matrices:
            continue
        parts.append(f'<h2>Confusion matrix: {target}</h2><div class="matrices">')
        for name, cm in matrices:
            parts.append(f"<figure><figcaption>{escape(name)}</figcaption>{_matrix(cm)}</figure>")
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_html(report: EvalReport, path: Path) -> None:
    """Write the page to ``path`` (an ``OSError`` if it cannot be written)."""
    path.write_text(render_html(report), encoding="utf-8")
