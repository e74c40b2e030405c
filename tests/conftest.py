"""Shared fixtures: fake servers on 127.0.0.1, reached through the real openai SDK and httpx."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from enrich.config import Config, load_config
from enrich.testing import FakeChatDash, FakeLLM

FIXTURES = Path(__file__).parent / "fixtures"
OPENAI_KEY = "sk-test-SECRET-0123456789abcdef"
CHATDASH_KEY = "CD.5ec2e7000000000000000000000000aa"

TRANSCRIPT = """\
Agent: Thanks for calling Acme Shoes, this is Ava. How can I help?
User: Hi, I was charged twice for my order
and I'd like a refund for the extra charge.
Agent: I'm sorry about that. Can I have your order number?
User: Sure, it's 4417.
Agent: Thank you. I can see two charges; I've refunded the duplicate one.
User: Also, do you sell waterproof hiking boots in size 46?
Agent: Our store hours are 9 to 5, Monday to Saturday.
User: That's not what I asked, but okay. Thanks for the refund.
"""


def put_schema() -> dict[str, Any]:
    """The PUT body's schema, read from the contract (a verbatim copy of the shared spec)."""
    text = (FIXTURES / "chatdash" / "update-conversation.md").read_text()
    block = re.search(r"````yaml[^\n]*\n(.*?)````", text, re.DOTALL).group(1)
    spec = yaml.safe_load(block)
    op = spec["paths"]["/agents/{agentId}/conversations/{conversationId}"]["put"]
    return op["requestBody"]["content"]["application/json"]["schema"]


def answer(**overrides: Any) -> dict[str, Any]:
    """A valid enrichment of TRANSCRIPT, as the model would return it."""
    base: dict[str, Any] = {
        "summary": "The user was charged twice and got the duplicate refunded; a product "
        "question went unanswered.",
        "topic": "Billing",
        "subtopic": "Refund",
        "misunderstood_queries": [{"question": "do you sell waterproof hiking boots in size 46?"}],
        "evaluation": {
            "reason": "The refund was made but a question was ignored.",
            "is_success": True,
        },
    }
    base.update(overrides)
    return base


@pytest.fixture(autouse=True, scope="session")
def _no_ledger_in_home(tmp_path_factory):
    """A default ledger (the user's data directory) goes to a temporary folder in tests."""
    saved = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield
    if saved is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = saved


@pytest.fixture(autouse=True, scope="session")
def _no_config_in_home(tmp_path_factory):
    """The user's configuration directory (where `enrich.yaml` is looked for when no file is
    named) is an empty temporary folder in tests."""
    saved = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("xdg-config"))
    yield
    if saved is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = saved


@pytest.fixture
def fake_llm():
    with FakeLLM() as server:
        yield server


@pytest.fixture
def fake_chatdash():
    with FakeChatDash(api_key=CHATDASH_KEY, put_schema=put_schema()) as server:
        yield server


def make_config(llm: FakeLLM, chatdash: FakeChatDash | None = None, /, **sections: Any) -> Config:
    """A Config aimed at the fakes; ``sections`` are nested overrides: llm={"mode": "tools"}."""
    overrides: dict[str, Any] = {
        "llm": {"base_url": llm.url, "api_key": OPENAI_KEY, "max_retries": 0, "timeout": 5},
        "chatdash": {
            "base_url": chatdash.url if chatdash else "http://127.0.0.1:9",
            "api_key": CHATDASH_KEY,
            "backoff": 0.01,
            "timeout": 5,
        },
    }
    overrides["ledger"] = {"enabled": False}  # tests that want one pass ledger={"path": ...}
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    if "path" in overrides["ledger"]:
        overrides["ledger"].setdefault("enabled", True)
        overrides["ledger"]["enabled"] = True
    return load_config(None, overrides, environ={})


@pytest.fixture
def env(monkeypatch, fake_llm, fake_chatdash, tmp_path):
    """The environment a CLI user would set, aimed at the fakes; no config file."""
    for var in (
        "ENRICH_CONFIG",
        "ENRICH_MODEL",
        "ENRICH_LLM_MODE",
        "ENRICH_PROMPTS_DIR",
        "ENRICH_LEDGER",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.url)
    monkeypatch.setenv("CHATDASH_API_KEY", CHATDASH_KEY)
    monkeypatch.setenv("CHATDASH_BASE_URL", fake_chatdash.url)
    # Fast failures: no transport retries, short timeouts, tiny backoff.
    cfg = tmp_path / "enrich.yaml"
    cfg.write_text(
        "llm:\n  max_retries: 0\n  timeout: 5\nchatdash:\n  backoff: 0.01\n  timeout: 5\n"
    )
    monkeypatch.setenv("ENRICH_CONFIG", str(cfg))
    monkeypatch.setenv("ENRICH_LEDGER", str(tmp_path / "ledger.sqlite3"))
    transcript = tmp_path / "call.txt"
    transcript.write_text(TRANSCRIPT)
    return {
        "config": cfg,
        "transcript": transcript,
        "tmp": tmp_path,
        "ledger": tmp_path / "ledger.sqlite3",
    }


# -- the ledger's back ends: SQLite, and a real PostgreSQL server ---------------------------------
# A test that takes `ledger_factory`, `ledger_location` or `any_ledger` runs once per back end
# (ids `sqlite` and `postgres`). PostgreSQL is Debian's `postgresql` package (`.ci/run` installs
# it): one server per session, started on first use, and an empty database per ledger.

LEDGER_BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server of this test session's own, on a free port of 127.0.0.1."""
    from enrich.testing.postgres import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server):
    """The URL of a fresh, empty database on the session's server (dropped after the test)."""
    url = postgres_server.new_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(params=LEDGER_BACKENDS)
def ledger_backend(request) -> str:
    """The back end under test: ``sqlite`` or ``postgres``."""
    return request.param


@pytest.fixture
def ledger_factory(request, ledger_backend, tmp_path):
    """Makes a new, empty ledger of the back end under test and returns its location, for
    ``open_ledger`` or ``ENRICH_LEDGER``: a SQLite file's path, or a ``postgresql://`` URL."""
    made: list[str] = []
    server = request.getfixturevalue("postgres_server") if ledger_backend == "postgres" else None

    def make() -> str:
        if server is not None:
            made.append(server.new_database())
        else:
            made.append(str(tmp_path / f"ledger{'-' + str(len(made) + 1) if made else ''}.sqlite3"))
        return made[-1]

    yield make
    if server is not None:
        for url in made:
            server.drop_database(url)


@pytest.fixture
def ledger_location(ledger_factory) -> str:
    """One new, empty ledger of the back end under test: its location."""
    return ledger_factory()


@pytest.fixture
def any_ledger(ledger_location):
    """One new, empty ledger of the back end under test, opened."""
    from enrich.ledger import open_ledger

    ledger = open_ledger(ledger_location)
    yield ledger
    ledger.close()


def run_sql(location: str, sql: str, args: tuple = ()) -> list[tuple]:
    """Run one statement on the ledger at ``location`` behind its back (as another program
    would), SQLite's ``?`` placeholders made ``%s`` for Postgres; the rows it returns."""
    if location.startswith(("postgresql://", "postgres://")):
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            cur = conn.execute(sql.replace("?", "%s"), args)
            return cur.fetchall() if cur.description else []
    import sqlite3

    conn = sqlite3.connect(location)
    try:
        with conn:  # committed
            return conn.execute(sql, args).fetchall()
    finally:
        conn.close()
