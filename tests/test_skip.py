"""Calls with nothing to analyse (no answer, voicemail, a caller who never spoke): skipped before
any LLM call, exit 0, ``skipped`` in batch results and the ledger, counted in summaries and the
report; with metadata written, a call that was not answered is written as ``noAnswer: true``."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from typing import Any

import pytest
from conftest import FIXTURES, TRANSCRIPT, make_config
from typer.testing import CliRunner

from enrich import Enricher
from enrich.cli import app
from enrich.ledger import State, open_ledger
from enrich.testing import FakeLLM, Fault

runner = CliRunner()


def run(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def load(name: str) -> Any:
    return json.loads((FIXTURES / "formats" / name).read_text())


def retell_not_connected() -> dict[str, Any]:
    """An outbound Retell call no one answered: ``not_connected``, no transcript at all."""
    value = load("retell-call-analyzed.json")
    call = value["call"]
    for key in ("transcript", "transcript_object", "transcript_with_tool_calls", "call_analysis"):
        del call[key]
    del call["recording_url"]
    call.update(
        event="call_ended",
        call_status="not_connected",
        disconnection_reason="dial_no_answer",
        direction="outbound",
        duration_ms=0,
    )
    return value


def elevenlabs_silent() -> dict[str, Any]:
    """An ElevenLabs call where the caller stayed silent after the agent's greeting."""
    value = load("elevenlabs-webhook.json")
    greeting = value["data"]["transcript"][0]
    assert greeting["role"] == "agent"
    value["data"]["transcript"] = [
        greeting,
        {"role": "user", "message": "...", "time_in_call_secs": 5},  # silence, transcribed
    ]
    return value


def elevenlabs_failed() -> dict[str, Any]:
    """ElevenLabs' webhook for an outbound call that never connected."""
    return {
        "type": "call_initiation_failure",
        "event_timestamp": 1727740900,
        "data": {
            "agent_id": "agent_01jabcdeffghjkmnpqrstv",
            "conversation_id": "conv_01jfailed000000000000000",
            "failure_reason": "no-answer",
            "metadata": {"type": "twilio", "body": {"CallStatus": "no-answer"}},
        },
    }


RETELL_WHY = (
    "the retell transcript has 0 user turns (analysis.min_user_turns is 1): nothing to analyse, "
    "no LLM call (the call was not answered: dial_no_answer)"
)
ELEVENLABS_WHY = (
    "the elevenlabs transcript has 0 user turns (analysis.min_user_turns is 1): nothing to "
    "analyse, no LLM call"
)


def write(env, name: str, value: Any) -> str:
    path = env["tmp"] / name
    path.write_text(json.dumps(value) if not isinstance(value, str) else value)
    return str(path)


def stderr_lines(r) -> list[str]:
    return r.stderr.strip().splitlines()


# -- enrich run ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "why"),
    [(retell_not_connected, RETELL_WHY), (elevenlabs_silent, ELEVENLABS_WHY)],
    ids=["retell-not-connected", "elevenlabs-silent"],
)
def test_run_skips_a_call_with_nothing_to_analyse(env, fake_llm, fake_chatdash, payload, why):
    path = write(env, "call.json", payload())
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", path)
    assert r.exit_code == 0, r.stderr
    assert stderr_lines(r) == [f"enrich: skipped: {why}; nothing written"]
    assert r.stdout == ""
    assert fake_llm.requests == [] and fake_chatdash.requests == []  # no LLM call, no PUT
    entry = open_ledger(env["ledger"]).get("agent-1", "conv-1")
    assert entry.state == State.SKIPPED and entry.cost == 0 and entry.usage.requests == 0
    assert entry.enrichment == {"skipped": why} and entry.body == {}
    history = open_ledger(env["ledger"]).history("agent-1", "conv-1")
    assert [(h.event, h.detail) for h in history] == [("skipped", {"why": why})]


def test_write_metadata_writes_no_answer_for_a_call_not_answered(env, fake_llm, fake_chatdash):
    path = write(env, "call.json", retell_not_connected())
    args = ("run", "-a", "agent-1", "-C", "conv-1", "-t", path, "--write-metadata")
    r = run(*args)
    assert r.exit_code == 0, r.stderr
    assert stderr_lines(r) == [
        f"enrich: skipped: {RETELL_WHY}; wrote noAnswer: true and the call's metadata"
    ]
    assert r.stdout == "" and fake_llm.requests == []
    ((method, url, _, body),) = fake_chatdash.puts
    assert method == "PUT" and url.endswith("/agents/agent-1/conversations/conv-1")
    assert body == {
        "noAnswer": True,
        "platformId": "call_9f3c2a7d81b64e0c9a1d",
        "phone": "+14155550123",
        "phoneSecondary": "+14155559876",
        "duration": 0.0,
        "endedReason": "dial_no_answer",
    }
    assert fake_chatdash.violations == []  # the contract's schema
    entry = open_ledger(env["ledger"]).get("agent-1", "conv-1")
    assert entry.state == State.SKIPPED and entry.body == body and entry.written_at

    again = run(*args)  # unchanged: nothing paid, nothing sent again
    assert again.exit_code == 0, again.stderr
    assert "already written with the same body, nothing sent" in again.stderr
    assert len(fake_chatdash.puts) == 1 and fake_llm.requests == []


def test_write_metadata_for_elevenlabs(env, fake_llm, fake_chatdash):
    path = write(env, "failed.json", elevenlabs_failed())
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", path, "--write-metadata")
    assert r.exit_code == 0, r.stderr
    assert "(the call was not answered: no-answer)" in r.stderr
    assert fake_chatdash.puts[-1][3] == {
        "noAnswer": True,
        "platformId": "conv_01jfailed000000000000000",
        "endedReason": "no-answer",
    }
    # the silent caller answered, as far as the payload says: its metadata, no noAnswer
    path = write(env, "silent.json", elevenlabs_silent())
    r = run("run", "-a", "agent-1", "-C", "conv-2", "-t", path, "--write-metadata")
    assert r.exit_code == 0, r.stderr
    assert stderr_lines(r) == [f"enrich: skipped: {ELEVENLABS_WHY}; wrote its metadata"]
    body = fake_chatdash.puts[-1][3]
    assert "noAnswer" not in body and body["platformId"] == "conv_01jxyz0123456789abcdefg"
    assert body["endedReason"] == "Call ended by remote party"
    assert len(fake_chatdash.puts) == 2 and fake_chatdash.violations == []
    assert fake_llm.requests == []


def test_dry_run_says_what_would_be_written(env, fake_llm, fake_chatdash):
    path = write(env, "call.json", retell_not_connected())
    r = run("run", "-t", path, "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""  # nothing would be written
    assert stderr_lines(r) == [f"enrich: skipped: {RETELL_WHY}; nothing to write"]
    r = run("run", "-t", path, "--dry-run", "--write-metadata")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["noAnswer"] is True  # the body that would be PUT
    assert "dry run: would write noAnswer: true and the call's metadata" in r.stderr
    assert fake_llm.requests == [] and fake_chatdash.requests == []


def test_json_carries_the_skip(env, fake_llm, fake_chatdash):
    path = write(env, "call.json", retell_not_connected())
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", path, "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is True and out["skipped"] == RETELL_WHY
    assert out["enrichment"] is None and out["update"] == {} and out["written"] is False
    assert out["usage"]["requests"] == 0 and out["cost"] == 0 and out["attempts"] == 0
    assert out["metadata"]["answered"] is False
    assert fake_llm.requests == [] and fake_chatdash.requests == []


def test_a_fetched_conversation_with_no_user_message_is_skipped(env, fake_llm, fake_chatdash):
    fake_chatdash.conversations[("agent-1", "conv-9")] = {}
    fake_chatdash.messages[("agent-1", "conv-9")] = [
        {"sender": "bot", "type": "text", "content": {"text": "Hi! Anyone there?"}},
    ]
    r = run("run", "-a", "agent-1", "-C", "conv-9")
    assert r.exit_code == 0, r.stderr
    assert "skipped: the chatdash transcript has 0 user turns" in r.stderr
    assert fake_llm.requests == [] and fake_chatdash.puts == []


def test_min_user_turns_2_skips_a_call_with_one_user_turn(env, fake_llm, fake_chatdash):
    env["config"].write_text(env["config"].read_text() + "analysis:\n  min_user_turns: 2\n")
    path = write(env, "short.txt", "Agent: Hello, Acme Shoes.\nUser: Wrong number, sorry.\n")
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", path)
    assert r.exit_code == 0, r.stderr
    assert stderr_lines(r) == [
        "enrich: skipped: the text transcript has 1 user turn (analysis.min_user_turns is 2): "
        "nothing to analyse, no LLM call; nothing written"
    ]
    assert fake_llm.requests == [] and fake_chatdash.requests == []
    r = run("run", "-a", "agent-1", "-C", "conv-2", "-t", str(env["transcript"]))  # 4 turns
    assert r.exit_code == 0, r.stderr
    assert len(fake_llm.requests) == 1 and len(fake_chatdash.puts) == 1


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "empty transcript"),
        (b"\x00\x01\x02binary", "binary data"),
        (b'{"call": {"call_id": "c1"}, "event": "call_started"}', "the call has no transcript"),
        (b'{"id": "x", "status": "ended"}', "JSON of an unknown shape"),
        (b'{"call_id": "c1", "transcript_object": [', "invalid JSON"),
    ],
    ids=["empty", "binary", "retell-without-transcript", "unknown-json", "truncated-json"],
)
def test_what_is_not_a_transcript_still_exits_2(env, fake_llm, fake_chatdash, content, words):
    path = env["tmp"] / "bad.json"
    path.write_bytes(content)
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", str(path), "--write-metadata")
    assert r.exit_code == 2 and words in r.stderr
    assert fake_llm.requests == [] and fake_chatdash.requests == []


def test_a_failed_no_answer_write_exits_4_and_the_next_run_sends_it(env, fake_llm, fake_chatdash):
    path = write(env, "call.json", retell_not_connected())
    args = ("run", "-a", "agent-1", "-C", "conv-1", "-t", path, "--write-metadata")
    fake_chatdash.fail(Fault(status=422))
    r = run(*args)
    assert r.exit_code == 4
    assert "writing its metadata failed (nothing was paid for)" in r.stderr
    assert fake_llm.requests == []
    entry = open_ledger(env["ledger"]).get("agent-1", "conv-1")
    assert entry.state == State.SKIPPED and entry.written_at is None and entry.last_error
    assert run("replay", "--failed").exit_code == 0  # not replay's: it stays skipped
    assert open_ledger(env["ledger"]).get("agent-1", "conv-1").state == State.SKIPPED
    r = run(*args)
    assert r.exit_code == 0, r.stderr
    assert fake_chatdash.puts[-1][3]["noAnswer"] is True
    assert open_ledger(env["ledger"]).get("agent-1", "conv-1").written_at
    assert fake_llm.requests == []


# -- the library ---------------------------------------------------------------------------------


def test_enrich_returns_a_skipped_result_and_estimate_costs_nothing(fake_llm, fake_chatdash):
    with Enricher(make_config(fake_llm, fake_chatdash)) as e:
        result = e.enrich("Agent: Hello?\nAgent: Goodbye.")
        assert result.skipped and result.enrichment is None and result.cost == 0
        est = e.estimate(retell_not_connected())
        assert (est.requests, est.cost, est.strategy) == (0, 0.0, "skipped")
        assert est.skipped == RETELL_WHY
        assert e.estimate(TRANSCRIPT).requests == 1
    assert fake_llm.requests == []


def test_a_skip_never_replaces_a_paid_enrichment(fake_llm, fake_chatdash, tmp_path):
    path = str(tmp_path / "l.db")
    with Enricher(make_config(fake_llm, fake_chatdash, ledger={"path": path})) as e:
        e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    stricter = make_config(
        fake_llm, fake_chatdash, ledger={"path": path}, analysis={"min_user_turns": 9}
    )
    with Enricher(stricter) as e:
        assert e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT).skipped
    entry = open_ledger(path).get("agent-1", "conv-1")
    assert entry.state == State.WRITTEN and entry.enrichment["enrichment"]["topic"]
    assert open_ledger(path).history("agent-1", "conv-1")[-1].event == "skipped"
    assert len(fake_llm.requests) == 1 and len(fake_chatdash.puts) == 1


def test_lowering_min_user_turns_analyses_a_conversation_the_ledger_skipped(
    fake_llm, fake_chatdash, tmp_path
):
    path = str(tmp_path / "l.db")
    agent_only = "Agent: Hello? This is Acme Shoes calling about your order."
    with Enricher(make_config(fake_llm, fake_chatdash, ledger={"path": path})) as e:
        assert e.enrich_and_write("agent-1", "conv-1", agent_only).skipped
    assert fake_llm.requests == []
    eager = make_config(
        fake_llm, fake_chatdash, ledger={"path": path}, analysis={"min_user_turns": 0}
    )
    with Enricher(eager) as e:
        result = e.enrich_and_write("agent-1", "conv-1", agent_only)
    assert result.skipped is None and result.enrichment is not None and result.written
    assert len(fake_llm.requests) == 1  # asked, not "reused" from the skipped entry
    assert open_ledger(path).get("agent-1", "conv-1").state == State.WRITTEN


# -- batches -------------------------------------------------------------------------------------


def mixed_items() -> list[dict[str, Any]]:
    return [
        {"agent_id": "agent-1", "conversation_id": "c-normal-1", "transcript": TRANSCRIPT},
        {
            "agent_id": "agent-1",
            "conversation_id": "c-retell",
            "transcript": retell_not_connected(),
        },
        {"agent_id": "agent-1", "conversation_id": "c-silent", "transcript": elevenlabs_silent()},
        {
            "agent_id": "agent-1",
            "conversation_id": "c-normal-2",
            "transcript": TRANSCRIPT + "User: one more thing\n",
        },
        {"agent_id": "agent-1", "conversation_id": "c-agent", "transcript": "Agent: Hello?"},
    ]


SKIPPED = {"c-retell", "c-silent", "c-agent"}


def summary(stderr: str) -> dict[str, str]:
    rows = {}
    for line in stderr.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def test_cli_batch_mixing_skipped_and_normal_calls(env, fake_llm, fake_chatdash):
    path = env["tmp"] / "in.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in mixed_items()))
    out = env["tmp"] / "out.jsonl"
    r = runner.invoke(app, ["batch", str(path), "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    results = {x["conversation_id"]: x for x in map(json.loads, out.read_text().splitlines())}
    for cid, x in results.items():
        assert x["ok"] is True
        assert x["status"] == ("skipped" if cid in SKIPPED else "written")
        assert bool(x["result"]["skipped"]) == (cid in SKIPPED)
    assert len(fake_llm.requests) == 2 and len(fake_chatdash.puts) == 2  # only the normal ones
    table = summary(r.stderr)
    assert table["written"] == "2" and table["skipped (nothing to analyse)"] == "3"
    assert table["skipped (already done)"] == "0" and table["conversations"] == "5"
    states = {e.conversation_id: e.state for e in open_ledger(env["ledger"]).entries()}
    assert states == {cid: State.SKIPPED if cid in SKIPPED else State.WRITTEN for cid in results}

    # again: the normal ones are already done, the others have still nothing to analyse
    csv_out = env["tmp"] / "again.csv"
    again = runner.invoke(app, ["batch", str(path), "-o", str(csv_out)])
    assert again.exit_code == 0, again.stderr
    table = summary(again.stderr)
    assert table["skipped (already done)"] == "2"
    assert table["skipped (nothing to analyse)"] == "3"
    assert len(fake_llm.requests) == 2 and len(fake_chatdash.puts) == 2  # nothing paid twice
    rows = {r["conversation_id"]: r for r in csv.DictReader(csv_out.open())}
    assert {r["status"] for r in rows.values()} == {"skipped"}
    assert rows["c-retell"]["skip_reason"] == RETELL_WHY and rows["c-normal-1"]["skip_reason"] == ""

    rep = json.loads(runner.invoke(app, ["report", str(out), "--json"]).stdout)
    assert (rep["conversations"], rep["enriched"], rep["skipped"]) == (5, 2, 3)
    ledger_rep = json.loads(runner.invoke(app, ["report", "--json"]).stdout)
    assert (ledger_rep["enriched"], ledger_rep["skipped"]) == (2, 3)
    text = runner.invoke(app, ["report", str(out)])
    assert "3 skipped (nothing to analyse)" in " ".join(text.stdout.split())
    stats = json.loads(runner.invoke(app, ["ledger", "stats", "--json"]).stdout)
    by_state = {s["state"]: s for s in stats["states"]}
    assert by_state["skipped"]["conversations"] == 3 and by_state["skipped"]["requests"] == 0


def test_cli_batch_estimate_counts_what_has_nothing_to_analyse(env, fake_llm, fake_chatdash):
    path = env["tmp"] / "in.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in mixed_items()))
    out = env["tmp"] / "estimate.jsonl"
    r = runner.invoke(app, ["batch", str(path), "--estimate", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    rows = {x["conversation_id"]: x for x in map(json.loads, out.read_text().splitlines())}
    for cid in SKIPPED:
        assert rows[cid]["strategy"] == "skipped" and rows[cid]["cost"] == 0
        assert rows[cid]["requests"] == 0 and rows[cid]["skipped"]
    assert rows["c-normal-1"]["requests"] == 1 and rows["c-normal-1"]["skipped"] is None
    table = summary(r.stdout)
    assert table["to enrich"] == "2" and table["nothing to analyse (free)"] == "3"
    assert table["already done (free)"] == "0"
    assert fake_llm.requests == []


def test_batch_api_sends_no_row_for_what_has_nothing_to_analyse(fake_chatdash, tmp_path):
    with FakeLLM(batch_seconds=0.1) as llm:
        config = make_config(
            llm, fake_chatdash, ledger={"path": str(tmp_path / "l.db")}, write={"metadata": True}
        )
        with Enricher(config) as e:
            results = list(e.enrich_many(mixed_items(), via="batch-api", poll_seconds=0.05))
            states = {x.conversation_id: x.state for x in e.ledger.entries()}
        (batch,) = llm.batches.values()
        upload = llm.files[batch["input_file_id"]]["content"].decode().splitlines()
    assert len(upload) == 2 and llm.count == 2
    by_id = {x.conversation_id: x for x in results}
    assert {cid for cid, x in by_id.items() if x.status == "skipped"} == SKIPPED
    assert all(x.ok for x in results)
    assert {cid for cid, x in by_id.items() if x.status == "written"} == {
        "c-normal-1",
        "c-normal-2",
    }
    assert states["c-retell"] == State.SKIPPED
    puts = {path.rsplit("/", 1)[1]: body for _, path, _, body in fake_chatdash.puts}
    assert puts["c-retell"]["noAnswer"] is True  # write.metadata: the no-answer body
    assert "noAnswer" not in puts["c-silent"]  # metadata only
    assert "c-agent" not in puts  # a text transcript has no metadata: nothing to write
    assert fake_chatdash.violations == []


# -- the ledger ----------------------------------------------------------------------------------


def test_a_0_1_ledger_is_migrated_and_keeps_skipped_conversations(env, fake_llm, fake_chatdash):
    shutil.copyfile(FIXTURES / "ledger" / "v0.1.sqlite3", env["ledger"])
    path = write(env, "call.json", retell_not_connected())
    r = run("run", "-a", "agent-1", "-C", "conv-none", "-t", path)
    assert r.exit_code == 0, r.stderr
    ledger = open_ledger(env["ledger"])
    assert ledger.get("agent-1", "conv-none").state == State.SKIPPED
    states = {e.conversation_id: e.state for e in ledger.entries()}
    assert states == {
        "conv-written": State.WRITTEN,
        "conv-pending": State.PENDING,
        "conv-failed": State.FAILED,
        "conv-none": State.SKIPPED,
    }
    shown = json.loads(run("show", "-C", "conv-none", "--json").stdout)
    assert shown["state"] == "skipped"
    assert shown["history"][-1]["event"] == "skipped"
    assert shown["history"][-1]["detail"] == {"why": RETELL_WHY}
    with sqlite3.connect(env["ledger"]) as conn:
        (sql,) = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'conversations'"
        ).fetchone()
    assert "'skipped'" in sql
