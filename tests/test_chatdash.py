"""The write-back: real httpx against the fake ChatDash, which checks every body against the
contract (tests/fixtures/chatdash/update-conversation.md, a verbatim copy of the spec)."""

from __future__ import annotations

import re
import time

import pytest
from conftest import CHATDASH_KEY, TRANSCRIPT, answer, make_config

from enrich import Enricher
from enrich.errors import ChatDashError, ConfigError, InputError
from enrich.testing import Fault, Reply


def test_put_body_is_the_enrichment_only_with_wire_names(fake_llm, fake_chatdash):
    fake_llm.add(Reply.json(answer()))
    with Enricher(make_config(fake_llm, fake_chatdash)) as e:
        result = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)

    assert result.written is True
    assert fake_chatdash.violations == []
    (put,) = fake_chatdash.puts
    method, path, headers, body = put
    assert path == "/v1/public/agents/agent-1/conversations/conv-1"
    assert headers["Authorization"] == CHATDASH_KEY  # the raw key, no "Bearer"
    assert headers["Content-Type"] == "application/json"
    assert body == {
        "summary": answer()["summary"],
        "topic": "Billing",
        "subtopic": "Refund",
        "evaluation": {"isSuccess": True, "reason": answer()["evaluation"]["reason"]},
        "mistunderstoodQueries": [{"question": "do you sell waterproof hiking boots in size 46?"}],
    }
    assert body == result.update
    # nothing ChatDash owns, no nulls
    assert not {"read", "record", "isLive", "status", "interacted"} & set(body)


def test_configuration_narrows_the_written_fields(fake_llm, fake_chatdash):
    fake_llm.add(Reply.json(answer()))
    config = make_config(fake_llm, fake_chatdash, write={"fields": ["topic", "subtopic"]})
    with Enricher(config) as e:
        result = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    assert fake_chatdash.puts[0][3] == {"topic": "Billing", "subtopic": "Refund"}
    assert result.enrichment.summary  # still enriched, just not written


def test_empty_misunderstood_queries_are_written_as_an_empty_list(fake_llm, fake_chatdash):
    fake_llm.add(Reply.json(answer(misunderstood_queries=[])))
    with Enricher(make_config(fake_llm, fake_chatdash)) as e:
        e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    assert fake_chatdash.puts[0][3]["mistunderstoodQueries"] == []
    assert fake_chatdash.violations == []


@pytest.mark.parametrize(
    ("agent_id", "conversation_id", "expected"),
    [
        ("a/b", "c?d=1#x", "/v1/public/agents/a%2Fb/conversations/c%3Fd%3D1%23x"),
        ("agent", "../../admin", "/v1/public/agents/agent/conversations/..%2F..%2Fadmin"),
        ("agënt 1", "c 2", "/v1/public/agents/ag%C3%ABnt%201/conversations/c%202"),
    ],
)
def test_ids_cannot_change_the_path(fake_llm, fake_chatdash, agent_id, conversation_id, expected):
    with Enricher(make_config(fake_llm, fake_chatdash)) as e:
        e.enrich_and_write(agent_id, conversation_id, TRANSCRIPT)
    assert fake_chatdash.puts[0][1] == expected
    assert (agent_id, conversation_id) in fake_chatdash.conversations


@pytest.mark.parametrize("ids", [("", "conv"), ("agent", "  "), ("..", "conv"), ("agent", ".")])
def test_empty_ids_fail_before_the_llm_is_paid(fake_llm, fake_chatdash, ids):
    with (
        Enricher(make_config(fake_llm, fake_chatdash)) as e,
        pytest.raises(InputError, match="is empty|is not an id"),
    ):
        e.enrich_and_write(*ids, TRANSCRIPT)
    assert fake_llm.requests == [] and fake_chatdash.requests == []


def test_missing_chatdash_key_fails_before_the_llm_is_paid(fake_llm, fake_chatdash):
    from enrich.config import load_config

    config = load_config(
        None,
        {
            "llm": {"base_url": fake_llm.url, "api_key": "sk-x"},
            "chatdash": {"base_url": fake_chatdash.url},
        },
        environ={},
    )
    with Enricher(config) as e, pytest.raises(ConfigError, match="CHATDASH_API_KEY"):
        e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    assert fake_llm.requests == []


@pytest.mark.parametrize(
    "fault",
    [
        Fault(status=500),
        Fault(status=503),
        Fault(status=429, headers={"Retry-After": "0"}),
        Fault(reset=True),
    ],
    ids=["500", "503", "429", "reset"],
)
def test_transient_failures_are_retried(fake_llm, fake_chatdash, fault):
    fake_chatdash.fail(fault)
    with Enricher(make_config(fake_llm, fake_chatdash)) as e:
        result = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    assert result.written
    assert len(fake_chatdash.puts) == 2
    assert fake_chatdash.puts[0][3] == fake_chatdash.puts[1][3]  # the same body, again
    assert len(fake_llm.requests) == 1  # the LLM is not paid twice


def test_retry_after_is_honoured(fake_llm, fake_chatdash):
    fake_chatdash.fail(Fault(status=429, headers={"Retry-After": "1"}))
    with Enricher(make_config(fake_llm, fake_chatdash)) as e:
        e.enrich(TRANSCRIPT)  # warm up the LLM connection; time only the write
        start = time.monotonic()
        e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    assert time.monotonic() - start >= 0.9


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (401, "check CHATDASH_API_KEY"),
        (403, "denied access"),
        (404, "not found in ChatDash"),
        (400, "rejected the request (HTTP 400): fake failure"),
        (422, "rejected the request (HTTP 422)"),
    ],
)
def test_client_errors_are_not_retried_and_say_what_to_do(fake_llm, fake_chatdash, status, words):
    fake_chatdash.fail(Fault(status=status))
    with Enricher(make_config(fake_llm, fake_chatdash)) as e:
        with pytest.raises(ChatDashError, match=re.escape(words)) as info:
            e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    assert len(fake_chatdash.puts) == 1
    err = info.value
    assert err.status_code == status and err.method == "PUT"
    assert err.url.endswith("/agents/agent-1/conversations/conv-1")
    # the paid-for result travels with the error
    assert err.result is not None and err.result.update["topic"]
    assert CHATDASH_KEY not in str(err)


def test_unknown_conversation_is_a_404_naming_the_ids(fake_llm):
    from conftest import put_schema

    from enrich.testing import FakeChatDash

    with FakeChatDash(api_key=CHATDASH_KEY, put_schema=put_schema(), require_existing=True) as cd:
        with Enricher(make_config(fake_llm, cd)) as e, pytest.raises(ChatDashError) as info:
            e.enrich_and_write("agent-1", "nope", TRANSCRIPT)
    assert "conversation nope of agent agent-1" in str(info.value)
    assert "404" in str(info.value)


def test_persistent_failure_gives_up_after_max_attempts(fake_llm, fake_chatdash):
    fake_chatdash.fail(*[Fault(status=502) for _ in range(10)])
    config = make_config(fake_llm, fake_chatdash, chatdash={"max_attempts": 3})
    with Enricher(config) as e, pytest.raises(ChatDashError, match="after 3 attempt") as info:
        e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    assert len(fake_chatdash.puts) == 3
    assert info.value.result.update == fake_chatdash.puts[0][3]


def test_hang_past_the_timeout(fake_llm, fake_chatdash):
    fake_chatdash.fail(Fault(hang=1.5, status=200), Fault(hang=1.5, status=200))
    config = make_config(fake_llm, fake_chatdash, chatdash={"timeout": 0.3, "max_attempts": 2})
    with Enricher(config) as e, pytest.raises(ChatDashError, match=r"did not answer within 0.3s"):
        e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)


def test_unreachable_chatdash_names_the_url(fake_llm):
    config = make_config(fake_llm, None, chatdash={"max_attempts": 1})
    with (
        Enricher(config) as e,
        pytest.raises(ChatDashError, match=r"cannot reach ChatDash") as info,
    ):
        e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    assert "http://127.0.0.1:9/agents/agent-1/conversations/conv-1" in str(info.value)


def test_retries_stop_at_the_total_time_bound(fake_llm, fake_chatdash):
    fake_chatdash.fail(*[Fault(status=503, headers={"Retry-After": "5"}) for _ in range(5)])
    config = make_config(
        fake_llm, fake_chatdash, chatdash={"max_attempts": 5, "max_total_seconds": 1}
    )
    start = time.monotonic()
    with Enricher(config) as e, pytest.raises(ChatDashError, match="after 1 attempt"):
        e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    assert time.monotonic() - start < 3
    assert len(fake_chatdash.puts) == 1


@pytest.mark.parametrize("status", [408, 409])
def test_timeout_and_conflict_are_transient_as_for_the_llm(fake_llm, fake_chatdash, status):
    """One set of transient statuses for both clients (enrich._http): 408 and 409 too."""
    fake_chatdash.fail(Fault(status=status))
    with Enricher(make_config(fake_llm, fake_chatdash)) as e:
        result = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    assert result.written and len(fake_chatdash.puts) == 2


def test_retry_after_as_an_http_date_is_honoured(fake_llm, fake_chatdash):
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    with Enricher(make_config(fake_llm, fake_chatdash)) as e:
        e.enrich(TRANSCRIPT)  # warm up the LLM connection; time only the write
        when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        fake_chatdash.fail(
            Fault(status=503, headers={"Retry-After": format_datetime(when, usegmt=True)})
        )
        start = time.monotonic()
        e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    assert time.monotonic() - start >= 0.9
    assert len(fake_chatdash.puts) == 2


@pytest.mark.parametrize(
    ("fault", "permanent"),
    [(Fault(status=404), True), (Fault(status=422), True), (Fault(status=502), False)],
    ids=["404", "422", "502"],
)
def test_the_error_says_whether_a_replay_can_succeed(fake_llm, fake_chatdash, fault, permanent):
    fake_chatdash.fail(*[fault] * 4)
    config = make_config(fake_llm, fake_chatdash, chatdash={"max_attempts": 2})
    with Enricher(config) as e, pytest.raises(ChatDashError) as info:
        e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    assert info.value.status_code == fault.status
    assert info.value.permanent is permanent
