"""Structured output through the real openai SDK against the fake OpenAI-compatible server."""

from __future__ import annotations

import json

import pytest
from conftest import OPENAI_KEY, TRANSCRIPT, answer, make_config

from enrich import Enricher
from enrich.errors import (
    LLMRefusalError,
    LLMTransportError,
    LLMTruncatedError,
    LLMValidationError,
)
from enrich.testing import Reply

TAXONOMY = [
    {"name": "Billing", "subtopics": ["Refund", "Invoice"]},
    {"name": "Product", "subtopics": ["Availability", "Sizing"]},
]

MODES = ["json_schema", "json_object", "tools"]


def enricher(fake_llm, **sections):
    return Enricher(make_config(fake_llm, **sections))


@pytest.mark.parametrize("mode", MODES)
def test_valid_answer_in_each_mode(fake_llm, mode):
    fake_llm.add(Reply.json(answer(), cached_tokens=7))
    with enricher(fake_llm, llm={"mode": mode}) as e:
        result = e.enrich(TRANSCRIPT)

    assert result.enrichment.topic == "Billing"
    assert result.enrichment.evaluation.is_success is True
    assert result.attempts == 1
    assert result.usage.requests == 1
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    assert result.usage.cached_tokens == 7

    (request,) = fake_llm.requests
    assert fake_llm.headers[0]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert request["messages"][0]["role"] == "system"
    assert "<transcript>" in request["messages"][1]["content"]
    if mode == "json_schema":
        rf = request["response_format"]
        assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
        assert rf["json_schema"]["schema"]["additionalProperties"] is False
        assert "tools" not in request
    elif mode == "json_object":
        rf = request["response_format"]
        assert rf["type"] == "json_object"
        assert set(rf["schema"]["properties"]) == {
            "summary",
            "topic",
            "subtopic",
            "misunderstood_queries",
            "evaluation",
        }
        # JSON mode needs the shape in the prompt too
        assert '"misunderstood_queries"' in request["messages"][0]["content"]
    else:
        assert "response_format" not in request
        (tool,) = request["tools"]
        assert tool["function"]["name"] == "record_enrichment"
        assert tool["function"]["parameters"]["required"]
        assert request["tool_choice"]["function"]["name"] == "record_enrichment"


@pytest.mark.parametrize("mode", MODES)
def test_invalid_answer_is_reasked_with_the_errors(fake_llm, mode):
    bad = answer()
    del bad["evaluation"]["is_success"]
    fake_llm.add(Reply.json(bad), Reply.json(answer()))
    with enricher(fake_llm, llm={"mode": mode}) as e:
        result = e.enrich(TRANSCRIPT)

    assert result.attempts == 2
    assert result.usage.requests == 2
    first, second = fake_llm.requests
    assert result.usage.prompt_tokens > len(json.dumps(first["messages"])) // 4  # summed
    assert len(second["messages"]) == len(first["messages"]) + 2
    feedback = second["messages"][-1]
    assert "evaluation.is_success: Field required" in feedback["content"]
    if mode == "tools":
        assert second["messages"][-2]["tool_calls"][0]["function"]["arguments"] == json.dumps(bad)
        assert feedback["role"] == "tool"
        assert feedback["tool_call_id"] == second["messages"][-2]["tool_calls"][0]["id"]
    else:
        assert second["messages"][-2] == {"role": "assistant", "content": json.dumps(bad)}
        assert feedback["role"] == "user"


def test_still_invalid_after_every_reask_keeps_what_was_paid_for(fake_llm):
    fake_llm.add(*[Reply.text("not json at all") for _ in range(3)])
    with enricher(fake_llm, llm={"max_reasks": 2}) as e:
        with pytest.raises(LLMValidationError) as info:
            e.enrich(TRANSCRIPT)
    err = info.value
    assert err.attempts == 3 and len(fake_llm.requests) == 3
    assert err.usage.requests == 3 and err.usage.prompt_tokens > 0
    assert err.raw_outputs == ["not json at all"] * 3
    assert "Invalid JSON" in str(err)


def test_refusal_is_an_error_not_a_retry(fake_llm):
    fake_llm.add(Reply.refused("I cannot analyse this."))
    with enricher(fake_llm) as e, pytest.raises(LLMRefusalError, match="I cannot analyse this"):
        e.enrich(TRANSCRIPT)
    assert len(fake_llm.requests) == 1


def test_truncated_answer_is_an_error_not_a_retry(fake_llm):
    fake_llm.add(Reply.truncated())
    with enricher(fake_llm) as e, pytest.raises(LLMTruncatedError, match="max_tokens") as info:
        e.enrich(TRANSCRIPT)
    assert len(fake_llm.requests) == 1
    assert info.value.raw_outputs == ['{"summary": "The user as']


def test_content_filter_is_a_refusal(fake_llm):
    fake_llm.add(Reply(content="", finish_reason="content_filter"))
    with enricher(fake_llm) as e, pytest.raises(LLMRefusalError, match="content filter"):
        e.enrich(TRANSCRIPT)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_errors_are_retried(fake_llm, status):
    fake_llm.add(Reply.failure(status, headers={"retry-after-ms": "10"}), Reply.json(answer()))
    with enricher(fake_llm, llm={"max_retries": 2}) as e:
        result = e.enrich(TRANSCRIPT)
    assert len(fake_llm.requests) == 2
    assert result.attempts == 1  # one logical attempt, retried under the hood


def test_persistent_429_fails_after_the_sdk_retries(fake_llm):
    fake_llm.add(*[Reply.failure(429, "slow down", {"retry-after-ms": "10"}) for _ in range(3)])
    with enricher(fake_llm, llm={"max_retries": 2}) as e:
        with pytest.raises(LLMTransportError, match="429") as info:
            e.enrich(TRANSCRIPT)
    assert len(fake_llm.requests) == 3  # 1 + 2 retries: the SDK adds none of its own
    assert info.value.status_code == 429


def test_slow_answer_past_the_timeout(fake_llm):
    fake_llm.add(Reply.json(answer(), delay=2.0))
    with enricher(fake_llm, llm={"timeout": 0.3, "max_retries": 0}) as e:
        with pytest.raises(LLMTransportError, match=r"did not answer within 0.3s"):
            e.enrich(TRANSCRIPT)


def test_unreachable_server_names_the_url():
    from enrich.config import load_config

    config = load_config(
        None,
        {"llm": {"base_url": "http://127.0.0.1:9/v1", "api_key": OPENAI_KEY, "max_retries": 0}},
        environ={},
    )
    with Enricher(config) as e, pytest.raises(LLMTransportError, match=r"127\.0\.0\.1:9/v1"):
        e.enrich(TRANSCRIPT)


def test_rejected_key_names_the_variable_and_never_shows_the_key(fake_llm):
    # A careless server that echoes the key back in its error.
    fake_llm.add(Reply.failure(401, f"Incorrect API key provided: {OPENAI_KEY}"))
    with enricher(fake_llm) as e, pytest.raises(LLMTransportError) as info:
        e.enrich(TRANSCRIPT)
    assert "OPENAI_API_KEY" in str(info.value)
    assert OPENAI_KEY not in str(info.value) and OPENAI_KEY not in repr(info.value)


def test_bad_request_about_the_mode_suggests_another_mode(fake_llm):
    fake_llm.add(Reply.failure(400, "response_format json_schema is not supported"))
    with enricher(fake_llm) as e, pytest.raises(LLMTransportError, match="llm.mode"):
        e.enrich(TRANSCRIPT)


def test_fenced_json_is_accepted(fake_llm):
    fake_llm.add(Reply.text("```json\n" + json.dumps(answer()) + "\n```"))
    with enricher(fake_llm, llm={"mode": "json_object"}) as e:
        assert e.enrich(TRANSCRIPT).enrichment.subtopic == "Refund"


# -- taxonomy ------------------------------------------------------------------------------------


def test_taxonomy_becomes_enums_in_the_schema_sent(fake_llm):
    fake_llm.add(Reply.json(answer()))
    with enricher(fake_llm, analysis={"taxonomy": TAXONOMY}) as e:
        e.enrich(TRANSCRIPT)
    props = fake_llm.requests[0]["response_format"]["json_schema"]["schema"]["properties"]
    assert props["topic"]["enum"] == ["Billing", "Product"]
    assert props["subtopic"]["enum"] == ["Refund", "Invoice", "Availability", "Sizing"]
    system = fake_llm.requests[0]["messages"][0]["content"]
    assert "- Billing" in system and "  - Sizing" in system


def test_topic_outside_the_taxonomy_is_reasked(fake_llm):
    fake_llm.add(Reply.json(answer(topic="Shipping")), Reply.json(answer()))
    with enricher(fake_llm, analysis={"taxonomy": TAXONOMY}) as e:
        result = e.enrich(TRANSCRIPT)
    assert result.attempts == 2
    assert (
        "topic 'Shipping' is not in the taxonomy" in fake_llm.requests[1]["messages"][-1]["content"]
    )


def test_subtopic_of_another_topic_is_reasked(fake_llm):
    fake_llm.add(Reply.json(answer(subtopic="Sizing")), Reply.json(answer()))
    with enricher(fake_llm, analysis={"taxonomy": TAXONOMY}) as e:
        result = e.enrich(TRANSCRIPT)
    assert result.attempts == 2 and result.enrichment.subtopic == "Refund"
    feedback = fake_llm.requests[1]["messages"][-1]["content"]
    assert "subtopic 'Sizing' does not belong to topic 'Billing'" in feedback


def test_without_taxonomy_topics_are_free_text(fake_llm):
    fake_llm.add(Reply.json(answer(topic="Double charge", subtopic="Card payment")))
    with enricher(fake_llm) as e:
        result = e.enrich(TRANSCRIPT)
    assert result.enrichment.topic == "Double charge"
    props = fake_llm.requests[0]["response_format"]["json_schema"]["schema"]["properties"]
    assert "enum" not in props["topic"] and "enum" not in props["subtopic"]


# -- grounding -----------------------------------------------------------------------------------


def test_invented_queries_are_dropped_counted_and_never_written(fake_llm, fake_chatdash):
    queries = [
        {"question": "Do you sell waterproof hiking boots in size 46"},  # said (case, punctuation)
        {"question": "Can I pay with bitcoin?"},  # never said
        {"question": "Can I have your order number?"},  # the agent's words, not the user's
    ]
    fake_llm.add(Reply.json(answer(misunderstood_queries=queries)))
    with Enricher(make_config(fake_llm, fake_chatdash)) as e:
        result = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    assert [q.question for q in result.enrichment.misunderstood_queries] == [queries[0]["question"]]
    assert result.dropped_queries == [queries[1]["question"], queries[2]["question"]]
    (put,) = fake_chatdash.puts
    assert put[3]["mistunderstoodQueries"] == [{"question": queries[0]["question"]}]
    assert "bitcoin" not in json.dumps(put[3])


@pytest.mark.parametrize("status", [408, 409, 504])
def test_the_shared_transient_statuses_are_retried(fake_llm, status):
    fake_llm.add(Reply.failure(status, headers={"retry-after": "0"}), Reply.json(answer()))
    with enricher(fake_llm, llm={"max_retries": 1}) as e:
        assert e.enrich(TRANSCRIPT).attempts == 1
    assert len(fake_llm.requests) == 2


@pytest.mark.parametrize("status", [400, 404, 422])
def test_permanent_statuses_are_not_retried(fake_llm, status):
    fake_llm.add(Reply.failure(status))
    with enricher(fake_llm, llm={"max_retries": 2}) as e:
        with pytest.raises(LLMTransportError) as info:
            e.enrich(TRANSCRIPT)
    assert len(fake_llm.requests) == 1 and info.value.status_code == status


def test_retry_after_in_seconds_is_honoured(fake_llm):
    import time

    fake_llm.add(Reply.failure(503, headers={"retry-after": "1"}), Reply.json(answer()))
    with enricher(fake_llm, llm={"max_retries": 1}) as e:
        start = time.monotonic()
        e.enrich(TRANSCRIPT)
    assert time.monotonic() - start >= 0.9


@pytest.mark.parametrize("mode", MODES)
def test_empty_answer_is_reasked(fake_llm, mode):
    fake_llm.add(Reply.text(""), Reply.json(answer()))
    with enricher(fake_llm, llm={"mode": mode}) as e:
        assert e.enrich(TRANSCRIPT).attempts == 2
    assert "the answer was empty" in fake_llm.requests[1]["messages"][-1]["content"]
