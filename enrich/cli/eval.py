"""``enrich eval``: measure the answers against human labels, several set-ups side by side.

The variants are every combination of the ``--config``, ``--model`` and ``--prompts-dir``
given (none: the configuration ``enrich run`` would use). Answers are kept in the ledger and
reused (see :mod:`enrich.evaluation.run`); nothing is written to ChatDash. The exit code is 0
when the eval ran, :data:`~._common.EXIT_BELOW_MIN` when a ``--min`` bar is not met.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import InputError
from ._common import (
    EXIT_BELOW_MIN,
    JsonOpt,
    ModeOpt,
    State,
    VerboseOpt,
    console,
    err,
    guard,
    out,
)
from ._select import select
from ._text import plain

if TYPE_CHECKING:
    from ..config import Config
    from ..evaluation import LabeledItem, LabelMap, Variant

#: Seconds between two progress lines on stderr.
PROGRESS_EVERY = 10.0


def evaluate(
    labeled: Annotated[
        Path,
        typer.Argument(
            help="The labeled set: JSON Lines of {id, turns | transcript, labels}.",
            show_default=False,
        ),
    ],
    config: Annotated[
        list[Path] | None,
        typer.Option(
            "--config",
            "-c",
            help="A variant's YAML file; repeat it to compare set-ups side by side.",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="A variant's model; repeat it.", show_default=False),
    ] = None,
    prompts_dir: Annotated[
        list[str] | None,
        typer.Option(
            "--prompts-dir",
            help="A variant's templates folder (- for the packaged ones); repeat it.",
            show_default=False,
        ),
    ] = None,
    mode: ModeOpt = None,
    mapping: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help="LABEL=WHAT: what a label scores (topic, subtopic, is_success, summaries, "
            "misunderstood, a field's name, or - to ignore it).",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=1, help="Only the first N items.", show_default=False),
    ] = None,
    sample: Annotated[
        int | None,
        typer.Option("--sample", min=1, help="N items drawn at random.", show_default=False),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="The random seed of --sample and of the intervals.")
    ] = 0,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-j", min=1, help="Items enriched at once.")
    ] = 8,
    force: Annotated[
        bool, typer.Option("--force", help="Ask the LLM again even for what the ledger holds.")
    ] = False,
    agent_id: Annotated[
        str | None,
        typer.Option(
            "--agent-id",
            "-a",
            help="Evaluate this agent's profile (analysis with its overrides from agents).",
            show_default=False,
        ),
    ] = None,
    rounds: Annotated[
        int,
        typer.Option("--bootstrap", min=0, help="Bootstrap resamples of the 95% intervals."),
    ] = 1000,
    as_json: JsonOpt = False,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Also write the report as one HTML page.", show_default=False),
    ] = None,
    minimum: Annotated[
        list[str] | None,
        typer.Option(
            "--min",
            help="METRIC=VALUE: exit 9 when a variant's figure is below it "
            "(e.g. topic_accuracy=0.8).",
            show_default=False,
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Measure the answers against labels: accuracy, F1, kappa, ROUGE-L, side by side."""
    with guard(verbose, as_json):
        from ..evaluation import EVAL_AGENT, LabelMap, evaluate, terminal_table, to_json

        variants = _variants(config or [None], model or [None], prompts_dir or [None], mode)
        first = variants[0].config
        labels = LabelMap.build(first.eval.labels, first.eval.values, mapping)
        profile = agent_id or EVAL_AGENT
        scored_fields = _scored_fields(variants, profile, labels)
        bars = _bars(minimum or [], scored_fields)
        items = _items(labeled, labels, first, limit=limit, sample=sample, seed=seed)
        present = set().union(*(i.label_names for i in items))
        described = {
            name: target
            for name, target in labels.described(present).items()
            if target in ("topic", "subtopic", "is_success", "summaries", "misunderstood")
            or target in scored_fields
        }
        report = evaluate(
            variants,
            items,
            source=str(labeled),
            labels=described,
            concurrency=concurrency,
            force=force,
            agent_id=profile,
            seed=seed,
            rounds=rounds,
            on_outcome=_Progress(len(items)),
        )
        for v in report.variants:
            if v.ops.failed:
                err(f"enrich: {v.name}: {v.ops.failed:,} item(s) failed and were not scored")
            for problem in v.ops.errors if verbose else []:
                err(f"enrich: {v.name}: {problem}")
        if as_json:
            out(to_json(report))
        else:
            console(width=_width(report)).print(terminal_table(report, plain))
        if html is not None:  # (a page that cannot be written: exit 6; the ledger has the answers)
            from ..evaluation import write_html
            from ..resultfiles import ResultFileError

            try:
                write_html(report, html)
            except OSError as exc:
                raise ResultFileError(html, exc) from None
            err(f"enrich: wrote {html}")
        misses = report.gate(bars)
        for miss in misses:
            err(f"enrich: below the bar: {miss}")
        if misses:
            raise typer.Exit(EXIT_BELOW_MIN)


def _width(report: Any) -> int | None:
    """The table's whole width when the output is not a terminal (a log, a pipe: never cut);
    on a terminal, the terminal's."""
    import sys

    if sys.stdout.isatty():
        return None
    from ..evaluation import table_rows

    header, rows = table_rows(report)
    cols = [header, *[[label, *cells] for label, cells in rows]]
    widths = [max(len(line[i]) for line in cols) for i in range(len(header))]
    return max(80, sum(widths) + 3 * len(widths) + 1)


class _Progress:
    """A line on stderr every :data:`PROGRESS_EVERY` seconds: the variant and its items done."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done: dict[str, int] = {}
        self.last = time.monotonic()

    def __call__(self, variant: str, outcome: Any) -> None:
        self.done[variant] = self.done.get(variant, 0) + 1
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY:
            self.last = now
            err(f"enrich: eval {variant}: {self.done[variant]:,}/{self.total:,} items")


def _load(path: Path | None, model: str | None, mode: str | None, prompts: str | None) -> Config:
    """One variant's configuration, the flags winning; its secrets redacted from then on."""
    from ..config import load_config
    from ..prompts import Prompts

    overrides: dict[str, Any] = {"llm": {"model": model, "mode": mode}}
    if prompts not in (None, "-"):
        overrides["analysis"] = {"prompts_dir": prompts}
    cfg = load_config(path, overrides)
    if prompts == "-":  # the packaged templates, whatever the file says
        cfg = cfg.model_copy(
            update={"analysis": cfg.analysis.model_copy(update={"prompts_dir": None})}
        )
    State.secrets += cfg.secrets()
    State.config = State.config or cfg
    Prompts(cfg.analysis.prompts_dir)  # a broken templates folder fails before any call
    return cfg


def _variants(
    configs: list[Path | None], models: list[str | None], dirs: list[str | None], mode: str | None
) -> list[Variant]:
    """Every combination of the flags, named by the parts that vary."""
    from ..evaluation import Variant

    variants: list[Variant] = []
    names: set[str] = set()
    for path in configs:
        for model in models:
            for prompts in dirs:
                cfg = _load(path, model, mode, prompts)
                parts = []
                if len(configs) > 1:
                    parts.append(_short(path, configs))
                if len(models) > 1:
                    parts.append(cfg.llm.model)
                if len(dirs) > 1:
                    parts.append("packaged prompts" if prompts == "-" else _short(prompts, dirs))
                name = " · ".join(parts) or cfg.llm.model
                base, n = name, 1
                while name in names:
                    n += 1
                    name = f"{base} #{n}"
                names.add(name)
                variants.append(Variant(name=name, config=cfg))
    return variants


def _short(path: Any, paths: list[Any]) -> str:
    """A file's or folder's name, or its whole path when another one has the same name."""
    names = [Path(str(p)).name for p in paths if p not in (None, "-")]
    name = Path(str(path)).name
    return name if names.count(name) == 1 else str(path)


def _scored_fields(variants: list[Variant], agent_id: str, labels: LabelMap) -> set[str]:
    """The enum and boolean fields of the variants (those a label can score); a field the
    mapping names on purpose must be one of them."""
    fields = {
        f.name
        for v in variants
        for f in v.config.for_agent(agent_id).spec().fields
        if f.type in ("enum", "boolean")
    }
    for target in sorted(labels.explicit_fields() - fields):
        raise InputError(
            f"a label is mapped to {target!r}, which is neither topic, subtopic, is_success, "
            "summaries, misunderstood nor an enum or boolean field of the analysis "
            "(--map or eval.labels)"
        )
    return fields


def _bars(flags: list[str], fields: set[str]) -> dict[str, float]:
    """The ``--min METRIC=VALUE`` bars, each metric checked before anything is paid for."""
    from ..evaluation import HEADLINE, field_key

    known = [*HEADLINE, *(field_key(f) for f in sorted(fields))]
    bars: dict[str, float] = {}
    for flag in flags:
        name, _, value = flag.partition("=")
        name = name.strip()
        if name not in known:
            raise InputError(f"--min {flag!r}: unknown figure {name!r}; one of: {', '.join(known)}")
        try:
            bars[name] = float(value)
        except ValueError:
            raise InputError(f"--min {flag!r}: {value!r} is not a number") from None
    return bars


def _items(
    path: Path, labels: LabelMap, cfg: Config, *, limit: int | None, sample: int | None, seed: int
) -> list[LabeledItem]:
    """The items to evaluate (``--sample``, then ``--limit``), every one read before any call."""
    from ..evaluation import read_lines, to_item

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    chosen = select(read_lines(path), limit=limit, sample=sample, seed=seed)
    items = [
        to_item(n, obj, labels, source=str(path), max_bytes=cfg.input.max_bytes)
        for n, obj in chosen
    ]
    if not items:
        raise InputError(f"{path}: no labeled item in it")
    seen: dict[str, int] = {}
    for item in items:
        if item.id in seen:
            raise InputError(
                f"{path}, line {item.line}: id {item.id!r} was given before (line {seen[item.id]})"
            )
        seen[item.id] = item.line
    return items
