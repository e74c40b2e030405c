"""The chat completions wire, in one place: what enrich sends and how it reads what comes back.

Pure functions and dataclasses, no I/O. The direct path (:class:`~enrich.llm.StructuredLLM`)
and the Batch API path (:mod:`enrich.engine.batchapi`) both use them, so an answer one path
accepts the other accepts too.

- :func:`request_body`: the body of one request, in one of three modes: ``json_schema`` (strict
  structured outputs), ``json_object`` (JSON mode with the schema attached, as llama.cpp's server
  takes it: ``{"type": "json_object", "schema": {...}}``) or ``tools`` (one forced function call
  whose parameters are the schema);
- :func:`read_answer`: the :class:`Answer` in a ChatCompletion (the text or the tool call's
  arguments, the refusal, ``finish_reason``, usage, model); :func:`answer_from_bytes` reads it
  from the raw body of an answer, and says in plain words (:class:`NotACompletion`) when that
  body is not a chat completion at all (an HTML page, junk, text that is not UTF-8);
- :func:`max_answer_bytes`: the size over which an answer is refused, derived from
  ``llm.max_tokens`` and far above any real answer;
- :func:`validate`: the answer's text as a validated value, or the list of what is wrong with it
  (an empty answer is an error). JSON broken in the ways small models break it, where what was
  meant is not in doubt, is read as it was meant, and the answer is counted as ``repaired``
  (:func:`lenient_json`): a ```` ```json ```` fence around it, raw line feeds or tabs inside its
  strings, chatter after the object. Anything else is invalid and re-asked;
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
from ..models.usage import Usage, key_or_attr

__all__ = [
    "TOOL_NAME",
    "Mode",
    "ToolCall",
    "Answer",
    "Validated",
    "request_body",
    "read_answer",
    "strip_fences",
    "fold_system",
    "lenient_json",
    "validate",
    "reask_messages",
    "EMPTY_ANSWER",
    "NotACompletion",
    "answer_from_bytes",
    "max_answer_bytes",
]

T = TypeVar("T", bound=BaseModel)

#: How the schema is asked for (``llm.mode``).
Mode = Literal["json_schema", "json_object", "tools"]

#: The name of the one function the ``tools`` mode forces.
TOOL_NAME = "record_enrichment"

#: The error fed back for an answer with no text at all.
EMPTY_ANSWER = "the answer was empty: return the JSON object"

_FENCED = re.compile(r"^\s*```(?:json|JSON)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)
_OPENING_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\n?")


def request_body(
    messages: list[dict[str, Any]],
    schema: dict[str, Any],
    *,
    model: str,
    mode: Mode,
    max_tokens: int,
    temperature: float | None = None,
    system_role: bool = True,
) -> dict[str, Any]:
    """The JSON body of one chat completion request asking for ``schema`` in ``mode``. Without
    ``system_role`` the system messages are sent as the start of the first user message
    (:func:`fold_system`), for models that have no system role."""
    if not system_role:
        messages = fold_system(messages)
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


def fold_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with no system message: each one's text goes, in order, at the start of
    the first user message, a blank line after it, as Gemma's own chat template does. A
    server's chat format for a model without a system role may otherwise drop it (llama.cpp's
    ``--chat_format gemma`` does, silently)."""
    system = [m["content"] for m in messages if m.get("role") == "system"]
    rest = [m for m in messages if m.get("role") != "system"]
    if not system:
        return messages
    lead = "\n\n".join(str(text) for text in system)
    for i, m in enumerate(rest):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return [*rest[:i], {**m, "content": f"{lead}\n\n{m['content']}"}, *rest[i + 1 :]]
    return [{"role": "user", "content": lead}, *rest]


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


def _read_json_answer(data: Mapping[str, Any]) -> Answer:
    """:func:`read_answer` on a completion's decoded JSON, as leniently as the openai SDK's
    ``construct`` reads it (servers differ in the fields they send: a missing one is None), read
    from the dicts as they are: building the SDK's models costs more CPU than the rest of it."""
    usage = Usage.from_openai(data.get("usage"))
    model = data.get("model") or ""
    choices = data["choices"]
    if not choices:
        return Answer(usage=usage, model=model, has_choice=False)
    choice = choices[0]
    message = choice["message"]
    calls = [c for c in (message.get("tool_calls") or []) if key_or_attr(c, "function")]
    call = None
    if calls:
        function = key_or_attr(calls[0], "function")
        call = ToolCall(
            id=key_or_attr(calls[0], "id"), name=function["name"], arguments=function["arguments"]
        )
    return Answer(
        text=call.arguments if call else (message.get("content") or ""),
        tool_call=call,
        refusal=message.get("refusal"),
        finish_reason=choice.get("finish_reason"),
        usage=usage,
        model=model,
    )


class NotACompletion(ValueError):
    """The body of an answer is not an OpenAI-compatible chat completion; the message says what
    it is instead, in plain words."""


#: Bytes of answer allowed per token of ``max_tokens``: a token is a few characters, each at most
#: 12 bytes once JSON-escaped twice (a tool call's arguments are a JSON string in JSON), and the
#: body adds its envelope (ids, usage, finish reason).
ANSWER_BYTES_PER_TOKEN = 256
#: The smallest limit, whatever ``max_tokens`` says.
MIN_ANSWER_BYTES = 1 << 20


def max_answer_bytes(max_tokens: int) -> int:
    """The largest answer body accepted for a request of ``max_tokens``: 256 bytes a token, at
    least 1 MiB (512 kB of answer for 2,000 tokens, whose real answers weigh a few kB)."""
    return max(MIN_ANSWER_BYTES, max_tokens * ANSWER_BYTES_PER_TOKEN)


def _excerpt(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def answer_from_bytes(content: bytes) -> Answer:
    """The :class:`Answer` in the raw body of a chat completion, or :class:`NotACompletion`
    saying what the body is instead."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotACompletion(
            f"the answer is not UTF-8 text (byte 0x{content[exc.start]:02x} at {exc.start})"
        ) from None
    stripped = text.lstrip("\ufeff \t\r\n")
    if not stripped:
        raise NotACompletion("the answer is empty (HTTP 200 with no body)")
    if stripped.startswith("<"):
        raise NotACompletion(
            f"the answer is an HTML or XML page, not JSON: {_excerpt(stripped)} (does the base "
            "URL point at a web page rather than the API? it usually ends in /v1)"
        )
    try:
        data = json.loads(stripped)
    except ValueError:
        raise NotACompletion(f"the answer is not JSON: {_excerpt(stripped)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise NotACompletion(
            f"the JSON answer is not a chat completion (no list of choices): {_excerpt(stripped)}"
        )
    choices = data["choices"]
    if choices and not (
        isinstance(choices[0], dict) and isinstance(choices[0].get("message"), dict)
    ):
        raise NotACompletion("the JSON answer's first choice has no message object")
    try:
        answer = _read_json_answer(data)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
        raise NotACompletion(f"the JSON answer is not a chat completion ({exc})") from None
    fields = (("content", answer.text), ("finish_reason", answer.finish_reason))
    for name, value in (*fields, ("model", answer.model)):
        if value is not None and not isinstance(value, str):
            raise NotACompletion(f"the JSON answer's {name} is not a string")
    if answer.refusal is not None and not isinstance(answer.refusal, str):
        raise NotACompletion("the JSON answer's refusal is not a string")
    return answer


def strip_fences(text: str) -> str:
    """``text`` without a Markdown code fence around it (```` ```json ... ``` ````), which some
    models add even in JSON mode."""
    m = _FENCED.match(text)
    return m.group(1) if m else text


#: Reads JSON whose strings hold raw control characters (line feeds, tabs), and the first JSON
#: value of a text (``raw_decode``).
_LENIENT = json.JSONDecoder(strict=False)


def lenient_json(text: str) -> tuple[str, bool]:
    """``text`` as the JSON it means, and whether it had to be repaired to get it.

    The repairs, each of which leaves no doubt about what was meant: a Markdown fence around the
    JSON is removed (and what follows its closing line); raw line feeds, tabs and other control
    characters inside strings (which JSON wants escaped) are read as themselves
    (``json.loads(strict=False)``); text after a complete JSON object (``{...} I hope this
    helps!``) is dropped. Text that is not JSON whatever is done with it comes back as it is
    (stripped of a fence), for the validator to say what is wrong with it: nothing is guessed
    (no quote or brace is added, no text before the object is skipped)."""
    body = strip_fences(text)
    fenced = body is not text  # strip_fences returns ``text`` itself when there is no fence
    try:
        json.loads(body)
        return body, fenced
    except ValueError:
        pass
    start = body.lstrip()
    opening = _OPENING_FENCE.match(start)  # a fence with words after its closing line
    if opening:
        start = start[opening.end() :]
    try:
        value, _ = _LENIENT.raw_decode(start)
    except ValueError:
        return body, False
    if not isinstance(value, dict):
        return body, False  # a bare string or number followed by words is not an answer
    return json.dumps(value, ensure_ascii=False), True


@dataclass(frozen=True)
class Validated(Generic[T]):
    """An answer checked against the output model: its ``value``, or the ``errors`` (one line
    each, the form fed back in a re-ask). ``repaired``: the JSON was read only after a repair
    (:func:`lenient_json`)."""

    value: T | None = None
    errors: list[str] = field(default_factory=list)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors


def validate(text: str, output: type[T], *, context: dict[str, Any] | None = None) -> Validated[T]:
    """``text`` validated as ``output`` with ``context``, once :func:`lenient_json` has read it
    (a repaired answer is ``repaired``; one still invalid gets its errors)."""
    if not text.strip():
        return Validated(errors=[EMPTY_ANSWER])
    body, repaired = lenient_json(text)
    try:
        value = output.model_validate_json(body, context=context)
    except ValidationError as exc:
        return Validated(errors=validation_errors(exc), repaired=repaired)
    return Validated(value=value, repaired=repaired)


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
