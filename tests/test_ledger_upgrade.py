"""A ledger written by release 0.1, opened by this release as a user would: through the CLI.

``fixtures/ledger/v0.1.sqlite3`` was made by ``make_v0_1_ledger.py`` with release 0.1: on agent
``agent-1``, ``conv-written`` is written, ``conv-pending`` pending (ChatDash answered 503),
``conv-failed`` failed (ChatDash refused it, 422), and Batch API job ``batch_fixture`` is open.
Each test works on a copy; the fixture itself is never opened.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3

import pytest
from conftest import FIXTURES
from typer.testing import CliRunner

from enrich.cli import app
from enrich.ledger import State, open_ledger
from enrich.ledger.migrations import MIGRATIONS

runner = CliRunner()
FIXTURE = FIXTURES / "ledger" / "v0.1.sqlite3"
TRANSCRIPTS = json.loads((FIXTURES / "ledger" / "transcripts.json").read_text())
FIXTURE_SHA256 = hashlib.sha256(FIXTURE.read_bytes()).hexdigest()


def stored(path, conversation_id: str) -> dict:
    """The row as 0.1 left it, read with plain sqlite3 before this release opens the file."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    row = conn.execute(
        "SELECT * FROM conversations WHERE agent_id = 'agent-1' AND conversation_id = ?",
        (conversation_id,),
    ).fetchone()
    conn.close()
    return dict(row)


@pytest.fixture
def old(env):
    """``env`` (the CLI aimed at the fakes) with its ledger a copy of the 0.1 fixture."""
    shutil.copyfile(FIXTURE, env["ledger"])
    yield env
    assert hashlib.sha256(FIXTURE.read_bytes()).hexdigest() == FIXTURE_SHA256
    assert not FIXTURE.with_name(FIXTURE.name + "-wal").exists()
    assert not FIXTURE.with_name(FIXTURE.name + "-shm").exists()


def schema(path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
    ).fetchall()
    conn.close()
    return rows


def test_the_fixture_is_a_0_1_ledger(tmp_path):
    copy = tmp_path / "copy.sqlite3"  # even a read-only open would add -wal and -shm files
    shutil.copyfile(FIXTURE, copy)
    conn = sqlite3.connect(copy)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert "conversations" in tables and "_migrations" not in tables


def test_opening_applies_and_records_the_migrations(old, fake_llm, fake_chatdash, tmp_path):
    r = runner.invoke(app, ["ledger", "stats", "--json"])
    assert r.exit_code == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["ledger"] == str(old["ledger"])
    assert [(s["state"], s["conversations"]) for s in stats["states"]] == [
        ("failed", 1),
        ("pending", 1),
        ("written", 1),
    ]
    assert all(s["requests"] == 1 and s["cost"] > 0 for s in stats["states"])

    conn = sqlite3.connect(old["ledger"])
    names = [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]
    versions = conn.execute("SELECT DISTINCT fingerprint_version FROM conversations").fetchall()
    conn.close()
    assert names == [fn.__name__ for fn in MIGRATIONS]
    assert versions == [(1,)]  # 0.1's fingerprints are version 1
    assert {e.version for e in open_ledger(old["ledger"]).entries()} == {1}

    fresh = tmp_path / "fresh.sqlite3"
    open_ledger(fresh).stats()
    assert schema(old["ledger"]) == schema(fresh)  # upgraded is alike to new

    shown = json.loads(runner.invoke(app, ["show", "-C", "conv-pending", "--json"]).stdout)
    assert shown["state"] == "pending" and shown["attempts"] == 1 and "503" in shown["last_error"]
    assert [h["event"] for h in shown["history"]] == ["enriched", "write_failed"]


def test_replay_writes_the_pending_body_as_stored(old, fake_llm, fake_chatdash):
    pending = stored(old["ledger"], "conv-pending")
    r = runner.invoke(app, ["replay"])
    assert r.exit_code == 0, r.stderr
    assert "written: 1, failed: 0" in r.stdout
    assert "1 write(s) ChatDash refused wait in the ledger" in r.stderr
    assert fake_llm.requests == []
    ((method, path, _, body),) = fake_chatdash.puts
    assert method == "PUT" and path.endswith("/agents/agent-1/conversations/conv-pending")
    assert body == json.loads(pending["body"])
    assert fake_chatdash.violations == []
    entry = open_ledger(old["ledger"]).get("agent-1", "conv-pending")
    assert entry.state == State.WRITTEN and entry.attempts == 2

    failed = stored(old["ledger"], "conv-failed")
    r = runner.invoke(app, ["replay", "--failed"])
    assert r.exit_code == 0, r.stderr
    assert "written: 1, failed: 0" in r.stdout
    assert fake_llm.requests == []
    method, path, _, body = fake_chatdash.puts[-1]
    assert len(fake_chatdash.puts) == 2
    assert path.endswith("/agents/agent-1/conversations/conv-failed")
    assert body == json.loads(failed["body"])
    states = {e.conversation_id: e.state for e in open_ledger(old["ledger"]).entries()}
    assert set(states.values()) == {State.WRITTEN}


def test_a_written_conversation_is_reused_and_not_written_again(old, fake_llm, fake_chatdash):
    transcript = old["tmp"] / "conv-written.txt"
    transcript.write_text(TRANSCRIPTS["conv-written"])
    before = stored(old["ledger"], "conv-written")
    r = runner.invoke(app, ["run", "-a", "agent-1", "-C", "conv-written", "-t", str(transcript)])
    assert r.exit_code == 0, r.stderr
    assert "reused the ledger's enrichment" in r.stderr and "nothing sent" in r.stderr
    assert fake_llm.requests == []  # the fake LLM's URL differs from 0.1's: not fingerprinted
    assert fake_chatdash.puts == []
    entry = open_ledger(old["ledger"]).get("agent-1", "conv-written")
    assert entry.state == State.WRITTEN and entry.written_at == before["written_at"]
    assert entry.body == json.loads(before["body"])


def test_the_open_batch_job_is_still_open(old):
    assert open_ledger(old["ledger"]).open_batch_jobs() == {
        "batch_fixture": {"0": ["agent-1", "conv-x", "h", "m", "p", "t"]}
    }
