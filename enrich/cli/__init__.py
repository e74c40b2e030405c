"""The ``enrich`` command: a thin shell over :class:`enrich.Enricher`.

This module is the one place where errors become exit codes:

====  =====================================================================
0     done
1     anything unexpected (a bug: please report it, with ``--verbose``)
2     bad input, usage or configuration: nothing was sent to the LLM or ChatDash
3     the LLM failed after its retries
4     the write to ChatDash failed (the paid-for result is printed on stdout)
5     a batch finished, but some conversations failed (see its output)
130   interrupted (a batch resumes when run again)
====  =====================================================================

Errors are one line on stderr; ``--verbose`` adds detail. Standard output carries only the
result (or, with ``--dry-run``, only the body that would be PUT), so it can be piped.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from .._version import __version__
from ..errors import (
    ChatDashError,
    ConfigError,
    InputError,
    LLMError,
    TemplateError,
    redact,
)

if TYPE_CHECKING:
    from ..config import Config

__all__ = [
    "app",
    "main",
    "exit_code_for",
    "EXIT_OK",
    "EXIT_BUG",
    "EXIT_INPUT",
    "EXIT_LLM",
    "EXIT_WRITE",
]

EXIT_OK = 0
EXIT_BUG = 1
EXIT_INPUT = 2
EXIT_LLM = 3
EXIT_WRITE = 4

app = typer.Typer(
    name="enrich",
    help="Turn finished conversations into analytics (summary, topic, verdict, misunderstood "
    "queries) with your own LLM and prompts, and write them back to ChatDash.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help, and usage errors as plain lines
)
templates_app = typer.Typer(help="List and show the prompt templates in use.", no_args_is_help=True)
app.add_typer(templates_app, name="templates")

log = logging.getLogger("enrich")


def _console(**kwargs: Any) -> Any:
    """A rich console whose broken pipe (``| head``) ends the command as our own output does."""
    from rich.console import Console

    class _Quiet(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError

    return _Quiet(**kwargs)


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an exception: the single mapping the CLI uses."""
    if isinstance(exc, (InputError, ConfigError, TemplateError)):
        return EXIT_INPUT
    if isinstance(exc, LLMError):
        return EXIT_LLM
    if isinstance(exc, ChatDashError):
        return EXIT_WRITE
    return EXIT_BUG


class _Redact(logging.Filter):
    def __init__(self, secrets: list[Any]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self.secrets)
        record.args = None
        return True


class _State:
    verbose = False
    json = False
    secrets: list[Any] = []


def _err(text: str) -> None:
    typer.echo(redact(text, _State.secrets), err=True)


def _out(text: str) -> None:
    typer.echo(text)


class _Stderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


@contextmanager
def _logging(verbose: bool) -> Iterator[None]:
    """Log to stderr, redacted, for the duration of one command; then put things back."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("enrich: %(message)s"))
    handler.addFilter(_Redact(_State.secrets))
    root = logging.getLogger("enrich")
    saved = (root.level, root.propagate)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    root.propagate = False
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        root.propagate = saved[1]


def _fail(exc: BaseException) -> NoReturn:
    code = exit_code_for(exc)
    if code == EXIT_BUG:
        message = (
            f"internal error: {type(exc).__name__}: {exc} (this is a bug; --verbose shows where)"
        )
    else:
        message = str(exc)
    _err(f"enrich: error: {message}")
    if _State.verbose:
        import traceback

        if isinstance(exc, LLMError):
            _err(f"enrich: {exc.attempts} attempt(s); usage: {exc.usage}")
            for i, raw in enumerate(exc.raw_outputs, 1):
                _err(f"enrich: raw answer {i}: {raw}")
        _err("".join(traceback.format_exception(exc)).rstrip())
    if _State.json:
        payload: dict[str, Any] = {
            "ok": False,
            "error": {"type": type(exc).__name__, "message": redact(message, _State.secrets)},
            "exit_code": code,
        }
        if isinstance(exc, LLMError):
            payload["attempts"] = exc.attempts
            payload["usage"] = exc.usage.model_dump() if exc.usage else None
            payload["raw_outputs"] = exc.raw_outputs
        result = getattr(exc, "result", None)
        if result is not None:
            payload["result"] = result.model_dump(mode="json")
        _out(json.dumps(payload, ensure_ascii=False))
    raise typer.Exit(code)


@contextmanager
def _guard() -> Iterator[None]:
    try:
        with _logging(_State.verbose):
            yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        _err("enrich: interrupted")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        # the reader of our output is gone (`| head`): stop quietly, as Unix tools do
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(141) from None
    except Exception as exc:  # noqa: BLE001 - this is the one place errors become exit codes
        _fail(exc)


def _version(value: bool) -> None:
    if value:
        _out(f"enrich {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    pass


# -- shared options ------------------------------------------------------------------------------

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML configuration file (default: $ENRICH_CONFIG).",
        show_default=False,
    ),
]
TranscriptOpt = Annotated[
    str,
    typer.Option("--transcript", "-t", help="Transcript file, or - for standard input."),
]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        help="Force a transcript format (see `enrich formats`).",
        show_default=False,
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model name (overrides ENRICH_MODEL).", show_default=False),
]
ModeOpt = Annotated[
    str | None,
    typer.Option(
        "--mode",
        help="Structured output mode: json_schema, json_object or tools.",
        show_default=False,
    ),
]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show detail and tracebacks on stderr.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]


def _config(
    path: Path | None,
    *,
    model: str | None = None,
    mode: str | None = None,
    write_metadata: bool | None = None,
    rpm: float | None = None,
    tpm: float | None = None,
) -> Config:
    from ..config import load_config

    overrides = {
        "llm": {"model": model, "mode": mode, "rpm": rpm, "tpm": tpm},
        "write": {"metadata": write_metadata},
    }
    config = load_config(path, overrides)
    _State.secrets += config.secrets()
    return config


def _start(verbose: bool, as_json: bool = False) -> None:
    import os

    _State.verbose = verbose
    _State.json = as_json
    # known before the configuration loads, so even its errors are redacted
    _State.secrets = [os.environ.get(v) for v in ("OPENAI_API_KEY", "CHATDASH_API_KEY")]


def _read(transcript: str, fmt: str | None, config: Config) -> Any:
    from ..formats import read_transcript

    return read_transcript(transcript, format=fmt, max_bytes=config.input.max_bytes)


# -- commands ------------------------------------------------------------------------------------


AgentOpt = Annotated[
    str | None,
    typer.Option("--agent-id", "-a", help="ChatDash agent id.", show_default=False),
]
ConversationOpt = Annotated[
    str | None,
    typer.Option(
        "--conversation-id", "-C", help="ChatDash conversation id (_id).", show_default=False
    ),
]


@app.command()
def run(
    agent_id: AgentOpt = None,
    conversation_id: ConversationOpt = None,
    platform_id: Annotated[
        str | None,
        typer.Option(
            "--platform-id",
            "-P",
            help="The platform's call id (Retell call_id, Vapi or ElevenLabs id) instead of "
            "--conversation-id: resolved to ChatDash's id first.",
            show_default=False,
        ),
    ] = None,
    transcript: Annotated[
        str | None,
        typer.Option(
            "--transcript",
            "-t",
            help="Transcript file, or - for standard input. Default: fetch the conversation's "
            "messages from ChatDash.",
            show_default=False,
        ),
    ] = None,
    config: ConfigOpt = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Enrich, write nothing, print the body that would be PUT."),
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Ask the LLM again even if the ledger holds this enrichment."),
    ] = False,
    as_json: JsonOpt = False,
    fmt: FormatOpt = None,
    model: ModelOpt = None,
    mode: ModeOpt = None,
    write_metadata: Annotated[
        bool | None,
        typer.Option(
            "--write-metadata/--no-write-metadata",
            help="Also write the call's platform metadata (platformId, phone, phoneSecondary, "
            "duration, endedReason, url) from the payload (default: write.metadata).",
            show_default=False,
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Enrich one conversation and write the result to ChatDash."""
    _start(verbose, as_json)
    with _guard():
        if conversation_id and platform_id:
            raise InputError("give --conversation-id or --platform-id, not both")
        has_target = bool(agent_id and (conversation_id or platform_id))
        if not dry_run and not has_target:
            raise InputError(
                "--agent-id and --conversation-id (or --platform-id) are required "
                "(or use --dry-run with --transcript)"
            )
        if transcript is None and not has_target:
            raise InputError(
                "--transcript is required without --agent-id and --conversation-id "
                "(with them, the transcript is fetched from ChatDash)"
            )
        cfg = _config(config, model=model, mode=mode, write_metadata=write_metadata)
        from ..chatdash import conversation_path
        from ..engine import Enricher

        if agent_id is not None or conversation_id or platform_id:
            conversation_path(agent_id or "", conversation_id or platform_id or "")
        parsed = _read(transcript, fmt, cfg) if transcript is not None else None
        enricher = Enricher(cfg)
        try:
            if platform_id:
                conversation_id = enricher.resolve(agent_id, platform_id)  # type: ignore[arg-type]
                log.info("platform id %s is conversation %s", platform_id, conversation_id)
            if dry_run:
                if parsed is None:
                    parsed = enricher.fetch(agent_id, conversation_id)  # type: ignore[arg-type]
                result = enricher.enrich(
                    parsed, agent_id=agent_id, conversation_id=conversation_id, force=force
                )
            else:
                result = enricher.enrich_and_write(
                    agent_id,  # type: ignore[arg-type]
                    conversation_id,  # type: ignore[arg-type]
                    parsed,
                    force=force,
                )
        except ChatDashError as exc:
            if exc.result is not None:
                if not as_json:
                    _out(json.dumps(exc.result.update, ensure_ascii=False))
                    _err("enrich: the enrichment was paid for: its body is on stdout")
                if enricher.ledger is not None:
                    refused = exc.status_code is not None and 400 <= exc.status_code < 500
                    how = (
                        "once the cause is fixed, `enrich replay --failed` sends it"
                        if refused and exc.status_code != 429
                        else "`enrich replay` sends it again"
                    )
                    _err(f"enrich: it is kept in the ledger ({enricher.ledger.path}); {how}")
            raise
        finally:
            enricher.close()
        _report(result, dry_run=dry_run, as_json=as_json)


def _report(result: Any, *, dry_run: bool, as_json: bool) -> None:
    u = result.usage
    tokens = (
        f"{u.prompt_tokens} prompt + {u.completion_tokens} completion tokens "
        f"({u.cached_tokens} cached)"
    )
    dropped = (
        f"; dropped {len(result.dropped_queries)} invented query(ies)"
        if result.dropped_queries
        else ""
    )
    if as_json:
        _out(json.dumps({"ok": True, **result.model_dump(mode="json")}, ensure_ascii=False))
    elif dry_run:
        _out(json.dumps(result.update, ensure_ascii=False, indent=2))
    else:
        e = result.enrichment
        _out(f"written: conversation {result.conversation_id} of agent {result.agent_id}")
        _out(f"topic: {e.topic} / {e.subtopic}")
        _out(f"success: {str(e.evaluation.is_success).lower()}  ({e.evaluation.reason})")
        _out(f"summary: {e.summary}")
        _out(f"misunderstood queries: {len(e.misunderstood_queries)}")
    if result.reused:
        dropped += "; reused the ledger's enrichment (no LLM call; --force asks again)"
    if result.already_written:
        dropped += "; already written with the same body, nothing sent"
    if result.cost is not None:
        dropped += f"; ${result.cost:.6f}"
    if result.strategy == "map_reduce":
        dropped += (
            f"; the call (~{result.transcript_tokens:,} tokens) was over the context budget: "
            f"{result.parts} parts were summarised and combined"
        )
    if dry_run:
        _err(
            f"enrich: dry run, nothing written; {result.attempts} LLM request(s), {tokens}{dropped}"
        )
    elif not as_json:
        _err(f"enrich: {result.attempts} LLM request(s), {tokens}{dropped}")


@app.command()
def replay(
    failed: Annotated[
        bool,
        typer.Option("--failed", help="Also resend writes ChatDash refused (after a fix)."),
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Send every pending write in the ledger again (no LLM call). Safe to run twice."""
    _start(verbose, as_json)
    with _guard():
        from ..engine import Enricher

        enricher = Enricher(_config(config))
        try:
            report = enricher.replay(include_failed=failed)
        finally:
            enricher.close()
        if as_json:
            _out(json.dumps({"ok": not report.failed, **report.model_dump()}))
        else:
            _out(
                f"written: {report.written}, failed: {len(report.failed)}, "
                f"skipped (another process had them): {report.skipped}"
            )
        for line in report.failed:
            _err(f"enrich: {line}")
        if report.refused_waiting:
            _err(
                f"enrich: {report.refused_waiting} write(s) ChatDash refused wait in the ledger: "
                "fix the cause, then `enrich replay --failed`"
            )
        if report.failed:
            raise ChatDashError(f"{len(report.failed)} write(s) failed again; still in the ledger")


@app.command()
def show(
    conversation_id: Annotated[
        str, typer.Option("--conversation-id", "-C", help="ChatDash conversation id.")
    ],
    agent_id: AgentOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Print what the ledger knows about a conversation: its state, enrichment and history."""
    _start(verbose, as_json)
    with _guard():
        ledger = _ledger(_config(config))
        entries = ledger.find(conversation_id, agent_id)
        if not entries:
            raise InputError(f"conversation {conversation_id} is not in the ledger ({ledger.path})")
        out = []
        for entry in entries:
            history = ledger.history(entry.agent_id, entry.conversation_id)
            out.append(
                {**entry.model_dump(mode="json"), "history": [h.model_dump() for h in history]}
            )
        if as_json:
            _out(json.dumps(out if len(out) > 1 else out[0], ensure_ascii=False))
            return
        for item in out:
            _out(f"conversation {item['conversation_id']} of agent {item['agent_id']}")
            _out(f"  state: {item['state']} (attempts: {item['attempts']})")
            if item["last_error"]:
                _out(f"  last error: {item['last_error']}")
            _out(f"  model: {item['model']}")
            u = item["usage"]
            cost = f", ${item['cost']:.6f}" if item["cost"] is not None else ""
            _out(
                f"  tokens: {u['prompt_tokens']} prompt + {u['completion_tokens']} completion "
                f"({u['cached_tokens']} cached) in {u['requests']} request(s){cost}"
            )
            _out(f"  body: {json.dumps(item['body'], ensure_ascii=False)}")
            _out("  history:")
            for h in item["history"]:
                detail = f" {json.dumps(h['detail'], ensure_ascii=False)}" if h["detail"] else ""
                _out(f"    {h['at']}  {h['event']}{detail}")


ledger_app = typer.Typer(help="The ledger of enriched conversations.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")


def _ledger(cfg: Config) -> Any:
    from ..ledger import Ledger, default_ledger_path

    if not cfg.ledger.enabled:
        raise ConfigError("the ledger is disabled (ledger.enabled, or ENRICH_LEDGER=off)")
    path = cfg.ledger.path or default_ledger_path()
    if not path.exists():
        raise InputError(f"{path}: no ledger yet (nothing was enriched with it)")
    return Ledger(path)


@ledger_app.command("stats")
def ledger_stats(
    config: ConfigOpt = None, as_json: JsonOpt = False, verbose: VerboseOpt = False
) -> None:
    """Conversations by state, with tokens and cost."""
    _start(verbose, as_json)
    with _guard():
        ledger = _ledger(_config(config))
        rows = ledger.stats()
        if as_json:
            _out(json.dumps({"ledger": str(ledger.path), "states": rows}))
            return
        from rich.table import Table

        table = Table(title=f"ledger {ledger.path}")
        for name in (
            "state",
            "conversations",
            "requests",
            "prompt tokens",
            "cached",
            "completion tokens",
            "cost (USD)",
        ):
            table.add_column(name, justify="left" if name == "state" else "right")
        totals = [0, 0, 0, 0, 0, 0.0]
        for r in rows:
            cost = "" if not r["costed"] else f"{r['cost']:.4f}"
            values = [
                r["conversations"],
                r["requests"],
                r["prompt_tokens"],
                r["cached_tokens"],
                r["completion_tokens"],
            ]
            table.add_row(r["state"], *[f"{v:,}" for v in values], cost)
            totals = [t + (v or 0) for t, v in zip(totals, [*values, r["cost"]], strict=True)]
        table.add_row("total", *[f"{v:,}" for v in totals[:5]], f"{totals[5]:.4f}", style="bold")
        _console(width=120).print(table)


# -- many conversations ------------------------------------------------------------------------

EXIT_PARTIAL = 5
EXIT_INTERRUPTED = 130


class _Progress:
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
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("enriching"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=_console(stderr=True),
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
            _err(f"enrich: {t.done}{share} done{eta}; {self._info(t, elapsed)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _summary(totals: Any, seconds: float, *, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("")
    table.add_column("", justify="right")
    rows = [
        ("conversations", f"{totals.done:,}"),
        ("written", f"{totals.written:,}"),
        ("enriched, not written", f"{totals.enriched:,}"),
        ("skipped (already done)", f"{totals.skipped:,}"),
        ("failed", f"{totals.failed:,}"),
        ("LLM requests", f"{totals.requests:,}"),
        ("prompt tokens (cached)", f"{totals.prompt_tokens:,} ({totals.cached_tokens:,})"),
        ("completion tokens", f"{totals.completion_tokens:,}"),
        (
            "cost (USD)",
            f"{totals.cost:.4f}" + (f" + {totals.uncosted} unpriced" if totals.uncosted else ""),
        ),
        ("time", f"{seconds:.1f}s ({totals.done / seconds:.1f}/s)" if seconds > 0 else "-"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    _console(stderr=True, width=100).print(table)


def _count_lines(path: str) -> int | None:
    if path == "-":
        return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _drive(
    enricher: Any,
    items: Any,
    *,
    total: int | None,
    concurrency: int,
    write: bool,
    force: bool,
    output: str | None,
    via: str = "direct",
    poll_seconds: float = 10.0,
    failures_shown: int = 10,
) -> int:
    """Run a batch with progress, Ctrl-C handling and a summary; returns the exit code."""
    import time

    from ..models.results import BatchTotals
    from ..resultfiles import open_writer

    writer = open_writer(output) if output else None
    totals = BatchTotals()
    progress = _Progress(total)

    def on_progress(status: dict[str, Any]) -> None:
        _err(
            f"enrich: batch {status['id']}: {status['status']}, "
            f"{status['completed']}/{status['total']} done, {status['failed']} failed"
        )

    run = enricher.enrich_many(
        items,
        concurrency=concurrency,
        write=write,
        force=force,
        via=via,
        poll_seconds=poll_seconds,
        on_progress=on_progress,
    )
    start = time.monotonic()
    interrupted = False
    shown = 0

    def handle(result: Any) -> None:
        nonlocal shown
        totals.add(result)
        if writer is not None:
            writer.write(result)
        if not result.ok and shown < failures_shown:
            shown += 1
            where = result.conversation_id or (f"line {result.line}" if result.line else "?")
            _err(f"enrich: failed: {where}: {result.error}")
        progress.update(totals)

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
                _err(
                    "enrich: stopping: finishing the conversations in flight "
                    "(Ctrl-C again to abandon them)"
                )
            except BrokenPipeError:
                run.cancel()  # the reader of stdout is gone; what was paid for is in the ledger
                raise
    finally:
        progress.update(totals, force=True)
        progress.close()
        if writer is not None:
            try:
                writer.close()
            except BrokenPipeError:
                pass
    _summary(totals, time.monotonic() - start, title="enrich: batch summary")
    if totals.failed > shown:
        _err(f"enrich: ... and {totals.failed - shown} more failures (see --output)")
    if interrupted:
        _err(
            "enrich: interrupted. Run the same command again to resume: what the ledger holds "
            "is skipped and not paid for twice."
        )
        return EXIT_INTERRUPTED
    return EXIT_PARTIAL if totals.failed else EXIT_OK


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
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        help="Write results to .jsonl, .csv or .parquet (- for JSON Lines on stdout).",
        show_default=False,
    ),
]
BatchDryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Enrich (and keep in the ledger), write nothing.")
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Ask the LLM again even for what the ledger holds.")
]
EstimateOpt = Annotated[
    bool,
    typer.Option(
        "--estimate",
        help="Call no LLM: print what the job should cost (requests, tokens, USD at list price).",
    ),
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


@app.command()
def batch(
    input: Annotated[
        str,
        typer.Argument(
            help='JSON Lines: {"agent_id", "conversation_id", "transcript"?} a line; - for stdin.'
        ),
    ],
    concurrency: ConcurrencyOpt = 8,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    dry_run: BatchDryRunOpt = False,
    output: OutputOpt = None,
    force: ForceOpt = False,
    via: ViaOpt = "direct",
    poll_seconds: PollOpt = 10.0,
    estimate: EstimateOpt = False,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    mode: ModeOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Enrich many conversations from a JSON Lines file, at the provider's rate limit.

    Exit 0 when all succeeded, 5 when some failed (each is in the output and the summary),
    130 when interrupted (run the same command again to resume).
    """
    _start(verbose)
    with _guard():
        from ..engine import Enricher
        from ..engine.items import read_items

        if input != "-" and Path(input).is_dir():
            raise InputError(f"{input}: is a directory, not a JSON Lines file")
        if input != "-" and not Path(input).is_file():
            raise InputError(f"{input}: no such file")
        enricher = Enricher(_config(config, model=model, mode=mode, rpm=rpm, tpm=tpm))
        code = _job(
            enricher,
            lambda: read_items(input),
            total=_count_lines(input),
            concurrency=concurrency,
            dry_run=dry_run,
            force=force,
            output=output,
            via=via,
            poll_seconds=poll_seconds,
            estimate=estimate,
        )
    raise typer.Exit(code)


def _job(
    enricher: Any,
    items: Any,
    *,
    total: int | None,
    concurrency: int,
    dry_run: bool,
    force: bool,
    output: str | None,
    via: str,
    poll_seconds: float,
    estimate: bool,
) -> int:
    """A batch or backfill: estimate it, or run it; ``items()`` makes the items."""
    try:
        if estimate:
            return _estimate(enricher, items(), force=force, output=output)
        if not dry_run:
            enricher.chatdash.check()
        return _drive(
            enricher,
            items(),
            total=total,
            concurrency=concurrency,
            write=not dry_run,
            force=force,
            output=output,
            via=_via(via),
            poll_seconds=poll_seconds,
        )
    finally:
        enricher.close()


def _estimate(enricher: Any, items: Any, *, force: bool, output: str | None) -> int:
    """Estimate a job's cost without calling the LLM; write rows to ``output``."""
    import statistics

    from ..engine.batch import estimate_many

    async def collect() -> list[Any]:
        return [row async for row in estimate_many(enricher, items, force=force)]

    rows = enricher.sync.run(collect())
    if output:
        path = Path(output) if output != "-" else None
        if path is not None and path.suffix.lower() not in (".jsonl", ".csv"):
            raise ConfigError(f"{path}: an estimate is written as .jsonl or .csv")
        text = "".join(r.model_dump_json() + "\n" for r in rows)
        if path is not None and path.suffix.lower() == ".csv":
            import csv
            import io

            buf = io.StringIO()
            fields = list(type(rows[0]).model_fields) if rows else ["ok"]
            writer = csv.DictWriter(buf, fieldnames=fields)
            writer.writeheader()
            for r in rows:
                writer.writerow(r.model_dump())
            text = buf.getvalue()
        if path is None:
            _out(text.rstrip())
        else:
            path.write_text(text, encoding="utf-8")
    good = [r for r in rows if r.ok and r.strategy != "skipped"]
    costs = [r.cost for r in good if r.cost is not None]
    from rich.table import Table

    table = Table(
        title=f"enrich: cost estimate ({enricher.config.llm.model}, no LLM called)",
        show_header=False,
    )
    table.add_column("")
    table.add_column("", justify="right")
    for name, value in (
        ("conversations", f"{len(rows):,}"),
        ("to enrich", f"{len(good):,}"),
        ("already done (free)", f"{sum(r.strategy == 'skipped' for r in rows):,}"),
        ("cannot be enriched", f"{sum(not r.ok for r in rows):,}"),
        ("LLM requests", f"{sum(r.requests for r in good):,}"),
        ("prompt tokens", f"{sum(r.prompt_tokens for r in good):,}"),
        ("completion tokens (~250 an answer)", f"{sum(r.completion_tokens for r in good):,}"),
        ("cost per conversation (median)", f"${statistics.median(costs):.6f}" if costs else "-"),
        (
            "cost in all (USD)",
            f"${sum(costs):.4f}"
            if enricher.config.price(enricher.config.llm.model) is not None
            else "no price for this model (see pricing in the configuration)",
        ),
    ):
        table.add_row(name, value)
    # the estimate is this command's output: stdout, unless the rows went there
    _console(stderr=output == "-", width=100).print(table)
    return EXIT_OK


def _via(value: str) -> str:
    if value not in ("direct", "batch-api"):
        raise InputError(f"--via {value!r}: use direct or batch-api")
    return value


def _when(value: str, flag: str) -> Any:
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"{flag} {value!r}: expected a date like 2026-11-01 or 2026-11-01T08:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@app.command()
def backfill(
    agent_id: Annotated[str, typer.Option("--agent-id", "-a", help="ChatDash agent id.")],
    since: Annotated[str, typer.Option("--since", help="Start date (ISO 8601), inclusive.")],
    until: Annotated[
        str | None,
        typer.Option(
            "--until", help="End date (ISO 8601), exclusive; default now.", show_default=False
        ),
    ] = None,
    window_hours: Annotated[
        float, typer.Option("--window-hours", min=0.01, help="List the range in windows this long.")
    ] = 24.0,
    split_at: Annotated[
        int,
        typer.Option(
            "--split-at",
            min=1,
            help="A window listing this many conversations may be cut short: list it again "
            "in halves.",
        ),
    ] = 100,
    concurrency: ConcurrencyOpt = 8,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    dry_run: BatchDryRunOpt = False,
    output: OutputOpt = None,
    force: ForceOpt = False,
    via: ViaOpt = "direct",
    poll_seconds: PollOpt = 10.0,
    estimate: EstimateOpt = False,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    mode: ModeOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Enrich every conversation of an agent in a date range (listed from ChatDash)."""
    _start(verbose)
    with _guard():
        from datetime import UTC, datetime, timedelta

        from ..engine import Enricher
        from ..engine.batch import backfill_items

        start = _when(since, "--since")
        end = _when(until, "--until") if until else datetime.now(UTC)
        if end <= start:
            raise InputError("--until must be after --since")
        enricher = Enricher(_config(config, model=model, mode=mode, rpm=rpm, tpm=tpm))
        enricher.chatdash.check()  # listing needs ChatDash, even for an estimate
        code = _job(
            enricher,
            lambda: backfill_items(
                enricher, agent_id, start, end, timedelta(hours=window_hours), split_at=split_at
            ),
            total=None,
            concurrency=concurrency,
            dry_run=dry_run,
            force=force,
            output=output,
            via=via,
            poll_seconds=poll_seconds,
            estimate=estimate,
        )
    raise typer.Exit(code)


@app.command()
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
    _start(verbose, as_json)
    with _guard():
        from ..report import rows_from_ledger, summarize
        from ..resultfiles import read_results

        if results is not None:
            if not results.is_file():
                raise InputError(f"{results}: no such file")
            rows, source = read_results(results), str(results)
        else:
            ledger = _ledger(_config(config))
            rows, source = rows_from_ledger(ledger), str(ledger.path)
        if not rows or not any("status" in r and "topic" in r for r in rows):
            raise InputError(f"{source}: no enrichment results in it (see `enrich batch --output`)")
        rep = summarize(rows, top=top)
        if as_json:
            _out(rep.model_dump_json())
            return
        from rich.table import Table

        console = _console(width=110)
        rate = "-" if rep.success_rate is None else f"{rep.success_rate:.1%}"
        console.print(
            f"[bold]{source}[/]: {rep.conversations:,} conversations, {rep.enriched:,} enriched, "
            f"{rep.failed:,} failed; success rate {rate}"
        )
        t = Table(title="topics")
        for c in ("topic", "subtopic", "conversations", "share"):
            t.add_column(c, justify="right" if c in ("conversations", "share") else "left")
        for topic, subtopic, n in rep.subtopics:
            t.add_row(topic, subtopic, f"{n:,}", f"{n / max(rep.enriched, 1):.1%}")
        console.print(t)
        q = Table(title="most common misunderstood queries")
        q.add_column("query")
        q.add_column("times", justify="right")
        for text, n in rep.misunderstood:
            q.add_row(text, f"{n:,}")
        console.print(q)
        c = Table(title="tokens and cost", show_header=False)
        c.add_column("")
        c.add_column("", justify="right")
        c.add_row("LLM requests", f"{rep.requests:,}")
        c.add_row("prompt tokens (cached)", f"{rep.prompt_tokens:,} ({rep.cached_tokens:,})")
        c.add_row("completion tokens", f"{rep.completion_tokens:,}")
        unpriced = f" + {rep.uncosted} unpriced" if rep.uncosted else ""
        c.add_row("cost (USD)", f"{rep.cost:.4f}{unpriced}")
        console.print(c)


@app.command()
def render(
    transcript: TranscriptOpt,
    config: ConfigOpt = None,
    fmt: FormatOpt = None,
    mode: ModeOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Print the exact messages that would go to the LLM (nothing is sent)."""
    _start(verbose, as_json)
    with _guard():
        cfg = _config(config, mode=mode)
        from ..engine import Enricher

        messages = Enricher(cfg).render(_read(transcript, fmt, cfg))
        if as_json:
            _out(json.dumps(messages, ensure_ascii=False, indent=2))
        else:
            for m in messages:
                _out(f"--- {m['role']} ---")
                _out(m["content"])


@app.command()
def schema(
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Print the JSON schema the model is asked to follow (the taxonomy becomes enums)."""
    _start(verbose)
    with _guard():
        cfg = _config(config)
        _out(json.dumps(cfg.spec().json_schema(), indent=2, ensure_ascii=False))


@app.command("config")
def show_config(
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Print the resolved configuration (flags, environment, file, defaults); keys masked."""
    _start(verbose)
    with _guard():
        import yaml

        cfg = _config(config)
        _out(yaml.safe_dump(cfg.redacted(), sort_keys=False, allow_unicode=True).rstrip())


@app.command("formats")
def list_formats() -> None:
    """List the transcript formats enrich reads, in the order it tries them."""
    from ..formats import formats

    for fmt in formats():
        _out(f"{fmt.name:<10} {fmt.kind:<5} {fmt.description}")


@templates_app.command("list")
def templates_list(config: ConfigOpt = None, verbose: VerboseOpt = False) -> None:
    """List the templates and the file each comes from (yours or the packaged default)."""
    _start(verbose)
    with _guard():
        from ..prompts import Prompts

        cfg = _config(config)
        for name, path, overridden in Prompts(cfg.analysis.prompts_dir).listing():
            _out(f"{name:<10} {'yours  ' if overridden else 'default'} {path}")


@templates_app.command("show")
def templates_show(
    name: Annotated[str, typer.Argument(help="Template name, e.g. system.j2.")],
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Print a template's source (copy it into your prompts folder to override it)."""
    _start(verbose)
    with _guard():
        from ..prompts import Prompts

        cfg = _config(config)
        _out(Prompts(cfg.analysis.prompts_dir).source(name).rstrip())


def main() -> None:
    app()
