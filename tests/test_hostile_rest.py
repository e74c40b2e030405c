"""Issue 14, the rest: the Batch API never falls back to the full price unasked, a small
context (llama.cpp's 4096) works with the default answer budget, and a lone surrogate in a
transcript is an input error (exit 2) naming where it is. Against the fake servers."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from conftest import TRANSCRIPT, make_config
from typer.testing import CliRunner

from enrich import Enricher
from enrich.cli import app
from enrich.errors import ConfigError, LLMError, TranscriptError, error_class
from enrich.testing import FakeLLM

runner = CliRunner()


class NoBatchAPI(FakeLLM):
    """A server with chat completions only (vLLM, llama.cpp...): /files and /batches are 404."""

    def _batch_api(self, handler: Any, path: str, raw: bytes) -> None:
        self._send(handler, 404, {"error": {"message": f"no route {path}"}})


def rows(n: int) -> list[dict[str, str]]:
    return [
        {"agent_id": "agent-1", "conversation_id": f"c{i}", "transcript": TRANSCRIPT}
        for i in range(n)
    ]


def write_jsonl(path, items) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return str(path)


def set_config(env: dict[str, Any], **sections: Any) -> None:
    data = yaml.safe_load(env["config"].read_text())
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    env["config"].write_text(yaml.safe_dump(data))


# -- 1. the Batch API: no silent fallback to the full price --------------------------------------


def test_batch_api_unavailable_fails_the_job_without_paying(env, fake_chatdash, monkeypatch):
    with NoBatchAPI() as llm:
        monkeypatch.setenv("OPENAI_BASE_URL", llm.url)
        path = write_jsonl(env["tmp"] / "in.jsonl", rows(3))
        out = env["tmp"] / "out.jsonl"
        r = runner.invoke(
            app, ["batch", path, "--via", "batch-api", "--poll-seconds", "0.05", "-o", str(out)]
        )
        assert r.exit_code == 3, r.stderr[-800:]
        assert "Batch API is unavailable" in r.stderr and "--via direct" in r.stderr
        assert "batch_api_fallback" in r.stderr
        assert llm.count == 0 and fake_chatdash.puts == []  # nothing paid, nothing written


def test_batch_api_unavailable_is_an_llm_error_in_the_library(fake_chatdash):
    with NoBatchAPI() as llm, Enricher(make_config(llm, fake_chatdash)) as e:
        with pytest.raises(LLMError, match="Batch API is unavailable") as info:
            list(e.enrich_many(rows(2), write=False, via="batch-api", poll_seconds=0.05))
        assert error_class(info.value) == "llm" and "--via direct" in str(info.value)
        assert llm.count == 0


def test_batch_api_fallback_to_direct_calls_only_when_allowed(env, fake_chatdash, monkeypatch):
    with NoBatchAPI() as llm:
        monkeypatch.setenv("OPENAI_BASE_URL", llm.url)
        set_config(env, llm={"batch_api_fallback": True})
        path = write_jsonl(env["tmp"] / "in.jsonl", rows(3))
        out = env["tmp"] / "out.jsonl"
        r = runner.invoke(
            app, ["batch", path, "--via", "batch-api", "--poll-seconds", "0.05", "-o", str(out)]
        )
        assert r.exit_code == 0, r.stderr[-800:]
        assert "full price" in r.stderr  # said, not silent
        assert llm.count == 3 and len(fake_chatdash.puts) == 3


# -- 2. a small context: the README's llama.cpp set-up works as written --------------------------


def test_a_4096_context_with_the_default_answer_budget_enriches_a_call(fake_llm):
    config = make_config(fake_llm, llm={"context_tokens": 4096})
    assert config.llm.max_tokens == 512  # an eighth of the context
    with Enricher(config) as e:
        result = e.enrich(TRANSCRIPT)
    assert result.enrichment.summary and fake_llm.count == 1
    assert fake_llm.requests[0]["max_tokens"] == 512
    # a long call is cut into parts that fit the same context
    with Enricher(config) as e:
        assert e.enrich(TRANSCRIPT * 40).enrichment.summary
    assert fake_llm.count > 2


def test_the_readme_llama_config_runs_in_the_cli(env, fake_llm):
    set_config(env, llm={"context_tokens": 4096})
    r = runner.invoke(app, ["run", "-t", str(env["transcript"]), "--dry-run"])
    assert r.exit_code == 0, r.stderr[-800:]
    assert fake_llm.count == 1


def test_an_answer_budget_too_big_for_the_context_says_what_to_set(fake_llm):
    config = make_config(fake_llm, llm={"context_tokens": 4096, "max_tokens": 2000})
    with Enricher(config) as e, pytest.raises(ConfigError) as info:
        e.enrich(TRANSCRIPT)
    message = str(info.value)
    assert "with context_tokens 4096, set llm.max_tokens to at most " in message
    most = int(message.split("at most ")[1].split()[0])
    assert fake_llm.count == 0
    with Enricher(make_config(fake_llm, llm={"context_tokens": 4096, "max_tokens": most})) as e:
        assert e.enrich(TRANSCRIPT).enrichment.summary  # the value it names works
    too_big = make_config(fake_llm, llm={"context_tokens": 4096, "max_tokens": most + 1})
    with Enricher(too_big) as e, pytest.raises(ConfigError):
        e.enrich(TRANSCRIPT)


# -- 3. a lone surrogate is an input error naming where it is ------------------------------------

CHAT_WITH_SURROGATE = (
    '[{"role": "user", "content": "I was charged twice \\ud800 for 4417"},'
    ' {"role": "assistant", "content": "Refunded."}]'
)


def test_a_json_surrogate_escape_in_a_file_exits_2(env, fake_llm):
    path = env["tmp"] / "call.json"
    path.write_text(CHAT_WITH_SURROGATE)
    r = runner.invoke(app, ["run", "-t", str(path), "--dry-run"])
    assert r.exit_code == 2, r.stderr[-800:]
    assert "internal error" not in r.stderr
    assert "lone surrogate" in r.stderr and "$[0].content" in r.stderr
    assert fake_llm.count == 0


@pytest.mark.parametrize(
    "data",
    [
        "User: charged twice \ud800\nAgent: Refunded.",
        [
            {"role": "user", "content": "charged twice \udfff"},
            {"role": "assistant", "content": "ok"},
        ],
        {"messages": [{"role": "user", "content": "hi"}], "\ud83d": 1},
    ],
    ids=["str", "list", "dict-key"],
)
def test_a_surrogate_passed_to_the_library_is_a_transcript_error(fake_llm, data):
    with Enricher(make_config(fake_llm)) as e, pytest.raises(TranscriptError) as info:
        e.enrich(data)
    assert error_class(info.value) == "input"
    assert fake_llm.count == 0


def test_a_surrogate_in_a_batch_line_fails_that_line_only(env, fake_llm, fake_chatdash):
    path = env["tmp"] / "in.jsonl"
    good = {"agent_id": "agent-1", "conversation_id": "good", "transcript": TRANSCRIPT}
    lines = [
        '{"agent_id": "agent-1", "conversation_id": "text", '
        '"transcript": "User: hi \\ud800\\nAgent: hello"}',
        json.dumps({"agent_id": "agent-1", "conversation_id": "chat", "transcript": []})[:-3]
        + CHAT_WITH_SURROGATE
        + "}",
        json.dumps(good),
    ]
    path.write_text("\n".join(lines) + "\n")
    out = env["tmp"] / "out.jsonl"
    r = runner.invoke(app, ["batch", str(path), "-o", str(out)])
    assert r.exit_code == 5, r.stderr[-800:]
    assert "internal error" not in r.stderr
    results = {x["conversation_id"]: x for x in map(json.loads, out.read_text().splitlines())}
    assert results["good"]["ok"]
    for cid in ("text", "chat"):
        assert not results[cid]["ok"]
        assert results[cid]["stage"] == "input", results[cid]
        assert "surrogate" in results[cid]["error"] or "UTF-8" in results[cid]["error"]
    assert fake_llm.count == 1
