"""JSON as small local models break it: read as it was meant, counted as a repair, never
re-asked; what is really invalid is still re-asked. The one parser serves the direct path and
the Batch API's rows (both call enrich.llm.wire.validate)."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import OPENAI_KEY
from pydantic import BaseModel

from enrich.config import LLMSettings
from enrich.llm import StructuredLLM, validate
from enrich.llm.wire import lenient_json
from enrich.testing import FakeLLM, Reply


class Out(BaseModel):
    topic: str
    ok: bool


GOOD = Out(topic="Billing\nand refunds", ok=True)


@pytest.mark.parametrize(
    "text",
    [
        '{"topic": "Billing\nand refunds", "ok": true}',  # a raw line feed inside a string
        '{"topic": "Billing\nand refunds",\t"ok": true}',
        '{"topic": "Billing\\nand refunds", "ok": true} I hope this helps!',  # chatter after
        '{"topic": "Billing\nand refunds", "ok": true}\n\nNote: ok means resolved. {"x": 1}',
        '```json\n{"topic": "Billing\\nand refunds", "ok": true}\n```',  # a fence
        '```json\n{"topic": "Billing\\nand refunds", "ok": true}\n```\nAnything else?',
        '```\n{"topic": "Billing\nand refunds", "ok": true}\n```',
    ],
    ids=["newline", "tab", "chatter", "chatter-with-json", "fence", "fence-chatter", "both"],
)
def test_broken_but_unambiguous_json_is_read_and_counted(text):
    checked = validate(text, Out)
    assert checked.ok and checked.value == GOOD
    assert checked.repaired is True


def test_json_as_it_should_be_is_not_a_repair():
    checked = validate('{"topic": "Billing\\nand refunds", "ok": true}\n', Out)
    assert checked.ok and checked.value == GOOD and checked.repaired is False


@pytest.mark.parametrize(
    "text",
    [
        'Sure! Here it is: {"topic": "Billing", "ok": true}',  # words before: not guessed
        '{"topic": "Billing", "ok": tru',  # cut off
        '{"topic": "Billing" "ok": true}',  # a comma missing
        '"Billing" is the topic',
        "[1, 2] and more",
    ],
)
def test_what_is_really_invalid_stays_invalid(text):
    checked = validate(text, Out)
    assert not checked.ok and checked.value is None
    assert any("JSON" in e for e in checked.errors), checked.errors


def test_a_repaired_answer_is_still_validated():
    checked = validate('{"topic": "Billing"} thanks', Out)
    assert checked.errors == ["ok: Field required"] and checked.repaired is True


def test_lenient_json_gives_the_json_meant():
    body, repaired = lenient_json('{"a": "x\ty"} -- done')
    assert json.loads(body) == {"a": "x\ty"} and repaired
    assert lenient_json("not json") == ("not json", False)


def _llm(fake: FakeLLM) -> StructuredLLM:
    return StructuredLLM(
        LLMSettings(base_url=fake.url, api_key=OPENAI_KEY, model="m", max_retries=0, max_reasks=2)
    )


def _complete(fake: FakeLLM):
    llm = _llm(fake)
    schema = Out.model_json_schema()

    async def go():
        try:
            return await llm.complete(
                [{"role": "user", "content": "hi"}],
                output=Out,
                schema=schema,
                reask=lambda errors: "fix: " + "; ".join(errors),
            )
        finally:
            await llm.aclose()

    return asyncio.run(go())


def test_the_client_counts_the_repair_and_asks_once():
    with FakeLLM([Reply.text('{"topic": "Billing\nand refunds", "ok": true}\nDone.')]) as fake:
        result = _complete(fake)
        assert result.value == GOOD
        assert (result.repairs, result.attempts, fake.count) == (1, 1, 1)


def test_the_client_reasks_what_is_really_invalid():
    replies = [Reply.text('Here: {"topic": "Billing", "ok": true}'), Reply.json(GOOD.model_dump())]
    with FakeLLM(replies) as fake:
        result = _complete(fake)
        assert result.value == GOOD
        assert (result.repairs, result.attempts, fake.count) == (0, 2, 2)
        assert "Invalid JSON" in fake.requests[1]["messages"][-1]["content"]


# -- a model without a system role -----------------------------------------------------------


def test_without_a_system_role_the_instructions_lead_the_first_user_message():
    from enrich.llm.wire import fold_system, request_body

    messages = [
        {"role": "system", "content": "INSTRUCTIONS"},
        {"role": "user", "content": "<transcript>T</transcript>"},
        {"role": "assistant", "content": "{}"},
        {"role": "user", "content": "fix it"},
    ]
    body = request_body(
        messages, {"type": "object"}, model="m", mode="json_object", max_tokens=64,
        system_role=False,
    )  # fmt: skip
    assert body["messages"] == [
        {"role": "user", "content": "INSTRUCTIONS\n\n<transcript>T</transcript>"},
        {"role": "assistant", "content": "{}"},
        {"role": "user", "content": "fix it"},
    ]
    assert messages[0]["role"] == "system"  # the caller's list is left as it was
    assert (
        request_body(messages, {}, model="m", mode="json_object", max_tokens=64)["messages"]
        == messages
    )
    assert fold_system([{"role": "system", "content": "S"}]) == [{"role": "user", "content": "S"}]


def test_the_setting_reaches_the_wire_and_the_eval_asks_again(fake_llm, env, monkeypatch):
    """ENRICH_LLM_SYSTEM_ROLE=false: no system message reaches the server, the instructions
    do; an eval set up so is a setup of its own (its answers are not reused)."""
    from enrich import Enricher, load_config
    from enrich.evaluation.run import setup_key

    monkeypatch.setenv("ENRICH_LLM_SYSTEM_ROLE", "false")
    with Enricher(load_config()) as e:
        assert e.config.llm.system_role is False
        e.enrich("Agent: Hello.\nUser: I need a ride to the airport.\n")
        folded = setup_key(e, "a")
    (request,) = fake_llm.requests
    roles = [m["role"] for m in request["messages"]]
    assert roles == ["user"]
    assert "<transcript>" in request["messages"][0]["content"]
    assert request["messages"][0]["content"].index("JSON") < request["messages"][0][
        "content"
    ].index("<transcript>")
    monkeypatch.delenv("ENRICH_LLM_SYSTEM_ROLE")
    with Enricher(load_config()) as e:
        assert e.config.llm.system_role is True
        assert setup_key(e, "a") != folded
