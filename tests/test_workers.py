"""``enrich batch --workers N``: one input over N real processes sharing the ledger, against the
fake servers; one results file, one progress output, nothing paid or written twice, nothing lost
when a worker is killed, Ctrl-C as with one process."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import CHATDASH_KEY, OPENAI_KEY, TRANSCRIPT
from typer.testing import CliRunner

from enrich.cli import app
from enrich.ledger import Ledger, State
from enrich.testing import FakeChatDash, FakeLLM

runner = CliRunner()


def _write_items(path: Path, n: int) -> Path:
    rows = (
        {
            "agent_id": "agent-1",
            "conversation_id": f"c{i:04d}",
            "transcript": TRANSCRIPT + f"User: ref {i}\n",
        }
        for i in range(n)
    )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _env(llm: FakeLLM, cd: FakeChatDash, ledger: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": llm.url,
        "CHATDASH_API_KEY": CHATDASH_KEY,
        "CHATDASH_BASE_URL": cd.url,
        "ENRICH_LEDGER": str(ledger),
        "ENRICH_CONFIG": "none",
    }
    return env


def _batch(*args: str) -> list[str]:
    return [sys.executable, "-m", "enrich", "batch", *args]


def _workers_of(pid: int) -> list[int]:
    """The pids of ``pid``'s worker processes (its multiprocessing children, not the resource
    tracker that multiprocessing also starts)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting")
        time.sleep(0.02)


def _inflight(ledger: Path) -> list[tuple]:
    with sqlite3.connect(ledger) as conn:
        return conn.execute("SELECT agent_id, conversation_id FROM inflight").fetchall()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_three_workers_one_results_file_each_conversation_paid_and_written_once(tmp_path):
    ledger = tmp_path / "ledger.sqlite3"
    path = _write_items(tmp_path / "in.jsonl", 300)
    out = tmp_path / "out.jsonl"
    with FakeLLM(latency=0.2) as llm, FakeChatDash(api_key=CHATDASH_KEY) as cd:
        env = _env(llm, cd, ledger)
        run = subprocess.run(
            _batch(str(path), "--workers", "3", "-j", "16", "-o", str(out)),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        rows = _rows(out)
        assert len(rows) == 300
        assert Counter(r["conversation_id"] for r in rows) == {f"c{i:04d}": 1 for i in range(300)}
        assert {r["status"] for r in rows} == {"written"}
        assert sorted(r["line"] for r in rows) == list(range(1, 301))
        assert llm.count == 300  # each paid once
        assert len(cd.puts) == 300 and len({p[1] for p in cd.puts}) == 300  # each PUT once
        # more in flight than one process may hold at -j 16: three processes did the work
        assert llm.max_in_flight > 16
        # one progress output and one summary, from the parent only
        assert run.stderr.count("enrich: batch summary") == 1
        assert "300/300 (100%) done" in run.stderr
        assert run.stdout == ""
        assert {e.state for e in Ledger(ledger).entries()} == {State.WRITTEN}
        assert _inflight(ledger) == []

        # the same command again: everything is skipped, nothing paid or sent again
        again = subprocess.run(
            _batch(str(path), "--workers", "3", "-j", "16", "-o", str(out)),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert again.returncode == 0, again.stderr
        assert {r["status"] for r in _rows(out)} == {"skipped"} and len(_rows(out)) == 300
        assert llm.count == 300 and len(cd.puts) == 300


def test_limit_and_dry_run_keep_their_meaning_with_workers(tmp_path):
    ledger = tmp_path / "ledger.sqlite3"
    path = _write_items(tmp_path / "in.jsonl", 50)
    with path.open("a") as f:  # a bad line and a duplicate, answered as with one process
        f.write("not json\n")
        f.write(json.dumps({"agent_id": "agent-1", "conversation_id": "c0001"}) + "\n")
    out = tmp_path / "out.csv"
    with FakeLLM(latency=0.05) as llm, FakeChatDash(api_key=CHATDASH_KEY) as cd:
        env = _env(llm, cd, ledger)
        run = subprocess.run(
            _batch(str(path), "-w", "2", "-j", "4", "--limit", "20", "--dry-run", "-o", str(out)),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        lines = out.read_text().splitlines()
        assert len(lines) == 21 and lines[0].startswith("agent_id,conversation_id,line,status")
        assert llm.count == 20 and cd.puts == []
        assert {e.state for e in Ledger(ledger).entries()} == {State.ENRICHED}

        every = subprocess.run(
            _batch(str(path), "-w", "2", "-j", "4", "-o", str(tmp_path / "all.jsonl")),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert every.returncode == 5, every.stderr  # the bad line failed
        rows = _rows(tmp_path / "all.jsonl")
        assert len(rows) == 52
        bad = [r for r in rows if r["status"] == "failed"]
        assert [(r["line"], r["stage"]) for r in bad] == [(51, "input")]
        duplicate = [r for r in rows if r["line"] == 52]
        assert duplicate[0]["status"] == "skipped"
        assert duplicate[0]["error"] == "the same conversation as line 2 of this batch"
        assert llm.count == 50  # the 20 enriched by the dry run were reused
        assert len(cd.puts) == 50


def test_max_cost_holds_across_all_workers_and_exits_7(tmp_path):
    ledger = tmp_path / "ledger.sqlite3"
    config = tmp_path / "enrich.yaml"
    config.write_text("pricing:\n  gpt-4o-mini: {input: 1000, output: 1000}\n")
    path = _write_items(tmp_path / "in.jsonl", 40)
    out = tmp_path / "out.jsonl"
    with FakeLLM(latency=0.1) as llm, FakeChatDash(api_key=CHATDASH_KEY) as cd:
        env = {**_env(llm, cd, ledger), "ENRICH_CONFIG": str(config)}
        first = subprocess.run(
            _batch(str(path), "--limit", "1", "-o", str(out)),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert first.returncode == 0, first.stderr
        one = _rows(out)[0]["result"]["cost"]
        cap = 6.5 * one
        run = subprocess.run(
            _batch(str(path), "-w", "2", "-j", "1", "--max-cost", str(cap), "-o", str(out)),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 7, run.stderr
        assert "--max-cost" in run.stderr
        paid = [r for r in _rows(out) if r["result"] and not r["result"]["reused"]]
        assert sum(r["result"]["cost"] for r in paid) <= cap  # both workers together
        assert 2 <= len(paid) < 39
        assert llm.count == 1 + len(paid)


def test_a_killed_worker_loses_nothing(tmp_path):
    ledger = tmp_path / "ledger.sqlite3"
    path = _write_items(tmp_path / "in.jsonl", 300)
    out = tmp_path / "out.jsonl"
    with FakeLLM(latency=0.3) as llm, FakeChatDash(api_key=CHATDASH_KEY) as cd:
        proc = subprocess.Popen(
            _batch(str(path), "--workers", "3", "-j", "8", "-o", str(out)),
            env=_env(llm, cd, ledger),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_for(lambda: len(cd.puts) >= 40)
            workers = _workers_of(proc.pid)
            assert len(workers) == 3
            os.kill(workers[0], signal.SIGKILL)  # eight conversations in flight in it
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        assert "killed by SIGKILL" in err and "go to another worker" in err
        rows = _rows(out)
        assert Counter(r["conversation_id"] for r in rows) == {f"c{i:04d}": 1 for i in range(300)}
        assert all(r["ok"] for r in rows)
        entries = Ledger(ledger).entries()
        assert len(entries) == 300 and {e.state for e in entries} == {State.WRITTEN}
        assert {p[1].rsplit("/", 1)[1] for p in cd.puts} == {f"c{i:04d}" for i in range(300)}
        # paid once, but for the answers the dead worker was waiting for (at most 8)
        assert 300 <= llm.count <= 308
        assert _inflight(ledger) == []


def test_ctrl_c_stops_every_worker_exits_130_and_the_rerun_resumes(tmp_path):
    ledger = tmp_path / "ledger.sqlite3"
    path = _write_items(tmp_path / "in.jsonl", 200)
    with FakeLLM(latency=0.3) as llm, FakeChatDash(api_key=CHATDASH_KEY) as cd:
        env = _env(llm, cd, ledger)
        proc = subprocess.Popen(
            _batch(str(path), "--workers", "2", "-j", "4", "-o", str(tmp_path / "out.jsonl")),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
        try:
            _wait_for(lambda: len(cd.puts) >= 6)
            workers = _workers_of(proc.pid)
            assert len(workers) == 2
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends: to all
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, err
        assert "Run the same command again to resume" in err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err
        assert not any(_alive(pid) for pid in workers)
        paid = llm.count
        assert 6 <= paid < 200
        # what was in flight finished and was kept: every request paid for is in the ledger
        assert len(Ledger(ledger).entries()) == paid
        assert len(_rows(tmp_path / "out.jsonl")) == paid
        assert _inflight(ledger) == []

        rerun = subprocess.run(
            _batch(str(path), "--workers", "2", "-j", "8"),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert rerun.returncode == 0, rerun.stderr
        assert llm.count == 200  # the rest, and nothing twice
        assert {e.state for e in Ledger(ledger).entries()} == {State.WRITTEN}


def test_backfill_lists_in_the_parent_and_enriches_in_the_workers(tmp_path):
    start = datetime(2026, 11, 1, tzinfo=UTC)
    ledger = tmp_path / "ledger.sqlite3"
    out = tmp_path / "bf.jsonl"
    with (
        FakeLLM(latency=0.05) as llm,
        FakeChatDash(api_key=CHATDASH_KEY, page_size=25) as cd,
    ):
        for i in range(60):
            cid = f"conv-{i:03d}"
            cd.conversations[("agent-1", cid)] = {
                "createdAt": (start + timedelta(hours=i * 0.8)).isoformat()
            }
            cd.messages[("agent-1", cid)] = [
                {"sender": "bot", "type": "text", "content": {"text": "Hello, how can I help?"}},
                {"sender": "user", "type": "text", "content": {"text": f"Refund for order {i}."}},
            ]
        run = subprocess.run(
            [
                *_batch()[:-1],
                "backfill",
                "-a",
                "agent-1",
                "--since",
                "2026-11-01",
                "--until",
                "2026-11-03T00:00Z",
                "--split-at",
                "25",
                "--workers",
                "2",
                "-j",
                "4",
                "-o",
                str(out),
            ],
            env=_env(llm, cd, ledger),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        assert Counter(r["conversation_id"] for r in _rows(out)) == {
            f"conv-{i:03d}": 1 for i in range(60)
        }
        assert llm.count == 60
        assert sorted(p.rsplit("/", 1)[1] for _, p, _, _ in cd.puts) == [
            f"conv-{i:03d}" for i in range(60)
        ]


def test_workers_need_the_ledger(tmp_path, monkeypatch):
    path = _write_items(tmp_path / "in.jsonl", 3)
    with FakeLLM() as llm, FakeChatDash(api_key=CHATDASH_KEY) as cd:
        for key, value in _env(llm, cd, tmp_path / "l.sqlite3").items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("ENRICH_LEDGER", "off")
        r = runner.invoke(app, ["batch", str(path), "--workers", "2"])
        assert r.exit_code == 2, r.stderr
        assert r.stderr.strip().splitlines() == [
            "enrich: error: --workers 2 needs the ledger (the workers share it): turn it on "
            "(ledger.enabled, ENRICH_LEDGER) or run with --workers 1"
        ]
        assert llm.count == 0 and cd.puts == []
        monkeypatch.setenv("ENRICH_LEDGER", str(tmp_path / "l.sqlite3"))
        r = runner.invoke(app, ["batch", str(path), "--workers", "2", "--via", "batch-api"])
        assert r.exit_code == 2 and "--workers 2 runs --via direct only" in r.stderr
        assert llm.count == 0 and cd.puts == []
        monkeypatch.setenv("ENRICH_LEDGER", "off")
        # one worker needs no ledger: today's path
        r = runner.invoke(app, ["batch", str(path), "--workers", "1"])
        assert r.exit_code == 0, r.stderr
        assert llm.count == 3
