"""ChatDash integration that loses nothing: fetch, resolve, the ledger, replay, faults, kill -9."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import defaultdict

import pytest
from conftest import CHATDASH_KEY, OPENAI_KEY, TRANSCRIPT, make_config, put_schema
from typer.testing import CliRunner

from enrich import Enricher
from enrich.cli import app
from enrich.errors import ChatDashError, ConfigError
from enrich.ledger import (
    Fingerprint,
    Ledger,
    LedgerBackend,
    SQLiteLedger,
    State,
    open_ledger,
)
from enrich.models.usage import Usage
from enrich.testing import FakeChatDash, FakeLLM, Fault

runner = CliRunner()

MESSAGES = [
    {"sender": "bot", "type": "text", "content": {"text": "Hi! How can I help?"}},
    {"sender": "user", "type": "text", "content": {"text": "I was charged twice for order 4417."}},
    {"sender": "bot", "type": "text", "content": {"text": "Refunded the duplicate charge."}},
]


def seed(fake: FakeChatDash, agent: str, conv: str, **fields) -> None:
    fake.conversations[(agent, conv)] = dict(fields)
    fake.messages[(agent, conv)] = MESSAGES


def ledger_config(fake_llm, fake_chatdash, tmp_path, **sections):
    return make_config(
        fake_llm, fake_chatdash, ledger={"path": str(tmp_path / "l.sqlite3")}, **sections
    )


# -- fetch and resolve ---------------------------------------------------------------------------


def test_run_without_transcript_fetches_the_messages(env, fake_llm, fake_chatdash):
    seed(fake_chatdash, "agent-1", "conv-1")
    r = runner.invoke(app, ["run", "-a", "agent-1", "-C", "conv-1"])
    assert r.exit_code == 0, r.stderr
    gets = [q for q in fake_chatdash.requests if q[0] == "GET"]
    assert gets[0][1] == "/v1/public/agents/agent-1/conversations/conv-1/messages"
    assert "I was charged twice for order 4417." in fake_llm.requests[0]["messages"][1]["content"]
    assert fake_chatdash.puts[0][1].endswith("/agents/agent-1/conversations/conv-1")


def test_platform_id_is_resolved_to_chatdash_id_first(env, fake_llm, fake_chatdash):
    seed(fake_chatdash, "agent-1", "65f0c0ffee", platformId="call_abc")
    r = runner.invoke(app, ["run", "-a", "agent-1", "--platform-id", "call_abc", "--json"])
    assert r.exit_code == 0, r.stderr
    first = fake_chatdash.requests[0]
    assert first[0] == "GET" and first[1].endswith("/conversations/call_abc?isPlatformId=true")
    assert fake_chatdash.puts[0][1].endswith("/agents/agent-1/conversations/65f0c0ffee")
    assert json.loads(r.stdout)["conversation_id"] == "65f0c0ffee"


def test_unknown_conversation_fetch_is_a_404_in_words(env, fake_llm, fake_chatdash):
    r = runner.invoke(app, ["run", "-a", "agent-1", "-C", "nope"])
    assert r.exit_code == 2  # bad input: nothing was paid for
    assert "not found in ChatDash (HTTP 404)" in r.stderr and "nope" in r.stderr
    assert fake_llm.requests == []


def test_bad_key_on_fetch_names_the_variable(env, fake_llm, fake_chatdash, monkeypatch):
    monkeypatch.setenv("CHATDASH_API_KEY", "CD.wrong0000000000000000000000000000")
    r = runner.invoke(app, ["run", "-a", "agent-1", "-C", "conv-1"])
    assert r.exit_code == 2 and "check CHATDASH_API_KEY" in r.stderr
    assert "CD.wrong" not in r.stderr


@pytest.mark.parametrize(
    "fault", [Fault(status=429, headers={"Retry-After": "0"}), Fault(status=500), Fault(reset=True)]
)
def test_reads_are_retried_too(fake_llm, fake_chatdash, tmp_path, fault):
    seed(fake_chatdash, "agent-1", "conv-1")
    fake_chatdash.fail(fault)
    with Enricher(make_config(fake_llm, fake_chatdash)) as e:
        assert e.fetch("agent-1", "conv-1").user_turns[0].text.startswith("I was charged")


def test_list_conversations_sends_the_range(fake_llm, fake_chatdash):
    seed(fake_chatdash, "agent-1", "c1")
    with Enricher(make_config(fake_llm, fake_chatdash)) as e:
        items = e.sync.run(
            e.chatdash.list_conversations(
                "agent-1", start="2026-11-01T00:00:00Z", end="2026-11-02T00:00:00Z"
            )
        )
    assert [i["_id"] for i in items] == ["c1"]
    path = fake_chatdash.requests[-1][1]
    assert "startDate=2026-11-01T00%3A00%3A00Z" in path and "endDate=" in path


# -- the ledger ----------------------------------------------------------------------------------


def test_enrichment_is_stored_before_the_write_and_replayed_after_a_failure(
    fake_llm, fake_chatdash, tmp_path
):
    fake_chatdash.fail(*[Fault(status=503) for _ in range(4)])
    config = ledger_config(fake_llm, fake_chatdash, tmp_path)
    with Enricher(config) as e:
        with pytest.raises(ChatDashError):
            e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
        entry = e.ledger.get("agent-1", "conv-1")
        assert entry.state == State.PENDING and entry.attempts == 1
        assert "503" in entry.last_error
        assert entry.body == fake_chatdash.puts[0][3]
        assert entry.usage.requests == 1 and entry.usage.prompt_tokens > 0

        report = e.replay()
        assert report.written == 1 and report.failed == []
        assert e.replay().written == 0  # twice is safe: nothing left
    assert len(fake_llm.requests) == 1  # replay never asks the LLM
    assert fake_chatdash.puts[-1][3] == entry.body
    assert Ledger(config.ledger.path).get("agent-1", "conv-1").state == State.WRITTEN


def test_refused_writes_are_failed_and_replayed_only_when_asked(fake_llm, fake_chatdash, tmp_path):
    fake_chatdash.fail(Fault(status=422))
    config = ledger_config(fake_llm, fake_chatdash, tmp_path)
    with Enricher(config) as e:
        with pytest.raises(ChatDashError):
            e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
        assert e.ledger.get("agent-1", "conv-1").state == State.FAILED
        assert e.replay().written == 0
        assert e.replay(include_failed=True).written == 1


def test_unchanged_conversation_is_not_paid_for_twice(fake_llm, fake_chatdash, tmp_path):
    config = ledger_config(fake_llm, fake_chatdash, tmp_path)
    with Enricher(config) as e:
        first = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
        again = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
        assert not first.reused and again.reused and again.already_written
        assert again.usage == Usage() and again.enrichment == first.enrichment
        assert len(fake_llm.requests) == 1 and len(fake_chatdash.puts) == 1

        forced = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT, force=True)
        assert not forced.reused and len(fake_llm.requests) == 2 and len(fake_chatdash.puts) == 2


@pytest.mark.parametrize(
    "change",
    ["transcript", "model", "taxonomy", "template", "criteria"],
)
def test_any_changed_input_is_enriched_afresh(fake_llm, fake_chatdash, tmp_path, change):
    config = ledger_config(fake_llm, fake_chatdash, tmp_path)
    with Enricher(config) as e:
        e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    transcript = TRANSCRIPT
    sections: dict = {}
    if change == "transcript":
        transcript = TRANSCRIPT + "User: One more thing.\n"
    elif change == "model":
        sections["llm"] = {"model": "gpt-4.1-mini"}
    elif change == "taxonomy":
        sections["analysis"] = {"taxonomy": [{"name": "Billing", "subtopics": ["Refund"]}]}
    elif change == "criteria":
        sections["analysis"] = {"success_criteria": ["The user got a refund."]}
    else:
        mine = tmp_path / "prompts"
        mine.mkdir()
        (mine / "reask.j2").write_text("Fix: {% for e in errors %}{{ e }} {% endfor %}")
        sections["analysis"] = {"prompts_dir": str(mine)}
    with Enricher(ledger_config(fake_llm, fake_chatdash, tmp_path, **sections)) as e:
        result = e.enrich_and_write("agent-1", "conv-1", transcript)
    assert not result.reused
    assert len(fake_llm.requests) == 2


def test_dry_run_with_ids_keeps_the_result_for_the_real_run(env, fake_llm, fake_chatdash):
    args = ["run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"])]
    r = runner.invoke(app, [*args, "--dry-run"])
    assert r.exit_code == 0 and fake_chatdash.puts == []
    assert Ledger(env["ledger"]).get("agent-1", "conv-1").state == State.ENRICHED
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.stderr
    assert "reused the ledger's enrichment" in r.stderr
    assert len(fake_llm.requests) == 1 and len(fake_chatdash.puts) == 1


def test_cli_write_failure_then_replay_show_and_stats(env, fake_llm, fake_chatdash):
    fake_chatdash.fail(*[Fault(status=500) for _ in range(4)])
    r = runner.invoke(app, ["run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"])])
    assert r.exit_code == 4 and "`enrich replay` sends it again" in r.stderr

    shown = runner.invoke(app, ["show", "--conversation-id", "conv-1"])
    assert shown.exit_code == 0, shown.stderr
    assert "state: pending (attempts: 1)" in shown.stdout and "write_failed" in shown.stdout

    stats = json.loads(runner.invoke(app, ["ledger", "stats", "--json"]).stdout)
    assert [(s["state"], s["conversations"]) for s in stats["states"]] == [("pending", 1)]
    assert stats["states"][0]["cost"] > 0  # priced as gpt-4o-mini

    replayed = runner.invoke(app, ["replay"])
    assert replayed.exit_code == 0 and "written: 1, failed: 0" in replayed.stdout
    table = runner.invoke(app, ["ledger", "stats"]).stdout
    assert "written" in table and "total" in table
    history = json.loads(runner.invoke(app, ["show", "-C", "conv-1", "--json"]).stdout)["history"]
    assert [h["event"] for h in history] == ["enriched", "write_failed", "written"]


def test_show_unknown_conversation_exits_2(env):
    r = runner.invoke(app, ["show", "-C", "ghost"])
    assert r.exit_code == 2


# -- many writers at once ------------------------------------------------------------------------


def _writer(path: str, worker: int, count: int) -> None:
    ledger = Ledger(path)
    fp = Fingerprint(transcript_hash="t", model="m", prompt_hash="p", taxonomy_hash="x")
    for i in range(count):
        conv = f"w{worker}-c{i}"
        ledger.record(
            "agent",
            conv,
            fp,
            enrichment={"n": i},
            body={"topic": conv},
            usage=Usage(prompt_tokens=10, requests=1),
            cost=0.001,
            state=State.PENDING,
        )
        ledger.written("agent", conv, {"topic": conv})


def test_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "shared.sqlite3")
    workers, each = 6, 60
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, each)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ledger = Ledger(path)
    entries = ledger.entries()
    assert len(entries) == workers * each
    assert all(e.state == State.WRITTEN for e in entries)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 2 * workers * each


# -- faults: 200 conversations, 30% of PUTs failing ------------------------------------------------


def test_200_conversations_with_30_percent_failing_puts_lose_nothing(fake_llm, tmp_path):
    with FakeChatDash(api_key=CHATDASH_KEY, put_schema=put_schema(), fail_rate=0.3, seed=7) as cd:
        config = ledger_config(fake_llm, cd, tmp_path, chatdash={"max_attempts": 2})
        ids = [f"conv-{i:03d}" for i in range(200)]

        async def batch(e: Enricher) -> tuple[int, int]:
            limit = asyncio.Semaphore(16)
            ok = failed = 0

            async def one(conv: str) -> None:
                nonlocal ok, failed
                async with limit:
                    try:
                        await e.aenrich_and_write(
                            "agent-1", conv, TRANSCRIPT + f"User: ref {conv}\n"
                        )
                        ok += 1
                    except ChatDashError:
                        failed += 1

            await asyncio.gather(*(one(c) for c in ids))
            await e.aclose()
            return ok, failed

        with Enricher(config) as e:
            ok, failed = e.sync.run(batch(e))
        ledger = Ledger(config.ledger.path)
        states = defaultdict(int)
        for entry in ledger.entries():
            states[entry.state] += 1
        print(f"\nfirst pass: {ok} written, {failed} failed after retries; ledger: {dict(states)}")
        assert ok + failed == 200 and failed > 0
        assert states == {State.WRITTEN: ok, State.PENDING: failed}  # none lost
        assert len(fake_llm.requests) == 200

        cd.fail_rate = 0.0
        with Enricher(config) as e:
            report = e.replay()
        print(f"replay: {report.written} written, {len(report.failed)} failed")
        assert report.written == failed and not report.failed
        assert {e.state for e in ledger.entries()} == {State.WRITTEN}
        assert len(fake_llm.requests) == 200  # replay paid for nothing

        bodies = defaultdict(set)
        for _, path, _, body in cd.puts:
            bodies[path].add(json.dumps(body, sort_keys=True))
        assert len(bodies) == 200
        assert all(len(b) == 1 for b in bodies.values())  # each written only with its one body
        assert cd.violations == []


# -- kill -9 in the middle of a batch --------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import sys
    from enrich import Enricher
    from enrich.config import load_config

    config = load_config(None)
    with Enricher(config) as e:
        for i in range(int(sys.argv[1])):
            e.enrich_and_write("agent-1", f"conv-{i:02d}", f"Agent: Hello.\\nUser: Help {i}.")
            print(i, flush=True)
    """
)


def test_sigkill_mid_batch_loses_nothing_paid_for(tmp_path):
    script = tmp_path / "batch.py"
    script.write_text(SCRIPT)
    ledger_path = tmp_path / "ledger.sqlite3"
    with FakeLLM() as llm, FakeChatDash(api_key=CHATDASH_KEY, latency=0.15) as cd:
        env = {
            **os.environ,
            "OPENAI_API_KEY": OPENAI_KEY,
            "OPENAI_BASE_URL": llm.url,
            "CHATDASH_API_KEY": CHATDASH_KEY,
            "CHATDASH_BASE_URL": cd.url,
            "ENRICH_LEDGER": str(ledger_path),
        }
        env.pop("ENRICH_CONFIG", None)
        proc = subprocess.Popen(
            [sys.executable, str(script), "30"], env=env, stdout=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while len(cd.puts) < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # in the middle of a write
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL

        paid = len(llm.requests)
        stored = Ledger(ledger_path).entries()
        print(
            f"\nkilled after {paid} LLM answers and {len(cd.puts)} PUTs; ledger holds {len(stored)}"
        )
        assert 8 <= len(stored) < 30
        assert len(stored) >= paid - 1  # at most the one answer in flight at the kill
        assert {e.state for e in stored} <= {State.PENDING, State.WRITTEN}

        rerun = subprocess.run(
            [sys.executable, str(script), "30"], env=env, capture_output=True, timeout=120
        )
        assert rerun.returncode == 0, rerun.stderr
        assert len(llm.requests) - paid == 30 - len(stored)  # the stored ones were not paid again
        final = Ledger(ledger_path).entries()
        assert len(final) == 30 and {e.state for e in final} == {State.WRITTEN}


# -- the interface: one for every back end, async twins that never block the loop ----------------


def test_ledger_is_the_sqlite_back_end_behind_the_interface(tmp_path):
    ledger = open_ledger(tmp_path / "l.sqlite3")
    assert isinstance(ledger, SQLiteLedger) and isinstance(ledger, LedgerBackend)
    assert Ledger is SQLiteLedger
    assert ledger.location == str(tmp_path / "l.sqlite3")
    with pytest.raises(TypeError):
        LedgerBackend()  # abstract: a back end implements every operation
    with pytest.raises(ConfigError, match="only a SQLite file") as caught:
        open_ledger("postgresql://enrich:s3cret@db/enrich")
    assert "s3cret" not in str(caught.value)


FP = Fingerprint(transcript_hash="t", model="m", prompt_hash="p", taxonomy_hash="x")


def test_async_twins_from_a_running_loop(tmp_path):
    ledger = open_ledger(tmp_path / "l.sqlite3")
    usage = Usage(prompt_tokens=10, requests=1)

    async def main() -> None:
        assert await ledger.aget("a", "c") is None
        await ledger.arecord(
            "a",
            "c",
            FP,
            enrichment={"n": 1},
            body={"b": 1},
            usage=usage,
            cost=0.5,
            state=State.ENRICHED,
        )
        entry = await ledger.aget("a", "c")
        assert entry.state == State.ENRICHED and entry.fingerprint == FP
        await ledger.aqueue("a", "c", {"b": 2}, "reused")
        assert await ledger.aclaim("a", "c")
        assert not await ledger.aclaim("a", "c")  # leased
        await ledger.awrite_failed("a", "c", "HTTP 503", permanent=False)
        assert (await ledger.aentries(State.PENDING))[0].last_error == "HTTP 503"
        await ledger.awritten("a", "c", {"b": 2})
        assert [e.state for e in await ledger.afind("c")] == [State.WRITTEN]
        assert await ledger.abegin("a", "c", "key", 60)
        assert not await ledger.abegin("a", "c", "key", 60)
        await ledger.aend("a", "c")
        assert await ledger.abegin("a", "c", "key", 60)
        await ledger.anote("a", "c", "skipped", {"why": "test"})
        events = [h.event for h in await ledger.ahistory("a", "c")]
        assert events == ["enriched", "reused", "write_failed", "written", "skipped"]
        assert [s["state"] for s in await ledger.astats()] == ["written"]
        await ledger.arecord_batch_job("batch_1", {"0": ["a", "c"]})
        assert await ledger.aopen_batch_jobs() == {"batch_1": {"0": ["a", "c"]}}
        await ledger.aclose_batch_job("batch_1", "collected")
        assert await ledger.aopen_batch_jobs() == {}

    asyncio.run(main())
    assert ledger.get("a", "c").state == State.WRITTEN  # the same ledger, seen synchronously


def test_an_async_twin_waiting_for_a_lock_does_not_block_the_loop(tmp_path):
    path = tmp_path / "l.sqlite3"
    ledger = open_ledger(path)
    ledger.stats()  # created
    other = sqlite3.connect(path, isolation_level=None)  # another process's writer
    other.execute("BEGIN IMMEDIATE")

    async def main() -> tuple[int, int]:
        ticks = 0
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, other.execute, "COMMIT")
        record = asyncio.ensure_future(
            ledger.arecord(
                "a",
                "c",
                FP,
                enrichment={},
                body={},
                usage=Usage(),
                cost=None,
                state=State.PENDING,
            )
        )
        while not record.done():
            await asyncio.sleep(0.01)
            ticks += 1
        await record
        return ticks, len(await ledger.aentries())

    ticks, stored = asyncio.run(main())
    other.close()
    assert stored == 1
    assert ticks >= 20  # the loop kept running for the half second the lock was held


def test_an_uncontended_async_twin_runs_on_the_loop_and_a_contended_one_in_a_thread(
    tmp_path, monkeypatch
):
    """SQLite's twins take no thread hop when nothing has to wait (the common case, and the
    cheaper one), and move to a worker thread only when another writer holds the lock."""
    path = tmp_path / "l.sqlite3"
    ledger = open_ledger(path)
    hops: list[str] = []
    real = asyncio.to_thread

    async def counting(fn, *args, **kwargs):
        hops.append(fn.__name__)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counting)

    def record(conv: str):
        return ledger.arecord(
            "a", conv, FP, enrichment={}, body={}, usage=Usage(), cost=None, state=State.PENDING
        )

    async def main() -> None:
        await record("first")  # the first open (it may migrate) happens in a worker thread
        assert hops == ["record"]
        await record("c1")
        assert (await ledger.aget("a", "c1")).state == State.PENDING
        await ledger.awritten("a", "c1", {})
        assert hops == ["record"]  # no hop while nobody else holds the lock
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(0.2, other.execute, "COMMIT")
        await record("c2")  # locked: rolled back at once, done in a thread once the lock is free
        other.close()
        assert hops == ["record", "record"]

    asyncio.run(main())
    assert {e.conversation_id: e.state for e in ledger.entries()} == {
        "first": State.PENDING,
        "c1": State.WRITTEN,
        "c2": State.PENDING,
    }


# -- the fingerprint's version --------------------------------------------------------------------


def test_the_fingerprint_version_is_stored_and_read(tmp_path):
    ledger = open_ledger(tmp_path / "l.sqlite3")
    later = FP.model_copy(update={"version": 2})
    for conv, fp in (("v1", FP), ("v2", later)):
        ledger.record(
            "a", conv, fp, enrichment={}, body={}, usage=Usage(), cost=None, state=State.PENDING
        )
    assert ledger.get("a", "v1").version == 1 and ledger.get("a", "v1").fingerprint == FP
    assert ledger.get("a", "v2").version == 2 and ledger.get("a", "v2").fingerprint == later
    assert ledger.get("a", "v2").fingerprint != FP  # same hashes, computed another way
    ledger.record(
        "a", "v2", FP, enrichment={}, body={}, usage=Usage(), cost=None, state=State.PENDING
    )
    assert ledger.get("a", "v2").version == 1  # a fresh record replaces the version too


def test_an_entry_of_another_fingerprint_version_is_enriched_afresh(
    fake_llm, fake_chatdash, tmp_path
):
    config = ledger_config(fake_llm, fake_chatdash, tmp_path)
    with Enricher(config) as e:
        e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    conn = sqlite3.connect(config.ledger.path)
    with conn:
        conn.execute("UPDATE conversations SET fingerprint_version = 99")
    conn.close()
    with Enricher(config) as e:
        result = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
        assert not result.reused and len(fake_llm.requests) == 2
        assert e.ledger.get("agent-1", "conv-1").version == 1
