"""Analytics at scale: many conversations, rate limits, resume, backfill, reports, Batch API."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from conftest import CHATDASH_KEY, OPENAI_KEY, TRANSCRIPT, make_config, put_schema
from typer.testing import CliRunner

from enrich import Enricher
from enrich.cli import app
from enrich.ledger import Ledger, State
from enrich.llm.ratelimit import RateLimiter
from enrich.models.results import BatchItem
from enrich.testing import FakeChatDash, FakeLLM, Fault, Reply

runner = CliRunner()


def items(n: int, agent: str = "agent-1") -> list[dict]:
    return [
        {
            "agent_id": agent,
            "conversation_id": f"c{i:03d}",
            "transcript": TRANSCRIPT + f"User: ref {i}\n",
        }
        for i in range(n)
    ]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# -- the library ---------------------------------------------------------------------------------


def test_async_batch_yields_as_completed_within_the_concurrency_bound(fake_chatdash):
    with FakeLLM(latency=0.1) as llm:
        config = make_config(llm, fake_chatdash)

        async def main():
            async def source():  # an async iterable works too
                for row in items(24):
                    yield row

            out = []
            async with Enricher(config) as e:
                async for r in e.aenrich_many(source(), concurrency=6):
                    out.append(r)
            return out

        results = asyncio.run(main())
    assert len(results) == 24 and all(r.ok and r.status == "written" for r in results)
    assert {r.conversation_id for r in results} == {f"c{i:03d}" for i in range(24)}
    assert llm.max_in_flight <= 6
    assert len(fake_chatdash.puts) == 24


def test_one_failure_is_a_failed_result_not_an_exception(fake_llm, fake_chatdash):
    rows = items(5)
    rows[1]["transcript"] = ""  # bad input
    rows[3] = {"agent_id": "agent-1"}  # no conversation id
    fake_chatdash.fail(*[Fault(status=404)])  # the first PUT is refused
    with Enricher(make_config(fake_llm, fake_chatdash)) as e:
        results = list(e.enrich_many(rows, concurrency=1))
    by_id = {r.conversation_id: r for r in results if r.conversation_id}
    assert len(results) == 5
    assert by_id["c001"].stage == "input" and "empty transcript" in by_id["c001"].error
    assert [r.stage for r in results if r.conversation_id is None] == ["input"]
    assert by_id["c000"].stage == "chatdash" and by_id["c000"].result is not None  # kept
    assert by_id["c002"].ok and by_id["c004"].ok


def test_sync_batch_works_inside_a_running_event_loop(fake_llm, fake_chatdash):
    """As in a notebook: the caller's loop is running; the batch runs on enrich's own."""
    config = make_config(fake_llm, fake_chatdash)

    async def notebook_cell():
        with Enricher(config) as e:
            return list(e.enrich_many(items(8), concurrency=4, write=False))

    results = asyncio.run(notebook_cell())
    assert [r.status for r in results] == ["enriched"] * 8
    assert fake_chatdash.puts == []


def test_stop_finishes_what_is_in_flight_and_takes_nothing_new(fake_chatdash):
    with FakeLLM(latency=0.2) as llm:
        with Enricher(make_config(llm, fake_chatdash)) as e:
            run = e.enrich_many(items(40), concurrency=4)
            got = []
            for r in run:
                got.append(r)
                if len(got) == 1:
                    run.stop()
        assert 1 <= len(got) <= 8 and all(r.ok for r in got)
        assert llm.count == len(got)  # nothing started that did not finish


def test_enricher_pickles_and_works_in_another_process(fake_llm, fake_chatdash, tmp_path):
    config = make_config(fake_llm, fake_chatdash)
    e = Enricher(config)
    clone = pickle.loads(pickle.dumps(e))
    assert clone.config == config
    assert clone.enrich(TRANSCRIPT).enrichment.topic
    clone.close()
    e.close()
    script = tmp_path / "worker.py"
    script.write_text(
        "import pickle, sys\n"
        "e = pickle.loads(sys.stdin.buffer.read())\n"
        "print(e.enrich(open(sys.argv[1]).read()).enrichment.topic)\n"
    )
    call = tmp_path / "call.txt"
    call.write_text(TRANSCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(call)],
        input=pickle.dumps(Enricher(config)),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip()


# -- rate limiting -------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_limiter_spaces_requests_evenly_under_the_rpm(monkeypatch):
    clock = Clock()

    async def fake_sleep(seconds):
        clock.now += seconds

    monkeypatch.setattr("enrich.llm.ratelimit.asyncio.sleep", fake_sleep)
    limiter = RateLimiter(rpm=600, target=1.0, burst_seconds=0, clock=clock)

    async def go():
        starts = []
        for _ in range(50):
            await limiter.acquire()
            starts.append(clock.now)
        return starts

    starts = asyncio.run(go())
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert all(abs(g - 0.1) < 1e-9 for g in gaps)  # 600 a minute: one every 100 ms


def test_limiter_paces_tokens_and_settles_to_real_usage(monkeypatch):
    clock = Clock()

    async def fake_sleep(seconds):
        clock.now += seconds

    monkeypatch.setattr("enrich.llm.ratelimit.asyncio.sleep", fake_sleep)
    limiter = RateLimiter(tpm=60_000, target=1.0, burst_seconds=0, clock=clock)  # 1,000/s

    async def go():
        await limiter.acquire(2000)
        limiter.settle(2000, 500)  # it used less: the schedule gives the difference back
        await limiter.acquire(1000)
        return clock.now

    assert asyncio.run(go()) == pytest.approx(0.5)


def test_429_pauses_everyone_and_slows_down(monkeypatch):
    clock = Clock()

    async def fake_sleep(seconds):
        clock.now += seconds

    monkeypatch.setattr("enrich.llm.ratelimit.asyncio.sleep", fake_sleep)
    limiter = RateLimiter(rpm=600, target=1.0, burst_seconds=0, clock=clock)
    assert limiter.penalize(2.0) == 2.0
    asyncio.run(limiter.acquire())
    assert clock.now >= 2.0 and limiter.factor < 1.0


def test_rpm_flag_keeps_a_batch_under_the_providers_limit(fake_chatdash):
    """The provider allows 120 a minute: paced at --rpm 120, 30 conversations see no 429."""
    with FakeLLM(rpm_limit=120) as llm:
        config = make_config(llm, fake_chatdash, llm={"rpm": 120, "max_retries": 5})
        start = time.monotonic()
        with Enricher(config) as e:
            results = list(e.enrich_many(items(30), concurrency=16))
        elapsed = time.monotonic() - start
    assert all(r.ok for r in results)
    assert llm.rate_limited == 0
    assert elapsed >= 12  # 30 requests at 2 a second, less one second of burst


def test_without_pacing_a_429_is_honoured_not_multiplied(fake_chatdash):
    with FakeLLM() as llm:
        llm.add(Reply.failure(429, headers={"retry-after-ms": "300"}))
        config = make_config(llm, fake_chatdash, llm={"rpm": 6000, "max_retries": 3})
        with Enricher(config) as e:
            start = time.monotonic()
            results = list(e.enrich_many(items(4), concurrency=4))
            elapsed = time.monotonic() - start
        assert all(r.ok for r in results)
        assert llm.count == 5  # one retry, not a retry per layer
        assert elapsed >= 0.3
        assert e.llm.stats.rate_limited == 1 and e.llm.limiter.stats.penalties == 1


# -- the CLI: batch, resume, output, report ------------------------------------------------------


def test_cli_batch_writes_outputs_and_resumes_without_paying_twice(env, fake_llm, fake_chatdash):
    rows = items(12)
    rows.insert(5, "not an object")
    path = env["tmp"] / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    out = env["tmp"] / "out.csv"
    r = runner.invoke(app, ["batch", str(path), "-j", "4", "-o", str(out)])
    assert r.exit_code == 5, r.stderr  # some lines failed
    assert "line 6: expected a JSON object" in r.stderr and "line 14: invalid JSON" in r.stderr
    assert "batch summary" in r.stderr
    lines = out.read_text().splitlines()
    assert lines[0].startswith("agent_id,conversation_id,line,status")
    assert len(lines) == 1 + 14
    assert len(fake_llm.requests) == 12 and len(fake_chatdash.puts) == 12

    again = runner.invoke(app, ["batch", str(path), "-o", str(env["tmp"] / "again.jsonl")])
    assert again.exit_code == 5
    statuses = [
        json.loads(x)["status"] for x in (env["tmp"] / "again.jsonl").read_text().splitlines()
    ]
    assert statuses.count("skipped") == 12 and statuses.count("failed") == 2
    assert len(fake_llm.requests) == 12 and len(fake_chatdash.puts) == 12  # nothing twice

    rep = json.loads(runner.invoke(app, ["report", str(out), "--json"]).stdout)
    assert rep["enriched"] == 12 and rep["failed"] == 2
    assert rep["topics"] == [["Account", 12]] and rep["success_rate"] == 1.0
    assert rep["requests"] == 12 and rep["cost"] > 0
    ledger_rep = json.loads(runner.invoke(app, ["report", "--json"]).stdout)
    assert ledger_rep["enriched"] == 12


def test_cli_batch_dry_run_and_jsonl_on_stdout(env, fake_llm, fake_chatdash):
    path = write_jsonl(env["tmp"] / "in.jsonl", items(3))
    r = runner.invoke(app, ["batch", path, "--dry-run", "-o", "-"])
    assert r.exit_code == 0, r.stderr
    results = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["status"] for x in results] == ["enriched"] * 3
    assert fake_chatdash.puts == []
    assert {e.state for e in Ledger(env["ledger"]).entries()} == {State.ENRICHED}


def test_cli_batch_parquet_output(env, fake_llm, fake_chatdash):
    pa = pytest.importorskip("pyarrow.parquet")
    path = write_jsonl(env["tmp"] / "in.jsonl", items(3))
    out = env["tmp"] / "out.parquet"
    r = runner.invoke(app, ["batch", path, "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    table = pa.read_table(out)
    assert table.num_rows == 3 and table.column("topic").to_pylist() == ["Account"] * 3


def test_cli_batch_rejects_unknown_output_type(env):
    path = write_jsonl(env["tmp"] / "in.jsonl", items(1))
    r = runner.invoke(app, ["batch", path, "-o", str(env["tmp"] / "out.xlsx")])
    assert r.exit_code == 2 and ".jsonl, .csv or .parquet" in r.stderr


def test_ctrl_c_stops_cleanly_and_the_rerun_resumes(tmp_path):
    ledger = tmp_path / "ledger.sqlite3"
    with FakeLLM(latency=0.3) as llm, FakeChatDash(api_key=CHATDASH_KEY) as cd:
        env = {
            **os.environ,
            "OPENAI_API_KEY": OPENAI_KEY,
            "OPENAI_BASE_URL": llm.url,
            "CHATDASH_API_KEY": CHATDASH_KEY,
            "CHATDASH_BASE_URL": cd.url,
            "ENRICH_LEDGER": str(ledger),
        }
        env.pop("ENRICH_CONFIG", None)
        path = write_jsonl(tmp_path / "in.jsonl", items(60))
        proc = subprocess.Popen(
            [sys.executable, "-m", "enrich", "batch", path, "-j", "4"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while len(cd.puts) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "Run the same command again to resume" in err
        first = llm.count
        assert 6 <= first < 60
        assert len(Ledger(ledger).entries()) == first  # everything paid for is kept

        rerun = subprocess.run(
            [sys.executable, "-m", "enrich", "batch", path, "-j", "8"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert rerun.returncode == 0, rerun.stderr
        assert llm.count == 60  # the rest, and nothing twice
        assert {e.state for e in Ledger(ledger).entries()} == {State.WRITTEN}


# -- backfill ------------------------------------------------------------------------------------


def test_backfill_lists_the_range_in_windows_and_splits_full_pages(env, fake_llm, monkeypatch):
    start = datetime(2026, 11, 1, tzinfo=UTC)
    with FakeChatDash(api_key=CHATDASH_KEY, put_schema=put_schema(), page_size=25) as cd:
        monkeypatch.setenv("CHATDASH_BASE_URL", cd.url)
        for i in range(90):  # 30 a day over three days, plus some outside the range
            created = start + timedelta(hours=i * 0.8)
            cd.conversations[("agent-1", f"conv-{i:03d}")] = {"createdAt": created.isoformat()}
            cd.messages[("agent-1", f"conv-{i:03d}")] = [
                {"sender": "bot", "type": "text", "content": {"text": "Hello, how can I help?"}},
                {"sender": "user", "type": "text", "content": {"text": f"Refund for order {i}."}},
            ]
        r = runner.invoke(
            app,
            [
                "backfill",
                "-a",
                "agent-1",
                "--since",
                "2026-11-01",
                "--until",
                "2026-11-03T00:00Z",
                "-j",
                "8",
                "--split-at",
                "25",
                "-o",
                str(env["tmp"] / "bf.jsonl"),
            ],
        )
        assert r.exit_code == 0, r.stderr
        written = {p.rsplit("/", 1)[1] for _, p, _, _ in cd.puts}
        in_range = {
            f"conv-{i:03d}"
            for i in range(90)
            if start + timedelta(hours=i * 0.8) < datetime(2026, 11, 3, tzinfo=UTC)
        }
        assert written == in_range  # every conversation once, the full pages split
        assert len(cd.puts) == len(in_range)
        assert cd.list_calls > 2


def test_backfill_rejects_a_bad_range(env):
    r = runner.invoke(
        app, ["backfill", "-a", "a", "--since", "2026-11-02", "--until", "2026-11-01"]
    )
    assert r.exit_code == 2 and "--until must be after --since" in r.stderr
    r = runner.invoke(app, ["backfill", "-a", "a", "--since", "yesterday"])
    assert r.exit_code == 2 and "expected a date" in r.stderr


# -- the Batch API -------------------------------------------------------------------------------


def test_batch_api_validates_rows_and_reasks_invalid_ones_directly(env, fake_chatdash, monkeypatch):
    with FakeLLM(batch_seconds=0.2) as llm:
        monkeypatch.setenv("OPENAI_BASE_URL", llm.url)
        llm.add(Reply.text('{"summary": "half an answer"}'))  # one row fails validation
        path = write_jsonl(env["tmp"] / "in.jsonl", items(6))
        out = env["tmp"] / "out.jsonl"
        r = runner.invoke(
            app, ["batch", path, "--via", "batch-api", "--poll-seconds", "0.05", "-o", str(out)]
        )
        assert r.exit_code == 0, r.stderr
        assert "batch batch_" in r.stderr and "completed, 6/6 done" in r.stderr
        (batch,) = llm.batches.values()
        assert batch["endpoint"] == "/v1/chat/completions"
        upload = llm.files[batch["input_file_id"]]
        assert upload["purpose"] == "batch"
        lines = [json.loads(x) for x in upload["content"].decode().splitlines()]
        assert len(lines) == 6 and lines[0]["body"]["response_format"]["type"] == "json_schema"
        assert llm.count == 7  # six in the batch, one re-asked directly
        reask = llm.requests[-1]["messages"][-1]["content"]
        assert "topic: Field required" in reask
        results = [json.loads(x) for x in out.read_text().splitlines()]
        assert all(x["ok"] for x in results) and len(fake_chatdash.puts) == 6


def test_batch_api_costs_half(fake_chatdash, tmp_path):
    with FakeLLM(batch_seconds=0.1) as llm:
        config = make_config(llm, fake_chatdash, llm={"model": "gpt-4o-mini"})
        with Enricher(config) as e:
            direct = list(e.enrich_many(items(2)[:1], write=False))[0].result
            batched = list(
                e.enrich_many(items(2)[1:], write=False, via="batch-api", poll_seconds=0.05)
            )[0].result
        per_token_direct = direct.cost / direct.usage.total_tokens
        per_token_batch = batched.cost / batched.usage.total_tokens
        assert per_token_batch < per_token_direct * 0.6


def test_batch_item_needs_an_id():
    with pytest.raises(ValueError):
        BatchItem(agent_id="")


def test_estimate_calls_no_llm_and_prices_the_job(env, fake_llm, fake_chatdash, monkeypatch):
    monkeypatch.setenv("ENRICH_MODEL", "gpt-4o-mini")
    rows = items(4)
    rows[2] = {"agent_id": "agent-1", "conversation_id": "fetched"}  # fetched from ChatDash
    fake_chatdash.conversations[("agent-1", "fetched")] = {}
    fake_chatdash.messages[("agent-1", "fetched")] = [
        {"sender": "bot", "type": "text", "content": {"text": "Hello!"}},
        {"sender": "user", "type": "text", "content": {"text": "Cancel my booking."}},
    ]
    path = write_jsonl(env["tmp"] / "in.jsonl", rows)
    out = env["tmp"] / "estimate.jsonl"
    r = runner.invoke(app, ["batch", path, "--estimate", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    assert fake_llm.requests == [] and fake_chatdash.puts == []
    assert "cost estimate (gpt-4o-mini, no LLM called)" in r.stdout  # the command's output
    est = [json.loads(x) for x in out.read_text().splitlines()]
    assert [e["requests"] for e in est] == [1, 1, 1, 1]
    assert all(e["prompt_tokens"] > 500 and e["cost"] > 0 for e in est)
    # the estimate is close to what the run then counts
    run = runner.invoke(app, ["batch", path, "--dry-run", "-o", str(env["tmp"] / "r.jsonl")])
    assert run.exit_code == 0
    assert len(fake_llm.requests) == 4


def test_an_interrupted_batch_api_job_is_collected_by_the_next_run(fake_chatdash, tmp_path):
    with FakeLLM(batch_seconds=30) as llm:
        config = make_config(llm, fake_chatdash, ledger={"path": str(tmp_path / "l.db")})
        rows = items(5)
        with Enricher(config) as e:
            run = e.enrich_many(rows, via="batch-api", poll_seconds=0.05)
            time.sleep(0.5)
            run.stop()  # Ctrl-C while the job is still running at the provider
            assert list(run) == []
            (batch_id,) = e.ledger.open_batch_jobs()
        assert len(llm.batches) == 1 and fake_chatdash.puts == []

        llm.batches[batch_id]["_ready_at"] = 0  # the provider finishes it meanwhile
        with Enricher(config) as e:
            results = list(e.enrich_many(rows, via="batch-api", poll_seconds=0.05))
            assert e.ledger.open_batch_jobs() == {}
        assert len(llm.batches) == 1  # collected, not created and paid for again
        assert sum(f["purpose"] == "batch" for f in llm.files.values()) == 1
        assert [r.status for r in results] == ["written"] * 5
        assert len(fake_chatdash.puts) == 5 and llm.count == 5


def test_batch_api_accepts_a_fenced_answer_as_the_direct_path_does(fake_chatdash):
    """A ```json fence around the JSON is read the same on both paths (one wire module): the
    Batch API row is accepted as it is, with no direct re-ask."""
    from enrich.testing import valid_answer

    def fenced(request):
        return Reply.text("```json\n" + json.dumps(valid_answer(request)) + "\n```")

    with FakeLLM(batch_seconds=0.1, responder=fenced) as llm:
        with Enricher(make_config(llm, fake_chatdash)) as e:
            rows = items(3)
            direct = list(e.enrich_many(rows[:1], write=False))
            batched = list(e.enrich_many(rows[1:], write=False, via="batch-api", poll_seconds=0.05))
        assert [r.status for r in direct + batched] == ["enriched"] * 3
        assert llm.count == 3  # one direct request, two batch rows: nothing asked again
        assert all(len(request["messages"]) == 2 for request in llm.requests)  # no feedback
        assert direct[0].result.attempts == 1
        assert [r.result.attempts for r in batched] == [1, 1]
        assert {r.result.enrichment.topic for r in direct + batched} == {"Account"}


def test_batch_api_reasks_an_invalid_tool_call_with_a_tool_message(fake_chatdash):
    """In ``tools`` mode the row's invalid call is fed back as the direct path feeds it back:
    the assistant's tool call, then a ``tool`` message with the errors."""
    with FakeLLM(batch_seconds=0.1) as llm:
        llm.add(Reply.text('{"summary": "half an answer"}'))
        config = make_config(llm, fake_chatdash, llm={"mode": "tools"})
        with Enricher(config) as e:
            results = list(e.enrich_many(items(1), write=False, via="batch-api", poll_seconds=0.05))
        assert [r.status for r in results] == ["enriched"]
        assert llm.count == 2 and results[0].result.attempts == 2
        call, feedback = llm.requests[-1]["messages"][-2:]
        assert call["role"] == "assistant" and call["content"] is None
        (tool_call,) = call["tool_calls"]
        assert tool_call["function"] == {
            "name": "record_enrichment",
            "arguments": '{"summary": "half an answer"}',
        }
        assert feedback["role"] == "tool" and feedback["tool_call_id"] == tool_call["id"]
        assert "topic: Field required" in feedback["content"]
