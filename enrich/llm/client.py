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

What a hostile or misconfigured server can do is bounded, and each is an :class:`LLMError`:

- ``llm.timeout`` bounds the whole of one try (sending, waiting, reading all of the answer), not
  each read: a server that sends one byte a second is cut off like one that never answers;
- an answer over :func:`~enrich.llm.wire.max_answer_bytes` (derived from ``llm.max_tokens``,
  counted after decompression) is refused while it is read (:class:`LLMProtocolError`);
- an answer that is not a chat completion (an HTML page, junk, not UTF-8) is an
  :class:`LLMProtocolError` saying "not an OpenAI-compatible API at <url>";
- a redirect to another origin is never followed (the prompt would go there); a redirect on the
  same origin is;
- a ``Retry-After`` over :data:`~enrich._http.LONGEST_RETRY_AFTER` is not waited for: the
  request fails at once, with or without the rate limiter.

What is sent and how an answer is read, validated and corrected is :mod:`enrich.llm.wire`,
shared with the Batch API path (:mod:`enrich.llm.batches`); this module sends and retries.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import zlib
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from .._http import LONGEST_RETRY_AFTER, backoff, is_transient, origin, retry_after, same_origin
from .._perloop import PerLoop
from ..config import LLMSettings, key_problem
from ..errors import (
    ConfigError,
    LLMError,
    LLMProtocolError,
    LLMRefusalError,
    LLMTransportError,
    LLMTruncatedError,
    LLMValidationError,
    redact,
)
from ..models.usage import Usage
from .ratelimit import RateLimiter
from .tokens import get_counter
from .wire import (
    TOOL_NAME,
    Answer,
    NotACompletion,
    answer_from_bytes,
    max_answer_bytes,
    reask_messages,
    request_body,
    validate,
)

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = ["StructuredLLM", "LLMResult", "LLMStats", "TOOL_NAME"]

log = logging.getLogger("enrich.llm")

T = TypeVar("T", bound=BaseModel)

DEFAULT_OPENAI_URL = "https://api.openai.com/v1"

#: The answer size limit of the request being sent by this task (set by ``_send`` around one
#: chat completion; unset for the Batch API's uploads and downloads, which are not bounded).
_ANSWER_LIMIT: ContextVar[int | None] = ContextVar("enrich_llm_answer_limit", default=None)

#: The encodings a bounded request accepts: those whose decoded size can be counted as it is read.
_ACCEPT_ENCODING = "gzip, deflate"


class _BadAnswer(Exception):
    """An answer refused while it was read: ``too_big``, or encoded in a way not asked for."""

    def __init__(self, message: str, *, too_big: bool = False) -> None:
        super().__init__(message)
        self.too_big = too_big


class _Meter:
    """Counts an answer's bytes as they arrive, decompressed as the HTTP library will decompress
    them (gzip or deflate, in bounded pieces), and refuses it past ``limit``."""

    def __init__(self, limit: int, encodings: list[str]) -> None:
        self.limit = limit
        self.raw = self.decoded = 0
        self.first = True
        self.deflate = encodings == ["deflate"]
        self.z: Any = None
        if encodings in (["gzip"], ["x-gzip"]):
            self.z = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif self.deflate:
            self.z = zlib.decompressobj()
        elif encodings:
            raise _BadAnswer(
                f"the answer is encoded as {', '.join(encodings)!r}, which was not asked for "
                f"(Accept-Encoding: {_ACCEPT_ENCODING})"
            )

    def _count(self, n: int, total: int) -> int:
        total += n
        if total > self.limit:
            raise _BadAnswer(f"it is over {self.limit:,} bytes", too_big=True)
        return total

    def _inflate(self, chunk: bytes) -> bytes:
        first, self.first = self.first, False
        try:
            return self.z.decompress(chunk, 1 << 16)
        except zlib.error:
            if not (first and self.deflate):
                raise _BadAnswer("the answer's compressed body cannot be decompressed") from None
        self.z = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate: httpx tries it too
        return self._inflate(chunk)

    def feed(self, chunk: bytes) -> None:
        self.raw = self._count(len(chunk), self.raw)
        if self.z is None:
            self.decoded = self._count(len(chunk), self.decoded)
            return
        self.decoded = self._count(len(self._inflate(chunk)), self.decoded)
        while self.z.unconsumed_tail:
            out = self.z.decompress(self.z.unconsumed_tail, 1 << 16)
            self.decoded = self._count(len(out), self.decoded)


_STREAMS: dict[type, type] = {}


def _metered(response: Any, limit: int) -> Any:
    """``response``'s body stream, wrapped in a :class:`_Meter`. The wrapper subclasses the
    ``AsyncByteStream`` of the library ``response`` comes from (the openai SDK's ``httpx2``, or
    ``httpx`` for older SDKs), which the library requires of a body stream."""
    lib = sys.modules[type(response).__module__.partition(".")[0]]
    base = lib.AsyncByteStream
    if base not in _STREAMS:

        class Metered(base):  # type: ignore[misc, valid-type]
            def __init__(self, inner: Any, meter: _Meter) -> None:
                self.inner, self.meter = inner, meter

            async def __aiter__(self) -> Any:
                async for chunk in self.inner:
                    self.meter.feed(chunk)
                    yield chunk

            async def aclose(self) -> None:
                await self.inner.aclose()

        _STREAMS[base] = Metered
    values = response.headers.get_list("content-encoding", split_commas=True)
    encodings = [v.strip().lower() for v in values if v.strip().lower() not in ("", "identity")]
    meter = _Meter(limit, encodings)
    length = response.headers.get("content-length")
    if length and length.strip().isdigit() and int(length) > limit:
        raise _BadAnswer(f"it is {int(length):,} bytes, over {limit:,} bytes", too_big=True)
    return _STREAMS[base](response.stream, meter)


async def _on_response(response: Any) -> None:
    """The SDK's HTTP client's response hook: refuse a redirect to another origin (before it is
    followed: the request's body, the prompt, would go there), and meter the body of an answer
    whose size is bounded (:data:`_ANSWER_LIMIT`)."""
    if response.has_redirect_location:
        url = str(response.request.url)
        location = response.headers["location"]
        if not same_origin(url, location):
            import openai

            scheme, host, port = origin(str(response.request.url.join(location)))
            raise openai.APIStatusError(
                f"redirect (HTTP {response.status_code}) to another origin, "
                f"{scheme}://{host}:{port}: not followed",
                response=response,
                body=None,
            )
    limit = _ANSWER_LIMIT.get()
    if limit is not None:
        response.stream = _metered(response, limit)


#: The most requests in flight on one event loop: as many connections as the SDK's HTTP client
#: opens at most by default; more wait their turn.
MAX_CONNECTIONS = 1000


class _Clients:
    """One event loop's SDK clients, one request (one connection) each at a time: a request
    takes the most recently used free one (its connection is the likeliest alive), or a new one
    if none is free, and gives it back. An HTTP connection pool spends CPU on every request in
    proportion to its connections (it scans them, and probes each idle one's socket): 256
    requests in flight cost several times more in one pool than each in its own. The clients
    share one TLS set-up (making one costs ~20 ms of CPU)."""

    def __init__(self, make: Callable[[Any], AsyncOpenAI]) -> None:
        from openai import DefaultAsyncHttpxClient

        lib = sys.modules[DefaultAsyncHttpxClient.__mro__[1].__module__.partition(".")[0]]
        tls = getattr(lib, "create_ssl_context", None)  # httpx2's (httpx's for older SDKs)
        self._tls = tls() if tls is not None else None
        self._make = make
        self.first = make(self._tls)
        self.made = [self.first]
        self.free = [self.first]
        self.turn = asyncio.Semaphore(MAX_CONNECTIONS)

    def take(self) -> AsyncOpenAI:
        if self.free:
            return self.free.pop()
        self.made.append(self._make(self._tls))
        return self.made[-1]

    def give(self, client: AsyncOpenAI) -> None:
        self.free.append(client)


@dataclass
class LLMResult(Generic[T]):
    """A validated answer, what it cost, and every raw answer that led to it. ``repairs``: the
    answers accepted only once their JSON was repaired (:func:`~enrich.llm.wire.lenient_json`)."""

    value: T
    usage: Usage
    attempts: int
    raw_outputs: list[str] = field(default_factory=list)
    model: str = ""
    repairs: int = 0


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
        self._clients: PerLoop[_Clients] = PerLoop()

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
        """Raise :class:`ConfigError` if the LLM cannot be called at all (no key for OpenAI, or a
        key no HTTP header can carry: the configuration checks it too, this catches settings
        made without validation)."""
        if self.settings.api_key is None and self.settings.base_url is None:
            raise ConfigError(
                "OPENAI_API_KEY is not set: the LLM needs a key (or set OPENAI_BASE_URL to a "
                "server that needs none)"
            )
        if self.settings.api_key is not None:
            problem = key_problem(self.settings.api_key.get_secret_value())
            if problem is not None:
                raise ConfigError(f"OPENAI_API_KEY (llm.api_key): {problem}")

    def client(self) -> AsyncOpenAI:
        """The ``openai`` SDK client of the running event loop (made on first use), with the
        SDK's own retries off: :meth:`complete` retries, and :class:`~enrich.llm.BatchAPI`
        uses it as it is."""
        return self._pool().first

    def _pool(self) -> _Clients:
        """The running event loop's SDK clients (:class:`_Clients`), the first made now."""
        return self._clients.get(lambda: _Clients(self._new_client))

    def _new_client(self, tls: Any = None) -> AsyncOpenAI:
        self.check()
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        key = self.settings.api_key.get_secret_value() if self.settings.api_key else "unused"
        return AsyncOpenAI(
            api_key=key,
            base_url=self.base_url,
            timeout=self.settings.timeout,
            max_retries=0,  # enrich retries, through the rate limiter (see _send)
            # the SDK's own client (its limits; it follows redirects), with the hook that
            # refuses a redirect to another origin and meters bounded answers
            http_client=DefaultAsyncHttpxClient(
                event_hooks={"response": [_on_response]}, **({"verify": tls} if tls else {})
            ),
        )

    async def aclose(self) -> None:
        pool = self._clients.pop()
        for client in pool.made if pool is not None else ():
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
            system_role=s.system_role,
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
        if len(detail) > 500:
            detail = detail[:500] + "..."
        if isinstance(exc, openai.APIStatusError) and status is not None and 300 <= status < 400:
            location = exc.response.headers.get("location")
            if location and not same_origin(str(exc.response.request.url), location):
                scheme, host, port = origin(str(exc.response.request.url.join(location)))
                target = redact(f"{scheme}://{host}:{port}", secrets)
                msg = (
                    f"the LLM at {where} redirected the request (HTTP {status}) to another "
                    f"origin, {target}: not followed, so the prompt was not sent there (if the "
                    "API moved, set OPENAI_BASE_URL or llm.base_url to its new address)"
                )
            else:
                msg = f"the LLM at {where} answered HTTP {status} (a redirect enrich cannot follow)"
        elif isinstance(exc, openai.APITimeoutError):
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

        pool = self._pool()
        messages = list(messages)
        usage = Usage()
        raw_outputs: list[str] = []
        attempts = 0
        max_attempts = self.settings.max_reasks + 1
        while True:
            attempts += 1
            try:
                answer = await self._send(pool, self.request_body(messages, schema))
            except openai.OpenAIError as exc:
                raise self._transport_error(exc, attempts, usage, raw_outputs) from None
            except LLMError as exc:  # raised by _send itself: add what this call spent
                exc.attempts, exc.usage, exc.raw_outputs = attempts, usage, list(raw_outputs)
                raise
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
                    repairs=int(checked.repaired),
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

    async def _send(self, pool: _Clients, kwargs: dict[str, Any]) -> Answer:
        """One request, paced by the rate limiter, retried on 429, 5xx, timeouts and dropped
        connections (``max_retries`` times, honouring ``Retry-After`` up to
        :data:`~enrich._http.LONGEST_RETRY_AFTER`); its :class:`Answer`.

        Each try has ``llm.timeout`` for all of it, and its answer is refused past
        :func:`~enrich.llm.wire.max_answer_bytes`."""
        import openai

        s = self.settings
        estimate = 0
        if self.limiter is not None:
            counter = get_counter(s.tokenizer)
            prompt = sum(counter.count(str(m.get("content") or "")) + 4 for m in kwargs["messages"])
            estimate = prompt + min(s.max_tokens, 600)
        limit = max_answer_bytes(s.max_tokens)
        for retry in range(s.max_retries + 1):
            if self.limiter is not None:
                await self.limiter.acquire(estimate)
            self.stats.requests += 1
            token = _ANSWER_LIMIT.set(limit)
            try:
                # The documented generic post(): the same request and errors as
                # chat.completions.create(), read as bytes so that enrich, not the SDK, says
                # what an answer that is not a chat completion is (see answer_from_bytes).
                async with pool.turn:  # a client to itself (waiting for one is not the try's)
                    client = pool.take()
                    try:
                        async with asyncio.timeout(s.timeout):
                            content = await client.post(
                                "/chat/completions",
                                body=kwargs,
                                cast_to=bytes,
                                options={"headers": {"Accept-Encoding": _ACCEPT_ENCODING}},
                            )
                    finally:
                        pool.give(client)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status == 429:
                    self.stats.rate_limited += 1
                if not is_transient(status) or retry == s.max_retries:
                    raise
                delay = retry_after(exc.response.headers)
                if delay is not None and delay > LONGEST_RETRY_AFTER:
                    if status == 429 and self.limiter is not None:
                        await self.limiter.apenalize(LONGEST_RETRY_AFTER)  # the others wait, capped
                    raise LLMTransportError(
                        f"the LLM at {self.base_url} answered HTTP {status} and asked to wait "
                        f"{delay:,.0f}s before trying again (Retry-After): more than enrich "
                        f"waits ({LONGEST_RETRY_AFTER:g}s); try again later",
                        status_code=status,
                    ) from None
                if status == 429 and self.limiter is not None:
                    delay = await self.limiter.apenalize(delay)  # everyone waits, not this one
                delay = backoff(retry) if delay is None else min(delay, LONGEST_RETRY_AFTER)
            except (openai.APITimeoutError, openai.APIConnectionError, TimeoutError) as exc:
                if retry == s.max_retries:
                    if isinstance(exc, TimeoutError):  # the whole try's deadline
                        raise LLMTransportError(
                            f"the LLM at {self.base_url} did not answer within {s.timeout:g}s "
                            f"({s.max_retries} retries): the whole answer must arrive in "
                            "llm.timeout"
                        ) from None
                    raise
                delay = backoff(retry)
            except _BadAnswer as exc:
                if exc.too_big:
                    raise LLMProtocolError(
                        f"the answer of the LLM at {self.base_url} was refused: {exc} (the "
                        f"limit follows llm.max_tokens={s.max_tokens})"
                    ) from None
                raise LLMProtocolError(
                    f"not an OpenAI-compatible API at {self.base_url}: {exc}"
                ) from None
            else:
                try:
                    answer = answer_from_bytes(content)
                except NotACompletion as exc:
                    raise LLMProtocolError(
                        f"not an OpenAI-compatible API at {self.base_url}: "
                        f"{redact(str(exc), [s.api_key])}"
                    ) from None
                if self.limiter is not None:
                    u = answer.usage
                    actual = u.prompt_tokens + u.completion_tokens
                    await self.limiter.asettle(estimate, actual or estimate)
                return answer
            finally:
                _ANSWER_LIMIT.reset(token)
            self.stats.retries += 1
            log.info("LLM request failed; retry %d in %.2fs", retry + 1, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")
