"""The command line, through typer's CliRunner, against the fake servers: every exit code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import CHATDASH_KEY, OPENAI_KEY, answer
from typer.testing import CliRunner

from enrich.cli import app
from enrich.testing import Fault, Reply

runner = CliRunner()


def run(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def assert_no_secrets(result) -> None:
    for key in (OPENAI_KEY, CHATDASH_KEY):
        assert key not in result.stdout and key not in result.stderr


# -- exit 0 --------------------------------------------------------------------------------------


def test_run_writes_and_reports(env, fake_llm, fake_chatdash):
    fake_llm.add(Reply.json(answer()))
    r = run(
        "run",
        "--agent-id",
        "agent-1",
        "--conversation-id",
        "conv-1",
        "--transcript",
        str(env["transcript"]),
    )
    assert r.exit_code == 0, r.stderr
    assert "topic: Billing / Refund" in r.stdout
    assert "1 LLM request(s)" in r.stderr
    (put,) = fake_chatdash.puts
    assert put[3]["topic"] == "Billing"
    assert_no_secrets(r)


def test_dry_run_prints_only_the_body_and_writes_nothing(env, fake_llm, fake_chatdash):
    fake_llm.add(Reply.json(answer()))
    r = run(
        "run",
        "-a",
        "agent-1",
        "-C",
        "conv-1",
        "-t",
        str(env["transcript"]),
        "--dry-run",
        "--verbose",
    )
    assert r.exit_code == 0, r.stderr
    body = json.loads(r.stdout)  # stdout is exactly the body, nothing else
    assert body["mistunderstoodQueries"] == [
        {"question": "do you sell waterproof hiking boots in size 46?"}
    ]
    assert set(body) == {"summary", "topic", "subtopic", "evaluation", "mistunderstoodQueries"}
    assert fake_chatdash.requests == []
    assert "dry run, nothing written" in r.stderr
    assert_no_secrets(r)


def test_dry_run_needs_no_ids_nor_chatdash_key(env, fake_llm, fake_chatdash, monkeypatch):
    monkeypatch.delenv("CHATDASH_API_KEY")
    r = run("run", "-t", str(env["transcript"]), "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["topic"]


def test_json_prints_one_object_with_usage_and_what_was_written(env, fake_llm, fake_chatdash):
    fake_llm.add(Reply.json(answer()))
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"]), "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is True and out["written"] is True
    assert out["enrichment"]["topic"] == "Billing"
    assert out["update"] == fake_chatdash.puts[0][3]
    assert out["usage"]["requests"] == 1 and out["usage"]["prompt_tokens"] > 0


def test_transcript_from_stdin(env, fake_llm, fake_chatdash):
    messages = [
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "I need a refund."},
    ]
    r = run("run", "-t", "-", "--dry-run", "--json", input=json.dumps(messages))
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["transcript_format"] == "chat" and out["written"] is False
    assert "I need a refund." in fake_llm.requests[0]["messages"][1]["content"]


def test_flags_win_over_environment(env, fake_llm, fake_chatdash, monkeypatch):
    monkeypatch.setenv("ENRICH_MODEL", "env-model")
    monkeypatch.setenv("ENRICH_LLM_MODE", "json_object")
    r = run(
        "run", "-t", str(env["transcript"]), "--dry-run", "--model", "flag-model", "--mode", "tools"
    )
    assert r.exit_code == 0, r.stderr
    request = fake_llm.requests[0]
    assert request["model"] == "flag-model" and "tools" in request


def test_render_prints_the_exact_messages_and_calls_nothing(env, fake_llm, fake_chatdash):
    r = run("render", "-t", str(env["transcript"]), "--json")
    assert r.exit_code == 0, r.stderr
    messages = json.loads(r.stdout)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "waterproof hiking boots" in messages[1]["content"]
    assert fake_llm.requests == [] and fake_chatdash.requests == []
    # what render shows is what run sends
    run("run", "-t", str(env["transcript"]), "--dry-run")
    assert fake_llm.requests[0]["messages"] == messages


def test_templates_list_show_and_override(env, tmp_path, monkeypatch):
    r = run("templates", "list")
    assert r.exit_code == 0
    assert [line.split()[0] for line in r.stdout.splitlines()] == [
        "system.j2",
        "user.j2",
        "reask.j2",
        "map.j2",
        "reduce.j2",
        "analysis.j2",
    ]
    assert "yours" not in r.stdout
    shown = run("templates", "show", "user.j2")
    assert "<transcript>" in shown.stdout

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "user.j2").write_text(
        "CALL:\n{% for t in turns %}{{ t.label }}> {{ t.text }}\n{% endfor %}"
    )
    monkeypatch.setenv("ENRICH_PROMPTS_DIR", str(mine))
    listed = run("templates", "list").stdout
    assert "user.j2    yours" in listed and "system.j2  default" in listed
    rendered = json.loads(run("render", "-t", str(env["transcript"]), "--json").stdout)
    assert rendered[1]["content"].startswith("CALL:\nAgent> Thanks for calling")


def test_config_shows_resolved_values_with_keys_masked(env):
    r = run("config", "--config", str(env["config"]))
    assert r.exit_code == 0, r.stderr
    assert "max_retries: 0" in r.stdout  # from the file
    assert "api_key: '***'" in r.stdout
    assert_no_secrets(r)


def test_schema_and_formats_and_version(env):
    schema = json.loads(run("schema").stdout)
    assert schema["additionalProperties"] is False
    formats = run("formats").stdout
    assert formats.splitlines()[0].startswith("text") and "chat" in formats
    assert run("--version").stdout.startswith("enrich ")


# -- exit 2: bad input, usage, configuration; nothing sent ---------------------------------------


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "empty transcript"),
        (b"   \n\t\n", "empty transcript"),
        (b'[{"role": "user", "content": "hi"', "invalid JSON at line 1, column"),
        (b"42", "JSON of an unknown shape (a number); tried formats: chat"),
        (b'{"foo": 1}', "tried formats"),
        (b"Hello? Anyone there?", "no speaker labels found"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary data"),
        # not UTF-8, and not legacy text either (C1 control bytes): refused, not guessed at
        (b"User: caf\xe9 \xff\xfe" + bytes(range(0x80, 0xA0)), "not valid UTF-8"),
    ],
    ids=[
        "empty",
        "blank",
        "truncated-json",
        "number",
        "unknown-object",
        "no-labels",
        "binary",
        "undecodable",
    ],
)
def test_bad_transcripts_exit_2_without_calling_anything(
    env, fake_llm, fake_chatdash, content, words
):
    path = env["tmp"] / "bad.txt"
    path.write_bytes(content)
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", str(path))
    assert r.exit_code == 2
    assert words in r.stderr
    assert str(path) in r.stderr  # the place
    assert len(r.stderr.strip().splitlines()) == 1  # one line
    assert r.stdout == ""
    assert fake_llm.requests == [] and fake_chatdash.requests == []


def test_a_transcript_with_no_user_turn_is_skipped_exit_0_without_calling_anything(
    env, fake_llm, fake_chatdash
):
    # was exit 2 ("no user turn"): now a call with nothing to analyse, skipped (exit 0)
    path = env["tmp"] / "agent-only.txt"
    path.write_bytes(b"Agent: Hello?\nAgent: Anyone there?")
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", str(path))
    assert r.exit_code == 0, r.stderr
    assert r.stderr.strip() == (
        "enrich: skipped: the text transcript has 0 user turns (analysis.min_user_turns is 1): "
        "nothing to analyse, no LLM call; nothing written"
    )
    assert r.stdout == ""
    assert fake_llm.requests == [] and fake_chatdash.requests == []


def test_missing_transcript_file(env, fake_llm):
    r = run("run", "-t", str(env["tmp"] / "nope.txt"), "--dry-run")
    assert r.exit_code == 2 and "nope.txt: no such file" in r.stderr
    assert fake_llm.requests == []


def test_missing_ids_is_a_usage_error(env, fake_llm):
    r = run("run", "-t", str(env["transcript"]))
    assert r.exit_code == 2
    assert "--agent-id and --conversation-id (or --platform-id) are required" in r.stderr
    assert fake_llm.requests == []


def test_missing_openai_key_names_it(env, fake_llm, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"]))
    assert r.exit_code == 2 and "OPENAI_API_KEY is not set" in r.stderr


def test_missing_chatdash_key_names_it_and_pays_nothing(env, fake_llm, monkeypatch):
    monkeypatch.delenv("CHATDASH_API_KEY")
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"]))
    assert r.exit_code == 2 and "CHATDASH_API_KEY is not set" in r.stderr
    assert fake_llm.requests == []


def test_bad_configuration_names_the_place(env, fake_llm, monkeypatch):
    monkeypatch.setenv("ENRICH_LLM_MODE", "xml")
    r = run("run", "-t", str(env["transcript"]), "--dry-run")
    assert r.exit_code == 2 and r.stderr.startswith("enrich: error: ENRICH_LLM_MODE:")
    monkeypatch.delenv("ENRICH_LLM_MODE")
    env["config"].write_text("llm:\n  max_tokens: lots\n")
    r = run("run", "-t", str(env["transcript"]), "--dry-run")
    assert r.exit_code == 2 and f"{env['config']}: llm.max_tokens:" in r.stderr
    assert fake_llm.requests == []


def test_unknown_option_is_a_usage_error(env):
    r = run("run", "--no-such-option")
    assert r.exit_code == 2


def test_template_error_exits_2(env, fake_llm, tmp_path, monkeypatch):
    mine = tmp_path / "broken"
    mine.mkdir()
    (mine / "system.j2").write_text("Hello {{ customer_name }}")
    monkeypatch.setenv("ENRICH_PROMPTS_DIR", str(mine))
    r = run("run", "-t", str(env["transcript"]), "--dry-run")
    assert r.exit_code == 2 and "system.j2: 'customer_name' is undefined" in r.stderr
    assert fake_llm.requests == []


# -- exit 3: the LLM failed ----------------------------------------------------------------------


def test_llm_refusal_exits_3(env, fake_llm, fake_chatdash):
    fake_llm.add(Reply.refused("No."))
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"]))
    assert r.exit_code == 3 and "the model refused: No." in r.stderr
    assert fake_chatdash.requests == []


def test_llm_invalid_after_reasks_exits_3_and_json_keeps_the_raw_answers(
    env, fake_llm, fake_chatdash
):
    fake_llm.add(*[Reply.text('{"summary": 1}') for _ in range(3)])
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"]), "--json")
    assert r.exit_code == 3
    out = json.loads(r.stdout)
    assert out["ok"] is False and out["exit_code"] == 3
    assert out["error"]["type"] == "LLMValidationError"
    assert out["attempts"] == 3 and out["raw_outputs"] == ['{"summary": 1}'] * 3
    assert out["usage"]["requests"] == 3


def test_llm_401_exits_3_without_showing_the_key(env, fake_llm):
    fake_llm.add(Reply.failure(401, f"bad key {OPENAI_KEY}"))
    r = run("run", "-t", str(env["transcript"]), "--dry-run", "--verbose", "--json")
    assert r.exit_code == 3 and "check OPENAI_API_KEY" in r.stderr
    assert_no_secrets(r)


# -- exit 4: the write failed --------------------------------------------------------------------


def test_write_failure_exits_4_and_keeps_the_paid_result_on_stdout(env, fake_llm, fake_chatdash):
    fake_chatdash.fail(
        *[Fault(status=500, body={"error": f"db down {CHATDASH_KEY}"}) for _ in range(10)]
    )
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"]), "--verbose")
    assert r.exit_code == 4
    assert "failed after 4 attempt(s)" in r.stderr
    body = json.loads(r.stdout)
    assert body == fake_chatdash.puts[0][3]
    assert "paid for" in r.stderr
    assert_no_secrets(r)


def test_write_failure_with_json_carries_the_result(env, fake_llm, fake_chatdash):
    fake_chatdash.fail(Fault(status=404))
    r = run("run", "-a", "agent-1", "-C", "gone", "-t", str(env["transcript"]), "--json")
    assert r.exit_code == 4
    out = json.loads(r.stdout)
    assert out["ok"] is False and out["result"]["update"]["topic"]
    assert "not found" in out["error"]["message"]


# -- exit 1: a bug -------------------------------------------------------------------------------


def test_unexpected_exception_exits_1_and_says_it_is_a_bug(env, fake_llm, monkeypatch):
    import enrich.engine.core

    def broken(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(enrich.engine.core.EnricherCore, "enrich", broken)  # inject a failure
    r = run("run", "-t", str(env["transcript"]), "--dry-run")
    assert r.exit_code == 1
    assert "internal error: RuntimeError: boom (this is a bug" in r.stderr


# -- as a user runs it ---------------------------------------------------------------------------


def test_python_dash_m_and_console_script(env, fake_llm):
    r = subprocess.run(
        [sys.executable, "-m", "enrich", "run", "-t", str(env["transcript"]), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["topic"]
    r = subprocess.run(
        ["enrich", "run", "-t", "/nonexistent", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "/nonexistent" in r.stderr
