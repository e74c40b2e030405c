"""What a user ran into when trying enrich for real: each a command that must behave."""

from __future__ import annotations

import json
import subprocess
import threading

from conftest import TRANSCRIPT, make_config
from typer.testing import CliRunner

from enrich import Enricher
from enrich.cli import app
from enrich.ledger import Ledger
from enrich.testing import FakeLLM, Fault

runner = CliRunner()


def rows(n: int) -> list[dict]:
    return [
        {
            "agent_id": "agent-1",
            "conversation_id": f"c{i}",
            "transcript": TRANSCRIPT + f"User: {i}\n",
        }
        for i in range(n)
    ]


def test_a_line_that_is_not_utf8_fails_alone(env, fake_llm, fake_chatdash):
    path = env["tmp"] / "in.jsonl"
    lines = [json.dumps(r).encode() for r in rows(4)]
    # not UTF-8, and not legacy text either (C1 control bytes): that line fails, alone
    lines.insert(2, b'{"agent_id": "a", "conversation_id": "' + b"\x81\x8d\x8f" * 4 + b'"}')
    path.write_bytes(b"\n".join(lines) + b"\n")
    r = runner.invoke(app, ["batch", str(path), "-o", str(env["tmp"] / "out.jsonl")])
    assert r.exit_code == 5, r.stderr  # some failed; the batch went on
    assert "line 3: not UTF-8" in r.stderr
    assert len(fake_chatdash.puts) == 4


def test_a_windows_1252_line_is_read_with_a_warning_as_a_file_is(env, fake_llm, fake_chatdash):
    """The same text a transcript file may hold (Windows-1252) is read in a batch line too."""
    path = env["tmp"] / "in.jsonl"
    row = {"agent_id": "a", "conversation_id": "cafe", "transcript": TRANSCRIPT + "User: caf\xe9\n"}
    path.write_bytes(json.dumps(row, ensure_ascii=False).encode("cp1252") + b"\n")
    r = runner.invoke(app, ["batch", str(path), "-o", str(env["tmp"] / "out.jsonl")])
    assert r.exit_code == 0, r.stderr
    assert "line 1: not valid UTF-8" in r.stderr and "read as Windows-1252" in r.stderr
    (put,) = fake_chatdash.puts
    assert "café" in fake_llm.requests[0]["messages"][1]["content"]


def test_a_bad_transcript_in_a_batch_names_its_line(env, fake_llm, fake_chatdash):
    items = rows(3)
    items[1]["transcript"] = "   "
    path = env["tmp"] / "in.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in items))
    r = runner.invoke(app, ["batch", str(path)])
    assert r.exit_code == 5
    assert "line 2: empty transcript" in r.stderr


def test_the_same_conversation_twice_in_a_batch_is_paid_once(env, fake_llm, fake_chatdash):
    path = env["tmp"] / "in.jsonl"
    path.write_text("".join(json.dumps(rows(1)[0]) + "\n" for _ in range(3)))
    out = env["tmp"] / "out.jsonl"
    r = runner.invoke(app, ["batch", str(path), "-j", "4", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    assert len(fake_llm.requests) == 1 and len(fake_chatdash.puts) == 1
    results = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["status"] for x in results) == ["skipped", "skipped", "written"]
    assert any("the same conversation as line 1" in (x["error"] or "") for x in results)


def test_two_processes_enriching_one_conversation_pay_once(fake_chatdash, tmp_path):
    with FakeLLM(latency=0.6) as llm:
        config = make_config(llm, fake_chatdash, ledger={"path": str(tmp_path / "l.db")})
        results = []

        def webhook():  # each its own Enricher, as separate processes would have
            with Enricher(config) as e:
                results.append(e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT))

        threads = [threading.Thread(target=webhook) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(results) == 3 and llm.count == 1
    assert sum(not r.reused for r in results) == 1
    assert {json.dumps(r.update, sort_keys=True) for r in results} == {
        json.dumps(results[0].update, sort_keys=True)
    }


def test_run_refetches_a_conversation_that_changed(env, fake_llm, fake_chatdash):
    key = ("agent-1", "conv-1")
    fake_chatdash.conversations[key] = {}
    fake_chatdash.messages[key] = [
        {"sender": "bot", "type": "text", "content": {"text": "Hello!"}},
        {"sender": "user", "type": "text", "content": {"text": "I need a refund."}},
    ]
    assert runner.invoke(app, ["run", "-a", "agent-1", "-C", "conv-1"]).exit_code == 0
    fake_chatdash.messages[key].append(
        {"sender": "user", "type": "text", "content": {"text": "Also, cancel my order."}}
    )
    r = runner.invoke(app, ["run", "-a", "agent-1", "-C", "conv-1"])
    assert r.exit_code == 0, r.stderr
    assert len(fake_llm.requests) == 2  # enriched afresh
    assert "Also, cancel my order." in fake_llm.requests[1]["messages"][1]["content"]
    unchanged = runner.invoke(app, ["run", "-a", "agent-1", "-C", "conv-1"])
    assert unchanged.exit_code == 0 and len(fake_llm.requests) == 2  # and reused when unchanged


def test_a_refused_write_points_to_replay_failed(env, fake_llm, fake_chatdash):
    fake_chatdash.fail(Fault(status=403))
    r = runner.invoke(app, ["run", "-a", "a", "-C", "c", "-t", str(env["transcript"])])
    assert r.exit_code == 4 and "`enrich replay --failed`" in r.stderr
    replay = runner.invoke(app, ["replay"])
    assert replay.exit_code == 0
    assert "1 write(s) ChatDash refused wait in the ledger" in replay.stderr
    assert runner.invoke(app, ["replay", "--failed"]).exit_code == 0
    assert Ledger(env["ledger"]).get("a", "c").state == "written"


def test_output_piped_into_head_ends_quietly(env, fake_llm, fake_chatdash):
    path = env["tmp"] / "in.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in rows(40)))
    done = subprocess.run(
        f"enrich batch {path} -o - | head -c 10 > /dev/null; echo ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == "141"
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr


def test_a_base_url_that_is_not_a_url_is_bad_configuration(env, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "notaurl")
    r = runner.invoke(app, ["run", "-t", str(env["transcript"]), "--dry-run"])
    assert r.exit_code == 2
    assert r.stderr.strip() == "enrich: error: OPENAI_BASE_URL: must start with http:// or https://"


def test_report_refuses_a_file_that_holds_no_results(env):
    path = env["tmp"] / "weird.csv"
    path.write_text("a,b\n1,2\n")
    r = runner.invoke(app, ["report", str(path)])
    assert r.exit_code == 2 and "no enrichment results in it" in r.stderr


def test_an_estimate_with_nothing_left_to_do_costs_nothing(env, fake_llm, fake_chatdash):
    path = env["tmp"] / "in.jsonl"
    path.write_text(
        "".join(
            json.dumps({k: v for k, v in x.items() if k != "transcript"}) + "\n" for x in rows(2)
        )
    )
    for x in rows(2):
        fake_chatdash.conversations[("agent-1", x["conversation_id"])] = {}
        fake_chatdash.messages[("agent-1", x["conversation_id"])] = [
            {"sender": "user", "type": "text", "content": {"text": "Hi, refund please."}}
        ]
    assert runner.invoke(app, ["batch", str(path)]).exit_code == 0
    r = runner.invoke(app, ["batch", str(path), "--estimate"])
    assert r.exit_code == 0
    assert "already done (free)" in r.stdout and "$0.0000" in r.stdout
