"""What every command shares: exit codes, output, logging, the error guard, options, config.

This module is the one place where errors become exit codes, a table over
:func:`enrich.errors.error_class`:

====  =====================================================================
0     done
1     anything unexpected (a bug: please report it, with ``--verbose``)
2     bad input, usage or configuration: nothing was sent to the LLM or ChatDash
3     the LLM failed after its retries
4     the write to ChatDash failed (the paid-for result is printed on stdout)
5     a batch finished, but some conversations failed (see its output)
6     the results could not be written to ``--output`` (disk full...): the ledger keeps them
7     a batch stopped at ``--max-cost``
8     the ledger cannot be used (locked past its busy timeout, disk full, corrupt)
9     ``enrich eval`` ran, and a figure is below its ``--min`` bar
130   interrupted (a batch resumes when run again)
====  =====================================================================

Errors are one line on stderr; ``--verbose`` adds detail. Standard output carries only the
result (or, with ``--dry-run``, only the body that would be PUT), so it can be piped.

Text that came from outside (a transcript, the model's answers, a server's errors, a file name)
is shown as text: never as rich markup (:func:`cell`), and never with the control sequences that
would drive the terminal (:func:`plain`, which :func:`err` and :func:`say` apply; :func:`out`,
which also prints JSON, removes only what JSON never holds raw, so JSON stays exact).
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
from ..errors import ConfigError, ErrorClass, InputError, error_class, redact
from ._text import cell as cell  # re-exported: every command shows text through these
from ._text import console as console
from ._text import plain, plain_json
from ._text import print_pairs as print_pairs
from ._text import spend_rows as spend_rows

if TYPE_CHECKING:
    from ..config import Config

EXIT_OK = 0
EXIT_BUG = 1
EXIT_INPUT = 2
EXIT_LLM = 3
EXIT_WRITE = 4
EXIT_PARTIAL = 5
EXIT_OUTPUT = 6
EXIT_LEDGER = 8
EXIT_BELOW_MIN = 9  # enrich eval --min: a figure below its bar
EXIT_INTERRUPTED = 130

#: The exit code of each family of errors.
EXIT_CODES: dict[ErrorClass, int] = {
    "input": EXIT_INPUT,
    "config": EXIT_INPUT,
    "llm": EXIT_LLM,
    "chatdash": EXIT_WRITE,
    "ledger": EXIT_LEDGER,
    "enrich": EXIT_BUG,
    "internal": EXIT_BUG,
}

log = logging.getLogger("enrich")


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an exception: the single mapping the CLI uses. A results file that
    cannot be written (:class:`enrich.resultfiles.ResultFileError`, an ``OSError``; looked up
    only once that module is loaded, so the CLI starts lean) has its own."""
    files = sys.modules.get("enrich.resultfiles")
    if files is not None and isinstance(exc, files.ResultFileError):
        return EXIT_OUTPUT
    return EXIT_CODES[error_class(exc)]


class State:
    """What the command being run asked for; its secrets are redacted from all it prints."""

    verbose = False
    json = False
    secrets: list[Any] = []
    config: Any = None  # the configuration loaded, to price what a failure spent


def err(text: str) -> None:
    """One human-readable line (or more) on stderr: secrets redacted, controls removed."""
    typer.echo(plain(redact(text, State.secrets)), err=True)


def out(text: str) -> None:
    """Standard output, JSON included: escape sequences and C0 controls removed (JSON never
    holds them raw, so it is printed exactly as made)."""
    typer.echo(plain_json(text))


def say(text: str) -> None:
    """A human-readable line on stdout, which may quote a transcript, the model or a server:
    :func:`plain` (no escape sequence or control character reaches the terminal)."""
    typer.echo(plain(text))


class _Redact(logging.Filter):
    def __init__(self, secrets: list[Any]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self.secrets)
        record.args = None
        return True


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
    handler.addFilter(_Redact(State.secrets))
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
    # an LLMError carries its attempts and raw answers: they were paid for
    llm: Any = exc if error_class(exc) == "llm" else None
    if code == EXIT_BUG:
        message = (
            f"internal error: {type(exc).__name__}: {exc} (this is a bug; --verbose shows where)"
        )
    else:
        message = str(exc)
    if llm is not None and llm.usage is not None and llm.usage.total_tokens:
        u, cfg = llm.usage, State.config  # an exit 3 says what its attempts spent (paid for)
        cost = cfg.cost(cfg.llm.model, u) if cfg is not None else None
        tokens = f"{u.prompt_tokens:,} prompt + {u.completion_tokens:,} completion tokens"
        tokens += "" if cost is None else f", ${cost:.6f}"
        message += f" (spent {tokens} in {llm.attempts} attempt(s))"
    err(f"enrich: error: {message}")
    if State.verbose:
        import traceback

        if llm is not None:
            err(f"enrich: {llm.attempts} attempt(s); usage: {llm.usage}")
            for i, raw in enumerate(llm.raw_outputs, 1):
                err(f"enrich: raw answer {i}: {raw}")
        err("".join(traceback.format_exception(exc)).rstrip())
    if State.json:
        payload: dict[str, Any] = {
            "ok": False,
            "error": {"type": type(exc).__name__, "message": redact(message, State.secrets)},
            "exit_code": code,
        }
        if llm is not None:
            payload["attempts"] = llm.attempts
            payload["usage"] = llm.usage.model_dump() if llm.usage else None
            payload["raw_outputs"] = llm.raw_outputs
        result = getattr(exc, "result", None)
        if result is not None:
            from ..resultfiles import rounded_costs

            payload["result"] = rounded_costs(result.model_dump(mode="json"))
        out(json.dumps(payload, ensure_ascii=False))
    raise typer.Exit(code)


@contextmanager
def guard(verbose: bool, as_json: bool = False) -> Iterator[None]:
    """Run a command's body: log (redacted) while it runs, and turn what it raises into one
    line on stderr and an exit code."""
    import os

    State.verbose, State.json, State.config = verbose, as_json, None
    # known before the configuration loads, so even its errors are redacted
    State.secrets = [os.environ.get(v) for v in ("OPENAI_API_KEY", "CHATDASH_API_KEY")]
    try:
        with _logging(State.verbose):
            yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err("enrich: interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # the reader of our output is gone (`| head`): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(141) from None
    except Exception as exc:  # noqa: BLE001 - this is the one place errors become exit codes
        _fail(exc)


def _version(value: bool) -> None:
    if value:
        out(f"enrich {__version__}")
        raise typer.Exit()


def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """The options of ``enrich`` itself (before any command)."""


# -- shared options ------------------------------------------------------------------------------

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML file (default: $ENRICH_CONFIG, ./enrich.yaml, the user's enrich/enrich.yaml).",
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
AgentOpt = Annotated[
    str | None,
    typer.Option("--agent-id", "-a", help="ChatDash agent id.", show_default=False),
]
ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--agent-id",
        "-a",
        help="Show this ChatDash agent's profile: `analysis` with the agent's overrides from "
        "`agents` (an agent without overrides has the defaults).",
        show_default=False,
    ),
]
ConversationOpt = Annotated[
    str | None,
    typer.Option(
        "--conversation-id", "-C", help="ChatDash conversation id (_id).", show_default=False
    ),
]


# -- what commands load --------------------------------------------------------------------------


def load_config(
    path: Path | None,
    *,
    model: str | None = None,
    mode: str | None = None,
    write_metadata: bool | None = None,
    rpm: float | None = None,
    tpm: float | None = None,
) -> Config:
    """The configuration, the flags given winning; its secrets are redacted from then on."""
    from ..config import load_config as load

    overrides = {
        "llm": {"model": model, "mode": mode, "rpm": rpm, "tpm": tpm},
        "write": {"metadata": write_metadata},
    }
    config = load(path, overrides)
    State.secrets += config.secrets()
    State.config = config
    return config


def read_transcript(transcript: str, fmt: str | None, config: Config) -> Any:
    from ..formats import read_transcript as read

    return read(transcript, format=fmt, max_bytes=config.input.max_bytes)


def open_ledger(cfg: Config) -> Any:
    """The ledger the configuration names; an error if it is off or was never written."""
    from ..ledger import default_ledger_path
    from ..ledger import open_ledger as open_at

    if not cfg.ledger.enabled:
        raise ConfigError("the ledger is disabled (ledger.enabled, or ENRICH_LEDGER=off)")
    path = cfg.ledger.path or default_ledger_path()
    if isinstance(path, str):  # a database URL, kept as written: the ledger makes its tables
        return open_at(path)
    if not path.exists():
        raise InputError(f"{path}: no ledger yet (nothing was enriched with it)")
    return open_at(path)
