"""`enrich serve` as a process: `kill -9` mid-burst then a restart finishes everything, SIGTERM
stops it gracefully, and it refuses to start when it cannot serve safely."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import CHATDASH_KEY, OPENAI_KEY, put_schema
from test_serve import AGENT, RETELL_KEY, free_port, known, payload, signed, wait_for
from typer.testing import CliRunner

from enrich.cli import app as cli
from enrich.ledger import SQLiteLedger
from enrich.testing import FakeChatDash, FakeLLM


def start(
    llm: FakeLLM, chatdash: FakeChatDash, tmp: Path, *args: str, grace: float = 10
) -> tuple[subprocess.Popen, str]:
    """`python -m enrich serve` on a free port, once it answers /healthz."""
    config = tmp / "enrich.yaml"
    config.write_text(
        "llm:\n  max_retries: 0\n  timeout: 30\n"
        "chatdash:\n  backoff: 0.01\n  timeout: 5\n"
        f"serve:\n  retry_delay: 0.1\n  max_retry_delay: 0.3\n  grace_seconds: {grace}\n"
    )
    env = {
        **os.environ,
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": llm.url,
        "CHATDASH_API_KEY": CHATDASH_KEY,
        "CHATDASH_BASE_URL": chatdash.url,
        "ENRICH_LEDGER": str(tmp / "ledger.sqlite3"),
        "ENRICH_CONFIG": str(config),
        "RETELL_API_KEY": RETELL_KEY,
    }
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "enrich", "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the server did not start"
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.05)


def deliver(url: str, call_id: str) -> int:
    body = payload("retell", call_id)
    answer = httpx.post(
        f"{url}/webhooks/retell/{AGENT}", content=body, headers=signed("retell", body), timeout=10
    )
    return answer.status_code


def conversations_written(chatdash: FakeChatDash) -> set[str]:
    return {path.rsplit("/", 1)[1] for method, path, _, _ in chatdash.requests if method == "PUT"}


def test_kill_9_mid_burst_then_a_restart_finishes_every_accepted_webhook(tmp_path):
    calls = [f"r-burst-{i}" for i in range(30)]
    with (
        FakeLLM(latency=0.4) as llm,
        FakeChatDash(api_key=CHATDASH_KEY, put_schema=put_schema()) as chatdash,
    ):
        known(chatdash, *calls)
        proc, url = start(llm, chatdash, tmp_path, "--concurrency", "4")
        assert [deliver(url, c) for c in calls] == [202] * 30  # all accepted
        wait_for(lambda: len(chatdash.puts) >= 4)
        proc.kill()  # kill -9, mid-burst
        proc.wait(10)
        written_before = len(conversations_written(chatdash))
        assert 4 <= written_before < 30

        proc, url = start(llm, chatdash, tmp_path, "--concurrency", "8")
        try:
            wait_for(lambda: conversations_written(chatdash) == {f"cd-{c}" for c in calls}, 60)
            time.sleep(0.3)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        counts = SQLiteLedger(tmp_path / "ledger.sqlite3").webhook_counts()
        # what was in flight at the kill (at most --concurrency) may be asked or sent again
        assert len(chatdash.puts) <= 30 + 4 and llm.count <= 30 + 4
    assert counts == {"queued": 0, "done": 30, "failed": 0, "deliveries": 30}


def test_sigterm_stops_accepting_and_finishes_the_work_in_flight(tmp_path):
    calls = ["r-term-1", "r-term-2", "r-term-3"]
    with (
        FakeLLM(latency=1.5) as llm,
        FakeChatDash(api_key=CHATDASH_KEY, put_schema=put_schema()) as chatdash,
    ):
        known(chatdash, *calls)
        proc, url = start(llm, chatdash, tmp_path)
        assert [deliver(url, c) for c in calls] == [202] * 3
        wait_for(lambda: llm.in_flight == 3)
        assert chatdash.puts == []
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):  # no longer accepting
            deliver(url, "r-term-late")
        assert proc.wait(20) == 0
        _, stderr = proc.communicate()
        assert conversations_written(chatdash) == {f"cd-{c}" for c in calls}  # finished
    assert "stopped" in stderr and RETELL_KEY not in stderr and OPENAI_KEY not in stderr


def test_work_still_running_after_the_grace_period_goes_back_in_the_queue(tmp_path):
    with (
        FakeLLM(latency=6) as llm,
        FakeChatDash(api_key=CHATDASH_KEY, put_schema=put_schema()) as chatdash,
    ):
        known(chatdash, "r-long")
        proc, url = start(llm, chatdash, tmp_path, grace=1)
        assert deliver(url, "r-long") == 202
        wait_for(lambda: llm.in_flight == 1)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        elapsed = time.monotonic() - started
    item = SQLiteLedger(tmp_path / "ledger.sqlite3").webhook_items()[0]
    assert code == 0 and elapsed < 5  # the 1 s grace, not the LLM's 6 s
    assert item.state == "queued" and "interrupted" in (item.last_error or "")


def test_serve_refuses_to_start_without_any_secret(monkeypatch, tmp_path):
    for var in ("RETELL_API_KEY", "VAPI_WEBHOOK_SECRET", "ELEVENLABS_WEBHOOK_SECRET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ENRICH_CONFIG", "none")
    monkeypatch.setenv("ENRICH_LEDGER", str(tmp_path / "ledger.sqlite3"))
    monkeypatch.setenv("CHATDASH_API_KEY", CHATDASH_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    result = CliRunner().invoke(cli, ["serve", "--port", "0"])
    assert result.exit_code == 2
    assert "RETELL_API_KEY" in result.stderr and "--insecure-no-verify" in result.stderr


def test_serve_without_its_extra_names_the_extra_to_install():
    code = (
        "import sys; sys.modules['uvicorn'] = None; sys.argv = ['enrich', 'serve']\n"
        "from enrich.cli import main; main()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "pip install 'enrich[serve]'" in done.stderr
