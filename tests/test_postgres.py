"""The PostgreSQL ledger's own: its URL, its migrations, its connections, and whole runs on it.

The semantics it shares with SQLite are tested once for both back ends (``ledger_factory`` and
friends in conftest.py: test_ledger.py, test_spill.py, test_resume.py, test_exactly_once.py).
These run against a real server the session starts (``postgres_server``: Debian's
``postgresql``), a fresh database per test.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading

import psycopg
import pytest
from conftest import CHATDASH_KEY, OPENAI_KEY, TRANSCRIPT, make_config, run_sql
from typer.testing import CliRunner

from enrich import Enricher
from enrich.cli import app
from enrich.config import load_config
from enrich.errors import ConfigError, LedgerError
from enrich.ledger import (
    Fingerprint,
    PostgresLedger,
    SQLiteLedger,
    State,
    open_ledger,
    pg_connect,
    pg_migrations,
)
from enrich.ledger.pg_migrations import MIGRATIONS
from enrich.ledger.spill import spill_path
from enrich.models.usage import Usage
from enrich.testing import FakeChatDash, FakeLLM, Reply, valid_answer

runner = CliRunner()
NAMES = [fn.__name__ for fn in MIGRATIONS]
SECRET = "pw-S3cret-0123456789"  # the server trusts 127.0.0.1: any password is let in
FP = Fingerprint(transcript_hash="t", model="m", prompt_hash="p", taxonomy_hash="x")


def with_password(url: str, password: str = SECRET) -> str:
    return url.replace("postgresql://enrich@", f"postgresql://enrich:{password}@")


def recorded(url: str) -> list[str]:
    return [r[0] for r in run_sql(url, "SELECT name FROM _migrations ORDER BY applied_at, name")]


def tables(url: str) -> set[str]:
    rows = run_sql(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r[0] for r in rows}


def _record(ledger, conv: str, state: State = State.PENDING) -> None:
    ledger.record(
        "a", conv, FP, enrichment={}, body={"c": conv}, usage=Usage(), cost=None, state=state
    )


# -- where the ledger is: a URL used as one, or refused --------------------------------------


def test_open_ledger_takes_postgres_urls_and_refuses_other_schemes(postgres_url):
    for url in (postgres_url, postgres_url.replace("postgresql://", "postgres://", 1)):
        ledger = open_ledger(url)
        assert isinstance(ledger, PostgresLedger) and ledger.stats() == []
        ledger.close()
    for bad, shown in (
        (f"mysql://enrich:{SECRET}@db/enrich", "ledger mysql://...:"),
        (f"sqlite://enrich:{SECRET}@x", "ledger sqlite://...:"),
        (f"postgresql:/enrich:{SECRET}@db/enrich", "ledger postgresql:...:"),  # a URL made a path
    ):
        with pytest.raises(ConfigError) as caught:
            open_ledger(bad)
        assert str(caught.value).startswith(shown) and SECRET not in str(caught.value)
    with pytest.raises(ConfigError, match="not a valid PostgreSQL URL") as caught:
        open_ledger(f"postgresql://enrich:{SECRET}@db/enrich?no_such_option=1")
    assert SECRET not in str(caught.value)
    assert isinstance(open_ledger("l.sqlite3"), SQLiteLedger)  # a path stays a path


def test_the_configuration_keeps_a_url_as_written_and_hides_its_password(
    postgres_url, tmp_path, fake_llm
):
    url = with_password(postgres_url) + "?sslmode=disable"
    cfg = load_config(None, environ={"ENRICH_LEDGER": url})
    assert cfg.ledger.path == url  # a string: not made a Path (no "postgresql:" folder)
    shown = cfg.redacted()["ledger"]["path"]
    assert SECRET not in shown and shown == with_password(postgres_url, "***") + "?sslmode=disable"
    assert [s.get_secret_value() for s in cfg.ledger.secrets()] == [SECRET]
    file_cfg = load_config(None, environ={"ENRICH_LEDGER": str(tmp_path / "l.sqlite3")})
    assert file_cfg.ledger.path == tmp_path / "l.sqlite3" and file_cfg.ledger.secrets() == []
    with Enricher(make_config(fake_llm, None, ledger={"path": url})) as e:
        assert isinstance(e.ledger, PostgresLedger) and e.ledger.stats() == []


def test_the_password_never_shows(postgres_url):
    url = with_password(postgres_url)
    ledger = open_ledger(url)
    assert ledger.stats() == []  # connected, with the password
    for shown in (ledger.location, repr(ledger), str(spill_path(ledger))):
        assert SECRET not in shown
    assert ledger.location == postgres_url  # user, host, port and database: no password
    again = pickle.loads(pickle.dumps(ledger))  # a worker process gets the whole URL
    assert again.location == ledger.location and again.stats() == []
    nowhere = with_password("postgresql://enrich@127.0.0.1:9/enrich")
    with pytest.raises(LedgerError) as caught:
        open_ledger(nowhere).get("a", "c")
    message = str(caught.value)
    assert message.startswith("postgresql://enrich@127.0.0.1:9/") and "cannot be reached" in message
    assert SECRET not in message and caught.value.location == open_ledger(nowhere).location
    # a password too short to be told apart from words: nothing of the error's details is shown
    short = open_ledger(with_password("postgresql://enrich@127.0.0.1:9/enrich", "pw"))
    with pytest.raises(LedgerError, match="details hidden") as caught:
        short.stats()


def test_the_cli_shows_the_ledger_without_its_password(postgres_url, monkeypatch, env):
    monkeypatch.setenv("ENRICH_LEDGER", with_password(postgres_url))
    r = runner.invoke(app, ["config"])
    assert r.exit_code == 0, r.stderr
    assert SECRET not in r.stdout and with_password(postgres_url, "***") in r.stdout
    nowhere = postgres_url.rpartition(":")[0] + ":9/enrich"
    monkeypatch.setenv("ENRICH_LEDGER", with_password(nowhere))
    r = runner.invoke(app, ["ledger", "stats"])
    assert r.exit_code == 8, r.stderr  # the ledger cannot be used
    assert "cannot be reached" in r.stderr and SECRET not in r.stderr + r.stdout


# -- migrations ------------------------------------------------------------------------------


def test_a_fresh_database_gets_every_migration_in_order(postgres_url):
    assert NAMES[0] == "m001_initial" and NAMES == sorted(NAMES)
    assert open_ledger(postgres_url).stats() == []
    assert recorded(postgres_url) == NAMES
    assert {"conversations", "events", "inflight", "batch_jobs", "rate_limits", "webhooks"} <= (
        tables(postgres_url)
    )
    columns = run_sql(
        postgres_url,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'conversations'",
    )
    assert {"claimed_by", "fingerprint_version", "claimed_until"} <= {c[0] for c in columns}
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert pg_migrations.migrate(conn, "x") == []  # nothing left to apply


def _open_at_once(url: str, barrier) -> None:
    ledger = open_ledger(url)
    barrier.wait(60)
    ledger.stats()


def test_processes_opening_a_fresh_database_at_once_apply_each_migration_once(postgres_url):
    ctx = multiprocessing.get_context("spawn")
    count = 3
    barrier = ctx.Barrier(count)
    procs = [ctx.Process(target=_open_at_once, args=(postgres_url, barrier)) for _ in range(count)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0  # a second CREATE TABLE would have failed its process
    assert recorded(postgres_url) == NAMES  # each once


def test_a_database_from_a_newer_release_is_refused(postgres_url, monkeypatch, env):
    open_ledger(postgres_url).stats()
    run_sql(postgres_url, "INSERT INTO _migrations VALUES ('m999_from_the_future', 'x')")
    with pytest.raises(ConfigError) as caught:
        open_ledger(with_password(postgres_url)).get("a", "c")
    message = str(caught.value)
    assert postgres_url in message and "m999_from_the_future" in message
    assert "newer release" in message and SECRET not in message
    monkeypatch.setenv("ENRICH_LEDGER", with_password(postgres_url))
    r = runner.invoke(app, ["ledger", "stats"])
    assert r.exit_code == 2 and "m999_from_the_future" in r.stderr
    assert recorded(postgres_url) == [*NAMES, "m999_from_the_future"]  # untouched


def test_a_failing_migration_leaves_the_database_as_it_was(postgres_url, monkeypatch):
    def m999_broken(conn) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        conn.execute("CREATE TABLE broken (")

    monkeypatch.setattr(pg_migrations, "MIGRATIONS", [*MIGRATIONS, m999_broken])
    with pytest.raises(LedgerError, match="syntax error"):
        open_ledger(postgres_url).stats()
    assert tables(postgres_url) == set()  # every migration rolled back together, m001's too
    monkeypatch.setattr(pg_migrations, "MIGRATIONS", MIGRATIONS)
    assert open_ledger(postgres_url).stats() == [] and recorded(postgres_url) == NAMES


# -- many processes, one database -------------------------------------------------------------


def _race(ledger: PostgresLedger, convs: list[str], n: int, barrier, out) -> None:
    ledger.stats()  # connected before the start: the race is the operations'
    won: dict[str, list[str]] = {"begin": [], "claim": []}
    for name in won:
        operation = getattr(ledger, name)
        args = ("fp", 600) if name == "begin" else ()
        for i in range(0, len(convs), 30):  # all of them at once on each chunk of 30,
            chunk = convs[i : i + 30]
            chunk = chunk[n * 10 :] + chunk[: n * 10]  # each from its own place in it
            barrier.wait(60)
            won[name] += [c for c in chunk if operation("a", c, *args)]
    out.put((os.getpid(), won["begin"], won["claim"]))


def test_processes_racing_for_the_same_conversations_win_each_once(postgres_url):
    ledger = open_ledger(postgres_url)
    convs = [f"c{i:03d}" for i in range(300)]
    for conv in convs:
        _record(ledger, conv)
    ctx = multiprocessing.get_context("spawn")
    count = 3
    barrier, out = ctx.Barrier(count), ctx.Queue()
    # the ledger itself goes to each process, pickled: it connects there on its own
    procs = [ctx.Process(target=_race, args=(ledger, convs, n, barrier, out)) for n in range(count)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for index in (1, 2):  # begin, then claim
        wins = [conv for result in results for conv in result[index]]
        assert sorted(wins) == convs  # every conversation won once, by one process
    assert sum(1 for result in results if result[1] or result[2]) >= 2  # and they did race
    holders = run_sql(postgres_url, "SELECT DISTINCT claimed_by FROM conversations")
    assert {h[0].split("|")[1] for h in holders} <= {str(r[0]) for r in results}


def test_threads_sharing_one_ledger_object_each_get_their_own_connection(postgres_url):
    ledger = open_ledger(postgres_url)
    pids: list[int] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        for i in range(20):
            _record(ledger, f"t{n}-{i}")
        pid = ledger._conn().execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
        with lock:
            pids.append(pid)
        ledger.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(set(pids)) == 6 and len(ledger.entries()) == 120


def test_a_forked_child_never_touches_its_parents_connection(postgres_url):
    ledger = open_ledger(postgres_url)
    _record(ledger, "before")
    conn = ledger._conn()
    backend = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        code = 1
        try:
            _record(ledger, "from-the-child")  # its own connection
            mine = ledger._conn().execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
            conn.close()  # the inherited one, closed outright: the parent's session survives
            code = 0 if mine != backend else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"] == backend
    assert {e.conversation_id for e in ledger.entries()} == {"before", "from-the-child"}


def test_a_connection_the_server_dropped_is_replaced(postgres_url):
    ledger = open_ledger(postgres_url)
    _record(ledger, "c1")
    backend = ledger._conn().execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
    run_sql(postgres_url, "SELECT pg_terminate_backend(?)", (backend,))  # a restart, a timeout
    assert ledger.get("a", "c1").state == State.PENDING  # a read, on a new connection
    run_sql(
        postgres_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'enrich'",
    )
    _record(ledger, "c2")  # a change: its BEGIN fails, then it is done on a new connection
    assert [e.conversation_id for e in ledger.entries()] == ["c1", "c2"]


def test_a_lock_held_past_busy_seconds_is_a_ledger_error(postgres_url, monkeypatch):
    monkeypatch.setattr(pg_connect.PostgresConnections, "busy_seconds", 0.3)
    ledger = open_ledger(with_password(postgres_url))
    ledger.stats()
    with psycopg.connect(postgres_url) as other:
        other.execute("LOCK TABLE conversations IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(LedgerError, match="locked by another process") as caught:
            _record(ledger, "c")
        assert postgres_url in str(caught.value) and SECRET not in str(caught.value)
    _record(ledger, "c")  # released: usable again
    assert ledger.get("a", "c") is not None


# -- whole runs on a Postgres ledger ------------------------------------------------------------


def _cli_env(llm: FakeLLM, cd: FakeChatDash, ledger: str) -> dict[str, str]:
    env = {
        **os.environ,
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": llm.url,
        "CHATDASH_API_KEY": CHATDASH_KEY,
        "CHATDASH_BASE_URL": cd.url,
        "ENRICH_LEDGER": ledger,
    }
    env.pop("ENRICH_CONFIG", None)
    return env


def test_enrich_batch_then_ledger_stats_on_a_postgres_ledger(postgres_url, tmp_path):
    url = with_password(postgres_url)
    rows = [
        {"agent_id": "agent-1", "conversation_id": f"c{i:02d}", "transcript": TRANSCRIPT + f"#{i}"}
        for i in range(12)
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with FakeLLM() as llm, FakeChatDash(api_key=CHATDASH_KEY) as cd:
        env = _cli_env(llm, cd, url)
        stats = subprocess.run(
            [sys.executable, "-m", "enrich", "ledger", "stats", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stats.returncode == 0, stats.stderr
        shown = json.loads(stats.stdout)
        assert (shown["ledger"], shown["states"]) == (postgres_url, [])

        batch = [sys.executable, "-m", "enrich", "batch", str(src), "-j", "4"]
        done = subprocess.run(batch, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert llm.count == 12 and len(cd.puts) == 12
        assert SECRET not in done.stderr + done.stdout
        again = subprocess.run(batch, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert llm.count == 12 and len(cd.puts) == 12  # resumed from the ledger: nothing twice

        stats = subprocess.run(
            [sys.executable, "-m", "enrich", "ledger", "stats", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert stats.returncode == 0, stats.stderr
    (written,) = json.loads(stats.stdout)["states"]
    assert written["state"] == "written" and written["conversations"] == 12
    assert written["requests"] == 12 and written["prompt_tokens"] > 0
    assert not (tmp_path / "postgresql:").exists() and not os.path.exists("postgresql:")


class _LockOnAnswer:
    """As the LLM answers, another session locks the conversations table: the answer is paid
    for, and the ledger cannot record it."""

    def __init__(self, url: str) -> None:
        self.url, self.holder = url, None
        self.lock = threading.Lock()

    def __call__(self, request):
        with self.lock:
            if self.holder is None:
                self.holder = psycopg.connect(self.url)
                self.holder.execute("LOCK TABLE conversations IN ACCESS EXCLUSIVE MODE")
        return Reply.json(valid_answer(request))

    def release(self) -> None:
        with self.lock:
            if self.holder is not None:
                self.holder.rollback()
                self.holder.close()
                self.holder = None


def test_a_paid_result_the_database_cannot_take_is_spilled_then_recorded(
    postgres_url, env, fake_llm, fake_chatdash, monkeypatch
):
    monkeypatch.setattr(pg_connect.PostgresConnections, "busy_seconds", 0.3)
    monkeypatch.setenv("ENRICH_LEDGER", with_password(postgres_url))
    open_ledger(postgres_url).stats()  # created before the lock
    lock = _LockOnAnswer(postgres_url)
    fake_llm.responder = lock
    args = ["run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"])]
    try:
        r = runner.invoke(app, args)
        assert r.exit_code == 8, r.stderr
        assert fake_llm.count == 1 and fake_chatdash.puts == []
        spilled = spill_path(open_ledger(postgres_url))
        (line,) = spilled.read_text().splitlines()
        assert json.loads(line)["conversation_id"] == "conv-1" and SECRET not in r.stderr
    finally:
        lock.release()
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.stderr
    assert fake_llm.count == 1 and len(fake_chatdash.puts) == 1  # recorded, reused, written
    assert not spilled.exists()
    assert open_ledger(postgres_url).get("agent-1", "conv-1").state == State.WRITTEN


def test_the_test_server_says_how_to_install_postgres_when_it_is_missing(monkeypatch, tmp_path):
    from enrich.testing import postgres as server

    monkeypatch.setenv("ENRICH_PG_BIN", str(tmp_path))  # no initdb there
    monkeypatch.setattr(server.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(server.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install postgresql"):
        server.PostgresServer().start()
    assert list(tmp_path.iterdir()) == []
