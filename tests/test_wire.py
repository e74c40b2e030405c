"""The chat completions wire (enrich.llm.wire): request bodies, reading, validating and
correcting answers. Pure functions: no server needed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationInfo, field_validator

from enrich.llm.batches import BatchStatus, read_output
from enrich.llm.wire import (
    EMPTY_ANSWER,
    TOOL_NAME,
    Answer,
    ToolCall,
    read_answer,
    reask_messages,
    request_body,
    strip_fences,
    validate,
)

MESSAGES = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Hi"}]
SCHEMA = {
    "type": "object",
    "properties": {"topic": {"type": "string"}, "ok": {"type": "boolean"}},
    "required": ["topic", "ok"],
    "additionalProperties": False,
}


class Out(BaseModel):
    topic: str
    ok: bool

    @field_validator("topic")
    @classmethod
    def _known(cls, v: str, info: ValidationInfo) -> str:
        allowed = (info.context or {}).get("topics")
        if allowed is not None and v not in allowed:
            raise ValueError(f"topic {v!r} is not in the taxonomy")
        return v


def completion(
    content: str | None = None,
    *,
    tool_arguments: str | None = None,
    refusal: str | None = None,
    finish_reason: str = "stop",
    choices: bool = True,
    usage: dict[str, Any] | None = None,
    model: str = "gpt-test",
) -> dict[str, Any]:
    """A ChatCompletion's JSON body, as a server (or a Batch API output row) sends it."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal}
    if tool_arguments is not None:
        message["tool_calls"] = [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": TOOL_NAME, "arguments": tool_arguments},
            }
        ]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": (
            [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}]
            if choices
            else []
        ),
        "usage": usage
        or {
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": 64},
        },
    }


# -- the request ---------------------------------------------------------------------------------


def test_json_schema_request_is_strict_structured_output():
    body = request_body(MESSAGES, SCHEMA, model="m", mode="json_schema", max_tokens=50)
    assert body == {
        "model": "m",
        "messages": MESSAGES,
        "max_tokens": 50,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "enrichment", "strict": True, "schema": SCHEMA},
        },
    }


def test_json_object_request_attaches_the_schema_as_llama_cpp_takes_it():
    body = request_body(
        MESSAGES, SCHEMA, model="m", mode="json_object", max_tokens=50, temperature=0.0
    )
    assert body["response_format"] == {"type": "json_object", "schema": SCHEMA}
    assert body["temperature"] == 0.0  # zero is sent, only None is left out
    assert "tools" not in body


def test_tools_request_forces_one_function_call():
    body = request_body(MESSAGES, SCHEMA, model="m", mode="tools", max_tokens=50, temperature=1)
    assert "response_format" not in body
    (tool,) = body["tools"]
    assert tool["type"] == "function"
    assert tool["function"]["name"] == TOOL_NAME == "record_enrichment"
    assert tool["function"]["parameters"] == SCHEMA and tool["function"]["strict"] is True
    assert body["tool_choice"] == {"type": "function", "function": {"name": TOOL_NAME}}
    assert body["temperature"] == 1


# -- reading an answer ---------------------------------------------------------------------------


def test_text_answer_is_read_with_usage_and_model():
    answer = read_answer(completion('{"topic": "Billing", "ok": true}'))
    assert answer.text == '{"topic": "Billing", "ok": true}'
    assert answer.tool_call is None and answer.refusal is None
    assert answer.finish_reason == "stop" and answer.model == "gpt-test"
    assert answer.usage.prompt_tokens == 100 and answer.usage.completion_tokens == 20
    assert answer.usage.cached_tokens == 64 and answer.usage.requests == 1
    assert answer.usable and not answer.refused and not answer.truncated


def test_tool_call_arguments_are_the_text():
    answer = read_answer(completion(tool_arguments='{"topic": "x", "ok": false}'))
    assert answer.text == '{"topic": "x", "ok": false}'
    assert answer.tool_call == ToolCall("call_1", TOOL_NAME, '{"topic": "x", "ok": false}')


def test_an_sdk_chat_completion_reads_as_its_json_does():
    from openai.types.chat import ChatCompletion

    body = completion(tool_arguments="{}")
    assert read_answer(ChatCompletion.model_validate(body)) == read_answer(body)


def test_refusal_and_content_filter_are_refused_not_usable():
    refused = read_answer(completion(refusal="I cannot analyse this."))
    assert refused.refused and not refused.usable and refused.refusal == "I cannot analyse this."
    filtered = read_answer(completion("", finish_reason="content_filter"))
    assert filtered.refused and filtered.refusal is None and not filtered.usable


def test_truncated_answer_is_not_usable():
    answer = read_answer(completion('{"topic": "Bil', finish_reason="length"))
    assert answer.truncated and not answer.usable and not answer.refused
    assert answer.text == '{"topic": "Bil'  # kept: it was paid for


def test_no_choices_still_counts_the_usage():
    answer = read_answer(completion(choices=False))
    assert not answer.has_choice and not answer.usable and answer.text == ""
    assert answer.usage.requests == 1 and answer.usage.prompt_tokens == 100


# -- validating ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"topic": "Billing", "ok": true}',
        '```json\n{"topic": "Billing", "ok": true}\n```',
        '```JSON\n{"topic": "Billing", "ok": true}\n```\n',
        '  ```\n{"topic": "Billing", "ok": true}\n```  ',
        '```json{"topic": "Billing", "ok": true}```',
    ],
    ids=["plain", "fenced", "upper", "bare-fence", "one-line"],
)
def test_valid_answer_with_or_without_a_fence(text):
    checked = validate(text, Out)
    assert checked.ok and checked.errors == []
    assert checked.value == Out(topic="Billing", ok=True)


def test_strip_fences_leaves_other_text_alone():
    assert strip_fences('{"a": "```"}') == '{"a": "```"}'
    assert strip_fences("```json\n{}\n```") == "{}"


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_answer_is_an_error(text):
    checked = validate(text, Out)
    assert not checked.ok and checked.value is None
    assert checked.errors == [EMPTY_ANSWER]


def test_invalid_json_is_an_error():
    checked = validate("not json at all", Out)
    assert checked.value is None
    (error,) = checked.errors
    assert "Invalid JSON" in error


def test_schema_errors_are_one_line_each():
    checked = validate('```json\n{"ok": "maybe"}\n```', Out)
    assert checked.errors == [
        "topic: Field required",
        "ok: Input should be a valid boolean, unable to interpret input",
    ]


def test_context_reaches_the_validators():
    text = '{"topic": "Shipping", "ok": true}'
    assert validate(text, Out).ok
    checked = validate(text, Out, context={"topics": ["Billing"]})
    assert checked.errors == ["topic: topic 'Shipping' is not in the taxonomy"]


# -- re-asking -----------------------------------------------------------------------------------


def test_reask_after_a_text_answer():
    answer = read_answer(completion('{"topic": 1}'))
    assert reask_messages(answer, "fix: topic") == [
        {"role": "assistant", "content": '{"topic": 1}'},
        {"role": "user", "content": "fix: topic"},
    ]


def test_reask_after_an_empty_answer_keeps_the_turns_valid():
    assert reask_messages(Answer(text=""), "fix")[0] == {"role": "assistant", "content": "null"}


def test_reask_after_a_tool_call_answers_the_call():
    answer = read_answer(completion(tool_arguments='{"topic": 1}'))
    call, feedback = reask_messages(answer, "fix: topic")
    assert call == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": TOOL_NAME, "arguments": '{"topic": 1}'},
            }
        ],
    }
    assert feedback == {"role": "tool", "tool_call_id": "call_1", "content": "fix: topic"}


# -- Batch API output rows -----------------------------------------------------------------------


def test_batch_output_rows_are_read_as_answers():
    def row(custom_id: str, status: int, body: Any) -> str:
        return json.dumps(
            {"custom_id": custom_id, "response": {"status_code": status, "body": body}}
        )

    text = "\n".join(
        [
            row("0", 200, completion('```json\n{"topic": "Billing", "ok": true}\n```')),
            row("1", 500, {"error": {"message": "server error"}}),
            row("2", 200, {"not": "a completion"}),
            json.dumps({"custom_id": "3", "response": None, "error": {"code": "expired"}}),
            "",
        ]
    )
    out = read_output(text)
    assert set(out) == {"0", "1", "2", "3"}  # every row was attempted
    assert out["1"] is None and out["2"] is None and out["3"] is None
    assert validate(out["0"].text, Out).value == Out(topic="Billing", ok=True)


@pytest.mark.parametrize(
    ("status", "done"),
    [
        ("validating", False),
        ("in_progress", False),
        ("finalizing", False),
        ("completed", True),
        ("failed", True),
        ("expired", True),
        ("cancelled", True),
    ],
)
def test_batch_status_done(status, done):
    assert BatchStatus(id="batch_1", status=status).done is done


#: Answers from servers that send more, less or other than OpenAI does.
ODD_COMPLETIONS = [
    {"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4,
     "prompt_tokens_details": {"cached_tokens": 1}},
     "choices": [{"message": {"content": "{}"}, "finish_reason": "stop"}]},
    {"choices": [{"message": {"content": "{}"}, "finish_reason": "stop"}]},  # no model, no usage
    {"model": "m", "choices": [{"message": {"content": "{}"}}]},  # no finish_reason
    {"model": "m", "choices": [{"message": {}, "finish_reason": "stop"}]},  # no content
    {"model": None, "choices": [{"message": {"content": "x"}, "finish_reason": None}]},
    {"model": "m", "usage": {"prompt_tokens": "5"}, "choices": [{"message": {"content": "x"}}]},
    {"model": "m", "usage": 7, "choices": [{"message": {"content": "x"}}]},
    {"model": "m", "usage": {"prompt_tokens": 1, "prompt_tokens_details": None},
     "choices": [{"message": {"content": "x"}}]},
    {"model": "m", "choices": [{"message": {"tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        "finish_reason": "stop"}]},
    {"model": "m", "choices": [{"message": {"content": "x", "tool_calls": [{"id": "c1"}]}}]},
    {"model": "m", "choices": [{"message": {"content": None, "refusal": "no"}}]},
    {"model": "m", "choices": [], "usage": {"prompt_tokens": 9}},
]  # fmt: skip


@pytest.mark.parametrize("data", ODD_COMPLETIONS)
def test_an_answer_is_read_from_its_json_as_the_sdk_reads_it(data):
    # answer_from_bytes reads the decoded JSON itself, without the SDK's models: it must read
    # what the SDK's own lenient construct() reads
    from openai.types.chat import ChatCompletion

    from enrich.llm.wire import answer_from_bytes

    assert answer_from_bytes(json.dumps(data).encode()) == read_answer(
        ChatCompletion.construct(**data)
    )
