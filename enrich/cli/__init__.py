"""The ``enrich`` command: a thin shell over :class:`enrich.Enricher`.

This root only builds the app and registers the commands, one module per group; what they
share, and the one table from errors to exit codes, is in :mod:`._common`.
"""

from __future__ import annotations

import typer

from . import eval, inspect, jobs, ledger, report, run, serve
from ._common import (
    EXIT_BUG,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_LLM,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_WRITE,
    exit_code_for,
    root,
)

__all__ = [
    "app",
    "main",
    "exit_code_for",
    "EXIT_OK",
    "EXIT_BUG",
    "EXIT_INPUT",
    "EXIT_LLM",
    "EXIT_WRITE",
    "EXIT_PARTIAL",
    "EXIT_INTERRUPTED",
]

app = typer.Typer(
    name="enrich",
    help="Turn finished conversations into analytics (summary, topic, verdict, misunderstood "
    "queries) with your own LLM and prompts, and write them back to ChatDash.",
    epilog="No keys yet? `python -m enrich.testing` starts fake OpenAI and ChatDash servers on "
    "127.0.0.1 and prints the environment to try every command against them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help, and usage errors as plain lines
)
app.callback()(root)
app.command()(run.run)
app.command()(ledger.replay)
app.command()(ledger.show)
app.command()(jobs.batch)
app.command()(jobs.backfill)
app.command()(report.report)
app.command("eval")(eval.evaluate)
app.command()(serve.serve)
app.command()(inspect.render)
app.command()(inspect.schema)
app.command("config")(inspect.show_config)
app.command("formats")(inspect.list_formats)
app.command("presets")(inspect.list_presets)
app.add_typer(inspect.templates_app, name="templates")
app.add_typer(ledger.ledger_app, name="ledger")


def main() -> None:
    app()
