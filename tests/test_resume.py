"""Resuming after a crash or a stop: leases that die with their holder, SIGTERM as Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from conftest import CHATDASH_KEY, OPENAI_KEY, TRANSCRIPT, make_config, run_sql

from enrich import Enricher
from enrich.cli._signals import sigterm_as_interrupt
from enrich.engine import leases
from enrich.ledger import Ledger, State, open_ledger
from enrich.ledger.holder import holder_is_gone, this_holder
from enrich.testing import FakeChatDash, FakeLLM


def _items(n: int) -> list[dict]:
    return [
        {
            "agent_id": "agent-1",
            "conversation_id": f"c{i:03d}",
            "transcript": TRANSCRIPT + f"User: ref {i}\n",
        }
        for i in range(n)
    ]


def _env(llm: FakeLLM, cd: FakeChatDash, ledger) -> dict[str, str]:
    env = {
        **os.environ,
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": llm.url,
        "CHATDASH_API_KEY": CHATDASH_KEY,
        "CHATDASH_BASE_URL": cd.url,
        "ENRICH_LEDGER": str(ledger),
    }
    env.pop("ENRICH_CONFIG", None)
    return env


def _inflight(ledger) -> list[tuple]:
    return run_sql(str(ledger), "SELECT agent_id, conversation_id FROM inflight")


def test_rerun_after_kill9_starts_new_work_within_seconds(tmp_path, ledger_location):
    ledger = ledger_location
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _items(40)))
    with FakeLLM(latency=0.5) as llm, FakeChatDash(api_key=CHATDASH_KEY) as cd:
        env = _env(llm, cd, ledger)
        proc = subprocess.Popen(
            [sys.executable, "-m", "enrich", "batch", str(path), "-j", "8"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while llm.count < 12 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # eight enrichments in flight, their leases held
        proc.wait(10)
        assert _inflight(ledger), "the dead process left leases behind"
        stored = len(open_ledger(ledger).entries())

        start = time.monotonic()
        rerun = subprocess.Popen(
            [sys.executable, "-m", "enrich", "batch", str(path), "-j", "8"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _, err = rerun.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            rerun.kill()
            rerun.communicate()
            pytest.fail("the rerun sat waiting for the dead process's leases")
        elapsed = time.monotonic() - start
        assert rerun.returncode == 0, err
        # 40 - stored conversations at 8 at a time, 0.5 s each: a few seconds, not minutes
        assert elapsed < 20, elapsed
        final = open_ledger(ledger).entries()
        assert len(final) == 40 and {e.state for e in final} == {State.WRITTEN}
        assert stored >= 1
        assert _inflight(ledger) == []


def test_a_holder_is_gone_when_its_process_is_or_its_pid_was_reused():
    me = this_holder()
    assert not holder_is_gone(me)
    host, pid, start = me.split("|")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert holder_is_gone(f"{host}|{dead.pid}|{start}")
    parent = os.getppid()
    assert not holder_is_gone(f"{host}|{parent}|{_start(parent)}")
    assert holder_is_gone(f"{host}|{parent}|{start}-not-when-it-started")  # another process now
    assert not holder_is_gone(f"another-host|{dead.pid}|1")  # cannot be checked: its lease runs out
    assert not holder_is_gone(None)


def _start(pid: int) -> str:
    from enrich.ledger.holder import _start_marker

    return _start_marker(pid)


def test_a_lease_held_by_a_dead_process_is_free_at_once(ledger_location):
    ledger = open_ledger(ledger_location)
    assert ledger.begin("a", "c", "fp", 600)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host, _, start = this_holder().split("|")
    run_sql(ledger_location, "UPDATE inflight SET holder = ?", (f"{host}|{dead.pid}|{start}",))
    assert ledger.begin("a", "c", "fp", 600)  # its holder is gone: free
    run_sql(ledger_location, "UPDATE inflight SET holder = 'elsewhere|1|1'")
    assert not ledger.begin("a", "c", "fp", 600)  # another host's: held until it runs out


def test_a_live_holder_renews_its_short_lease_while_the_llm_answers(ledger_location, monkeypatch):
    monkeypatch.setattr(leases, "LEASE_SECONDS", 0.6)
    monkeypatch.setattr(leases, "RENEW_SECONDS", 0.1)
    path = ledger_location
    seen: list[float] = []
    with FakeLLM(latency=2.0) as llm:
        config = make_config(llm, ledger={"path": str(path)})

        def watch() -> None:
            for _ in range(40):
                time.sleep(0.05)
                try:
                    rows = run_sql(path, 'SELECT "until" FROM inflight')
                except Exception:  # noqa: BLE001 - not created yet, or locked: look again
                    continue
                if rows:
                    seen.append(rows[0][0] - time.time())

        watcher = threading.Thread(target=watch)
        watcher.start()
        with Enricher(config) as e:
            asyncio.run(e.aenrich(TRANSCRIPT, agent_id="a", conversation_id="c"))
        watcher.join()
    assert seen and all(left <= 0.7 for left in seen)  # short
    assert all(left > 0 for left in seen)  # yet never run out while its holder lives
    assert len(seen) >= 10 and llm.count == 1
    assert _inflight(path) == []


def test_sigterm_context_raises_keyboard_interrupt_then_abandons_after_grace():
    previous = signal.getsignal(signal.SIGTERM)
    caught = []
    with sigterm_as_interrupt(grace=0.3):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            caught.append(time.monotonic())
        try:
            time.sleep(5)  # finishing what is in flight: the grace period runs out
        except KeyboardInterrupt:
            caught.append(time.monotonic())
    assert len(caught) == 2 and 0.2 < caught[1] - caught[0] < 2
    assert signal.getsignal(signal.SIGTERM) == previous


def test_sigterm_stops_a_batch_like_ctrl_c(tmp_path):
    """Needs the wiring of enrich.cli._signals.sigterm_as_interrupt into enrich/cli/_jobs.py."""
    ledger = tmp_path / "ledger.sqlite3"
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _items(60)))
    with FakeLLM(latency=0.5) as llm, FakeChatDash(api_key=CHATDASH_KEY) as cd:
        proc = subprocess.Popen(
            [sys.executable, "-m", "enrich", "batch", str(path), "-j", "4"],
            env=_env(llm, cd, ledger),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while len(cd.puts) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "Run the same command again to resume" in err
        paid = llm.count
        assert 6 <= paid < 60
        assert len(Ledger(ledger).entries()) == paid  # what was in flight finished and was kept
        assert _inflight(ledger) == []  # no stale lease left for the next run


# -- a locked ledger: waited out, then an error of its class -----------------------------------


def test_a_locked_ledger_is_a_ledger_error_not_an_internal_error(tmp_path, monkeypatch):
    from enrich.errors import EnrichError, LedgerError, error_class
    from enrich.ledger import SQLiteLedger

    path = tmp_path / "l.sqlite3"
    first = Ledger(path)
    first.get("a", "c")  # created and migrated
    first.close()
    assert SQLiteLedger.busy_seconds >= 300  # a writer's longest transaction is waited out
    monkeypatch.setattr(SQLiteLedger, "busy_seconds", 0.3)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the whole database
    try:
        with pytest.raises(LedgerError, match="locked by another process") as caught:
            Ledger(path).get("a", "c")
        assert isinstance(caught.value, EnrichError) and error_class(caught.value) != "internal"
        assert str(path) in str(caught.value)
        with pytest.raises(LedgerError):
            Ledger(path).note("a", "c", "x")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
