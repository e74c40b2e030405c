"""The fake ChatDash: the part of the ChatDash API enrich uses, conversations in memory, every
request recorded, each PUT body checked against the contract's schema, and faults on demand."""

from __future__ import annotations

import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ._server import _Base
from .openapi import validate_openapi

__all__ = ["FakeChatDash", "Fault"]


@dataclass
class Fault:
    """A scripted failure of :class:`FakeChatDash`: an HTTP ``status`` (with ``headers``), a
    ``hang`` of some seconds before answering, or a connection ``reset``."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0
    reset: bool = False
    body: dict[str, Any] = field(default_factory=lambda: {"error": "fake failure"})


def _parse_time(value: str | None) -> Any:
    from datetime import UTC, datetime

    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_CONV = re.compile(r"^/agents/([^/]+)/conversations/([^/]+)(/messages)?$")
_LIST = re.compile(r"^/agents/([^/]+)/conversations$")


class FakeChatDash(_Base):
    """The ChatDash API, faked: conversations in memory, requests recorded, faults on demand.

    ``requests`` holds ``(method, raw_path, headers, body)`` for every request; ``violations``
    every contract violation found in a PUT body (such a PUT is answered 400). ``faults`` is a
    queue of :class:`Fault` applied to the next requests, in order; ``fail_rate`` answers that
    share of the other PUTs with a 500, at random (``seed`` makes it repeatable). The list
    endpoint filters on ``startDate``/``endDate`` against each conversation's ``createdAt`` and
    returns at most ``page_size`` of them (an undocumented cap, as a real server may have).

    A conversation is found by its platform id (``?isPlatformId=true``) through its
    ``platformId`` field. With ``import_delay`` (seconds), a platform id asked for that no
    conversation has is "imported" as ChatDash imports a call from the platform's webhook: it is
    answered 404 until ``import_delay`` seconds after it was first asked for, then found as a new
    conversation ``cd-<platform id>`` (0: at once).
    """

    def __init__(
        self,
        *,
        api_key: str = "CD.0123456789abcdef0123456789abcdef",
        put_schema: dict[str, Any] | None = None,
        base_path: str = "/v1/public",
        latency: float = 0.0,
        require_existing: bool = False,
        fail_rate: float = 0.0,
        seed: int | None = None,
        page_size: int | None = None,
        import_delay: float | None = None,
        port: int = 0,
    ) -> None:
        super().__init__(port)
        import random

        self.api_key = api_key
        self.require_existing = require_existing
        self.fail_rate = fail_rate  # PUTs answered 500 at random
        self.page_size = page_size  # the list endpoint returns at most this many
        self.list_calls = 0
        self._random = random.Random(seed)
        self.put_schema = put_schema
        self.base_path = base_path.rstrip("/")
        self.latency = latency
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.violations: list[str] = []
        self.faults: deque[Fault] = deque()
        self.conversations: dict[tuple[str, str], dict[str, Any]] = {}
        self.messages: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.import_delay = import_delay
        self._asked: dict[tuple[str, str], float] = {}  # platform ids first asked for, when

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    def fail(self, *faults: Fault) -> FakeChatDash:
        self.faults.extend(faults)
        return self

    @property
    def puts(self) -> list[tuple[str, str, dict[str, str], Any]]:
        return [r for r in self.requests if r[0] == "PUT"]

    def _handle(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        split = urlsplit(handler.path)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        with self.lock:
            self.requests.append(
                (handler.command, handler.path, dict(handler.headers.items()), body)
            )
            fault = self.faults.popleft() if self.faults else None
            if fault is None and handler.command == "PUT" and self.fail_rate:
                if self._random.random() < self.fail_rate:
                    fault = Fault(status=500, body={"error": "random fault"})
        if self.latency:
            time.sleep(self.latency)
        if fault is not None:
            if fault.hang:
                time.sleep(fault.hang)
            if fault.reset:
                return self._reset(handler)
            if fault.status is not None:
                return self._send(handler, fault.status, fault.body, fault.headers)
        if handler.headers.get("Authorization") != self.api_key:
            return self._send(handler, 401, {"error": "Unauthorized"})
        if not split.path.startswith(self.base_path + "/"):
            return self._send(handler, 404, {"error": "Not found"})
        path = split.path[len(self.base_path) :]
        conv = _CONV.match(path)
        if conv and handler.command == "PUT" and not conv.group(3):
            return self._put(handler, unquote(conv.group(1)), unquote(conv.group(2)), body)
        if conv and handler.command == "GET":
            key = (unquote(conv.group(1)), unquote(conv.group(2)))
            query = parse_qs(split.query)
            if query.get("isPlatformId") == ["true"]:
                key = self._by_platform_id(*key)
            if key not in self.conversations:
                return self._send(handler, 404, {"error": "Conversation not found"})
            if conv.group(3):
                return self._send(handler, 200, self.messages.get(key, []))
            return self._send(
                handler, 200, {"_id": key[1], "agentId": key[0], **self.conversations[key]}
            )
        lst = _LIST.match(path)
        if lst and handler.command == "GET":
            agent = unquote(lst.group(1))
            query = parse_qs(split.query)
            lo = _parse_time(query.get("startDate", [None])[0])
            hi = _parse_time(query.get("endDate", [None])[0])
            items = []
            for k, v in sorted(
                self.conversations.items(), key=lambda kv: kv[1].get("createdAt", "")
            ):
                when = _parse_time(v.get("createdAt"))
                if k[0] != agent or (when and lo and when < lo) or (when and hi and when >= hi):
                    continue
                items.append({"_id": k[1], "agentId": k[0], **v})
            with self.lock:
                self.list_calls += 1
            return self._send(handler, 200, items[: self.page_size])
        return self._send(handler, 404, {"error": f"no route {handler.command} {split.path}"})

    def _by_platform_id(self, agent: str, platform_id: str) -> tuple[str, str]:
        """The key of the agent's conversation whose ``platformId`` is ``platform_id`` (imported
        now if ``import_delay`` has passed since it was first asked for); else the ids as given,
        which no conversation has (404)."""
        with self.lock:
            for k, v in self.conversations.items():
                if k[0] == agent and v.get("platformId") == platform_id:
                    return k
            if self.import_delay is None:
                return (agent, platform_id)
            first = self._asked.setdefault((agent, platform_id), time.monotonic())
            if time.monotonic() - first < self.import_delay:
                return (agent, platform_id)
            key = (agent, f"cd-{platform_id}")
            self.conversations[key] = {"platformId": platform_id}
            return key

    def _put(self, handler: BaseHTTPRequestHandler, agent: str, conv: str, body: Any) -> None:
        if self.put_schema is not None:
            problems = validate_openapi(body, self.put_schema)
            if problems:
                with self.lock:
                    self.violations += problems
                return self._send(handler, 400, {"error": "; ".join(problems)})
        if not isinstance(body, dict):
            return self._send(handler, 400, {"error": "body must be a JSON object"})
        with self.lock:
            if self.require_existing and (agent, conv) not in self.conversations:
                missing = True
            else:
                missing = False
                self.conversations.setdefault((agent, conv), {}).update(body)
        if missing:
            return self._send(handler, 404, {"error": "Conversation not found"})
        self._send(handler, 200, {"message": "Conversation updated successfully"})
