"""Trying a few first and capping the spend: --limit, --sample/--seed and --max-cost on batch."""

from __future__ import annotations

import json

from conftest import TRANSCRIPT
from typer.testing import CliRunner

from enrich.cli import app

runner = CliRunner()


def write_items(path, n: int) -> str:
    rows = [
        {"agent_id": "agent-1", "conversation_id": f"c{i:03d}", "transcript": TRANSCRIPT}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def conversations(path) -> list[str]:
    return sorted(json.loads(x)["conversation_id"] for x in path.read_text().splitlines())


def test_limit_takes_the_first_conversations_only(env, fake_llm, fake_chatdash):
    path = write_items(env["tmp"] / "in.jsonl", 10)
    out = env["tmp"] / "out.jsonl"
    r = runner.invoke(app, ["batch", path, "--limit", "3", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    assert conversations(out) == ["c000", "c001", "c002"]
    assert len(fake_llm.requests) == 3 and len(fake_chatdash.puts) == 3


def test_sample_draws_the_same_conversations_for_the_same_seed(env, fake_llm, monkeypatch):
    monkeypatch.setenv("ENRICH_LEDGER", "off")  # each run pays: only the choice is compared
    path = write_items(env["tmp"] / "in.jsonl", 40)
    chosen = []
    for run, seed in enumerate(("7", "7", "8")):
        out = env["tmp"] / f"out{run}.jsonl"
        args = ["batch", path, "--sample", "5", "--seed", seed, "--dry-run", "-o", str(out)]
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.stderr
        chosen.append(conversations(out))
    assert len(chosen[0]) == 5 and len(set(chosen[0])) == 5
    assert chosen[0] == chosen[1] and chosen[0] != chosen[2]
    assert chosen[0] != ["c000", "c001", "c002", "c003", "c004"]  # drawn, not the first five
    assert len(fake_llm.requests) == 15


def test_max_cost_stops_before_the_cap_and_exits_7(env, fake_llm, fake_chatdash):
    # a price that makes each conversation cost a visible amount
    env["config"].write_text(
        env["config"].read_text() + "pricing:\n  gpt-4o-mini: {input: 1000, output: 1000}\n"
    )
    path = write_items(env["tmp"] / "in.jsonl", 30)
    out = env["tmp"] / "out.jsonl"
    first = runner.invoke(app, ["batch", path, "--limit", "1", "-o", str(out)])
    assert first.exit_code == 0, first.stderr
    one = json.loads(out.read_text())["result"]["cost"]
    assert one > 0
    cap = 4.5 * one
    r = runner.invoke(app, ["batch", path, "-j", "1", "--max-cost", str(cap), "-o", str(out)])
    assert r.exit_code == 7, r.stderr
    assert "--max-cost" in r.stderr
    results = [json.loads(x) for x in out.read_text().splitlines()]
    paid = [x for x in results if x["result"] and not x["result"]["reused"]]
    spent = sum(x["result"]["cost"] for x in paid)
    assert spent <= cap  # never more than the cap
    assert 1 <= len(paid) < 29  # it stopped early, having done some work
    assert len(fake_llm.requests) == 1 + len(paid)


def test_what_a_failed_conversation_spent_is_in_its_result_and_the_totals(
    env, fake_llm, fake_chatdash
):
    """An LLM failure after paid attempts (invalid every time) counts in the batch's cost."""
    from enrich.testing import Reply

    path = write_items(env["tmp"] / "in.jsonl", 1)
    out = env["tmp"] / "out.jsonl"
    fake_llm.add(*[Reply.text("not json")] * 3)  # the answer and its two re-asks
    r = runner.invoke(app, ["batch", path, "-o", str(out)])
    assert r.exit_code == 5, r.stderr
    (failed,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert failed["status"] == "failed" and failed["stage"] == "llm"
    assert failed["usage"]["requests"] == 3 and failed["cost"] > 0
    assert "of which failed conversations" in r.stderr
