"""``enrich eval``: how right enrich's answers are, measured against human labels, for several
set-ups side by side.

- :mod:`~enrich.evaluation.items`: a labeled set (JSON Lines) read, and its labels mapped to
  what they score (:class:`LabelMap`);
- :mod:`~enrich.evaluation.metrics`: the figures as plain functions (accuracy, macro-F1,
  confusion, Cohen's kappa, ROUGE-L, misunderstood-query matching, the bootstrap);
- :mod:`~enrich.evaluation.scores`: one variant's outcomes scored (:func:`score`), and the
  :class:`EvalReport` of all of them;
- :mod:`~enrich.evaluation.run`: every :class:`Variant` run over the items through the engine,
  its answers kept in (and reused from) the ledger (:func:`evaluate`);
- :mod:`~enrich.evaluation.render` and :mod:`~enrich.evaluation.html`: the report as a table,
  JSON, or a self-contained HTML page.
"""

from .html import render_html, write_html
from .items import KNOWN_LABELS, TARGETS, LabeledItem, LabelMap, read_lines, to_item
from .render import plain_table, table_rows, terminal_table, to_json
from .run import EVAL_AGENT, Variant, evaluate
from .scores import HEADLINE, EvalReport, Outcome, VariantScores, field_key, score

__all__ = [
    "KNOWN_LABELS",
    "TARGETS",
    "HEADLINE",
    "EVAL_AGENT",
    "LabelMap",
    "LabeledItem",
    "Variant",
    "Outcome",
    "EvalReport",
    "VariantScores",
    "read_lines",
    "to_item",
    "evaluate",
    "score",
    "field_key",
    "table_rows",
    "terminal_table",
    "plain_table",
    "to_json",
    "render_html",
    "write_html",
]
