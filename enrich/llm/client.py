"""Structured output from any OpenAI-compatible server, through the ``openai`` SDK.

:class:`StructuredLLM` asks for JSON that a pydantic model validates, in one of three modes:

- ``json_schema``: strict structured outputs (``response_format`` of type ``json_schema``);
- ``json_object``: JSON mode with the schema attached, as llama.cpp's server takes it
  (``{"type": "json_object", "schema": {...}}``); the prompt also shows the schema;
- ``tools``: one forced function call whose parameters are the schema.

An answer that fails validation is sent back with the errors (``reask.j2``) up to
``max_reasks`` times. A refusal or a truncated answer is an error at once: asking again would
only pay for the same answer. Transport faults (429, 5xx, timeouts, dropped connections) are
retried ``max_retries`` times with backoff that honours ``Retry-After``, by enrich rather than by
the SDK (whose own retries are off, so they never multiply): each try goes through the optional
:class:`~enrich.ratelimit.RateLimiter`, and a 429 pauses every caller sharing it. Usage is
summed over every attempt and travels with the result or the error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from .._perloop import PerLoop
from ..config import LLMSettings
from ..errors import (
    ConfigError,
    LLMError,
    LLMRefusalError,
    LLMTransportError,
    LLMTruncatedError,
    LLMValidationError,
    redact,
)
from ..models.usage import Usage
from .ratelimit import RateLimiter
from .tokens import get_counter

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = ["StructuredLLM", "LLMResult", "LLMStats", "format_validation_errors", "TOOL_NAME"]

log = logging.getLogger("enrich.llm")

T = TypeVar("T", bound=BaseModel)

TOOL_NAME = "record_enrichment"
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
_FENCED = re.compile(r"^\s*```(?:json|JSON)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


@dataclass
class LLMResult(Generic[T]):
    """A validated answer, what it cost, and every raw answer that led to it."""

    value: T
    usage: Usage
    attempts: int
    raw_outputs: list[str] = field(default_factory=list)
    model: str = ""


def format_validation_errors(exc: ValidationError) -> list[str]:
    """One line per problem: ``evaluation.is_success: Field required``."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return lines


_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass
class LLMStats:
    """Counts over the life of one :class:`StructuredLLM` (all its calls)."""

    requests: int = 0
    rate_limited: int = 0
    retries: int = 0


def _retry_after(response: Any) -> float | None:
    headers = getattr(response, "headers", None) or {}
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        if headers.get("retry-after"):
            return float(headers["retry-after"])
    except ValueError:
        return None
    return None


def _backoff(retry: int) -> float:
    base = min(8.0, 0.5 * 2**retry)
    return random.uniform(base / 2, base)


def _strip_fences(text: str) -> str:
    m = _FENCED.match(text)
    return m.group(1) if m else text


class StructuredLLM:
    """Validated structured output over the ``openai`` SDK's async client.

    The SDK client is created lazily, once per event loop, so a configured instance can be built
    anywhere (and pickled) before it is used.
    """

    def __init__(self, settings: LLMSettings, limiter: RateLimiter | None = None) -> None:
        self.settings = settings
        self.limiter = limiter
        self.stats = LLMStats()
        self._clients: PerLoop[AsyncOpenAI] = PerLoop()

    def __repr__(self) -> str:
        return f"StructuredLLM(model={self.settings.model!r}, mode={self.settings.mode!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "limiter": None,
            "stats": LLMStats(),
            "_clients": PerLoop(),
        }

    @property
    def base_url(self) -> str:
        return self.settings.base_url or DEFAULT_OPENAI_URL

    def check(self) -> None:
        """Raise :class:`ConfigError` if the LLM cannot be called at all (no key for OpenAI)."""
        if self.settings.api_key is None and self.settings.base_url is None:
            raise ConfigError(
                "OPENAI_API_KEY is not set: the LLM needs a key (or set OPENAI_BASE_URL to a "
                "server that needs none)"
            )

    def _client(self) -> AsyncOpenAI:
        return self._clients.get(self._new_client)

    def _new_client(self) -> AsyncOpenAI:
        self.check()
        from openai import AsyncOpenAI

        key = self.settings.api_key.get_secret_value() if self.settings.api_key else "unused"
        return AsyncOpenAI(
            api_key=key,
            base_url=self.base_url,
            timeout=self.settings.timeout,
            max_retries=0,  # enrich retries, through the rate limiter (see _send)
        )

    async def aclose(self) -> None:
        client = self._clients.pop()
        if client is not None:
            await client.close()

    # ------------------------------------------------------------------------------------------

    def _request(self, messages: list[dict[str, Any]], schema: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        kwargs: dict[str, Any] = {
            "model": s.model,
            "messages": messages,
            "max_tokens": s.max_tokens,
        }
        if s.temperature is not None:
            kwargs["temperature"] = s.temperature
        if s.mode == "json_schema":
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "enrichment", "strict": True, "schema": schema},
            }
        elif s.mode == "json_object":
            kwargs["response_format"] = {"type": "json_object", "schema": schema}
        else:
            kwargs["tools"] = [
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
            kwargs["tool_choice"] = {"type": "function", "function": {"name": TOOL_NAME}}
        return kwargs

    def _transport_error(
        self, exc: Exception, attempts: int, usage: Usage, raw: list[str]
    ) -> LLMError:
        import openai

        secrets = [self.settings.api_key]
        where = self.base_url
        retries = self.settings.max_retries
        status = getattr(exc, "status_code", None)
        detail = redact(str(getattr(exc, "message", "") or exc), secrets)
        if isinstance(exc, openai.APITimeoutError):
            msg = (
                f"the LLM at {where} did not answer within {self.settings.timeout:g}s "
                f"({retries} retries)"
            )
        elif isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            reason = redact(str(cause), secrets) or type(cause).__name__
            msg = f"cannot reach the LLM at {where}: {reason}"
        elif isinstance(exc, openai.AuthenticationError):
            msg = f"the LLM at {where} refused the API key (HTTP 401): check OPENAI_API_KEY"
        elif isinstance(exc, openai.PermissionDeniedError):
            msg = f"the LLM at {where} denied access (HTTP 403): {detail}"
        elif isinstance(exc, openai.NotFoundError):
            msg = (
                f"the LLM at {where} answered 404 for model {self.settings.model!r}: "
                f"check ENRICH_MODEL and OPENAI_BASE_URL ({detail})"
            )
        elif isinstance(exc, openai.RateLimitError):
            msg = (
                f"the LLM at {where} kept answering 429 (rate limited) after {retries} "
                f"retries: {detail}"
            )
        elif isinstance(exc, openai.BadRequestError):
            hint = ""
            if "response_format" in detail or "json_schema" in detail or "tool" in detail:
                hint = " (the server may not support this llm.mode: try json_object or tools)"
            msg = f"the LLM at {where} rejected the request (HTTP 400): {detail}{hint}"
        elif isinstance(exc, openai.APIStatusError):
            msg = f"the LLM at {where} answered HTTP {status} after {retries} retries: {detail}"
        else:
            msg = f"the LLM call failed: {detail}"
        return LLMTransportError(
            msg, status_code=status, attempts=attempts, usage=usage, raw_outputs=raw
        )

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        output: type[T],
        schema: dict[str, Any],
        reask: Callable[[list[str]], str],
        context: dict[str, Any] | None = None,
    ) -> LLMResult[T]:
        """Ask until ``output`` validates (with ``context``), or raise an :class:`LLMError`."""
        import openai

        client = self._client()
        messages = list(messages)
        usage = Usage()
        raw_outputs: list[str] = []
        attempts = 0
        max_attempts = self.settings.max_reasks + 1
        while True:
            attempts += 1
            try:
                response = await self._send(client, self._request(messages, schema))
            except openai.OpenAIError as exc:
                raise self._transport_error(exc, attempts, usage, raw_outputs) from None
            usage = usage + Usage.from_openai(response.usage)
            if not response.choices:
                raise LLMError(
                    "the LLM answered with no choices",
                    attempts=attempts,
                    usage=usage,
                    raw_outputs=raw_outputs,
                )
            choice = response.choices[0]
            message = choice.message
            tool_calls = [tc for tc in (message.tool_calls or []) if getattr(tc, "function", None)]
            text = tool_calls[0].function.arguments if tool_calls else (message.content or "")
            if text:
                raw_outputs.append(text)
            refusal = getattr(message, "refusal", None)
            if refusal or choice.finish_reason == "content_filter":
                raise LLMRefusalError(
                    f"the model refused: {refusal or 'stopped by a content filter'}",
                    attempts=attempts,
                    usage=usage,
                    raw_outputs=raw_outputs,
                )
            if choice.finish_reason == "length":
                raise LLMTruncatedError(
                    f"the answer was cut off at llm.max_tokens={self.settings.max_tokens} "
                    "(finish_reason: length): raise llm.max_tokens",
                    attempts=attempts,
                    usage=usage,
                    raw_outputs=raw_outputs,
                )
            try:
                if not text.strip():
                    raise ValueError("empty")
                value = output.model_validate_json(_strip_fences(text), context=context)
            except (ValidationError, ValueError) as exc:
                errors = (
                    format_validation_errors(exc)
                    if isinstance(exc, ValidationError)
                    else ["the answer was empty: return the JSON object"]
                )
                log.info("attempt %d: invalid answer: %s", attempts, "; ".join(errors))
                if attempts >= max_attempts:
                    raise LLMValidationError(
                        f"the answer was still invalid after {attempts} attempt(s): "
                        + "; ".join(errors),
                        errors=errors,
                        attempts=attempts,
                        usage=usage,
                        raw_outputs=raw_outputs,
                    ) from None
                messages += self._feedback(message, tool_calls, text, reask(errors))
                continue
            return LLMResult(
                value=value,
                usage=usage,
                attempts=attempts,
                raw_outputs=raw_outputs,
                model=response.model or self.settings.model,
            )

    async def _send(self, client: AsyncOpenAI, kwargs: dict[str, Any]) -> Any:
        """One request, paced by the rate limiter, retried on 429, 5xx, timeouts and dropped
        connections (``max_retries`` times, honouring ``Retry-After``)."""
        import openai
        from openai.types.chat import ChatCompletion

        estimate = 0
        if self.limiter is not None:
            counter = get_counter(self.settings.tokenizer)
            prompt = sum(counter.count(str(m.get("content") or "")) + 4 for m in kwargs["messages"])
            estimate = prompt + min(self.settings.max_tokens, 600)
        for retry in range(self.settings.max_retries + 1):
            if self.limiter is not None:
                await self.limiter.acquire(estimate)
            self.stats.requests += 1
            try:
                # The documented generic post(): the same request, errors and response type as
                # chat.completions.create(), without re-walking our plain-dict parameters
                # (schema included) through the SDK's TypedDict transform on every call.
                response = await client.post(
                    "/chat/completions", body=kwargs, cast_to=ChatCompletion
                )
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status == 429:
                    self.stats.rate_limited += 1
                if status not in _RETRY_STATUS or retry == self.settings.max_retries:
                    raise
                delay = _retry_after(exc.response)
                if status == 429 and self.limiter is not None:
                    delay = self.limiter.penalize(delay)  # everyone waits, not just this call
                delay = _backoff(retry) if delay is None else min(delay, 60.0)
            except (openai.APITimeoutError, openai.APIConnectionError):
                if retry == self.settings.max_retries:
                    raise
                delay = _backoff(retry)
            else:
                if self.limiter is not None:
                    actual = response.usage.total_tokens if response.usage else estimate
                    self.limiter.settle(estimate, actual)
                return response
            self.stats.retries += 1
            log.info("LLM request failed; retry %d in %.2fs", retry + 1, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    @staticmethod
    def _feedback(
        message: Any, tool_calls: list[Any], text: str, reask: str
    ) -> list[dict[str, Any]]:
        """The assistant's invalid answer and our correction, to append to the conversation."""
        if tool_calls:
            call = tool_calls[0]
            return [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.function.name, "arguments": text},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": call.id, "content": reask},
            ]
        return [
            {"role": "assistant", "content": text or json.dumps(None)},
            {"role": "user", "content": reask},
        ]
