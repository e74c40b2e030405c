"""The ledger's numbered migrations: applied once each, in order, by whoever opens it first."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading

import pytest
from typer.testing import CliRunner

from enrich.cli import app
from enrich.errors import ConfigError
from enrich.ledger import SQLiteLedger, migrations, open_ledger
from enrich.ledger.migrations import MIGRATIONS, applied_migrations, migrate

runner = CliRunner()
NAMES = [fn.__name__ for fn in MIGRATIONS]


def recorded(path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT name, applied_at FROM _migrations ORDER BY rowid").fetchall()


def columns(path, table: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def test_the_migrations_are_numbered_in_order():
    assert NAMES[:2] == ["m001_initial", "m002_fingerprint_version"]
    assert NAMES == sorted(NAMES) and len(set(NAMES)) == len(NAMES)
    assert all(name[0] == "m" and name[1:4].isdigit() for name in NAMES)


def test_a_blank_database_gets_every_migration_in_order(tmp_path):
    path = tmp_path / "new.sqlite3"
    assert open_ledger(path).stats() == []
    assert [name for name, _ in recorded(path)] == NAMES
    assert all(at for _, at in recorded(path))
    assert "fingerprint_version" in columns(path, "conversations")
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"conversations", "events", "inflight", "batch_jobs", "_migrations"} <= tables


def test_migrate_returns_what_it_applied_and_then_nothing():
    conn = sqlite3.connect(":memory:", isolation_level=None)
    assert migrate(conn, ":memory:") == NAMES
    assert migrate(conn, ":memory:") == []
    assert applied_migrations(conn) == NAMES


def test_opening_again_applies_nothing(tmp_path):
    path = tmp_path / "l.sqlite3"
    SQLiteLedger(path).stats()
    first = recorded(path)
    for _ in range(3):
        ledger = SQLiteLedger(path)
        assert ledger.stats() == []
        ledger.close()
    assert recorded(path) == first  # same names, same times: nothing re-applied


def test_threads_opening_a_fresh_file_at_once_apply_each_migration_once(tmp_path):
    path = tmp_path / "race.sqlite3"
    count = 8
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def opener() -> None:
        ledger = SQLiteLedger(path)
        barrier.wait()
        try:
            ledger.stats()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            ledger.close()

    threads = [threading.Thread(target=opener) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert [name for name, _ in recorded(path)] == NAMES
    assert columns(path, "conversations").count("fingerprint_version") == 1


def _open_at_once(path: str, barrier) -> None:
    ledger = SQLiteLedger(path)
    barrier.wait(60)
    ledger.stats()


def test_processes_opening_a_fresh_file_at_once_apply_each_migration_once(tmp_path):
    path = str(tmp_path / "race.sqlite3")
    ctx = multiprocessing.get_context("spawn")
    count = 4
    barrier = ctx.Barrier(count)
    procs = [ctx.Process(target=_open_at_once, args=(path, barrier)) for _ in range(count)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0  # a second ALTER TABLE would have failed its process
    assert [name for name, _ in recorded(path)] == NAMES


def test_a_failing_migration_leaves_the_ledger_as_it_was(tmp_path, monkeypatch):
    def m999_broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        conn.execute("CREATE TABLE broken (")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, m999_broken])
    path = tmp_path / "l.sqlite3"
    with pytest.raises(ConfigError, match="cannot open the ledger"):
        SQLiteLedger(path).stats()
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == set()  # every migration rolled back together, m001 included

    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS)
    assert SQLiteLedger(path).stats() == []
    assert [name for name, _ in recorded(path)] == NAMES


def test_a_ledger_from_a_newer_release_is_refused(tmp_path):
    path = tmp_path / "newer.sqlite3"
    SQLiteLedger(path).stats()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO _migrations (name, applied_at) VALUES ('m999_from_the_future', 'x')"
        )
    with pytest.raises(ConfigError) as caught:
        SQLiteLedger(path).get("agent-1", "conv-1")
    message = str(caught.value)
    assert str(path) in message and "m999_from_the_future" in message
    assert "newer release" in message
    assert [name for name, _ in recorded(path)] == [*NAMES, "m999_from_the_future"]  # untouched


def test_the_cli_names_the_file_and_migration_of_a_newer_ledger(env):
    SQLiteLedger(env["ledger"]).stats()
    with sqlite3.connect(env["ledger"]) as conn:
        conn.execute("INSERT INTO _migrations (name, applied_at) VALUES ('m900_later', 'x')")
    r = runner.invoke(app, ["ledger", "stats"])
    assert r.exit_code == 2
    assert "m900_later" in r.stderr and str(env["ledger"]) in r.stderr.replace("\n", "")


def test_m003_admits_the_skipped_state_keeping_rows_and_index(tmp_path, monkeypatch):
    path = tmp_path / "l.sqlite3"
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS[:2])  # a ledger of before m003
    SQLiteLedger(path).stats()
    columns_before = columns(path, "conversations")
    row = (
        "agent-1", "conv-1", "t", "m", "p", "x", '{"enrichment": {}}', '{"topic": "A"}',
        10, 2, 1, 1, 0.5, "written", 1, None, None, "2026-01-01", "2026-01-02", "2026-01-02", 1,
    )  # fmt: skip
    with sqlite3.connect(path) as conn:
        conn.execute(f"INSERT INTO conversations VALUES ({', '.join('?' * len(row))})", row)
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute(
                "UPDATE conversations SET state = 'skipped' WHERE conversation_id = 'conv-1'"
            )
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS)
    ledger = SQLiteLedger(path)
    ledger.stats()
    ledger.close()
    assert [name for name, _ in recorded(path)] == NAMES
    assert "m003_skipped_state" in NAMES
    # m003 keeps every column (m005, applied after it, adds the write claim's holder)
    assert columns(path, "conversations") == [*columns_before, "claimed_by"]
    with sqlite3.connect(path) as conn:
        kept = conn.execute(f"SELECT {', '.join(columns_before)} FROM conversations").fetchall()
        assert kept == [row]  # as it was
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "conversations_state" in indexes
        conn.execute("UPDATE conversations SET state = 'skipped' WHERE conversation_id = 'conv-1'")
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute("UPDATE conversations SET state = 'lost' WHERE conversation_id = 'conv-1'")
