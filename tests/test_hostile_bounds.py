"""Bounds (issue 14): input size from every source, answer size, a turn without spaces,
backfill splitting, and grounding that neither takes quadratic time nor blocks the event loop.
All against the fake servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from conftest import CHATDASH_KEY, TRANSCRIPT, answer, make_config, put_schema
from typer.testing import CliRunner

from enrich import Enricher
from enrich.cli import app
from enrich.errors import TranscriptError
from enrich.llm import get_counter
from enrich.testing import FakeChatDash, FakeLLM, Reply, valid_answer

runner = CliRunner()

LIMIT = 100_000


def big_chat(size: int) -> list[dict[str, str]]:
    """A chat-format transcript (a JSON list) of about ``size`` bytes."""
    turn = "I need a refund for order 4417, please. " * (size // 40 // 20 + 1)
    return [{"role": "assistant" if i % 2 else "user", "content": turn} for i in range(20)]


def set_config(env: dict[str, Any], **sections: Any) -> None:
    data = yaml.safe_load(env["config"].read_text())
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    env["config"].write_text(yaml.safe_dump(data))


# -- 1. input.max_bytes applies to every source ------------------------------------------------


def test_max_bytes_applies_to_a_parsed_json_value(fake_llm):
    chat = big_chat(3 * LIMIT)
    assert len(json.dumps(chat)) > 2 * LIMIT
    config = make_config(fake_llm, input={"max_bytes": LIMIT})
    with Enricher(config) as e, pytest.raises(TranscriptError, match="input.max_bytes"):
        e.enrich(chat)
    assert fake_llm.count == 0
    with Enricher(config) as e:  # under the limit, the same shape is enriched
        assert e.enrich(big_chat(LIMIT // 2)).enrichment.summary


def test_max_bytes_applies_to_a_transcript_inline_in_a_batch_line(env, fake_llm, fake_chatdash):
    set_config(env, input={"max_bytes": LIMIT})
    rows = [
        {"agent_id": "a", "conversation_id": "big", "transcript": big_chat(3 * LIMIT)},
        {"agent_id": "a", "conversation_id": "small", "transcript": TRANSCRIPT},
    ]
    src = env["tmp"] / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = env["tmp"] / "out.jsonl"
    r = runner.invoke(app, ["batch", str(src), "-o", str(out)])
    assert r.exit_code == 5, r.stderr
    results = {x["conversation_id"]: x for x in map(json.loads, out.read_text().splitlines())}
    big = results["big"]
    assert big["status"] == "failed" and big["stage"] == "input"
    assert "input.max_bytes" in big["error"] and big["error_type"] == "TranscriptError"
    assert results["small"]["status"] == "written"
    assert fake_llm.count == 1  # the small one only
    assert [p.rsplit("/", 1)[1] for _, p, _, _ in fake_chatdash.puts] == ["small"]


def test_max_bytes_applies_to_messages_fetched_from_chatdash(env, fake_llm, fake_chatdash):
    set_config(env, input={"max_bytes": LIMIT})
    text = "Where is my parcel? It was due last week. " * 100
    fake_chatdash.conversations[("a", "c1")] = {}
    fake_chatdash.messages[("a", "c1")] = [
        {"sender": "user" if i % 2 else "bot", "type": "text", "content": {"text": text}}
        for i in range(100)
    ]
    r = runner.invoke(app, ["run", "--agent-id", "a", "--conversation-id", "c1"])
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert "input.max_bytes" in r.stderr and "messages of conversation c1" in r.stderr
    assert fake_llm.count == 0 and fake_chatdash.puts == []


# -- 2. every text of the answer is bounded; an over-long one is re-asked ------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"summary": "x" * 50_000},
        {"topic": "t" * 5_000},
        {"misunderstood_queries": [{"question": "q " * 5_000}]},
        {"evaluation": {"reason": "r" * 50_000, "is_success": True}},
    ],
    ids=["summary", "topic", "query", "reason"],
)
def test_an_over_long_answer_field_is_re_asked(fake_llm, bad):
    fake_llm.add(Reply.json(answer(**bad)), Reply.json(answer()))
    with Enricher(make_config(fake_llm)) as e:
        result = e.enrich(TRANSCRIPT)
    assert fake_llm.count == 2 and result.attempts == 2
    assert result.enrichment.summary == answer()["summary"]
    assert "at most" in fake_llm.requests[1]["messages"][-1]["content"]
    # strict mode takes no maxLength: the bound is in validation only
    schema = fake_llm.requests[0]["response_format"]["json_schema"]["schema"]
    assert "maxLength" not in json.dumps(schema)


def test_over_long_rationale_and_custom_values_are_re_asked(fake_llm):
    analysis = {
        "fields": [
            {"name": "note", "type": "string", "description": "A note."},
            {"name": "items", "type": "list", "description": "Items."},
        ],
        "success_criteria": [{"name": "resolved", "description": "It was resolved."}],
    }

    def good(**custom: Any) -> dict[str, Any]:
        return answer(
            evaluation={
                "criteria": {
                    "resolved": {"rationale": "The refund was made.", "verdict": "success"}
                },
                "reason": "Resolved.",
                "verdict": "success",
            },
            custom_analysis={"note": "ok", "items": ["boots"], **custom},
        )

    too_long = good()
    too_long["evaluation"]["criteria"]["resolved"]["rationale"] = "why " * 10_000
    fake_llm.add(
        Reply.json(too_long),
        Reply.json(good(note="n" * 50_000)),
        Reply.json(good(items=["i" * 50_000])),
        Reply.json(good()),
    )
    config = make_config(fake_llm, analysis=analysis, llm={"max_reasks": 3})
    with Enricher(config) as e:
        result = e.enrich(TRANSCRIPT)
    assert fake_llm.count == 4
    assert result.enrichment.custom == {"note": "ok", "items": ["boots"]}
    assert result.enrichment.evaluation.criteria[0].rationale == "The refund was made."


# -- 3. a turn without spaces is cut too: every request fits the budget --------------------------


def no_queries(request: dict[str, Any]) -> Reply:
    """The fake's valid answer, without the query it quotes (here, thousands of characters)."""
    return Reply.json({**valid_answer(request), "misunderstood_queries": []})


def test_a_turn_without_spaces_is_cut_so_every_request_fits():
    context = 8192
    text = "Agent: Hello, what is the problem?\nUser: " + "abcdefghij" * 20_000  # 200k chars
    with FakeLLM(responder=no_queries) as fake_llm:
        config = make_config(fake_llm, llm={"context_tokens": context, "max_tokens": 300})
        with Enricher(config) as e:
            result = e.enrich(text)
    assert result.strategy == "map_reduce" and result.parts >= 5
    counter = get_counter("estimate")
    for request in fake_llm.requests:
        sent = "".join(m["content"] for m in request["messages"])
        sent += json.dumps(request["response_format"]["json_schema"]["schema"])
        assert counter.count(sent) < context
    # nothing in the middle is lost: the parts, joined, are the turn
    maps = [r for r in fake_llm.requests if "you are reading part" in r["messages"][0]["content"]]
    assert sum(r["messages"][1]["content"].count("abcdefghij") for r in maps) >= 19_990


# -- 4. backfill: a list that is always full is not split forever -------------------------------


def test_backfill_of_an_always_full_list_stops_splitting_and_warns(env, fake_llm, monkeypatch):
    start = datetime(2026, 11, 1, tzinfo=UTC)
    with FakeChatDash(api_key=CHATDASH_KEY, put_schema=put_schema(), page_size=5) as cd:
        monkeypatch.setenv("CHATDASH_BASE_URL", cd.url)
        for i in range(2000):  # more than a minute's window can list, all day long
            created = start + timedelta(seconds=i * 43)
            cd.conversations[("agent-1", f"conv-{i:04d}")] = {"createdAt": created.isoformat()}
            cd.messages[("agent-1", f"conv-{i:04d}")] = [
                {"sender": "bot", "type": "text", "content": {"text": "Hello, how can I help?"}},
                {"sender": "user", "type": "text", "content": {"text": f"Refund for order {i}."}},
            ]
        began = time.monotonic()
        r = runner.invoke(
            app,
            [
                "backfill",
                "-a",
                "agent-1",
                "--since",
                "2026-11-01",
                "--until",
                "2026-11-02",
                "--split-at",
                "5",
                "-j",
                "16",
                "-o",
                str(env["tmp"] / "bf.jsonl"),
            ],
        )
        elapsed = time.monotonic() - began
        assert r.exit_code == 0, r.stderr
        assert cd.list_calls <= 511  # at most 8 splits of the one window
        assert elapsed < 60
        assert "may be incomplete" in r.stderr and "2026-11-01T00:00:00+00:00" in r.stderr
        assert "--split-at" in r.stderr
        assert len(cd.puts) > 0  # the backfill went on with what it listed


# -- 5. grounding: near-linear, and off the event loop ------------------------------------------


def test_grounding_a_long_user_turn_is_fast_and_does_not_block_the_loop(fake_llm):
    words = [f"w{i % 7919}" for i in range(100_000)]
    text = "Agent: How can I help?\nUser: " + " ".join(words) + "\nAgent: Goodbye."
    invented = [{"question": f"do you sell waterproof hiking boots in size {n}"} for n in range(10)]
    real = {"question": " ".join(words[5000:5012])}
    fake_llm.add(Reply.json(answer(misunderstood_queries=[*invented, real][-10:])))
    config = make_config(fake_llm, llm={"context_tokens": 1_000_000, "max_tokens": 300})
    gaps: list[float] = []

    async def main() -> Any:
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.02)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        async with Enricher(config) as e:
            tick = asyncio.create_task(ticker())
            await asyncio.sleep(0.05)
            began = time.monotonic()
            try:
                result = await e.aenrich(text)
            finally:
                done.set()
                await tick
            return result, time.monotonic() - began

    result, took = asyncio.run(main())
    assert result.strategy == "single"
    assert [q.question for q in result.enrichment.misunderstood_queries] == [real["question"]]
    assert len(result.dropped_queries) == 9
    assert took < 5
    assert max(gaps) < 0.5  # the loop kept running while grounding
