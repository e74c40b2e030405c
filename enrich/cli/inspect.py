"""Commands that show what enrich would do, and call nothing: ``render``, ``schema``,
``config``, ``formats`` and ``templates list|show``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ._common import (
    ConfigOpt,
    FormatOpt,
    JsonOpt,
    ModeOpt,
    TranscriptOpt,
    VerboseOpt,
    guard,
    load_config,
    out,
    read_transcript,
)

templates_app = typer.Typer(help="List and show the prompt templates in use.", no_args_is_help=True)


def render(
    transcript: TranscriptOpt,
    config: ConfigOpt = None,
    fmt: FormatOpt = None,
    mode: ModeOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Print the exact messages that would go to the LLM (nothing is sent)."""
    with guard(verbose, as_json):
        cfg = load_config(config, mode=mode)
        from ..engine import Enricher

        messages = Enricher(cfg).render(read_transcript(transcript, fmt, cfg))
        if as_json:
            out(json.dumps(messages, ensure_ascii=False, indent=2))
        else:
            for m in messages:
                out(f"--- {m['role']} ---")
                out(m["content"])


def schema(
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Print the JSON schema the model is asked to follow (the taxonomy becomes enums)."""
    with guard(verbose):
        cfg = load_config(config)
        out(json.dumps(cfg.spec().json_schema(), indent=2, ensure_ascii=False))


def show_config(
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Print the resolved configuration (flags, environment, file, defaults); keys masked."""
    with guard(verbose):
        import yaml

        cfg = load_config(config)
        out(yaml.safe_dump(cfg.redacted(), sort_keys=False, allow_unicode=True).rstrip())


def list_formats() -> None:
    """List the transcript formats enrich reads, in the order it tries them."""
    from ..formats import formats

    for fmt in formats():
        out(f"{fmt.name:<10} {fmt.kind:<5} {fmt.description}")


@templates_app.command("list")
def templates_list(config: ConfigOpt = None, verbose: VerboseOpt = False) -> None:
    """List the templates and the file each comes from (yours or the packaged default)."""
    with guard(verbose):
        from ..prompts import Prompts

        cfg = load_config(config)
        for name, path, overridden in Prompts(cfg.analysis.prompts_dir).listing():
            out(f"{name:<10} {'yours  ' if overridden else 'default'} {path}")


@templates_app.command("show")
def templates_show(
    name: Annotated[str, typer.Argument(help="Template name, e.g. system.j2.")],
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Print a template's source (copy it into your prompts folder to override it)."""
    with guard(verbose):
        from ..prompts import Prompts

        cfg = load_config(config)
        out(Prompts(cfg.analysis.prompts_dir).source(name).rstrip())
