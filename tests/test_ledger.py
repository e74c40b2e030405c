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
from conftest import CHATDASH_KEY, OPENAI_KEY, TRANSCRIPT, make_config, put_schema, run_sql
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


def ledger_config(fake_llm, fake_chatdash, location, **sections):
    """A Config aimed at the fakes, with the ledger at ``location`` (a file or a URL)."""
    return make_config(fake_llm, fake_chatdash, ledger={"path": str(location)}, **sections)


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
    fake_llm, fake_chatdash, ledger_location
):
    fake_chatdash.fail(*[Fault(status=503) for _ in range(4)])
    config = ledger_config(fake_llm, fake_chatdash, ledger_location)
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
    assert open_ledger(config.ledger.path).get("agent-1", "conv-1").state == State.WRITTEN


def test_refused_writes_are_failed_and_replayed_only_when_asked(
    fake_llm, fake_chatdash, ledger_location
):
    fake_chatdash.fail(Fault(status=422))
    config = ledger_config(fake_llm, fake_chatdash, ledger_location)
    with Enricher(config) as e:
        with pytest.raises(ChatDashError):
            e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
        assert e.ledger.get("agent-1", "conv-1").state == State.FAILED
        assert e.replay().written == 0
        assert e.replay(include_failed=True).written == 1


def test_unchanged_conversation_is_not_paid_for_twice(fake_llm, fake_chatdash, ledger_location):
    config = ledger_config(fake_llm, fake_chatdash, ledger_location)
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
def test_any_changed_input_is_enriched_afresh(
    fake_llm, fake_chatdash, tmp_path, ledger_location, change
):
    config = ledger_config(fake_llm, fake_chatdash, ledger_location)
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
    with Enricher(ledger_config(fake_llm, fake_chatdash, ledger_location, **sections)) as e:
        result = e.enrich_and_write("agent-1", "conv-1", transcript)
    assert not result.reused
    assert len(fake_llm.requests) == 2


def test_dry_run_with_ids_keeps_the_result_for_the_real_run(
    env, fake_llm, fake_chatdash, ledger_location, monkeypatch
):
    monkeypatch.setenv("ENRICH_LEDGER", ledger_location)
    args = ["run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"])]
    r = runner.invoke(app, [*args, "--dry-run"])
    assert r.exit_code == 0 and fake_chatdash.puts == []
    assert open_ledger(ledger_location).get("agent-1", "conv-1").state == State.ENRICHED
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.stderr
    assert "reused the ledger's enrichment" in r.stderr
    assert len(fake_llm.requests) == 1 and len(fake_chatdash.puts) == 1


def test_cli_write_failure_then_replay_show_and_stats(
    env, fake_llm, fake_chatdash, ledger_location, monkeypatch
):
    monkeypatch.setenv("ENRICH_LEDGER", ledger_location)
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
    ledger = open_ledger(path)
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


def test_concurrent_writers_lose_nothing(ledger_location, ledger_backend):
    path = ledger_location
    workers, each = 6, 60
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, each)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ledger = open_ledger(path)
    entries = ledger.entries()
    assert len(entries) == workers * each
    assert all(e.state == State.WRITTEN for e in entries)
    assert run_sql(path, "SELECT COUNT(*) FROM events") == [(2 * workers * each,)]
    if ledger_backend == "sqlite":
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()


# -- faults: 200 conversations, 30% of PUTs failing ------------------------------------------------


def test_200_conversations_with_30_percent_failing_puts_lose_nothing(fake_llm, ledger_location):
    with FakeChatDash(api_key=CHATDASH_KEY, put_schema=put_schema(), fail_rate=0.3, seed=7) as cd:
        config = ledger_config(fake_llm, cd, ledger_location, chatdash={"max_attempts": 2})
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
        ledger = open_ledger(config.ledger.path)
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


def test_sigkill_mid_batch_loses_nothing_paid_for(tmp_path, ledger_location):
    script = tmp_path / "batch.py"
    script.write_text(SCRIPT)
    ledger_path = ledger_location
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
        stored = open_ledger(ledger_path).entries()
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
        final = open_ledger(ledger_path).entries()
        assert len(final) == 30 and {e.state for e in final} == {State.WRITTEN}


# -- the interface: one for every back end, async twins that never block the loop ----------------


def test_ledger_is_the_sqlite_back_end_behind_the_interface(tmp_path):
    ledger = open_ledger(tmp_path / "l.sqlite3")
    assert isinstance(ledger, SQLiteLedger) and isinstance(ledger, LedgerBackend)
    assert Ledger is SQLiteLedger
    assert ledger.location == str(tmp_path / "l.sqlite3")
    with pytest.raises(TypeError):
        LedgerBackend()  # abstract: a back end implements every operation
    with pytest.raises(ConfigError, match="a SQLite file's path or a postgresql:// URL") as caught:
        open_ledger("mysql://enrich:s3cret@db/enrich")  # a URL: used as one, or refused
    assert "s3cret" not in str(caught.value) and "mysql://" in str(caught.value)


FP = Fingerprint(transcript_hash="t", model="m", prompt_hash="p", taxonomy_hash="x")


def test_async_twins_from_a_running_loop(any_ledger):
    ledger = any_ledger
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


def test_the_fingerprint_version_is_stored_and_read(any_ledger):
    ledger = any_ledger
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
    fake_llm, fake_chatdash, ledger_location
):
    config = ledger_config(fake_llm, fake_chatdash, ledger_location)
    with Enricher(config) as e:
        e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    run_sql(ledger_location, "UPDATE conversations SET fingerprint_version = 99")
    with Enricher(config) as e:
        result = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
        assert not result.reused and len(fake_llm.requests) == 2
        assert e.ledger.get("agent-1", "conv-1").version == 1


# -- the semantics every back end keeps (each test runs on SQLite and on PostgreSQL) -------------


def _record(ledger: LedgerBackend, conv: str, state: State, body: dict | None = None, **kw):
    ledger.record(
        "a",
        conv,
        kw.pop("fingerprint", FP),
        enrichment=kw.pop("enrichment", {"n": 1}),
        body={"topic": conv} if body is None else body,
        usage=kw.pop("usage", Usage(prompt_tokens=10, completion_tokens=2, requests=1)),
        cost=kw.pop("cost", 0.25),
        state=state,
    )


def _events(ledger: LedgerBackend, conv: str) -> list[str]:
    return [h.event for h in ledger.history("a", conv)]


def _dead_holder() -> str:
    from enrich.ledger.holder import this_holder

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host, _, start = this_holder().split("|")
    return f"{host}|{dead.pid}|{start}"


def test_a_dry_run_never_replaces_an_entry_written_or_to_be_written(any_ledger):
    ledger = any_ledger
    for held in (State.PENDING, State.WRITTEN, State.FAILED):
        conv = f"held-{held.value}"
        _record(ledger, conv, held, body={"topic": "kept"})
        _record(ledger, conv, State.ENRICHED, body={"topic": "dry"}, cost=0.5)
        entry = ledger.get("a", conv)
        assert entry.state == held and entry.body == {"topic": "kept"}
        assert _events(ledger, conv) == ["enriched", "dry_run"]
        detail = ledger.history("a", conv)[-1].detail
        assert detail["cost"] == 0.5 and detail["why"].startswith("not recorded")
    _record(ledger, "dry", State.ENRICHED, body={"topic": "first"})
    _record(ledger, "dry", State.ENRICHED, body={"topic": "second"})
    assert ledger.get("a", "dry").body == {"topic": "second"}  # a dry run replaces a dry run
    _record(ledger, "dry", State.PENDING, body={"topic": "real"})
    entry = ledger.get("a", "dry")
    assert entry.state == State.PENDING and entry.attempts == 0 and entry.written_at is None


def test_a_fresh_record_resets_the_attempts_and_the_error(any_ledger):
    ledger = any_ledger
    _record(ledger, "c", State.PENDING)
    assert ledger.claim("a", "c")
    ledger.write_failed("a", "c", "HTTP 422: bad\x00body", permanent=True)
    failed = ledger.get("a", "c")
    assert failed.state == State.FAILED and failed.attempts == 1
    assert failed.last_error.startswith("HTTP 422: bad")
    assert ledger.claim("a", "c")  # failed: claimable (replay --failed), the lease released
    _record(ledger, "c", State.PENDING, usage=Usage(prompt_tokens=5, requests=1), cost=None)
    fresh = ledger.get("a", "c")
    assert (fresh.state, fresh.attempts, fresh.last_error) == (State.PENDING, 0, None)
    assert fresh.usage == Usage(prompt_tokens=5, requests=1) and fresh.cost is None
    assert fresh.created_at == failed.created_at and fresh.updated_at >= failed.updated_at
    assert ledger.claim("a", "c")  # a fresh record releases the lease too


def test_skipped_entries_keep_their_written_at_and_never_replace_a_paid_one(any_ledger):
    ledger = any_ledger
    ledger.skip("a", "s", FP, reason="no answer", body={"noAnswer": True})
    entry = ledger.get("a", "s")
    assert entry.state == State.SKIPPED and entry.enrichment == {"skipped": "no answer"}
    assert entry.cost == 0.0 and entry.usage == Usage()
    assert ledger.claim("a", "s")
    ledger.write_failed("a", "s", "HTTP 503", permanent=False)
    assert ledger.get("a", "s").state == State.SKIPPED  # tried again by the next run
    assert ledger.claim("a", "s")
    ledger.written("a", "s", {"noAnswer": True})
    written_at = ledger.get("a", "s").written_at
    assert written_at and ledger.get("a", "s").state == State.SKIPPED
    assert not ledger.claim("a", "s")  # written: nothing to claim
    ledger.skip("a", "s", FP, reason="still no answer", body={"noAnswer": True})
    assert ledger.get("a", "s").written_at == written_at  # same body: still written
    ledger.skip("a", "s", FP, reason="voicemail", body={"noAnswer": True, "voicemail": True})
    assert ledger.get("a", "s").written_at is None and ledger.claim("a", "s")  # a new body
    ledger.skip("a", "nothing", FP, reason="no user turn", body={})
    assert not ledger.claim("a", "nothing")  # nothing to write
    _record(ledger, "paid", State.WRITTEN)
    ledger.skip("a", "paid", FP, reason="no answer", body={"noAnswer": True})
    paid = ledger.get("a", "paid")
    assert paid.state == State.WRITTEN and paid.body == {"topic": "paid"}
    assert _events(ledger, "paid") == ["enriched", "skipped"]  # only noted


def test_queue_and_written_apply_to_the_stored_body_only(any_ledger):
    ledger = any_ledger
    _record(ledger, "c", State.ENRICHED, body={"topic": "A"})
    ledger.queue("a", "c", {"topic": "A"}, "reused")
    assert ledger.get("a", "c").state == State.PENDING
    ledger.written("a", "c", {"topic": "older"})  # not the stored body: a newer one waits
    assert ledger.get("a", "c").state == State.PENDING
    ledger.written("a", "c", {"topic": "A"})
    entry = ledger.get("a", "c")
    assert entry.state == State.WRITTEN and entry.attempts == 1 and entry.written_at
    ledger.queue("a", "c", {"topic": "A"}, "reused")  # written with this very body: stays
    assert ledger.get("a", "c").state == State.WRITTEN
    ledger.queue("a", "c", {"topic": "B"}, "renarrowed")  # another body: to be written
    assert ledger.get("a", "c").state == State.PENDING and ledger.get("a", "c").body == {
        "topic": "B"
    }
    assert _events(ledger, "c") == [
        "enriched",
        "reused",
        "written",
        "written",
        "reused",
        "renarrowed",
    ]
    ledger.queue("a", "ghost", {}, "reused")  # no entry: nothing made, only noted
    assert ledger.get("a", "ghost") is None and _events(ledger, "ghost") == ["reused"]


def test_unicode_and_json_round_trip_exactly(any_ledger):
    ledger = any_ledger
    body = {"summary": "Größe 46 — 払い戻し 🥾", "nested": {"list": [1, 2.5, None, True]}}
    _record(ledger, "ü-1", State.PENDING, body=body, enrichment={"e": "\u0000 and \\"})
    entry = ledger.get("a", "ü-1")
    assert entry.body == body and entry.enrichment == {"e": "\u0000 and \\"}
    assert ledger.claim("a", "ü-1")
    ledger.written("a", "ü-1", dict(body))  # the same body, compared as the same JSON text
    assert ledger.get("a", "ü-1").state == State.WRITTEN
    assert [e.conversation_id for e in ledger.find("ü-1")] == ["ü-1"]
    assert ledger.find("ü-1", agent_id="other") == []


def test_a_claim_runs_out_or_dies_with_its_holder(ledger_location):
    ledger = open_ledger(ledger_location, lease_seconds=0.3)
    _record(ledger, "c", State.PENDING)
    assert ledger.claim("a", "c") and not ledger.claim("a", "c")
    time.sleep(0.4)
    assert ledger.claim("a", "c")  # ran out
    patient = open_ledger(ledger_location)
    _record(patient, "d", State.PENDING)
    assert patient.claim("a", "d") and not patient.claim("a", "d")
    run_sql(ledger_location, "UPDATE conversations SET claimed_by = ?", (_dead_holder(),))
    assert patient.claim("a", "d")  # its holder is gone: free at once
    run_sql(ledger_location, "UPDATE conversations SET claimed_by = 'elsewhere|1|1'")
    assert not patient.claim("a", "d")  # another host's: held until it runs out
    patient.written("a", "d", {"topic": "d"})
    assert run_sql(
        ledger_location, "SELECT claimed_until, claimed_by FROM conversations WHERE "
        "conversation_id = 'd'"
    ) == [(None, None)]  # fmt: skip


def test_begin_renew_and_end(any_ledger, ledger_location):
    ledger = any_ledger
    assert ledger.begin("a", "c", "fp1", 60)
    assert not ledger.begin("a", "c", "fp1", 60)  # held for this fingerprint
    assert ledger.renew("a", "c", 60)
    assert ledger.begin("a", "c", "fp2", 60)  # another question: not waited for
    run_sql(ledger_location, "UPDATE inflight SET holder = 'elsewhere|1|1'")
    assert not ledger.renew("a", "c", 60)  # no longer this process's
    assert not ledger.begin("a", "c", "fp2", 60)
    ledger.end("a", "c")
    assert ledger.begin("a", "c", "fp2", 0.2)
    time.sleep(0.3)
    assert ledger.begin("a", "c", "fp2", 60)  # ran out
    assert run_sql(ledger_location, "SELECT COUNT(*) FROM inflight") == [(1,)]
    ledger.end("a", "c")
    assert run_sql(ledger_location, "SELECT COUNT(*) FROM inflight") == [(0,)]


def test_pace_reserves_slots_pauses_and_slows(any_ledger, ledger_location):
    ledger = any_ledger
    ledger.stats()  # opened: the timings below are the operations' own

    def timed(name: str, **intervals: float) -> tuple[float, float]:
        """The wait ``pace`` gives, and how long the call took (a bound on the clock's move)."""
        args = {"request_interval": 0.0, "token_interval": 0.0, "burst": 0.0, **intervals}
        start = time.monotonic()
        wait = ledger.pace(name, **args)  # type: ignore[arg-type]
        return wait, time.monotonic() - start

    start = time.monotonic()
    first, _ = timed("m", request_interval=1.0)
    second, _ = timed("m", request_interval=1.0)
    took = time.monotonic() - start
    assert first == 0.0 and 1.0 - took <= second <= 1.0
    assert timed("other", request_interval=1.0)[0] == 0.0  # a limit of its own
    assert timed("m", request_interval=1.0, burst=5.0)[0] == 0.0  # within the burst: at once
    start = time.monotonic()
    assert ledger.pace_penalize("m", 3.0) == 3.0
    assert run_sql(ledger_location, "SELECT factor FROM rate_limits WHERE name = 'm'") == [
        (pytest.approx(0.8),)
    ]
    paused, _ = timed("m")
    assert 3.0 - (time.monotonic() - start) <= paused <= 3.0
    ledger.pace_penalize("m", 1.0)  # an earlier pause is never shortened
    assert timed("m")[0] > 2.0
    ledger.pace_settle("m", -0.5)
    (factor,) = run_sql(ledger_location, "SELECT factor FROM rate_limits WHERE name = 'm'")[0]
    assert factor == pytest.approx(0.8 * 0.8 + 0.0025)
    for _ in range(150):
        ledger.pace_settle("m", 0.0)
    assert run_sql(ledger_location, "SELECT factor FROM rate_limits WHERE name = 'm'") == [(1.0,)]
    for _ in range(10):
        ledger.pace_penalize("slow", 0.0)
    assert run_sql(ledger_location, "SELECT factor FROM rate_limits WHERE name = 'slow'") == [
        (0.25,)
    ]  # at least a quarter of the speed
    start = time.monotonic()
    assert timed("t", token_interval=2.0)[0] == 0.0
    tokens, _ = timed("t", token_interval=0.001)  # the token schedule: 2 s later
    assert 2.0 - (time.monotonic() - start) <= tokens <= 2.0
    ledger.pace_settle("t", -1.5)  # it used fewer tokens than estimated
    assert timed("t", token_interval=0.001)[0] <= 0.5 + 0.001


def test_stats_and_entries_have_one_shape(any_ledger):
    ledger = any_ledger
    _record(ledger, "p1", State.PENDING, cost=0.25)
    time.sleep(0.002)  # entries are ordered by when they were last updated (to the millisecond)
    _record(ledger, "p2", State.PENDING, cost=None)
    time.sleep(0.002)
    _record(ledger, "w1", State.WRITTEN, cost=0.5)
    time.sleep(0.002)
    ledger.skip("a", "s1", FP, reason="no answer", body={})
    assert ledger.stats() == [
        {
            "state": "pending",
            "conversations": 2,
            "prompt_tokens": 20,
            "completion_tokens": 4,
            "cached_tokens": 0,
            "requests": 2,
            "cost": 0.25,
            "costed": 1,
        },
        {
            "state": "skipped",
            "conversations": 1,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cached_tokens": 0,
            "requests": 0,
            "cost": 0.0,
            "costed": 1,
        },
        {
            "state": "written",
            "conversations": 1,
            "prompt_tokens": 10,
            "completion_tokens": 2,
            "cached_tokens": 0,
            "requests": 1,
            "cost": 0.5,
            "costed": 1,
        },
    ]
    assert [e.conversation_id for e in ledger.entries()] == ["p1", "p2", "w1", "s1"]
    assert [e.conversation_id for e in ledger.entries(State.PENDING)] == ["p1", "p2"]
    assert all(isinstance(e.usage.prompt_tokens, int) for e in ledger.entries())


def test_the_webhook_queue(any_ledger, ledger_location):
    from enrich.ledger import WebhookState

    ledger = any_ledger
    assert ledger.webhook_take(30) is None
    assert ledger.webhook_enqueue("retell", "call-1", "agent-1", b'{"x": 1}', "2026-01-01T00:00")
    assert not ledger.webhook_enqueue("retell", "call-1", "agent-1", b"again", "2026-01-01T00:01")
    assert ledger.webhook_enqueue("vapi", "call-2", "agent-1", b"\x00\xff", "2026-01-01T00:02")
    assert ledger.webhook_counts() == {"queued": 2, "done": 0, "failed": 0, "deliveries": 3}
    first = ledger.webhook_take(30)
    assert (first.platform, first.call_id, first.payload, first.attempts) == (
        "retell",
        "call-1",
        b'{"x": 1}',
        1,
    )
    second = ledger.webhook_take(30)
    assert second.call_id == "call-2" and second.payload == b"\x00\xff"
    assert ledger.webhook_take(30) is None  # both leased
    assert ledger.webhook_renew("retell", "call-1", 30)
    ledger.webhook_retry("retell", "call-1", 0.2, "not in ChatDash yet")
    assert ledger.webhook_take(30) is None  # not due yet
    time.sleep(0.3)
    again = ledger.webhook_take(30)
    assert again.call_id == "call-1" and again.attempts == 2
    assert again.last_error == "not in ChatDash yet"
    ledger.webhook_done("retell", "call-1", "conv-1", "written")
    ledger.webhook_fail("vapi", "call-2", "gave up")
    ledger.webhook_fail("retell", "call-1", "late")  # done already: a late answer changes nothing
    assert not ledger.webhook_renew("retell", "call-1", 30)
    done = ledger.webhook_items(WebhookState.DONE)
    assert [(i.call_id, i.conversation_id, i.last_error) for i in done] == [
        ("call-1", "conv-1", "written")
    ]
    assert [i.call_id for i in ledger.webhook_items()] == ["call-1", "call-2"]
    assert ledger.webhook_requeue(platform="retell") == 0
    assert ledger.webhook_requeue() == 1
    requeued = ledger.webhook_take(30)
    assert requeued.call_id == "call-2" and requeued.attempts == 1
    run_sql(ledger_location, "UPDATE webhooks SET leased_by = ?", (_dead_holder(),))
    assert ledger.webhook_take(30).call_id == "call-2"  # its holder is gone: taken at once
    run_sql(ledger_location, "UPDATE webhooks SET leased_by = 'elsewhere|1|1'")
    assert ledger.webhook_take(30) is None
    assert ledger.webhook_counts() == {"queued": 1, "done": 1, "failed": 0, "deliveries": 3}
