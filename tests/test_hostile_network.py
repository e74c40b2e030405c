"""Hostile servers and hostile settings (issue 14): what the LLM and ChatDash clients do when a
key cannot go in a header, a server redirects elsewhere, asks to wait forever, drips its answer,
answers HTML, answers 50 MB, or a request cannot be built. Real sockets on 127.0.0.1, the real
openai SDK and httpx; no mocks."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from conftest import CHATDASH_KEY, OPENAI_KEY, TRANSCRIPT, answer, make_config
from pydantic import SecretStr
from typer.testing import CliRunner

from enrich import Enricher
from enrich.chatdash import ChatDash, conversation_path
from enrich.cli import app
from enrich.config import ChatDashSettings, LLMSettings, load_config
from enrich.errors import (
    ChatDashError,
    ChatDashLookupError,
    ConfigError,
    InputError,
    LLMError,
    LLMProtocolError,
    LLMTransportError,
    error_class,
    redact,
)
from enrich.ledger import State
from enrich.llm import StructuredLLM
from enrich.testing import Reply, valid_answer

runner = CliRunner()

# -- a small hostile HTTP server -----------------------------------------------------------------

Handler = Callable[[BaseHTTPRequestHandler, bytes], None]


class Hostile:
    """An HTTP/1.1 server on 127.0.0.1 whose every answer is ``handler(request, body)``; it keeps
    ``(method, path, headers, body)`` of every request in ``requests``."""

    def __init__(self, handler: Handler) -> None:
        owner = self
        self.handler = handler
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                owner.requests.append((self.command, self.path, dict(self.headers), body))
                try:
                    owner.handler(self, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PUT = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile():
    servers: list[Hostile] = []

    def start(handler: Handler) -> Hostile:
        servers.append(Hostile(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def reply(
    h: BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> None:
    h.send_response(status)
    headers = {"Content-Type": "application/json", **(headers or {})}
    for name, value in headers.items():
        h.send_header(name, value)
    if "Transfer-Encoding" not in headers:
        h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)
    h.wfile.flush()


def completion(content: str) -> dict[str, Any]:
    """A chat completion whose message is ``content``."""
    return {
        "id": "chatcmpl-hostile",
        "object": "chat.completion",
        "created": 0,
        "model": "hostile",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


def drip(h: BaseHTTPRequestHandler, every: float = 0.25) -> None:
    """Headers at once, then the body one byte every ``every`` seconds, for a long time."""
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", "100000")
    h.end_headers()
    h.wfile.flush()
    for _ in range(100000):
        h.wfile.write(b" ")
        h.wfile.flush()
        time.sleep(every)


def within(seconds: float, coro: Any) -> Any:
    """Run ``coro``, failing the test (rather than hanging it) if it takes over ``seconds``."""

    async def go() -> Any:
        return await asyncio.wait_for(coro, seconds)

    return asyncio.run(go())


def cli(*args: str):
    return runner.invoke(app, list(args))


def assert_hidden(result: Any, *keys: str) -> None:
    for key in keys:
        core = key.strip()[3:]  # even a piece of the key is never shown
        for text in (result.stdout, result.stderr):
            assert core not in text


# -- 1. keys that no HTTP header can carry -------------------------------------------------------

BAD_KEYS = [
    pytest.param("\r", id="trailing-cr"),
    pytest.param("\r\n", id="windows-line-end"),
    pytest.param("\n", id="trailing-lf"),
    pytest.param("é", id="non-ascii"),
    pytest.param("\x00x", id="nul"),
]


@pytest.mark.parametrize("tail", BAD_KEYS)
@pytest.mark.parametrize(
    ("var", "key"), [("OPENAI_API_KEY", OPENAI_KEY), ("CHATDASH_API_KEY", CHATDASH_KEY)]
)
def test_a_key_with_control_or_non_ascii_characters_is_refused_when_the_config_is_read(
    var, key, tail
):
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={var: key + tail})
    message = str(info.value)
    assert message.startswith(f"{var}: the key ")
    assert key[3:] not in message and repr(key + tail)[1:-1] not in message


@pytest.mark.parametrize(
    ("section", "key"), [("llm", OPENAI_KEY), ("chatdash", CHATDASH_KEY)], ids=["llm", "chatdash"]
)
def test_a_bad_key_in_the_yaml_file_names_the_setting(tmp_path, section, key):
    path = tmp_path / "enrich.yaml"
    path.write_text(f"{section}:\n  api_key: {json.dumps(key + chr(13))}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert f"{section}.api_key: the key contains a carriage return" in str(info.value)
    assert key[3:] not in str(info.value)
    # built in code, pydantic's own error does not show the key either
    settings = LLMSettings if section == "llm" else ChatDashSettings
    with pytest.raises(ValueError) as raw:
        settings(api_key=key + "\r")
    assert key[3:] not in str(raw.value)


@pytest.mark.parametrize("tail", BAD_KEYS[:2] + BAD_KEYS[3:4])
@pytest.mark.parametrize(
    ("var", "key"), [("OPENAI_API_KEY", OPENAI_KEY), ("CHATDASH_API_KEY", CHATDASH_KEY)]
)
def test_cli_with_a_bad_key_exits_2_before_any_llm_call(
    env, fake_llm, fake_chatdash, monkeypatch, var, key, tail
):
    monkeypatch.setenv(var, key + tail)
    r = cli("run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"]))
    assert r.exit_code == 2, r.stderr
    assert var in r.stderr
    assert fake_llm.requests == [] and fake_chatdash.requests == []
    assert_hidden(r, OPENAI_KEY, CHATDASH_KEY)


def test_settings_made_without_validation_are_still_checked_before_a_request():
    bad_key = SecretStr(CHATDASH_KEY + "\r")
    settings = ChatDashSettings.model_construct(api_key=bad_key, base_url="http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="CHATDASH_API_KEY") as info:
        ChatDash(settings).check()
    assert CHATDASH_KEY[3:] not in str(info.value)
    llm = LLMSettings.model_construct(api_key=SecretStr(OPENAI_KEY + "\n"), base_url=None)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY") as info:
        StructuredLLM(llm).check()
    assert OPENAI_KEY[3:] not in str(info.value)


@pytest.mark.parametrize("lib", ["httpx", "httpx2"])
def test_redact_finds_a_key_in_the_http_librarys_bytes_repr(hostile, lib):
    module = pytest.importorskip(lib)
    server = hostile(lambda h, body: reply(h, 200, b"{}"))
    key = CHATDASH_KEY + "\r"
    with pytest.raises(Exception) as info:  # noqa: PT011 - whatever the library raises
        module.get(server.url, headers={"Authorization": f"Bearer {key}"})
    text = str(info.value)
    assert CHATDASH_KEY in text  # the library's own message shows it, escaped...
    assert CHATDASH_KEY[3:] not in redact(text, [key])  # ...and redact hides it


def test_redact_finds_escaped_and_encoded_forms():
    key = "sk-\u00e9t\u00e9-SECRET-42\n"
    texts = [
        repr(key),
        repr(key.encode()),
        repr(key.encode("latin-1")),
        json.dumps({"key": key}),
        f"Illegal header value {('Bearer ' + key).encode()!r}",
    ]
    for text in texts:
        assert "SECRET-42" not in redact(text, [key]), text


# -- 2. redirects --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [307, 308, 302])
def test_an_llm_redirect_to_another_origin_is_not_followed(hostile, fake_llm, status):
    elsewhere = hostile(lambda h, body: reply(h, 200, json.dumps(completion("{}")).encode()))
    mover = hostile(
        lambda h, body: reply(h, status, b"", {"Location": elsewhere.url + "/v1/chat/completions"})
    )
    config = make_config(fake_llm, llm={"base_url": mover.url + "/v1"})
    with Enricher(config) as e, pytest.raises(LLMTransportError) as info:
        e.enrich(TRANSCRIPT)
    assert elsewhere.requests == []  # the prompt never went there
    message = str(info.value)
    assert f"redirected the request (HTTP {status}) to another origin" in message
    assert "not followed" in message and elsewhere.url.split("//")[1] in message
    assert error_class(info.value) == "llm" and info.value.status_code == status


def test_an_llm_redirect_to_another_origin_exits_3(env, hostile, monkeypatch):
    elsewhere = hostile(lambda h, body: reply(h, 200, json.dumps(completion("{}")).encode()))
    mover = hostile(lambda h, body: reply(h, 307, b"", {"Location": elsewhere.url + "/v1/x"}))
    monkeypatch.setenv("OPENAI_BASE_URL", mover.url + "/v1")
    r = cli("run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"]), "--dry-run")
    assert r.exit_code == 3, r.stderr
    assert "not followed" in r.stderr and elsewhere.requests == []


def test_an_llm_redirect_on_the_same_origin_is_followed(hostile, fake_llm):
    def handler(h: BaseHTTPRequestHandler, body: bytes) -> None:
        if h.path.startswith("/old/"):
            return reply(h, 308, b"", {"Location": "/v1/chat/completions"})
        reply(h, 200, json.dumps(completion(json.dumps(valid_answer(json.loads(body))))).encode())

    server = hostile(handler)
    with Enricher(make_config(fake_llm, llm={"base_url": server.url + "/old"})) as e:
        result = e.enrich(TRANSCRIPT)
    assert result.enrichment.summary
    assert [r[1] for r in server.requests] == ["/old/chat/completions", "/v1/chat/completions"]


@pytest.mark.parametrize("status", [307, 308])
def test_a_chatdash_write_redirect_is_not_followed_and_says_so(
    hostile, fake_llm, fake_chatdash, status
):
    elsewhere = hostile(lambda h, body: reply(h, 200, b'{"message": "ok"}'))
    mover = hostile(lambda h, body: reply(h, status, b"", {"Location": elsewhere.url + "/x"}))
    config = make_config(fake_llm, fake_chatdash, chatdash={"base_url": mover.url})
    with Enricher(config) as e, pytest.raises(ChatDashError) as info:
        e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    assert not isinstance(info.value, ChatDashLookupError)  # a write: exit 4
    assert error_class(info.value) == "chatdash"
    assert f"redirect (HTTP {status})" in str(info.value) and "not followed" in str(info.value)
    assert info.value.result is not None  # the paid result comes back with the error
    assert elsewhere.requests == []


def test_a_chatdash_read_redirect_is_a_refused_read(hostile, fake_llm):
    mover = hostile(lambda h, body: reply(h, 307, b"", {"Location": "http://example.invalid/"}))
    config = make_config(fake_llm, chatdash={"base_url": mover.url})
    with Enricher(config) as e, pytest.raises(ChatDashLookupError, match="not followed") as info:
        e.enrich_and_write("agent-1", "conv-1")  # fetches the messages first
    assert error_class(info.value) == "input"  # exit 2: nothing was paid for
    assert fake_llm.requests == []


# -- 3. Retry-After ------------------------------------------------------------------------------

HUGE_WAITS = ["1000000000", "Fri, 31 Dec 9999 23:59:59 GMT"]


@pytest.mark.parametrize("wait", HUGE_WAITS)
@pytest.mark.parametrize("rpm", [None, 6000], ids=["unpaced", "rpm"])
def test_a_huge_retry_after_from_the_llm_fails_at_once(fake_llm, wait, rpm):
    fake_llm.add(Reply.failure(429, headers={"Retry-After": wait}), Reply.json(answer()))
    config = make_config(fake_llm, llm={"max_retries": 2, "rpm": rpm})

    async def go() -> None:
        async with Enricher(config) as e:
            await e.aenrich(TRANSCRIPT)

    started = time.monotonic()
    with pytest.raises(LLMTransportError, match=r"asked to wait .* \(Retry-After\)") as info:
        within(20, go())
    assert time.monotonic() - started < 10
    assert info.value.status_code == 429 and info.value.attempts == 1


def test_with_rpm_a_huge_retry_after_pauses_the_other_calls_a_minute_at_most(fake_llm):
    fake_llm.add(Reply.failure(429, headers={"Retry-After": "1000000000"}))
    config = make_config(fake_llm, llm={"max_retries": 1, "rpm": 6000})

    async def go() -> float:
        async with Enricher(config) as e:
            with pytest.raises(LLMTransportError):
                await e.aenrich(TRANSCRIPT)
            limiter = e.llm.limiter
            return limiter._paused_until - limiter.clock()  # what the next call would wait

    assert 0 < within(20, go()) <= 60


@pytest.mark.parametrize("wait", ["inf", "1e400", "nan"])
def test_an_infinite_retry_after_is_no_value(fake_llm, wait):
    fake_llm.add(Reply.failure(429, headers={"Retry-After": wait}), Reply.json(answer()))
    config = make_config(fake_llm, llm={"max_retries": 1, "rpm": 6000})

    async def go() -> Any:
        async with Enricher(config) as e:
            return await e.aenrich(TRANSCRIPT)

    assert within(20, go()).enrichment.summary


@pytest.mark.parametrize("wait", [*HUGE_WAITS, "inf"])
def test_a_huge_retry_after_from_chatdash_is_capped(hostile, fake_llm, wait):
    server = hostile(lambda h, body: reply(h, 503, b'{"error": "busy"}', {"Retry-After": wait}))
    config = make_config(
        fake_llm, chatdash={"base_url": server.url, "max_backoff": 0.2, "max_attempts": 3}
    )

    async def go() -> None:
        async with Enricher(config) as e:
            await e.aenrich_and_write("agent-1", "conv-1", TRANSCRIPT)

    with pytest.raises(ChatDashError, match="failed after 3 attempt"):
        within(20, go())


# -- 4. slow servers -----------------------------------------------------------------------------


def test_an_llm_that_drips_its_answer_is_cut_off_at_the_timeout(hostile, fake_llm):
    server = hostile(lambda h, body: drip(h))
    config = make_config(fake_llm, llm={"base_url": server.url + "/v1", "timeout": 1})

    async def go() -> None:
        async with Enricher(config) as e:
            await e.aenrich(TRANSCRIPT)

    started = time.monotonic()
    with pytest.raises(LLMTransportError, match=r"did not answer within 1s"):
        within(20, go())
    assert time.monotonic() - started < 5


def test_chatdash_that_drips_its_answer_is_cut_off_at_the_timeout(hostile, fake_llm):
    server = hostile(lambda h, body: drip(h))
    config = make_config(
        fake_llm, chatdash={"base_url": server.url, "timeout": 1, "max_attempts": 1}
    )

    async def go() -> None:
        async with Enricher(config) as e:
            await e.aenrich_and_write("agent-1", "conv-1", TRANSCRIPT)

    started = time.monotonic()
    with pytest.raises(ChatDashError, match=r"did not answer within 1s"):
        within(20, go())
    assert time.monotonic() - started < 5


# -- 5. an LLM base URL that is not an OpenAI-compatible API -------------------------------------

NOT_AN_API = [
    pytest.param(b"<!DOCTYPE html><html><body>Open WebUI</body></html>", "text/html", id="html"),
    pytest.param(b"hello, this is a proxy", "text/plain", id="junk"),
    pytest.param(b'\xff\xfe{"choices": []}', "application/json", id="not-utf8"),
    pytest.param(b'{"status": "ok"}', "application/json", id="json-not-a-completion"),
    pytest.param(b'{"choices": ["x"]}', "application/json", id="choices-of-junk"),
    pytest.param(b"", "application/json", id="empty"),
]


@pytest.mark.parametrize(("body", "content_type"), NOT_AN_API)
def test_an_llm_answer_that_is_not_a_chat_completion_is_an_llm_error(
    hostile, fake_llm, body, content_type
):
    server = hostile(lambda h, _: reply(h, 200, body, {"Content-Type": content_type}))
    config = make_config(fake_llm, llm={"base_url": server.url + "/v1"})
    with Enricher(config) as e, pytest.raises(LLMProtocolError) as info:
        e.enrich(TRANSCRIPT)
    assert str(info.value).startswith(f"not an OpenAI-compatible API at {server.url}/v1: ")
    assert error_class(info.value) == "llm" and info.value.attempts == 1
    assert len(server.requests) == 1  # not retried: the same server answers the same


def test_an_llm_base_url_at_a_web_page_exits_3_saying_so(env, hostile, monkeypatch):
    server = hostile(lambda h, _: reply(h, 200, b"<html>UI</html>", {"Content-Type": "text/html"}))
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    r = cli("run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"]), "--dry-run")
    assert r.exit_code == 3, r.stderr
    assert f"not an OpenAI-compatible API at {server.url}" in r.stderr
    assert "internal error" not in r.stderr


# -- 6. answer size ------------------------------------------------------------------------------


def _big_answer() -> bytes:
    return json.dumps(completion(json.dumps(answer(summary="x" * 3_000_000)))).encode()


def _sent_whole(h: BaseHTTPRequestHandler, body: bytes) -> None:
    reply(h, 200, _big_answer())


def _sent_chunked(h: BaseHTTPRequestHandler, body: bytes) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    data = _big_answer()
    for i in range(0, len(data), 65536):
        part = data[i : i + 65536]
        h.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
    h.wfile.write(b"0\r\n\r\n")


def _sent_gzipped(h: BaseHTTPRequestHandler, body: bytes) -> None:  # 20 MB in ~20 kB
    bomb = json.dumps(completion(json.dumps(answer(summary="x" * 20_000_000)))).encode()
    reply(h, 200, gzip.compress(bomb, 9), {"Content-Encoding": "gzip"})


@pytest.mark.parametrize("send", [_sent_whole, _sent_chunked, _sent_gzipped])
def test_a_huge_llm_answer_is_refused_and_never_written(hostile, fake_llm, fake_chatdash, send):
    server = hostile(send)
    config = make_config(fake_llm, fake_chatdash, llm={"base_url": server.url + "/v1"})
    with Enricher(config) as e, pytest.raises(LLMProtocolError) as info:
        e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    message = str(info.value)
    assert message.startswith(f"the answer of the LLM at {server.url}/v1 was refused: it is ")
    assert "over 1,048,576 bytes" in message and "llm.max_tokens=2000" in message
    assert error_class(info.value) == "llm"
    assert fake_chatdash.puts == []


def test_the_answer_limit_follows_max_tokens(hostile, fake_llm):
    # a 3 MB response (over 1 MiB, under 16,000 tokens' 4 MB) whose answer is valid: its fields
    # stay within their own bounds (enrich.models.enrichment), the rest is JSON white space
    padded = json.dumps(completion(json.dumps(answer()) + " " * 3_000_000)).encode()
    server = hostile(lambda h, body: reply(h, 200, padded))
    config = make_config(fake_llm, llm={"base_url": server.url + "/v1", "max_tokens": 16000})
    with Enricher(config) as e:
        assert e.enrich(TRANSCRIPT).enrichment.summary == answer()["summary"]
    assert len(padded) > 3_000_000


def test_a_small_gzipped_answer_is_read(hostile, fake_llm):
    def send(h: BaseHTTPRequestHandler, body: bytes) -> None:
        data = json.dumps(completion(json.dumps(valid_answer(json.loads(body))))).encode()
        reply(h, 200, gzip.compress(data), {"Content-Encoding": "gzip"})

    server = hostile(send)
    with Enricher(make_config(fake_llm, llm={"base_url": server.url + "/v1"})) as e:
        assert e.enrich(TRANSCRIPT).enrichment.summary


# -- 7. a ChatDash write is confirmed by the API's JSON only -------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html><body>Welcome to ChatDash</body></html>", "text/html"),
        (b"", "application/json"),
        (b'["ok"]', "application/json"),
        (b"OK", "text/plain"),
    ],
    ids=["html", "empty", "json-list", "text"],
)
def test_a_put_answered_200_without_the_apis_json_is_not_a_write(
    hostile, fake_llm, tmp_path, body, content_type
):
    server = hostile(lambda h, _: reply(h, 200, body, {"Content-Type": content_type}))
    config = make_config(
        fake_llm,
        chatdash={"base_url": server.url},
        ledger={"path": str(tmp_path / "ledger.sqlite3")},
    )
    with Enricher(config) as e:
        with pytest.raises(ChatDashError, match="the write is not confirmed") as info:
            e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
        assert error_class(info.value) == "chatdash" and info.value.result is not None
        entry = e.ledger.get("agent-1", "conv-1")
        assert entry.state == State.PENDING  # paid for, kept for enrich replay
        assert "not confirmed" in entry.last_error


def test_a_put_answered_with_the_apis_json_is_a_write(hostile, fake_llm):
    server = hostile(lambda h, _: reply(h, 200, b'{"message": "Conversation updated"}'))
    with Enricher(make_config(fake_llm, chatdash={"base_url": server.url})) as e:
        assert e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT).written


def test_a_read_answered_200_with_html_is_a_refused_read(hostile, fake_llm):
    server = hostile(lambda h, _: reply(h, 200, b"<html></html>", {"Content-Type": "text/html"}))
    with (
        Enricher(make_config(fake_llm, chatdash={"base_url": server.url})) as e,
        pytest.raises(ChatDashLookupError, match="not JSON: is CHATDASH_BASE_URL"),
    ):
        e.enrich_and_write("agent-1", "conv-1")
    assert fake_llm.requests == []


# -- 8. requests that cannot be built ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "problem"),
    [
        (("agent-1", "c" * 100_000), "conversation id is too long to be an id: 100,000"),
        (("a" * 5_000, "conv-1"), "agent id is too long"),
        (("agent-1", "é" * 200), "conversation id is too long"),  # 1,200 once encoded
        (("agent-1", "conv-1\n"), "conversation id contains a control character (U+000A"),
        (("agent-1", "conv\x00"), "control character (U+0000"),
        (("agent\ud800", "conv-1"), "agent id contains a lone surrogate"),
    ],
    ids=["100kB", "long-agent", "long-encoded", "newline", "nul", "surrogate"],
)
def test_ids_that_cannot_make_a_request_fail_before_the_llm_is_paid(
    fake_llm, fake_chatdash, ids, problem
):
    with pytest.raises(InputError, match=re.escape(problem)):
        conversation_path(*ids)
    with Enricher(make_config(fake_llm, fake_chatdash)) as e, pytest.raises(InputError) as info:
        e.enrich_and_write(*ids, TRANSCRIPT)
    assert problem in str(info.value) and len(str(info.value)) < 300
    assert error_class(info.value) == "input"
    assert fake_llm.requests == [] and fake_chatdash.requests == []


def test_a_long_id_exits_2_in_the_cli(env, fake_llm, fake_chatdash):
    r = cli("run", "-a", "agent-1", "-C", "c" * 100_000, "-t", str(env["transcript"]))
    assert r.exit_code == 2, r.stderr[-500:]
    assert "too long" in r.stderr and fake_llm.requests == []


def test_a_request_that_cannot_be_built_is_a_permanent_chatdash_error(fake_llm, fake_chatdash):
    config = make_config(fake_llm, fake_chatdash)

    async def go(call: Callable[[ChatDash], Any]) -> Any:
        chatdash = ChatDash(config.chatdash)
        try:
            return await call(chatdash)
        finally:
            await chatdash.aclose()

    cases = [
        lambda c: c.request("PUT", "/" + "x" * 70_000, what="writing", json={}),
        lambda c: c.update_conversation("agent-1", "c" * 100_000, {"summary": "s"}),
        lambda c: c.update_conversation("agent-1", "conv-1", {"summary": float("nan")}),
        lambda c: c.update_conversation("agent-1", "conv-1", {"topics": {"a", "b"}}),
    ]
    for call in cases:
        with pytest.raises(ChatDashError) as info:
            asyncio.run(go(call))
        assert info.value.permanent and "cannot be built" in str(info.value)
        assert len(str(info.value)) < 1000
    assert fake_chatdash.requests == []


@pytest.mark.parametrize(
    "base_url", ["http://[::1/v1", "http://a\x00b/v1", "http://" + "a" * 70_000]
)
def test_a_base_url_httpx_refuses_is_a_config_error_before_any_call(base_url):
    settings = ChatDashSettings(api_key=CHATDASH_KEY, base_url=base_url)
    with pytest.raises(ConfigError, match="CHATDASH_BASE_URL .* is not a usable URL"):
        ChatDash(settings).check()


def test_replay_marks_an_unwritable_pending_entry_failed_and_goes_on(
    fake_llm, fake_chatdash, tmp_path
):
    """A pending write kept by a version that did not check ids (a 100 kB id) fails with its
    reason, permanently, and the other pending writes are made."""
    long_id = "c" * 100_000
    config = make_config(fake_llm, fake_chatdash, ledger={"path": str(tmp_path / "l.sqlite3")})
    with Enricher(config) as e:
        for conversation_id in (long_id, "conv-2"):
            result = e.enrich(TRANSCRIPT, agent_id="agent-1", conversation_id=conversation_id)
            e.ledger.queue("agent-1", conversation_id, result.update, "test")
        assert {x.conversation_id for x in e.ledger.entries(State.PENDING)} == {long_id, "conv-2"}
        report = e.replay()
        assert report.written == 1
        (failure,) = report.failed
        assert failure.endswith(
            "conversation id is too long to be an id: 100,000 characters "
            "(100,000 in the URL, at most 1,024)"
        )
        assert e.ledger.get("agent-1", long_id).state == State.FAILED
        assert e.ledger.get("agent-1", "conv-2").state == State.WRITTEN
    assert [p[1].rsplit("/", 1)[1] for p in fake_chatdash.puts] == ["conv-2"]


def test_llm_errors_from_hostile_servers_are_llm_errors():
    """The new class sits in the tree under LLMError (exit 3)."""
    assert issubclass(LLMProtocolError, LLMError)
    assert error_class(LLMProtocolError("x")) == "llm"
    assert httpx  # the tests above use the real httpx and openai SDK, no mocks
