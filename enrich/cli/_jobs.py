"""What ``batch`` and ``backfill`` share: their options, and running (or estimating) a job.

The two commands differ only in where their items come from. Each declares its own
parameters and takes a :class:`JobOptions`; :func:`job_command` gives it the options of
:class:`JobOptions` on the command line, and :func:`run_job` does the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import ConfigError, InputError
from ._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    ConfigOpt,
    ModelOpt,
    ModeOpt,
    VerboseOpt,
    err,
    load_config,
    out,
)
from ._progress import Progress, print_estimate, print_summary
from ._select import Budget, select

#: A run stopped by --max-cost.
EXIT_BUDGET = 7

ConcurrencyOpt = Annotated[
    int, typer.Option("--concurrency", "-j", min=1, max=1024, help="Conversations in flight.")
]
RpmOpt = Annotated[
    float | None,
    typer.Option("--rpm", min=1, help="LLM requests per minute to stay under.", show_default=False),
]
TpmOpt = Annotated[
    float | None,
    typer.Option("--tpm", min=1, help="LLM tokens per minute to stay under.", show_default=False),
]
WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers",
        "-w",
        min=1,
        max=64,
        help="Processes sharing the input, the ledger and the rate limit, each running "
        "--concurrency conversations at once (more than 1 needs the ledger).",
    ),
]
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        help="Write results to .jsonl, .csv or .parquet (- for JSON Lines on stdout).",
        show_default=False,
    ),
]
CsvRawOpt = Annotated[
    bool,
    typer.Option(
        "--csv-raw",
        help="Write CSV cells as they are: by default a cell starting with =, +, -, @ (a "
        "spreadsheet formula) is written after an apostrophe.",
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Enrich (and keep in the ledger), write nothing.")
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Ask the LLM again even for what the ledger holds.")
]
ViaOpt = Annotated[
    str,
    typer.Option(
        "--via",
        help="direct: call the LLM now; batch-api: one OpenAI Batch API job (half the price, "
        "done within 24 h), invalid rows re-asked directly.",
    ),
]
PollOpt = Annotated[
    float, typer.Option("--poll-seconds", min=0.01, help="How often to poll a Batch API job.")
]
LimitOpt = Annotated[
    int | None,
    typer.Option("--limit", min=1, help="Only the first N conversations.", show_default=False),
]
SampleOpt = Annotated[
    int | None,
    typer.Option(
        "--sample", min=1, help="Only N conversations, drawn at random.", show_default=False
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="The random seed of --sample.")]
MaxCostOpt = Annotated[
    float | None,
    typer.Option(
        "--max-cost",
        min=0,
        help="Stop taking conversations before the run spends more than this (USD); those in "
        "flight finish. Exit 7.",
        show_default=False,
    ),
]
EstimateOpt = Annotated[
    bool,
    typer.Option(
        "--estimate",
        help="Call no LLM: print what the job should cost (requests, tokens, USD at list price).",
    ),
]


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """The options of every job, in the order ``--help`` lists them (after the command's own)."""

    concurrency: ConcurrencyOpt = 8
    rpm: RpmOpt = None
    tpm: TpmOpt = None
    workers: WorkersOpt = 1
    dry_run: DryRunOpt = False
    output: OutputOpt = None
    csv_raw: CsvRawOpt = False
    force: ForceOpt = False
    via: ViaOpt = "direct"
    poll_seconds: PollOpt = 10.0
    estimate: EstimateOpt = False
    limit: LimitOpt = None
    sample: SampleOpt = None
    seed: SeedOpt = 0
    max_cost: MaxCostOpt = None
    config: ConfigOpt = None
    model: ModelOpt = None
    mode: ModeOpt = None
    verbose: VerboseOpt = False


def job_command(func: Callable[..., None]) -> Callable[..., None]:
    """``func(<its own parameters>, job: JobOptions)`` as a command whose options are its own
    parameters followed by those of :class:`JobOptions`, handed to it gathered in ``job``."""
    hints = typing.get_type_hints(JobOptions, include_extras=True)
    shared = [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name]
        )
        for f in dataclasses.fields(JobOptions)
    ]
    own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.name != "job"]

    @functools.wraps(func)
    def command(**kwargs: Any) -> None:
        job = JobOptions(**{p.name: kwargs.pop(p.name) for p in shared})
        func(**kwargs, job=job)

    params = [*own, *shared]
    command.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def run_job(
    job: JobOptions,
    items: Callable[[Any], Any],
    *,
    total: Callable[[], int | None] = lambda: None,
    lists: bool = False,
) -> int:
    """Estimate the job, or run it; returns the exit code. ``items(enricher)`` makes its items
    (``lists``: by listing ChatDash), ``total()`` counts them if it can."""
    from ..engine import Enricher

    config = load_config(job.config, model=job.model, mode=job.mode, rpm=job.rpm, tpm=job.tpm)
    if job.workers > 1 and not job.estimate:
        if not config.ledger.enabled:
            raise ConfigError(
                f"--workers {job.workers} needs the ledger (the workers share it): turn it on "
                "(ledger.enabled, ENRICH_LEDGER) or run with --workers 1"
            )
        if job.via != "direct":
            raise InputError(f"--workers {job.workers} runs --via direct only")
    enricher = Enricher(config)
    try:
        count = total()
        # listing needs ChatDash, even for an estimate
        if lists or not (job.estimate or job.dry_run):
            enricher.chatdash.check()
        chosen = select(items(enricher), limit=job.limit, sample=job.sample, seed=job.seed)
        if count is not None:
            count = min([count, *(n for n in (job.limit, job.sample) if n is not None)])
        if job.estimate:
            return _estimate(enricher, chosen, job=job)
        return _drive(enricher, chosen, total=count, job=job)
    finally:
        enricher.close()


def _estimate(enricher: Any, items: Any, *, job: JobOptions) -> int:
    """Estimate a job's cost without calling the LLM; write rows to ``job.output``."""
    from ..engine.batch import estimate_many
    from ..resultfiles import ResultFileError, neutralise, round_cost

    async def collect() -> list[Any]:
        return [row async for row in estimate_many(enricher, items, force=job.force)]

    rows = [r.model_copy(update={"cost": round_cost(r.cost)}) for r in enricher.sync.run(collect())]
    output = job.output
    if output:
        path = Path(output) if output != "-" else None
        if path is not None and path.suffix.lower() not in (".jsonl", ".csv"):
            raise ConfigError(f"{path}: an estimate is written as .jsonl or .csv")
        text = "".join(r.model_dump_json() + "\n" for r in rows)
        if path is not None and path.suffix.lower() == ".csv":
            import csv
            import io

            cell = (lambda value: value) if job.csv_raw else neutralise
            buf = io.StringIO()
            fields = list(type(rows[0]).model_fields) if rows else ["ok"]
            writer = csv.DictWriter(buf, fieldnames=fields)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: cell(v) for k, v in r.model_dump().items()})
            text = buf.getvalue()
        if path is None:
            out(text.rstrip())
        else:
            try:
                path.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise ResultFileError(path, exc) from exc
    # the estimate is this command's output: stdout, unless the rows went there
    print_estimate(enricher, rows, stderr=output == "-")
    return EXIT_OK


def _via(value: str) -> str:
    if value not in ("direct", "batch-api"):
        raise InputError(f"--via {value!r}: use direct or batch-api")
    return value


def _drive(
    enricher: Any, items: Any, *, total: int | None, job: JobOptions, failures_shown: int = 10
) -> int:
    """Run a batch with progress, Ctrl-C handling and a summary; returns the exit code."""
    import time

    from ..models.results import BatchTotals
    from ..resultfiles import ResultFileError, open_writer
    from ._signals import sigterm_as_interrupt

    via = _via(job.via)
    spec = enricher.config.report_spec()
    writer = open_writer(job.output, spec, formulas=job.csv_raw) if job.output else None
    lost: ResultFileError | None = None  # the output could not take a result
    totals = BatchTotals()
    progress = Progress(total)

    def on_progress(status: dict[str, Any]) -> None:
        progress.say(
            f"enrich: batch {status['id']}: {status['status']}, "
            f"{status['completed']}/{status['total']} done, {status['failed']} failed"
        )

    budget = Budget(job.max_cost) if job.max_cost is not None else None
    source = budget.gate(items) if budget is not None else items
    if job.workers > 1:  # the same stream of results, from worker processes
        from ..engine.pool import PoolRun

        run: Any = PoolRun(
            enricher,
            source,
            workers=job.workers,
            concurrency=job.concurrency,
            write=not job.dry_run,
            force=job.force,
        )
    else:
        run = enricher.enrich_many(
            source,
            concurrency=job.concurrency,
            write=not job.dry_run,
            force=job.force,
            via=via,
            poll_seconds=job.poll_seconds,
            on_progress=on_progress,
        )
    start = time.monotonic()
    interrupted = False
    shown = 0

    def handle(result: Any) -> None:
        nonlocal shown, lost, writer
        totals.add(result)
        if writer is not None:
            try:
                writer.write(result)
            except ResultFileError as exc:
                # what is in flight was paid for: it finishes into the ledger, then we stop
                failed_writer, lost, writer = writer, exc, None
                with contextlib.suppress(OSError):
                    failed_writer.close()
                run.stop()
                progress.say(
                    f"enrich: stopping: {exc.path} cannot take the results ({exc.strerror}); "
                    "finishing the conversations in flight"
                )
        if budget is not None:
            res = result.result
            budget.record(res.cost if res else None, bool(res) and not res.reused)
        if not result.ok and shown < failures_shown:
            shown += 1
            where = result.conversation_id or (f"line {result.line}" if result.line else "?")
            progress.say(f"enrich: failed: {where}: {result.error}")
        progress.update(totals)

    with sigterm_as_interrupt():  # docker stop, Kubernetes, timeout: like the first Ctrl-C
        try:
            results = iter(run)
            while True:
                # A Ctrl-C may land anywhere in this loop, not only while waiting: the first one
                # stops taking new conversations, and the loop goes on collecting those in flight.
                try:
                    try:
                        result = next(results)
                    except StopIteration:
                        break
                    handle(result)
                except KeyboardInterrupt:
                    if interrupted:
                        run.cancel()
                        break
                    interrupted = True
                    run.stop()
                    progress.say(
                        "enrich: stopping: finishing the conversations in flight "
                        "(Ctrl-C again to abandon them)"
                    )
                except BrokenPipeError:
                    run.cancel()  # the reader of stdout is gone; what was paid for is in the ledger
                    raise
        finally:
            if job.workers > 1:
                run.close()  # the workers are gone before the summary
            progress.update(totals, force=True)
            progress.close()
            if writer is not None:
                try:
                    writer.close()
                except BrokenPipeError:
                    pass
                except ResultFileError as exc:
                    lost = lost or exc
    print_summary(totals, time.monotonic() - start)
    if lost is not None:
        ledger = getattr(enricher, "ledger", None)
        if ledger is not None:
            lost.kept = (
                f"the {totals.done - totals.failed:,} results of this run are kept in the ledger "
                f"({ledger.location}), paid for once: `enrich report` summarises them, and the "
                "same command with another --output writes them again with no LLM call, then "
                "goes on with the rest"
            )
        else:
            lost.kept = "the ledger is off: only what was written to ChatDash keeps the results"
        raise lost
    if totals.failed > shown:
        err(f"enrich: ... and {totals.failed - shown} more failures (see --output)")
    if interrupted:
        err(
            "enrich: interrupted. Run the same command again to resume: what the ledger holds "
            "is skipped and not paid for twice."
        )
        return EXIT_INTERRUPTED
    if budget is not None and budget.reached:
        err(
            f"enrich: stopped at --max-cost {budget.cap:g} (spent ${totals.cost:.4f}). Run the "
            "same command again, with a higher cap, to go on: what the ledger holds is not paid "
            "for twice."
        )
        return EXIT_BUDGET
    return EXIT_PARTIAL if totals.failed else EXIT_OK
