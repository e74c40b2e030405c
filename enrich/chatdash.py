"""The ChatDash public API, over ``httpx``.

Per event loop, up to ``chatdash.max_connections`` connections kept alive, each its own
:class:`httpx.AsyncClient` of one connection (:class:`_Connections`; all share one cookie jar
and one TLS set-up, and the configured timeout), handed out last in, first out. A request waits
for a free one in a semaphore, never in ``httpcore``'s pool: that pool spends CPU on every
request in proportion to its connections times its queued requests, and hands one idle
connection to several queued requests, all but one of which then try again (a batch of 256
conversations queues up to 256 writes). The wait for a connection is not part of a try's
``chatdash.timeout``.

Every request sends the raw agency key in ``Authorization`` (no ``Bearer``). Ids are
percent-encoded as single path segments, so no id can change the path.

The transient statuses of :mod:`enrich._http` (408, 409, 429, 500, 502, 503, 504), timeouts and
dropped connections are retried with exponential backoff and jitter, honouring ``Retry-After``,
up to ``chatdash.max_attempts`` tries. Other answers of 300 and over are not retried; they become
a :class:`~enrich.errors.ChatDashError` in words a user can act on.

What a hostile or misconfigured server can do is bounded:

- ``chatdash.timeout`` bounds the whole of one try (sending, waiting, reading all of the answer),
  not each read: a server that sends one byte a second is cut off;
- a ``Retry-After`` is waited for at most ``chatdash.max_backoff``;
- a redirect is never followed (``httpx`` follows none unless asked): the error says where it
  pointed, so a moved API is fixed in ``CHATDASH_BASE_URL``;
- a write is confirmed only by a 2xx answer with a JSON object (the API answers
  ``{"message": ...}``): an HTML page from a proxy or a web UI is not a write;
- a request that cannot be built (an id too long for a URL, a header value no HTTP library sends)
  is a :class:`~enrich.errors.ChatDashError` marked ``permanent``, never an unhandled exception.
  :func:`conversation_path` refuses such ids up front, as :class:`~enrich.errors.InputError`,
  before anything is paid for.
"""

from __future__ import annotations

import asyncio
import logging
import time
import unicodedata
from collections.abc import Callable
from http.cookiejar import CookieJar
from typing import Any
from urllib.parse import quote

import httpx

from ._http import backoff, is_transient, retry_after
from ._perloop import PerLoop
from .config import ChatDashSettings, key_problem
from .errors import ChatDashError, ChatDashLookupError, ConfigError, InputError, redact

__all__ = ["ChatDash", "conversation_path"]

log = logging.getLogger("enrich.chatdash")


#: The longest id, once percent-encoded in the URL (ChatDash's ids are 24 characters, platforms'
#: call ids a few dozen): longer, it is not an id, and the URL would near what servers accept.
MAX_SEGMENT = 1024


def _segment(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what} is empty")
    if set(value) == {"."}:  # a proxy may normalise "." and ".." away, even percent-encoded
        raise InputError(f"{what} {value!r} is not an id")
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        kind = "a lone surrogate" if unicodedata.category(bad) == "Cs" else "a control character"
        raise InputError(
            f"{what} contains {kind} (U+{ord(bad):04X} at position {value.index(bad) + 1}): "
            "it is not an id"
        )
    encoded = quote(value, safe="")
    if len(encoded) > MAX_SEGMENT:
        raise InputError(
            f"{what} is too long to be an id: {len(value):,} characters ({len(encoded):,} in the "
            f"URL, at most {MAX_SEGMENT:,})"
        )
    return encoded


def conversation_path(agent_id: str, conversation_id: str) -> str:
    """``/agents/{agentId}/conversations/{conversationId}``, each id one encoded segment.

    Raises :class:`InputError` for an id that cannot make a request: empty, ``.`` or ``..``,
    with a control character or a lone surrogate, or longer than :data:`MAX_SEGMENT` once
    encoded."""
    return (
        f"/agents/{_segment(agent_id, 'agent id')}"
        f"/conversations/{_segment(conversation_id, 'conversation id')}"
    )


_NOT_JSON = object()


def _describe(response: httpx.Response) -> str:
    """What a body that is not the JSON expected is, in a few words: its type and first bytes."""
    kind = response.headers.get("content-type", "").split(";")[0].strip() or "no content type"
    head = response.content[:60].decode("utf-8", "replace")
    head = " ".join(head.split())
    return f"{kind} ({head!r}...)" if head else f"{kind}, empty"


def _error_detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error", "message"):
            if isinstance(data.get(key), str):
                return data[key][:300]
    return response.text[:300].strip() or response.reason_phrase


class _Connections:
    """One event loop's connections to ChatDash (see the module's docstring): clients of one
    connection each, made as requests need them, at most ``size``; :meth:`take` the most
    recently used free one (its connection is the likeliest to be alive), :meth:`give` it back.
    ``first`` builds every request (the clients differ only in their connection)."""

    def __init__(self, make: Callable[[], httpx.AsyncClient], size: int) -> None:
        self._make = make
        self.first = make()
        self.made = [self.first]
        self.free = [self.first]
        #: Held while a client is taken: no more than ``size`` are ever taken at once.
        self.turn = asyncio.Semaphore(size)

    def take(self) -> httpx.AsyncClient:
        if self.free:
            return self.free.pop()
        client = self._make()
        self.made.append(client)
        return client

    def give(self, client: httpx.AsyncClient) -> None:
        self.free.append(client)


class ChatDash:
    """A ChatDash API client; create it anywhere, it connects lazily per event loop."""

    def __init__(self, settings: ChatDashSettings) -> None:
        self.settings = settings
        self._clients: PerLoop[_Connections] = PerLoop()
        self._checked: tuple[Any, ...] | None = None  # the settings check() last passed

    def __repr__(self) -> str:
        return f"ChatDash(base_url={self.settings.base_url!r})"

    def check(self) -> None:
        """Raise :class:`ConfigError` if no request can be made: no key, a key no HTTP header
        can carry (the configuration checks it too; this catches settings made without
        validation), or a base URL ``httpx`` refuses. Settings that passed are not checked
        again (it is called before every conversation's LLM call)."""
        checking = (self.settings.base_url, self.settings.api_key)
        if checking == self._checked:
            return
        if self.settings.api_key is None:
            raise ConfigError("CHATDASH_API_KEY is not set: ChatDash needs the agency key")
        problem = key_problem(self.settings.api_key.get_secret_value())
        if problem is not None:
            raise ConfigError(f"CHATDASH_API_KEY (chatdash.api_key): {problem}")
        try:
            httpx.URL(f"{self.settings.base_url}/agents/a/conversations/c")
        except httpx.InvalidURL as exc:
            raise ConfigError(
                f"CHATDASH_BASE_URL (chatdash.base_url) is not a usable URL: {exc}"
            ) from None
        self._checked = checking

    def _connections(self) -> _Connections:
        return self._clients.get(self._new_connections)

    def _new_connections(self) -> _Connections:
        self.check()
        cookies = CookieJar()  # shared by all the loop's clients, as one client would keep them
        tls = httpx.create_ssl_context()  # the default (trust_env), read once, not per client
        headers = {
            "Authorization": self.settings.api_key.get_secret_value(),  # type: ignore[union-attr]
            "Accept": "application/json",
            "User-Agent": "enrich",
        }

        def make() -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=self.settings.base_url,
                timeout=self.settings.timeout,
                headers=headers,
                cookies=cookies,
                verify=tls,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            )

        return _Connections(make, self.settings.max_connections)

    async def aclose(self) -> None:
        connections = self._clients.pop()
        for client in connections.made if connections is not None else ():
            await client.aclose()

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        s = self.settings
        if response is not None:
            after = retry_after(response.headers)
            if after is not None:
                return min(after, s.max_backoff)
        return backoff(attempt - 1, first=s.backoff, cap=s.max_backoff)

    async def request(
        self, method: str, path: str, *, what: str, json: Any = None, params: Any = None
    ) -> Any:
        """Send one request with retries; return the decoded JSON answer (or ``None`` for a
        read answered with no body). Every failure is a :class:`ChatDashError`."""
        url = f"{self.settings.base_url}{path}"
        secrets = [self.settings.api_key]
        try:
            connections = self._connections()
            request = connections.first.build_request(method, path, json=json, params=params)
        except ConfigError:
            raise
        except (httpx.InvalidURL, httpx.HTTPError, ValueError, TypeError) as exc:
            # an id too long for a URL, a body JSON cannot carry (NaN), a header value...
            raise ChatDashError(
                f"{what}: the request cannot be built: "
                f"{redact(str(exc), secrets) or type(exc).__name__} ({method} {url[:200]})",
                method=method,
                url=url[:2000],
                permanent=True,
            ) from None
        attempts = self.settings.max_attempts
        deadline = time.monotonic() + self.settings.max_total_seconds
        for attempt in range(1, attempts + 1):
            response: httpx.Response | None = None
            try:
                async with connections.turn:
                    client = connections.take()
                    try:
                        async with asyncio.timeout(self.settings.timeout):  # all of one try
                            response = await client.send(request)
                    finally:
                        connections.give(client)
            except (httpx.TimeoutException, TimeoutError):
                problem = f"ChatDash did not answer within {self.settings.timeout:g}s"
            except httpx.LocalProtocolError as exc:  # the request itself cannot be sent
                raise ChatDashError(
                    f"{what}: the request cannot be sent: "
                    f"{redact(str(exc), secrets) or type(exc).__name__} ({method} {url})",
                    method=method,
                    url=url,
                    permanent=True,
                ) from None
            except httpx.HTTPError as exc:  # transport faults, an undecodable answer...
                problem = (
                    f"cannot reach ChatDash: {redact(str(exc), secrets) or type(exc).__name__}"
                )
            else:
                status = response.status_code
                if status < 300:
                    return self._answer(response, method, url, what)
                detail = redact(_error_detail(response), secrets)
                if not is_transient(status):
                    kind = ChatDashLookupError if method == "GET" else ChatDashError
                    location = response.headers.get("location") if status < 400 else None
                    raise kind(
                        self._redirected(status, what, redact(location, secrets))
                        if location
                        else self._explain(status, what, detail),
                        method=method,
                        url=url,
                        status_code=status,
                    )
                problem = f"ChatDash answered HTTP {status}: {detail}"
            delay = self._delay(attempt, response)
            if attempt == attempts or time.monotonic() + delay > deadline:
                raise ChatDashError(
                    f"{what} failed after {attempt} attempt(s): {problem} ({method} {url})",
                    method=method,
                    url=url,
                    status_code=response.status_code if response is not None else None,
                )
            log.warning(
                "%s: %s; retrying in %.1fs (%d/%d)", what, problem, delay, attempt, attempts
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _answer(self, response: httpx.Response, method: str, url: str, what: str) -> Any:
        """The JSON of a 2xx answer. A write is confirmed only by a JSON object (the API answers
        ``{"message": ...}``); a read answered with something that is not JSON is refused."""
        status = response.status_code
        try:
            data = response.json() if response.content else None
        except ValueError:  # not JSON, or not UTF-8
            data = _NOT_JSON
        if method == "GET":
            if data is _NOT_JSON:
                raise ChatDashLookupError(
                    f"{what}: ChatDash answered HTTP {status} with {_describe(response)}, not "
                    f"JSON: is CHATDASH_BASE_URL ({self.settings.base_url}) the API's address?",
                    method=method,
                    url=url,
                    status_code=status,
                )
            return data
        if not isinstance(data, dict):
            raise ChatDashError(
                f"{what}: ChatDash answered HTTP {status} with {_describe(response)}, not the "
                "JSON object the API confirms a write with: the write is not confirmed (is "
                f"CHATDASH_BASE_URL ({self.settings.base_url}) the API's address?)",
                method=method,
                url=url,
                status_code=status,
            )
        return data

    @staticmethod
    def _redirected(status: int, what: str, location: str) -> str:
        return (
            f"{what}: ChatDash answered a redirect (HTTP {status}) to {location[:200]}: not "
            "followed (enrich never sends a request on to another address); if the API moved, "
            "set CHATDASH_BASE_URL (chatdash.base_url) to its new address"
        )

    @staticmethod
    def _explain(status: int, what: str, detail: str) -> str:
        if status == 401:
            return f"{what}: ChatDash refused the API key (HTTP 401): check CHATDASH_API_KEY"
        if status == 403:
            return (
                f"{what}: ChatDash denied access (HTTP 403): the key may lack access to this "
                f"agent, or the agency's plan may not include the API ({detail})"
            )
        if status == 404:
            return f"{what}: not found in ChatDash (HTTP 404): check the agent and conversation ids"
        return f"{what}: ChatDash rejected the request (HTTP {status}): {detail}"

    async def get_conversation(
        self, agent_id: str, conversation_id: str, *, platform_id: bool = False
    ) -> dict[str, Any]:
        """One conversation; with ``platform_id`` the id is the platform's own (a Retell
        ``call_id``...), and the answer's ``_id`` is ChatDash's."""
        path = conversation_path(agent_id, conversation_id)
        kind = "platform id" if platform_id else "conversation"
        what = f"reading {kind} {conversation_id} of agent {agent_id}"
        data = await self.request(
            "GET", path, what=what, params={"isPlatformId": "true"} if platform_id else None
        )
        if not isinstance(data, dict):
            raise ChatDashError(f"{what}: ChatDash answered with no conversation object")
        return data

    async def resolve(self, agent_id: str, platform_id: str) -> str:
        """ChatDash's ``_id`` for a platform's call id (the PUT takes only the ``_id``)."""
        data = await self.get_conversation(agent_id, platform_id, platform_id=True)
        conversation_id = data.get("_id")
        if not isinstance(conversation_id, str) or not conversation_id:
            raise ChatDashError(f"ChatDash's conversation for platform id {platform_id} has no _id")
        return conversation_id

    async def get_messages(self, agent_id: str, conversation_id: str) -> list[dict[str, Any]]:
        """The conversation's messages, the transcript as ChatDash holds it."""
        path = conversation_path(agent_id, conversation_id) + "/messages"
        what = f"reading the messages of conversation {conversation_id} of agent {agent_id}"
        data = await self.request("GET", path, what=what)
        if isinstance(data, dict):  # tolerate {"messages": [...]} / {"data": [...]}
            data = data.get("messages", data.get("data"))
        if not isinstance(data, list):
            raise ChatDashError(f"{what}: ChatDash answered with no list of messages")
        return data

    async def list_conversations(
        self,
        agent_id: str,
        *,
        start: str | None = None,
        end: str | None = None,
        record: bool | None = None,
        interacted: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Conversations of an agent between ISO 8601 ``start`` and ``end`` (no pagination is
        documented: callers split long ranges)."""
        params = {
            k: (str(v).lower() if isinstance(v, bool) else v)
            for k, v in {
                "startDate": start,
                "endDate": end,
                "record": record,
                "interacted": interacted,
            }.items()
            if v is not None
        }
        path = f"/agents/{_segment(agent_id, 'agent id')}/conversations"
        data = await self.request(
            "GET", path, what=f"listing conversations of agent {agent_id}", params=params
        )
        if isinstance(data, dict):
            data = data.get("conversations", data.get("data"))
        if not isinstance(data, list):
            raise ChatDashError(f"listing conversations of agent {agent_id}: no list in the answer")
        return data

    async def update_conversation(
        self, agent_id: str, conversation_id: str, body: dict[str, Any]
    ) -> Any:
        """The partial ``PUT`` of one conversation."""
        what = f"writing conversation {conversation_id[:100]} of agent {agent_id[:100]}"
        try:
            path = conversation_path(agent_id, conversation_id)
        except InputError as exc:  # a pending write kept from before ids were checked
            raise ChatDashError(
                f"{what}: the request cannot be built: {exc}", method="PUT", permanent=True
            ) from None
        return await self.request("PUT", path, what=what, json=body)
