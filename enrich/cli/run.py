"""``enrich run``: one conversation, enriched and written to ChatDash (or only shown)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from ..errors import ChatDashError, InputError, LedgerError
from ._common import (
    AgentOpt,
    ConfigOpt,
    ConversationOpt,
    FormatOpt,
    JsonOpt,
    ModelOpt,
    ModeOpt,
    VerboseOpt,
    err,
    guard,
    load_config,
    log,
    out,
    read_transcript,
    say,
)


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
    with guard(verbose, as_json):
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
        cfg = load_config(config, model=model, mode=mode, write_metadata=write_metadata)
        from ..chatdash import conversation_path
        from ..engine import Enricher

        if agent_id is not None or conversation_id or platform_id:
            conversation_path(agent_id or "", conversation_id or platform_id or "")
        parsed = read_transcript(transcript, fmt, cfg) if transcript is not None else None
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
            if exc.result is not None and exc.result.skipped:
                err(
                    f"enrich: skipped: {exc.result.skipped}; writing its metadata failed "
                    "(nothing was paid for): run the same command again to retry"
                )
            elif exc.result is not None:
                if not as_json:
                    out(json.dumps(exc.result.update, ensure_ascii=False))
                    err("enrich: the enrichment was paid for: its body is on stdout")
                if enricher.ledger is not None:
                    _keep_hint(exc, enricher.ledger.location)
            raise
        except LedgerError as exc:
            paid = getattr(exc, "result", None)
            if paid is not None:
                if not as_json:
                    out(json.dumps(paid.update, ensure_ascii=False))
                    err("enrich: the enrichment was paid for: its body is on stdout")
                _spill_hint(exc, dry_run=dry_run)
            raise
        finally:
            enricher.close()
        _report(result, dry_run=dry_run, as_json=as_json)


def _keep_hint(exc: ChatDashError, ledger_path: Any) -> None:
    """Say where the paid-for write waits, and what sends it: a write ChatDash refused for
    good waits for ``replay --failed``, one that may pass later for a plain ``replay``."""
    how = (
        "once the cause is fixed, `enrich replay --failed` sends it"
        if exc.permanent
        else "`enrich replay` sends it again"
    )
    err(f"enrich: it is kept in the ledger ({ledger_path}); {how}")


def _spill_hint(exc: LedgerError, *, dry_run: bool) -> None:
    """Say where a paid result the ledger could not take was kept, and what records it."""
    spilled = getattr(exc, "spilled", None)
    if spilled is None:
        err("enrich: it could not be kept in a spill file either: keep the body printed here")
        return
    then = "" if dry_run else "; `enrich replay` then writes it to ChatDash"
    err(
        f"enrich: the ledger could not take it: it is kept in {spilled}, which the next run "
        f"and `enrich replay` record in the ledger (no LLM call){then}"
    )


def _report_skipped(result: Any, *, dry_run: bool, as_json: bool) -> None:
    """A conversation with nothing to analyse: one line on stderr says why, and what was (or
    would be) written; stdout carries ``--json``'s object, or with ``--dry-run`` the body that
    would be written (nothing, when nothing would be)."""
    from ..resultfiles import rounded_costs

    body = result.update
    what = "noAnswer: true and the call's metadata" if body.get("noAnswer") else "its metadata"
    if as_json:
        data = rounded_costs(result.model_dump(mode="json"))
        out(json.dumps({"ok": True, **data}, ensure_ascii=False))
    elif dry_run and body:
        out(json.dumps(body, ensure_ascii=False, indent=2))
    if dry_run:
        done = f"dry run: would write {what} (the body on stdout)" if body else "nothing to write"
        if body and as_json:
            done = f"dry run: would write {what} (update)"
    elif result.already_written:
        done = f"{what} already written with the same body, nothing sent"
    elif result.written:
        done = f"wrote {what}"
    else:
        done = "nothing written"
    err(f"enrich: skipped: {result.skipped}; {done}")


def _report(result: Any, *, dry_run: bool, as_json: bool) -> None:
    if result.skipped:
        _report_skipped(result, dry_run=dry_run, as_json=as_json)
        return
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
        from ..resultfiles import rounded_costs

        data = rounded_costs(result.model_dump(mode="json"))
        out(json.dumps({"ok": True, **data}, ensure_ascii=False))
    elif dry_run:
        out(json.dumps(result.update, ensure_ascii=False, indent=2))
    else:
        # the model's words: say() shows them without control sequences
        e = result.enrichment
        done = "already written, nothing sent" if result.already_written else "written"
        say(f"{done}: conversation {result.conversation_id} of agent {result.agent_id}")
        say(f"topic: {e.topic} / {e.subtopic}")
        verdict = e.evaluation.verdict or str(e.evaluation.is_success).lower()
        say(f"success: {verdict}  ({e.evaluation.reason})")
        for c in e.evaluation.criteria:
            say(f"  {c.name}: {c.verdict}  ({c.rationale})")
        say(f"summary: {e.summary}")
        say(f"misunderstood queries: {len(e.misunderstood_queries)}")
        for name, value in e.custom.items():
            say(f"{name}: {json.dumps(value, ensure_ascii=False)}")
    for name, why in result.withheld.items():
        err(f"enrich: {name} not written: {why}")
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
        err(
            f"enrich: dry run, nothing written; {result.attempts} LLM request(s), {tokens}{dropped}"
        )
    elif not as_json:
        err(f"enrich: {result.attempts} LLM request(s), {tokens}{dropped}")
