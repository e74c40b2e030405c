"""Fake servers for tests, benchmarks and offline trials: real HTTP on 127.0.0.1.

- :class:`FakeLLM` speaks the OpenAI chat completions API. It answers from a queue of scripted
  :class:`Reply` objects (then from a ``responder``, by default a valid enrichment built from the
  request's schema) and keeps every request it received in ``requests``.
- :class:`FakeChatDash` speaks the part of the ChatDash API enrich uses. It records every request,
  checks each PUT body against the contract's schema, and can be told to fail.

Both run in a background thread; use them as context managers::

    with FakeLLM() as llm, FakeChatDash(api_key="CD.test") as chatdash:
        llm.add(Reply.json({...}))
        ...
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["FakeLLM", "Reply", "FakeChatDash", "Fault", "validate_openapi", "valid_answer"]


# ------------------------------------------------------------------------------------------------
# Shared plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that went away
            super().handle_error(request, client_address)


class _Base:
    def __init__(self, port: int = 0) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def setup(self) -> None:
                super().setup()
                # answer at once: no Nagle delay on small writes (a real server sets this too)
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _dispatch(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    owner._handle(self, raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = _dispatch

        self._server = _Server(("127.0.0.1", port), Handler)
        self._thread: threading.Thread | None = None
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> Any:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handle(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        raise NotImplementedError

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
    ) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        # headers and body in one write, as a real server does
        handler._headers_buffer.append(b"\r\n" + data)  # type: ignore[attr-defined]
        handler.flush_headers()

    @staticmethod
    def _reset(handler: BaseHTTPRequestHandler) -> None:
        """Drop the connection without an answer."""
        import socket
        import struct

        sock = handler.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.close_connection = True
        sock.close()


# ------------------------------------------------------------------------------------------------
# The fake LLM


@dataclass
class Reply:
    """One scripted answer of :class:`FakeLLM`.

    ``content`` is the model's text (sent as a tool call's arguments when the request asked for
    tools); ``status`` other than 200 sends an error instead; ``delay`` waits first.
    """

    content: str | None = None
    finish_reason: str = "stop"
    refusal: str | None = None
    status: int = 200
    error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    cached_tokens: int = 0

    @classmethod
    def json(cls, obj: Any, **kw: Any) -> Reply:
        return cls(content=json.dumps(obj), **kw)

    @classmethod
    def text(cls, text: str, **kw: Any) -> Reply:
        return cls(content=text, **kw)

    @classmethod
    def refused(cls, why: str = "I can't help with that.") -> Reply:
        return cls(content=None, refusal=why)

    @classmethod
    def truncated(cls, partial: str = '{"summary": "The user as') -> Reply:
        return cls(content=partial, finish_reason="length")

    @classmethod
    def failure(
        cls,
        status: int,
        message: str = "error",
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> Reply:
        return cls(
            status=status,
            error={"error": {"message": message, "type": "fake_error", "code": None}},
            headers=headers or {},
            delay=delay,
        )


def _example(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> Any:
    defs = schema.get("$defs", defs or {})
    if "$ref" in schema:
        return _example(defs.get(schema["$ref"].split("/")[-1], {}), defs)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: _example(v, defs) for k, v in schema.get("properties", {}).items()}
    return {"array": [], "string": "example", "boolean": True, "number": 0, "integer": 0}.get(kind)


_TEXTS = {
    "summary": "The user asked for help and the agent answered.",
    "topic": "Account",
    "subtopic": "Login help",
    "outcome": "resolved",
}


def valid_answer(request: dict[str, Any]) -> dict[str, Any]:
    """A valid answer to ``request``, built from the schema it sent (its enums honoured), with
    plausible texts, and the first user line quoted as a misunderstood query."""
    schema = _request_schema(request) or {}
    props = schema.get("properties", {})
    value = _example(schema) or {}
    for key, text in _TEXTS.items():
        if key in value and "enum" not in props.get(key, {}):
            value[key] = text
    if "user_requests" in value:
        value["user_requests"] = ["help with an account"]
    if isinstance(value.get("evaluation"), dict) and "reason" in value["evaluation"]:
        value["evaluation"]["reason"] = "The agent resolved the request."
    if "misunderstood_queries" in value:
        text = _last_user_text(request)
        user_lines = re.findall(r"^User(?: \[[\d:]+\])?: (.+)$", text, re.MULTILINE)
        first = " ".join(user_lines[0].split()[:12]) if user_lines else ""
        value["misunderstood_queries"] = [{"question": first}] if first else []
    return value


def _request_schema(request: dict[str, Any]) -> dict[str, Any] | None:
    rf = request.get("response_format") or {}
    if rf.get("type") == "json_schema":
        return rf["json_schema"]["schema"]
    if rf.get("type") == "json_object":
        return rf.get("schema")
    for tool in request.get("tools") or []:
        return tool["function"]["parameters"]
    return None


def _last_user_text(request: dict[str, Any]) -> str:
    for m in request.get("messages", []):
        if m.get("role") == "user" and "<transcript>" in str(m.get("content")):
            return str(m["content"])
    return ""


class FakeLLM(_Base):
    """An OpenAI-compatible chat completions server with a queue of answers.

    ``requests`` holds every request body received (also failed ones), ``headers`` their headers.
    When the queue is empty, ``responder(request)`` makes the reply (default: :func:`valid_answer`).
    ``latency`` delays every answer. ``rpm_limit`` answers 429 (with ``retry-after-ms``) to any
    request past that many in the last 60 seconds, as a provider does; ``rate_limited`` counts
    them. ``max_in_flight`` is the most requests it was answering at once.

    It also serves the Batch API: ``POST /files`` (a JSONL upload), ``POST /batches``,
    ``GET /batches/{id}`` (the batch completes ``batch_seconds`` after it was created; each line
    is answered like a direct request) and ``GET /files/{id}/content``.
    """

    def __init__(
        self,
        replies: list[Reply] | None = None,
        *,
        responder: Callable[[dict[str, Any]], Reply] | None = None,
        latency: float = 0.0,
        model: str = "fake-model",
        rpm_limit: int | None = None,
        batch_seconds: float = 0.5,
        keep_requests: bool = True,
        port: int = 0,
    ) -> None:
        super().__init__(port)
        self.queue: deque[Reply] = deque(replies or [])
        self.responder = responder or (lambda req: Reply.json(valid_answer(req)))
        self.latency = latency
        self.model = model
        self.rpm_limit = rpm_limit
        self.batch_seconds = batch_seconds
        self.keep_requests = keep_requests
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.count = 0
        self.rate_limited = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._window: deque[float] = deque()
        self._ids = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def add(self, *replies: Reply) -> FakeLLM:
        self.queue.extend(replies)
        return self

    def _handle(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        path = urlsplit(handler.path).path
        if handler.command == "GET" and path.endswith("/models"):
            return self._send(
                handler, 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]}
            )
        if "/files" in path or "/batches" in path:
            return self._batch_api(handler, path, raw)
        if handler.command != "POST" or not path.endswith("/chat/completions"):
            return self._send(handler, 404, {"error": {"message": f"no route {path}"}})
        try:
            request = json.loads(raw or b"{}")
        except ValueError:
            return self._send(handler, 400, {"error": {"message": "invalid JSON body"}})
        with self.lock:
            self.count += 1
            if self.keep_requests:
                self.requests.append(request)
                self.headers.append(dict(handler.headers.items()))
            if self.rpm_limit is not None:
                now = time.monotonic()
                while self._window and self._window[0] <= now - 60:
                    self._window.popleft()
                if len(self._window) >= self.rpm_limit:
                    self.rate_limited += 1
                    wait_ms = max(1, int((self._window[0] + 60 - now) * 1000))
                    limited = True
                else:
                    self._window.append(now)
                    limited = False
            else:
                limited = False
            reply = None if limited else (self.queue.popleft() if self.queue else None)
            self._ids += 1
            n = self._ids
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if limited:
                return self._send(
                    handler,
                    429,
                    {"error": {"message": "Rate limit reached", "type": "requests", "code": None}},
                    {"retry-after-ms": str(wait_ms)},
                )
            if reply is None:
                reply = self.responder(request)
            delay = self.latency + reply.delay
            if delay:
                time.sleep(delay)
            if reply.status != 200:
                return self._send(handler, reply.status, reply.error or {}, reply.headers)
            self._send(handler, 200, self._completion(request, reply, n), reply.headers)
        finally:
            with self.lock:
                self.in_flight -= 1

    # -- the Batch API -------------------------------------------------------------------------

    def _batch_api(self, handler: BaseHTTPRequestHandler, path: str, raw: bytes) -> None:
        parts = [p for p in path.split("/") if p][1:]  # drop "v1"
        now = time.time()
        if handler.command == "POST" and parts == ["files"]:
            content, purpose, filename = _multipart(handler.headers.get("Content-Type", ""), raw)
            with self.lock:
                self._ids += 1
                fid = f"file-{self._ids}"
                self.files[fid] = {"content": content, "purpose": purpose, "filename": filename}
            return self._send(handler, 200, self._file(fid))
        if handler.command == "GET" and len(parts) == 3 and parts[0] == "files":
            if parts[1] not in self.files:
                return self._send(handler, 404, {"error": {"message": "no such file"}})
            return self._send(handler, 200, self.files[parts[1]]["content"])
        if handler.command == "POST" and parts == ["batches"]:
            body = json.loads(raw or b"{}")
            if body.get("input_file_id") not in self.files:
                return self._send(handler, 400, {"error": {"message": "unknown input_file_id"}})
            with self.lock:
                self._ids += 1
                bid = f"batch_{self._ids}"
                self.batches[bid] = {
                    "id": bid,
                    "object": "batch",
                    "endpoint": body.get("endpoint"),
                    "input_file_id": body["input_file_id"],
                    "completion_window": body.get("completion_window"),
                    "status": "validating",
                    "created_at": int(now),
                    "output_file_id": None,
                    "error_file_id": None,
                    "request_counts": {"total": 0, "completed": 0, "failed": 0},
                    "_ready_at": now + self.batch_seconds,
                }
            return self._send(handler, 200, self._batch(bid))
        if handler.command == "GET" and len(parts) == 2 and parts[0] == "batches":
            if parts[1] not in self.batches:
                return self._send(handler, 404, {"error": {"message": "no such batch"}})
            return self._send(handler, 200, self._batch(parts[1]))
        return self._send(handler, 404, {"error": {"message": f"no route {path}"}})

    def _file(self, fid: str) -> dict[str, Any]:
        f = self.files[fid]
        return {
            "id": fid,
            "object": "file",
            "bytes": len(f["content"]),
            "created_at": int(time.time()),
            "filename": f["filename"],
            "purpose": f["purpose"],
            "status": "processed",
        }

    def _batch(self, bid: str) -> dict[str, Any]:
        with self.lock:
            batch = self.batches[bid]
            lines = self.files[batch["input_file_id"]]["content"].decode().splitlines()
            total = len([x for x in lines if x.strip()])
            batch["request_counts"]["total"] = total
            ready = time.time() >= batch["_ready_at"]
            if not ready:
                batch["status"] = "in_progress"
                batch["request_counts"]["completed"] = total // 2
        if ready and batch["status"] != "completed":
            out = []
            for line in lines:
                if not line.strip():
                    continue
                entry = json.loads(line)
                request = entry["body"]
                with self.lock:
                    reply = self.queue.popleft() if self.queue else None
                    self._ids += 1
                    n = self._ids
                    self.count += 1
                    if self.keep_requests:
                        self.requests.append(request)
                reply = reply or self.responder(request)
                body = self._completion(request, reply, n)
                out.append(
                    json.dumps(
                        {
                            "id": f"batch_req_{n}",
                            "custom_id": entry["custom_id"],
                            "response": {
                                "status_code": 200,
                                "request_id": f"req_{n}",
                                "body": body,
                            },
                            "error": None,
                        }
                    )
                )
            with self.lock:
                self._ids += 1
                fid = f"file-{self._ids}"
                self.files[fid] = {
                    "content": ("\n".join(out) + "\n").encode(),
                    "purpose": "batch_output",
                    "filename": f"{bid}_output.jsonl",
                }
                batch.update(status="completed", output_file_id=fid, completed_at=int(time.time()))
                batch["request_counts"]["completed"] = total
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    def _completion(self, request: dict[str, Any], reply: Reply, n: int) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": reply.refusal}
        if reply.content is not None:
            if request.get("tools") and reply.refusal is None:
                name = request["tools"][0]["function"]["name"]
                message["tool_calls"] = [
                    {
                        "id": f"call_{n}",
                        "type": "function",
                        "function": {"name": name, "arguments": reply.content},
                    }
                ]
            else:
                message["content"] = reply.content
        prompt_tokens = max(1, len(json.dumps(request.get("messages", []))) // 4)
        completion_tokens = max(1, len(reply.content or reply.refusal or "") // 4)
        finish = reply.finish_reason
        if message.get("tool_calls") and finish == "stop":
            finish = "tool_calls"
        return {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model") or self.model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
            },
        }


def _multipart(content_type: str, raw: bytes) -> tuple[bytes, str, str]:
    """The file, ``purpose`` and file name of a multipart/form-data upload."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    content, purpose, filename = b"", "", "upload.jsonl"
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name == "file":
            content = payload
            filename = part.get_filename() or filename
        elif name == "purpose":
            purpose = payload.decode()
    return content, purpose, filename


# ------------------------------------------------------------------------------------------------
# The fake ChatDash


def validate_openapi(value: Any, schema: dict[str, Any], where: str = "body") -> list[str]:
    """Check ``value`` against an OpenAPI 3.0 schema (the subset the ChatDash contract uses).

    Objects with declared ``properties`` admit no other keys; ``null`` is never valid (the
    contract declares no nullable field).
    """
    errors: list[str] = []
    kind = schema.get("type")
    if value is None:
        return [f"{where}: null is not allowed"]
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{where}: expected an object"]
        props = schema.get("properties")
        if props is not None:
            for key, item in value.items():
                if key not in props:
                    errors.append(f"{where}.{key}: unknown field")
                else:
                    errors += validate_openapi(item, props[key], f"{where}.{key}")
    elif kind == "array":
        if not isinstance(value, list):
            return [f"{where}: expected an array"]
        for i, item in enumerate(value):
            errors += validate_openapi(item, schema.get("items", {}), f"{where}[{i}]")
    elif kind == "string":
        if not isinstance(value, str):
            return [f"{where}: expected a string"]
        if schema.get("format") == "date-time" and not re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value
        ):
            errors.append(f"{where}: not an RFC 3339 date-time")
    elif kind == "boolean":
        if not isinstance(value, bool):
            return [f"{where}: expected a boolean"]
    elif kind in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return [f"{where}: expected a number"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    return errors


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
                key = next(
                    (
                        k
                        for k, v in self.conversations.items()
                        if k[0] == key[0] and v.get("platformId") == key[1]
                    ),
                    key,
                )
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
