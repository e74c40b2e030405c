"""Structured output from any OpenAI-compatible server, through the ``openai`` SDK.

:class:`StructuredLLM` asks for JSON that a pydantic model validates, in one of three modes:

- ``json_schema``: strict structured outputs (``response_format`` of type ``json_schema``);
- ``json_object``: JSON mode with the schema attached, as llama.cpp's server takes it
  (``{"type": "json_object", "schema": {...}}``); the prompt also shows the schema;
- ``tools``: one forced function call whose parameters are the schema.

An answer that fails validation is sent back with the errors (``reask.j2``) up to
``max_reasks`` times. A refusal or a truncated answer is an error at once: asking again would
only pay for the same answer. Transport faults (the transient statuses of :mod:`enrich._http`,
timeouts, dropped connections) are retried ``max_retries`` times with backoff that honours
``Retry-After``, by enrich rather than by the SDK (whose own retries are off, so they never
multiply): each try goes through the optional :class:`~enrich.ratelimit.RateLimiter`, and a 429
pauses every caller sharing it. Usage is summed over every attempt and travels with the result
or the error.

What is sent and how an answer is read, validated and corrected is :mod:`enrich.llm.wire`,
shared with the Batch API path (:mod:`enrich.llm.batches`); this module sends and retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from .._http import backoff, is_transient, retry_after
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
    validation_errors,
)
from ..models.usage import Usage
from .ratelimit import RateLimiter
from .tokens import get_counter
from .wire import TOOL_NAME, read_answer, reask_messages, request_body, validate

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = ["StructuredLLM", "LLMResult", "LLMStats", "format_validation_errors", "TOOL_NAME"]

log = logging.getLogger("enrich.llm")

T = TypeVar("T", bound=BaseModel)

DEFAULT_OPENAI_URL = "https://api.openai.com/v1"

#: One line per problem of a pydantic ``ValidationError`` (:func:`enrich.errors.validation_errors`).
format_validation_errors = validation_errors


@dataclass
class LLMResult(Generic[T]):
    """A validated answer, what it cost, and every raw answer that led to it."""

    value: T
    usage: Usage
    attempts: int
    raw_outputs: list[str] = field(default_factory=list)
    model: str = ""


@dataclass
class LLMStats:
    """Counts over the life of one :class:`StructuredLLM` (all its calls)."""

    requests: int = 0
    rate_limited: int = 0
    retries: int = 0


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

    def client(self) -> AsyncOpenAI:
        """The ``openai`` SDK client of the running event loop (made on first use), with the
        SDK's own retries off: :meth:`complete` retries, and :class:`~enrich.llm.BatchAPI`
        uses it as it is."""
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

    def request_body(
        self, messages: list[dict[str, Any]], schema: dict[str, Any]
    ) -> dict[str, Any]:
        """The body of one chat completion request for ``messages``, asking for ``schema`` in
        the configured mode (:func:`enrich.llm.wire.request_body`)."""
        s = self.settings
        return request_body(
            messages,
            schema,
            model=s.model,
            mode=s.mode,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
        )

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

        client = self.client()
        messages = list(messages)
        usage = Usage()
        raw_outputs: list[str] = []
        attempts = 0
        max_attempts = self.settings.max_reasks + 1
        while True:
            attempts += 1
            try:
                response = await self._send(client, self.request_body(messages, schema))
            except openai.OpenAIError as exc:
                raise self._transport_error(exc, attempts, usage, raw_outputs) from None
            answer = read_answer(response)
            usage = usage + answer.usage
            if not answer.has_choice:
                raise LLMError(
                    "the LLM answered with no choices",
                    attempts=attempts,
                    usage=usage,
                    raw_outputs=raw_outputs,
                )
            if answer.text:
                raw_outputs.append(answer.text)
            if answer.refused:
                raise LLMRefusalError(
                    f"the model refused: {answer.refusal or 'stopped by a content filter'}",
                    attempts=attempts,
                    usage=usage,
                    raw_outputs=raw_outputs,
                )
            if answer.truncated:
                raise LLMTruncatedError(
                    f"the answer was cut off at llm.max_tokens={self.settings.max_tokens} "
                    "(finish_reason: length): raise llm.max_tokens",
                    attempts=attempts,
                    usage=usage,
                    raw_outputs=raw_outputs,
                )
            checked = validate(answer.text, output, context=context)
            if checked.ok and checked.value is not None:
                return LLMResult(
                    value=checked.value,
                    usage=usage,
                    attempts=attempts,
                    raw_outputs=raw_outputs,
                    model=answer.model or self.settings.model,
                )
            errors = checked.errors
            log.info("attempt %d: invalid answer: %s", attempts, "; ".join(errors))
            if attempts >= max_attempts:
                raise LLMValidationError(
                    f"the answer was still invalid after {attempts} attempt(s): "
                    + "; ".join(errors),
                    errors=errors,
                    attempts=attempts,
                    usage=usage,
                    raw_outputs=raw_outputs,
                )
            messages += reask_messages(answer, reask(errors))

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
                if not is_transient(status) or retry == self.settings.max_retries:
                    raise
                delay = retry_after(exc.response.headers)
                if status == 429 and self.limiter is not None:
                    delay = self.limiter.penalize(delay)  # everyone waits, not just this call
                delay = backoff(retry) if delay is None else min(delay, 60.0)
            except (openai.APITimeoutError, openai.APIConnectionError):
                if retry == self.settings.max_retries:
                    raise
                delay = backoff(retry)
            else:
                if self.limiter is not None:
                    actual = response.usage.total_tokens if response.usage else estimate
                    self.limiter.settle(estimate, actual)
                return response
            self.stats.retries += 1
            log.info("LLM request failed; retry %d in %.2fs", retry + 1, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")
