"""The ledger's commands: ``enrich replay``, ``enrich show`` and ``enrich ledger stats``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from ..errors import ChatDashError, InputError
from ._common import (
    AgentOpt,
    ConfigOpt,
    JsonOpt,
    VerboseOpt,
    cell,
    console,
    err,
    guard,
    load_config,
    open_ledger,
    out,
    say,
)


def _cost(value: float | None) -> float | None:
    """A cost as shown, to 1e-8 USD (the ledger keeps it as computed)."""
    from ..resultfiles import round_cost

    return round_cost(value)


ledger_app = typer.Typer(help="The ledger of enriched conversations.", no_args_is_help=True)


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
    with guard(verbose, as_json):
        from ..engine import Enricher

        enricher = Enricher(load_config(config))
        try:
            report = enricher.replay(include_failed=failed)
            webhooks = _requeue_webhooks(enricher.ledger, failed)
        finally:
            enricher.close()
        if as_json:
            out(json.dumps({"ok": not report.failed, **report.model_dump(), "webhooks": webhooks}))
        else:
            out(
                f"written: {report.written}, failed: {len(report.failed)}, "
                f"skipped (another process had them): {report.skipped}"
            )
        if report.imported:
            err(
                f"enrich: {report.imported} result(s) kept in the spill file were recorded in "
                "the ledger"
            )
        for line in report.failed:
            err(f"enrich: {line}")
        if report.refused_waiting:
            err(
                f"enrich: {report.refused_waiting} write(s) ChatDash refused wait in the ledger: "
                "fix the cause, then `enrich replay --failed`"
            )
        _say_webhooks(webhooks)
        if report.failed:
            raise ChatDashError(f"{len(report.failed)} write(s) failed again; still in the ledger")


# -- enrich serve's webhook queue (kept in the ledger) ------------------------------------------


def _requeue_webhooks(ledger: Any, failed: bool) -> dict[str, int]:
    """With ``--failed``, the webhooks ``enrich serve`` gave up go back in its queue; how many,
    and how many failed ones wait."""
    if ledger is None:
        return {"requeued": 0, "failed_waiting": 0}
    requeued = ledger.webhook_requeue() if failed else 0
    return {"requeued": requeued, "failed_waiting": ledger.webhook_counts()["failed"]}


def _say_webhooks(webhooks: dict[str, int]) -> None:
    if webhooks["requeued"]:
        err(
            f"enrich: {webhooks['requeued']} failed webhook(s) put back in the queue: "
            "`enrich serve` enriches them"
        )
    elif webhooks["failed_waiting"]:
        err(
            f"enrich: {webhooks['failed_waiting']} webhook(s) `enrich serve` gave up wait in the "
            "ledger: `enrich replay --failed` puts them back in its queue"
        )


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
    with guard(verbose, as_json):
        ledger = open_ledger(load_config(config))
        entries = ledger.find(conversation_id, agent_id)
        if not entries:
            raise InputError(
                f"conversation {conversation_id} is not in the ledger ({ledger.location})"
            )
        found = []
        for entry in entries:
            history = ledger.history(entry.agent_id, entry.conversation_id)
            item = {**entry.model_dump(mode="json"), "history": [h.model_dump() for h in history]}
            item["cost"] = _cost(item.get("cost"))
            found.append(item)
        if as_json:
            out(json.dumps(found if len(found) > 1 else found[0], ensure_ascii=False))
            return
        for item in found:
            say(f"conversation {item['conversation_id']} of agent {item['agent_id']}")
            say(f"  state: {item['state']} (attempts: {item['attempts']})")
            if item["last_error"]:
                say(f"  last error: {item['last_error']}")
            say(f"  model: {item['model']}")
            u = item["usage"]
            cost = f", ${item['cost']:.6f}" if item["cost"] is not None else ""
            say(
                f"  tokens: {u['prompt_tokens']} prompt + {u['completion_tokens']} completion "
                f"({u['cached_tokens']} cached) in {u['requests']} request(s){cost}"
            )
            say(f"  body: {json.dumps(item['body'], ensure_ascii=False)}")
            say("  history:")
            for h in item["history"]:
                detail = f" {json.dumps(h['detail'], ensure_ascii=False)}" if h["detail"] else ""
                say(f"    {h['at']}  {h['event']}{detail}")


@ledger_app.command("stats")
def ledger_stats(
    config: ConfigOpt = None, as_json: JsonOpt = False, verbose: VerboseOpt = False
) -> None:
    """Conversations by state, with tokens and cost."""
    with guard(verbose, as_json):
        ledger = open_ledger(load_config(config))
        rows = ledger.stats()
        webhooks = ledger.webhook_counts()
        if as_json:
            states = [{**r, "cost": _cost(r["cost"])} for r in rows]
            out(json.dumps({"ledger": ledger.location, "states": states, "webhooks": webhooks}))
            return
        from rich.table import Table

        table = Table(title=cell(f"ledger {ledger.location}"))
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
            table.add_row(cell(r["state"]), *[f"{v:,}" for v in values], cost)
            totals = [t + (v or 0) for t, v in zip(totals, [*values, r["cost"]], strict=True)]
        table.add_row("total", *[f"{v:,}" for v in totals[:5]], f"{totals[5]:.4f}", style="bold")
        console(width=120).print(table)
        if webhooks["deliveries"]:
            queue = ", ".join(f"{k} {v:,}" for k, v in webhooks.items() if k != "deliveries")
            say(f"webhook queue (enrich serve): {queue}; {webhooks['deliveries']:,} deliveries")
