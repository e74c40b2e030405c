"""A paid result the ledger cannot take is kept in its spill file, then recorded; a batch counts
what its failed conversations cost; a dry run never downgrades a written entry. Against the fake
servers, through the command line."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path

import pytest
from conftest import answer, make_config
from typer.testing import CliRunner

from enrich.cli import app
from enrich.ledger import Ledger, SQLiteLedger, State, open_ledger
from enrich.ledger.spill import import_spill, spill, spill_path
from enrich.models import Fingerprint, Usage
from enrich.models.results import BatchResult, BatchTotals
from enrich.testing import Fault, Reply, valid_answer

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


class _LockOnAnswer:
    """A responder that, as the LLM answers, has another connection take the ledger whole
    (``BEGIN IMMEDIATE``): the answer is paid for, and the ledger cannot record it."""

    def __init__(self, ledger_path) -> None:
        self.path = ledger_path
        self.holder: sqlite3.Connection | None = None
        self.lock = threading.Lock()

    def __call__(self, request):
        with self.lock:
            if self.holder is None:
                holder = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                holder.execute("BEGIN IMMEDIATE")  # another process writing, for long
                self.holder = holder
        return Reply.json(valid_answer(request))

    def release(self) -> None:
        with self.lock:
            if self.holder is not None:
                self.holder.execute("ROLLBACK")
                self.holder.close()
                self.holder = None


@pytest.fixture
def locked_on_answer(env, fake_llm, monkeypatch):
    Ledger(env["ledger"]).get("a", "c")  # created and migrated before the lock
    monkeypatch.setattr(SQLiteLedger, "busy_seconds", 0.3)
    lock = _LockOnAnswer(env["ledger"])
    fake_llm.responder = lock
    yield lock
    lock.release()


def _run_args(env, *extra: str) -> list[str]:
    return ["run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"]), *extra]


def test_run_keeps_a_result_the_ledger_cannot_take_and_the_next_run_writes_it(
    env, fake_llm, fake_chatdash, locked_on_answer
):
    r = run(*_run_args(env))
    assert r.exit_code == 8, r.stderr
    assert fake_llm.count == 1 and fake_chatdash.puts == []
    body = json.loads(r.stdout)  # the paid body, as a failed PUT prints it
    assert body["topic"]
    spilled = spill_path(Ledger(env["ledger"]))
    assert str(spilled) in r.stderr and "internal error" not in r.stderr
    (line,) = spilled.read_text().splitlines()
    kept = json.loads(line)
    assert (kept["agent_id"], kept["conversation_id"], kept["state"]) == (
        "agent-1",
        "conv-1",
        "pending",
    )
    assert kept["body"] == body and kept["usage"]["requests"] == 1
    assert kept["fingerprint"]["transcript_hash"] and kept["enrichment"]["enrichment"]

    locked_on_answer.release()
    again = run(*_run_args(env))
    assert again.exit_code == 0, again.stderr
    assert fake_llm.count == 1  # no second LLM call: the spilled result was recorded and reused
    (put,) = fake_chatdash.puts
    assert put[3] == body
    assert not spilled.exists()
    entry = Ledger(env["ledger"]).get("agent-1", "conv-1")
    assert entry.state == State.WRITTEN and entry.usage.requests == 1


def test_replay_records_the_spill_file_and_writes_it(
    env, fake_llm, fake_chatdash, locked_on_answer
):
    r = run(*_run_args(env, "--json"))
    assert r.exit_code == 8, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is False and out["result"]["update"]["topic"]  # --json carries it
    locked_on_answer.release()
    replay = run("replay", "--json")
    assert replay.exit_code == 0, replay.stderr
    report = json.loads(replay.stdout)
    assert report["imported"] == 1 and report["written"] == 1
    assert fake_llm.count == 1
    (put,) = fake_chatdash.puts
    assert put[3] == out["result"]["update"]
    assert not spill_path(Ledger(env["ledger"])).exists()


def test_a_dry_run_result_the_ledger_cannot_take_is_spilled_too(
    env, fake_llm, fake_chatdash, locked_on_answer
):
    r = run(*_run_args(env, "--dry-run"))
    assert r.exit_code == 8, r.stderr
    assert json.loads(r.stdout)["topic"]
    locked_on_answer.release()
    again = run(*_run_args(env, "--dry-run"))
    assert again.exit_code == 0, again.stderr
    assert fake_llm.count == 1
    assert Ledger(env["ledger"]).get("agent-1", "conv-1").state == State.ENRICHED


def test_two_importers_at_once_record_each_spilled_result_once(ledger_location):
    path = ledger_location
    ledger = open_ledger(path)
    fp = Fingerprint(transcript_hash="t", model="m", prompt_hash="p", taxonomy_hash="x")
    for i in range(40):
        spill(
            spill_path(ledger),
            "a",
            f"c{i}",
            fp,
            enrichment={"enrichment": {}},
            body={"summary": str(i)},
            usage=Usage(requests=1),
            cost=0.01,
            state=State.PENDING,
        )
    counts: list[int] = []
    barrier = threading.Barrier(4)

    def importer() -> None:
        mine = open_ledger(path)
        barrier.wait()
        counts.append(import_spill(mine))
        mine.close()

    threads = [threading.Thread(target=importer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 40
    assert not spill_path(ledger).exists()
    assert list(spill_path(ledger).parent.glob("*.importing")) == []
    entries = ledger.entries()
    assert len(entries) == 40 and all(e.state == State.PENDING for e in entries)
    for e in entries:
        assert [h.event for h in ledger.history("a", e.conversation_id)].count("imported") == 1


# -- what failed conversations cost -----------------------------------------------------------


def test_the_batch_summary_counts_what_failed_conversations_cost(
    env, fake_llm, fake_chatdash, monkeypatch
):
    monkeypatch.setenv("ENRICH_MODEL", "gpt-4o-mini")  # priced
    fake_chatdash.fail(Fault(status=422))  # the first PUT is refused: paid, not written
    rows = [
        {"agent_id": "agent-1", "conversation_id": f"c{i}", "transcript": "user: hi\nbot: hello"}
        for i in range(2)
    ]
    src = env["tmp"] / "in.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in rows))
    out = env["tmp"] / "out.jsonl"
    r = runner.invoke(app, ["batch", str(src), "-j", "1", "-o", str(out)])
    assert r.exit_code != 0
    results = [json.loads(x) for x in out.read_text().splitlines()]
    failed = [x for x in results if x["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["result"]["cost"] > 0  # the JSONL result carries it
    assert "of which failed conversations" in r.stderr
    row = next(x for x in r.stderr.splitlines() if "of which failed conversations" in x)
    assert "(1 LLM requests)" in row and "0.0000 " not in row


def test_totals_count_an_llm_errors_attempts_as_failed_cost():
    totals = BatchTotals()
    totals.add(
        BatchResult(
            status="failed",
            ok=False,
            stage="llm",
            usage=Usage(prompt_tokens=100, completion_tokens=10, requests=3),
            cost=0.002,
        )
    )
    assert (totals.failed, totals.requests, totals.prompt_tokens) == (1, 3, 100)
    assert totals.failed_requests == 3 and totals.failed_cost == pytest.approx(0.002)
    assert totals.cost == pytest.approx(0.002) and totals.uncosted == 0


# -- a dry run never downgrades a written entry ------------------------------------------------


def test_force_dry_run_keeps_a_written_entry_written(env, fake_llm, fake_chatdash):
    first = run(*_run_args(env))
    assert first.exit_code == 0, first.stderr
    ledger = Ledger(env["ledger"])
    written = ledger.get("agent-1", "conv-1")
    assert written.state == State.WRITTEN

    dry = run(*_run_args(env, "--force", "--dry-run"))
    assert dry.exit_code == 0, dry.stderr
    assert fake_llm.count == 2  # asked again, as --force says
    after = ledger.get("agent-1", "conv-1")
    assert after.state == State.WRITTEN and after.body == written.body
    assert after.written_at == written.written_at
    assert [h.event for h in ledger.history("agent-1", "conv-1")][-1] == "dry_run"

    src = env["tmp"] / "in.jsonl"
    item = {"agent_id": "agent-1", "conversation_id": "conv-1"}
    item["transcript"] = env["transcript"].read_text()
    src.write_text(json.dumps(item) + "\n")
    est = runner.invoke(app, ["batch", str(src), "--estimate", "-o", str(env["tmp"] / "e.jsonl")])
    assert est.exit_code == 0, est.stderr
    (row,) = [json.loads(x) for x in (env["tmp"] / "e.jsonl").read_text().splitlines()]
    assert row["requests"] == 0  # already done: nothing left to pay

    again = run(*_run_args(env))
    assert again.exit_code == 0, again.stderr
    assert fake_llm.count == 2 and len(fake_chatdash.puts) == 1  # not sent, not paid again


def test_a_dry_run_still_records_over_an_enriched_entry(tmp_path, fake_llm, fake_chatdash):
    from enrich import Enricher

    config = make_config(fake_llm, fake_chatdash, ledger={"path": str(tmp_path / "l.db")})
    fake_llm.add(Reply.json(answer(summary="first")), Reply.json(answer(summary="second")))
    with Enricher(config) as e:
        e.enrich("user: hi\nbot: hello", agent_id="a", conversation_id="c")
        e.enrich("user: hi\nbot: hello", agent_id="a", conversation_id="c", force=True)
        entry = e.ledger.get("a", "c")
    assert entry.state == State.ENRICHED
    assert entry.enrichment["enrichment"]["summary"] == "second"


def test_an_llm_error_carries_what_its_attempts_cost(tmp_path, fake_llm, fake_chatdash):
    from enrich import Enricher
    from enrich.errors import LLMError

    config = make_config(
        fake_llm, fake_chatdash, llm={"model": "gpt-4o-mini"}, ledger={"path": str(tmp_path / "l")}
    )
    fake_llm.add(*[Reply.text('{"summary": 1}') for _ in range(5)])
    with Enricher(config) as e, pytest.raises(LLMError) as caught:
        e.enrich("user: hi\nbot: hello", agent_id="a", conversation_id="c")
    exc = caught.value
    assert exc.usage.requests == exc.attempts >= 2
    assert exc.cost == pytest.approx(config.cost("gpt-4o-mini", exc.usage)) and exc.cost > 0


def test_a_database_ledgers_spill_file_is_a_local_file_named_without_the_password():
    from enrich.ledger import PostgresLedger

    one = PostgresLedger("postgresql://enrich:pw-one-secret@db.example:5432/enrich")
    two = PostgresLedger("postgres://enrich:pw-two-secret@db.example:5432/enrich?sslmode=require")
    other = PostgresLedger("postgresql://enrich@db.example:5432/another")
    assert spill_path(one) == spill_path(two) != spill_path(other)  # one database, one file
    path = spill_path(one)
    assert path.is_absolute() and path.name.endswith(".spill.jsonl")
    assert "secret" not in str(path) and "postgresql" not in str(path)
    assert path.parent == Path(os.environ["XDG_DATA_HOME"]) / "enrich"  # the user's data dir
