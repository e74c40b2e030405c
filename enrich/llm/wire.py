"""The chat completions wire, in one place: what enrich sends and how it reads what comes back.

Pure functions and dataclasses, no I/O. The direct path (:class:`~enrich.llm.StructuredLLM`)
and the Batch API path (:mod:`enrich.engine.batchapi`) both use them, so an answer one path
accepts the other accepts too.

- :func:`request_body`: the body of one request, in one of three modes: ``json_schema`` (strict
  structured outputs), ``json_object`` (JSON mode with the schema attached, as llama.cpp's server
  takes it: ``{"type": "json_object", "schema": {...}}``) or ``tools`` (one forced function call
  whose parameters are the schema);
- :func:`read_answer`: the :class:`Answer` in a ChatCompletion (the text or the tool call's
  arguments, the refusal, ``finish_reason``, usage, model);
- :func:`validate`: the answer's text as a validated value, or the list of what is wrong with it
  (a ```` ```json ```` fence around the JSON is accepted, an empty answer is an error);
- :func:`reask_messages`: the assistant's invalid answer and the correction, to append to the
  conversation before asking again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import validation_errors
from ..models.usage import Usage

__all__ = [
    "TOOL_NAME",
    "Mode",
    "ToolCall",
    "Answer",
    "Validated",
    "request_body",
    "read_answer",
    "strip_fences",
    "validate",
    "reask_messages",
    "EMPTY_ANSWER",
]

T = TypeVar("T", bound=BaseModel)

#: How the schema is asked for (``llm.mode``).
Mode = Literal["json_schema", "json_object", "tools"]

#: The name of the one function the ``tools`` mode forces.
TOOL_NAME = "record_enrichment"

#: The error fed back for an answer with no text at all.
EMPTY_ANSWER = "the answer was empty: return the JSON object"

_FENCED = re.compile(r"^\s*```(?:json|JSON)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def request_body(
    messages: list[dict[str, Any]],
    schema: dict[str, Any],
    *,
    model: str,
    mode: Mode,
    max_tokens: int,
    temperature: float | None = None,
) -> dict[str, Any]:
    """The JSON body of one chat completion request asking for ``schema`` in ``mode``."""
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    if temperature is not None:
        body["temperature"] = temperature
    if mode == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "enrichment", "strict": True, "schema": schema},
        }
    elif mode == "json_object":
        body["response_format"] = {"type": "json_object", "schema": schema}
    else:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": TOOL_NAME,
                    "description": "Record the analytics of the conversation.",
                    "parameters": schema,
                    "strict": True,
                },
            }
        ]
        body["tool_choice"] = {"type": "function", "function": {"name": TOOL_NAME}}
    return body


@dataclass(frozen=True)
class ToolCall:
    """The function call an answer made (``tools`` mode)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Answer:
    """What one ChatCompletion said: ``text`` is the message's content, or the arguments of its
    first function call (``tool_call``) when it made one."""

    text: str = ""
    tool_call: ToolCall | None = None
    refusal: str | None = None
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    has_choice: bool = True

    @property
    def refused(self) -> bool:
        """The model refused, or a content filter stopped it: asking again pays for the same."""
        return bool(self.refusal) or self.finish_reason == "content_filter"

    @property
    def truncated(self) -> bool:
        """The answer hit the token limit before it was complete."""
        return self.finish_reason == "length"

    @property
    def usable(self) -> bool:
        """There is an answer to validate: a choice, neither refused nor cut off."""
        return self.has_choice and not self.refused and not self.truncated


def read_answer(completion: Any) -> Answer:
    """The :class:`Answer` in ``completion``: an ``openai`` ``ChatCompletion``, or its JSON body
    as a dict (a Batch API output row's ``response.body``)."""
    if isinstance(completion, Mapping):
        from openai.types.chat import ChatCompletion

        completion = ChatCompletion.model_validate(completion)
    usage = Usage.from_openai(completion.usage)
    model = completion.model or ""
    if not completion.choices:
        return Answer(usage=usage, model=model, has_choice=False)
    choice = completion.choices[0]
    message = choice.message
    calls = [c for c in (message.tool_calls or []) if getattr(c, "function", None)]
    call = (
        ToolCall(id=calls[0].id, name=calls[0].function.name, arguments=calls[0].function.arguments)
        if calls
        else None
    )
    return Answer(
        text=call.arguments if call else (message.content or ""),
        tool_call=call,
        refusal=getattr(message, "refusal", None),
        finish_reason=choice.finish_reason,
        usage=usage,
        model=model,
    )


def strip_fences(text: str) -> str:
    """``text`` without a Markdown code fence around it (```` ```json ... ``` ````), which some
    models add even in JSON mode."""
    m = _FENCED.match(text)
    return m.group(1) if m else text


@dataclass(frozen=True)
class Validated(Generic[T]):
    """An answer checked against the output model: its ``value``, or the ``errors`` (one line
    each, the form fed back in a re-ask)."""

    value: T | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def validate(text: str, output: type[T], *, context: dict[str, Any] | None = None) -> Validated[T]:
    """``text`` (fences stripped) validated as ``output`` with ``context``."""
    if not text.strip():
        return Validated(errors=[EMPTY_ANSWER])
    try:
        return Validated(value=output.model_validate_json(strip_fences(text), context=context))
    except ValidationError as exc:
        return Validated(errors=validation_errors(exc))


def reask_messages(answer: Answer, correction: str) -> list[dict[str, Any]]:
    """The assistant's invalid ``answer`` and our ``correction``, to append to the conversation:
    a function call is answered by a ``tool`` message, a text by a ``user`` message."""
    call = answer.tool_call
    if call is not None:
        return [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": answer.text},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": correction},
        ]
    return [
        {"role": "assistant", "content": answer.text or json.dumps(None)},
        {"role": "user", "content": correction},
    ]
