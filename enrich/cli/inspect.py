"""Commands that show what enrich would do, and call nothing: ``render``, ``schema``,
``config``, ``formats``, ``presets`` and ``templates list|show|copy``.

Each but ``formats`` takes ``--agent-id``: it shows that agent's profile (the configuration's
``analysis`` with the agent's overrides from ``agents``), as ``run`` and ``batch`` use it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._common import (
    ConfigOpt,
    FormatOpt,
    JsonOpt,
    ModeOpt,
    ProfileOpt,
    TranscriptOpt,
    VerboseOpt,
    err,
    guard,
    load_config,
    out,
    read_transcript,
    say,
)

templates_app = typer.Typer(
    help="List, show and copy the prompt templates in use.", no_args_is_help=True
)


def render(
    transcript: TranscriptOpt,
    config: ConfigOpt = None,
    agent_id: ProfileOpt = None,
    fmt: FormatOpt = None,
    mode: ModeOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Print the exact messages that would go to the LLM (nothing is sent)."""
    with guard(verbose, as_json):
        cfg = load_config(config, mode=mode)
        from ..engine import Enricher

        with Enricher(cfg) as enricher:
            messages = enricher.render(read_transcript(transcript, fmt, cfg), agent_id=agent_id)
        if as_json:
            out(json.dumps(messages, ensure_ascii=False, indent=2))
        else:
            for m in messages:  # the transcript's text, shown without its control sequences
                say(f"--- {m['role']} ---")
                say(m["content"])


def schema(
    config: ConfigOpt = None,
    agent_id: ProfileOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Print the JSON schema the model is asked to follow (the taxonomy becomes enums)."""
    with guard(verbose):
        cfg = load_config(config).for_agent(agent_id)
        out(json.dumps(cfg.spec().json_schema(), indent=2, ensure_ascii=False))


def show_config(
    config: ConfigOpt = None,
    agent_id: ProfileOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Print the resolved configuration (flags, environment, file, defaults); keys masked.

    Without --agent-id: the defaults and every agent's overrides (`agents`); with it: the
    configuration that agent's conversations get, its overrides merged into `analysis`."""
    with guard(verbose):
        import yaml

        cfg = load_config(config)
        data = cfg.redacted()
        if cfg.ledger.enabled and cfg.ledger.path is None:  # the path in use, not `null`
            from ..ledger import default_ledger_path

            data["ledger"]["path"] = str(default_ledger_path())
        if agent_id is not None:
            data = {**cfg.for_agent(agent_id).redacted(), "ledger": data["ledger"]}
            del data["agents"]  # merged into `analysis`
            how = "its overrides merged" if cfg.agents.get(agent_id) else "no overrides: defaults"
            out(f"# agent {agent_id}: analysis with {how}")
        out(f"# read: {cfg.source}" if cfg.source else "# no configuration file: defaults")
        out(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())


def list_formats() -> None:
    """List the transcript formats enrich reads, in the order it tries them."""
    from ..formats import formats

    for fmt in formats():
        out(f"{fmt.name:<10} {fmt.kind:<5} {fmt.description}")


def list_presets(
    as_json: Annotated[bool, typer.Option("--json", help="Print them as JSON.")] = False,
) -> None:
    """List the packaged field presets (switch them on with analysis.presets; a field of the
    same name in analysis.fields overrides one)."""
    import yaml

    from ..models.fields import PRESETS

    presets = [f.model_dump(by_alias=True, exclude_none=True) for f in PRESETS.values()]
    if as_json:
        out(json.dumps(presets, ensure_ascii=False, indent=2))
    else:
        text = yaml.safe_dump({"fields": presets}, sort_keys=False, allow_unicode=True, width=100)
        out(text.rstrip())


@templates_app.command("list")
def templates_list(
    config: ConfigOpt = None, agent_id: ProfileOpt = None, verbose: VerboseOpt = False
) -> None:
    """List the templates and the file each comes from (yours or the packaged default)."""
    with guard(verbose):
        from ..prompts import Prompts

        cfg = load_config(config).for_agent(agent_id)
        for name, path, overridden in Prompts(cfg.analysis.prompts_dir).listing():
            out(f"{name:<10} {'yours  ' if overridden else 'default'} {path}")


@templates_app.command("show")
def templates_show(
    name: Annotated[str, typer.Argument(help="Template name, e.g. system.j2.")],
    config: ConfigOpt = None,
    agent_id: ProfileOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Print a template's source (copy it into your prompts folder to override it)."""
    with guard(verbose):
        from ..prompts import Prompts

        cfg = load_config(config).for_agent(agent_id)
        out(Prompts(cfg.analysis.prompts_dir).source(name).rstrip())


@templates_app.command("copy")
def templates_copy(
    folder: Annotated[
        Path, typer.Argument(help="The folder to copy them into (made if it does not exist).")
    ],
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite templates already in the folder.")
    ] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Copy the packaged templates into a folder, to edit them there; then point
    analysis.prompts_dir (or ENRICH_PROMPTS_DIR) at it. Nothing is overwritten without --force."""
    with guard(verbose):
        from ..errors import ConfigError
        from ..prompts import TEMPLATE_NAMES, packaged_prompts_dir

        source = packaged_prompts_dir()
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{folder}: not a folder")
        there = [name for name in TEMPLATE_NAMES if (folder / name).exists()]
        if there and not force:
            raise ConfigError(
                f"{folder}: already has {', '.join(there)}: nothing copied "
                "(--force overwrites them)"
            )
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for name in TEMPLATE_NAMES:
                (folder / name).write_text(
                    (source / name).read_text(encoding="utf-8"), encoding="utf-8"
                )
        except OSError as exc:
            raise ConfigError(
                f"{folder}: cannot copy the templates: {exc.strerror or exc}"
            ) from None
        for name in TEMPLATE_NAMES:
            say(str(folder / name))
        err(
            f"enrich: copied {len(TEMPLATE_NAMES)} templates into {folder}; to use them, set "
            f"analysis.prompts_dir: {folder} (or ENRICH_PROMPTS_DIR={folder}). A template you "
            "delete falls back to the packaged one."
        )
