"""The fake LLM: an OpenAI-compatible chat completions server (and Batch API) answering from a
queue of scripted :class:`Reply` objects, then from a responder (by default :func:`valid_answer`,
a valid enrichment built from the request's own schema)."""

from __future__ import annotations

import json
import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from ._server import _Base

__all__ = ["FakeLLM", "Reply", "valid_answer"]


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
    """A value valid against ``schema``: the first non-null choice wherever there is a choice
    (``enum``, a list of types, ``anyOf``), ``null`` only when it is the sole choice; numbers
    and arrays within their ``minimum``/``maximum`` and ``minItems``."""
    defs = schema.get("$defs", defs or {})
    if "$ref" in schema:
        return _example(defs.get(schema["$ref"].split("/")[-1], {}), defs)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if isinstance(o, dict)]
        chosen = next((o for o in options if not _only_null(o)), options[0] if options else {})
        return _example(chosen, defs)
    if "enum" in schema:
        values = schema["enum"]
        return next((v for v in values if v is not None), values[0] if values else None)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {k: _example(v, defs) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return [_example(schema.get("items", {}), defs) for _ in range(schema.get("minItems", 0))]
    if kind in ("number", "integer"):
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None:
            return math.ceil(low) if kind == "integer" else low
        if high is not None and high < 0:
            return math.floor(high) if kind == "integer" else high
        return 0
    return {"string": "example", "boolean": True}.get(kind)


def _only_null(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return kind == "null" or kind == ["null"] or schema.get("enum") == [None]


_TEXTS = {
    "summary": "The user asked for help and the agent answered.",
    "topic": "Account",
    "subtopic": "Login help",
    "outcome": "resolved",
}


def valid_answer(request: dict[str, Any]) -> dict[str, Any]:
    """A valid answer to ``request``, built from the schema it sent (its enums, nullable types,
    ``anyOf``, nested objects and bounds honoured; a value wherever ``null`` is only allowed),
    with plausible texts, and the first user line quoted as a misunderstood query."""
    schema = _request_schema(request) or {}
    props = schema.get("properties", {})
    value = _example(schema) or {}
    for key, text in _TEXTS.items():
        if key in value and "enum" not in props.get(key, {}):
            value[key] = text
    if "user_requests" in value:
        value["user_requests"] = ["help with an account"]
    evaluation = value.get("evaluation")
    if isinstance(evaluation, dict) and "reason" in evaluation:
        evaluation["reason"] = "The agent resolved the request."
    if isinstance(evaluation, dict) and isinstance(evaluation.get("criteria"), dict):
        for verdict in evaluation["criteria"].values():  # named criteria
            if isinstance(verdict, dict) and "rationale" in verdict:
                verdict["rationale"] = "The conversation shows it."
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
