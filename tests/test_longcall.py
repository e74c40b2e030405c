"""Calls over the context budget: cut into parts, noted, combined; nothing in the middle lost."""

from __future__ import annotations

import json
import re

import pytest
from conftest import make_config

from enrich import Enricher
from enrich.errors import ConfigError, LLMRefusalError
from enrich.llm.tokens import EstimateCounter, get_counter
from enrich.testing import Reply, valid_answer


def long_call(turns: int, words_per_turn: int = 40) -> str:
    lines = []
    for i in range(turns):
        speaker = "User" if i % 2 else "Agent"
        body = " ".join(f"w{i}x{j}" for j in range(words_per_turn))
        lines.append(f"{speaker}: marker{i} {body}")
    return "\n".join(lines)


def sent_markers(request: dict) -> set[int]:
    return {int(m) for m in re.findall(r"marker(\d+)", request["messages"][-1]["content"])}


def part_number(request: dict) -> int:
    return int(re.search(r"you are reading part (\d+)", request["messages"][0]["content"])[1])


def test_within_budget_is_one_request(fake_llm):
    with Enricher(make_config(fake_llm, llm={"context_tokens": 8192})) as e:
        result = e.enrich(long_call(10))
    assert result.strategy == "single" and result.parts == 1
    assert len(fake_llm.requests) == 1 and result.attempts == 1
    assert result.transcript_tokens > 0


def test_over_budget_is_cut_into_parts_and_combined(fake_llm):
    text = long_call(120)  # ~ 6,000 words
    config = make_config(fake_llm, llm={"context_tokens": 4096, "max_tokens": 300})
    with Enricher(config) as e:
        result = e.enrich(text)

    assert result.strategy == "map_reduce"
    *maps, final = fake_llm.requests
    maps.sort(key=part_number)  # parts are sent concurrently
    assert result.parts == len(maps) >= 3
    assert result.usage.requests == len(fake_llm.requests) == result.attempts
    assert result.usage.prompt_tokens > sum(len(json.dumps(r["messages"])) // 4 for r in maps)

    # every turn went to exactly one part, in order: nothing in the middle is lost
    seen = [sent_markers(r) for r in maps]
    assert sorted(m for part in seen for m in part) == list(range(120))
    assert all(max(a) < min(b) for a, b in zip(seen, seen[1:], strict=False))
    # each part asked for notes, under the part schema, and said which part it was
    for i, r in enumerate(maps, 1):
        schema = r["response_format"]["json_schema"]["schema"]
        assert set(schema["properties"]) == {
            "summary",
            "user_requests",
            "misunderstood_queries",
            "outcome",
        }
        assert f"you are reading part {i}" in r["messages"][0]["content"]
        assert "consecutive parts" in r["messages"][0]["content"]
    # the final request: the enrichment schema, the notes of every part, and the ending verbatim
    assert set(final["response_format"]["json_schema"]["schema"]["properties"]) >= {
        "topic",
        "evaluation",
    }
    user = final["messages"][1]["content"]
    assert user.count("Summary: The user asked for help") == len(maps)
    assert "marker119" in user  # the last turn, verbatim
    assert "notes on its consecutive parts" in final["messages"][0]["content"]
    # every request fits the context (the fake counts ~4 characters a token)
    for r in fake_llm.requests:
        assert len(json.dumps(r["messages"])) // 4 < 4096


def test_one_turn_longer_than_a_part_is_cut_between_words(fake_llm):
    words = [f"word{i}" for i in range(5000)]
    text = "Agent: Hello, what is the problem?\nUser: " + " ".join(words)
    config = make_config(fake_llm, llm={"context_tokens": 4096, "max_tokens": 300})
    with Enricher(config) as e:
        result = e.enrich(text)
    assert result.strategy == "map_reduce" and result.parts >= 3
    maps = [r for r in fake_llm.requests if r["messages"][-1]["content"].startswith("<transcript>")]
    assert len(maps) == result.parts
    sent = " ".join(r["messages"][-1]["content"] for r in maps)
    assert sorted(re.findall(r"word\d+", sent)) == sorted(words)  # each word once
    # the turn is cut between words, each piece still the user's
    assert all("User: word" in r["messages"][-1]["content"] for r in maps)


def test_notes_too_long_to_combine_are_merged_first(fake_llm):
    def wordy(request):
        value = valid_answer(request)
        if "outcome" in value:  # a part's notes: make them long
            value["summary"] = " ".join(["detail"] * 400)
        return Reply.json(value)

    fake_llm.responder = wordy
    config = make_config(fake_llm, llm={"context_tokens": 4096, "max_tokens": 300})
    with Enricher(config) as e:
        result = e.enrich(long_call(200))
    merges = [r for r in fake_llm.requests if "<notes>" in r["messages"][-1]["content"]][:-1]
    assert merges, "expected notes to be merged before the final call"
    assert all(
        "given as notes on its own consecutive sub-parts" in r["messages"][0]["content"]
        for r in merges
    )
    assert result.usage.requests == len(fake_llm.requests) == result.parts + len(merges) + 1


def test_a_failing_part_reports_what_every_call_cost(fake_llm):
    fake_llm.add(Reply.json(valid_answer({})), Reply.refused("no"))
    config = make_config(
        fake_llm, llm={"context_tokens": 4096, "max_tokens": 300, "part_concurrency": 1}
    )
    with Enricher(config) as e, pytest.raises(LLMRefusalError) as info:
        e.enrich(long_call(120))
    assert info.value.usage.requests == 2  # the paid-for first part is counted too


def test_context_too_small_for_the_prompts_is_a_config_error(fake_llm):
    config = make_config(fake_llm, llm={"context_tokens": 2048, "max_tokens": 600})
    with Enricher(config) as e, pytest.raises(ConfigError, match="llm.context_tokens=2048"):
        e.enrich(long_call(200))
    assert fake_llm.requests == []


def test_estimate_counter_is_offline_and_close():
    counter = get_counter("estimate")
    assert isinstance(counter, EstimateCounter)
    assert counter.count("Hello, world!") == 4  # Hello , world !
    assert counter.count("") == 0
    assert 8 <= counter.count("internationalization of tokenizers is hard") <= 12


def test_unknown_tokenizer_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown tokenizer"):
        get_counter("sentencepiece")
