"""Per-agent profiles: `agents` overrides of `analysis`, one profile per agent, used by every path
(single calls, batches of mixed agents, the Batch API, backfill, the inspection commands), and a
ledger fingerprint per profile."""

from __future__ import annotations

import json
import pickle
import re
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from conftest import TRANSCRIPT, make_config
from pydantic import ValidationError
from typer.testing import CliRunner

from enrich import Enricher
from enrich.cli import app
from enrich.config import Config, _overlay, load_config
from enrich.errors import ConfigError, TemplateError
from enrich.testing import FakeLLM, Reply
from enrich.testing.llm import valid_answer

runner = CliRunner()

DEFAULT_ANALYSIS = {
    "business_context": "Default Corp sells home insurance.",
    "taxonomy": [{"name": "Claims", "subtopics": ["New claim"]}],
}
AGENTS = {
    "agent-shoes": {
        "business_context": "Acme Shoes sells shoes online.",
        "taxonomy": [
            {"name": "Orders", "subtopics": ["Refund", "Delivery"]},
            {"name": "Products"},
        ],
    },
    "agent-air": {
        "business_context": "Blue Air flies to Lisbon.",
        "language": "French",
        "taxonomy": [{"name": "Flights", "subtopics": ["Booking"]}],
    },
}
#: agent-plain has no overrides: it gets the defaults
TOPICS = {
    "agent-shoes": ["Orders", "Products"],
    "agent-air": ["Flights"],
    "agent-plain": ["Claims"],
}
CONTEXT = {
    "agent-shoes": "Acme Shoes sells shoes online.",
    "agent-air": "Blue Air flies to Lisbon.",
    "agent-plain": "Default Corp sells home insurance.",
}
#: a subtopic of the topic the fake model picks (the first), per agent
SUBTOPIC = {"agent-shoes": "Refund", "agent-air": "Booking", "agent-plain": "New claim"}
YAML = yaml.safe_dump({"analysis": DEFAULT_ANALYSIS, "agents": AGENTS}, sort_keys=False)


def config(llm, chatdash=None, /, agents=AGENTS, **sections):
    return make_config(llm, chatdash, analysis=DEFAULT_ANALYSIS, agents=agents, **sections)


def rows(n: int = 3) -> list[dict]:
    """``n`` conversations of each agent, interleaved: one batch of mixed rows."""
    return [
        {
            "agent_id": agent,
            "conversation_id": f"{agent}-c{i}",
            "transcript": TRANSCRIPT + f"User: ref {agent} {i}\n",
        }
        for i in range(n)
        for agent in TOPICS
    ]


def schema_of(request: dict) -> dict:
    if "response_format" in request:
        return request["response_format"]["json_schema"]["schema"]
    return request["tools"][0]["function"]["parameters"]


def topics_of(request: dict) -> list[str]:
    return schema_of(request)["properties"]["topic"]["enum"]


def agent_of(request: dict) -> str:
    user = request["messages"][-1]["content"]
    return re.search(r"ref (\S+) \d+", user).group(1)


def answer(request: dict) -> Reply:
    """The fake model's answer: the first topic of the request's enum, a subtopic of it."""
    value = valid_answer(request)
    found = re.search(r"ref (\S+) \d+", request["messages"][-1]["content"])
    value["subtopic"] = SUBTOPIC[found.group(1) if found else "agent-air"]
    return Reply.json(value)


@pytest.fixture(autouse=True)
def _answers(fake_llm):
    fake_llm.responder = answer


def assert_own_profile(request: dict) -> None:
    """The request of a conversation carries its own agent's schema and instructions only."""
    agent = agent_of(request)
    assert topics_of(request) == TOPICS[agent], agent
    system = request["messages"][0]["content"]
    assert CONTEXT[agent] in system
    assert [a for a, text in CONTEXT.items() if text in system] == [agent]
    for other, topics in TOPICS.items():
        for topic in topics:
            assert (topic in system) is (other == agent), (agent, topic)
    assert ("French" in system) is (agent == "agent-air")


# -- the library ---------------------------------------------------------------------------------


def test_one_batch_of_mixed_agents_uses_each_agents_profile(fake_llm, fake_chatdash):
    with Enricher(config(fake_llm, fake_chatdash)) as e:
        results = list(e.enrich_many(rows(), concurrency=4))
    assert len(results) == 9 and all(r.ok and r.status == "written" for r in results)
    assert len(fake_llm.requests) == 9
    assert {agent_of(req) for req in fake_llm.requests} == set(TOPICS)
    for request in fake_llm.requests:
        assert_own_profile(request)
    for r in results:  # validated against, and written with, its own taxonomy
        assert r.result.enrichment.topic == TOPICS[r.agent_id][0]
    assert len(fake_chatdash.puts) == 9
    for _, path, _, body in fake_chatdash.puts:
        agent = path.split("/agents/")[1].split("/")[0]
        assert body["topic"] == TOPICS[agent][0]


def test_the_batch_api_asks_each_row_with_its_agents_profile(fake_chatdash):
    with FakeLLM(batch_seconds=0.1, responder=answer) as llm:
        with Enricher(config(llm, fake_chatdash)) as e:
            results = list(e.enrich_many(rows(2), write=False, via="batch-api", poll_seconds=0.05))
        assert len(results) == 6 and all(r.ok for r in results)
        (batch,) = llm.batches.values()
        lines = llm.files[batch["input_file_id"]]["content"].decode().splitlines()
        assert len(lines) == 6
        for line in lines:
            assert_own_profile(json.loads(line)["body"])
        for r in results:
            assert r.result.enrichment.topic == TOPICS[r.agent_id][0]


def test_an_agent_without_overrides_shares_the_default_profile(fake_llm):
    same = {"agent-same": {"business_context": DEFAULT_ANALYSIS["business_context"]}}
    with Enricher(config(fake_llm, agents={**AGENTS, **same})) as e:
        assert e.profile("agent-plain") is e.profile() is e.profile(None)
        assert e.profile("agent-same") is e.profile()  # overrides that change nothing
        shoes = e.profile("agent-shoes")
        assert shoes is e.profile("agent-shoes") and shoes is not e.profile()  # built once
        assert shoes.name == "agent-shoes" and shoes.analysis.language == "English"
        assert e.profile("agent-air").analysis.language == "French"
        assert e.profile("agent-air").schema["properties"]["topic"]["enum"] == ["Flights"]
        assert e.schema["properties"]["topic"]["enum"] == ["Claims"]  # the default's
        rendered = e.render(TRANSCRIPT, agent_id="agent-shoes")
        assert CONTEXT["agent-shoes"] in rendered[0]["content"]


@pytest.mark.parametrize("write", [True, False])
def test_changing_one_agents_taxonomy_re_enriches_only_that_agents_conversations(
    fake_llm, fake_chatdash, tmp_path, write
):
    ledger = {"path": str(tmp_path / "ledger.sqlite3")}
    with Enricher(config(fake_llm, fake_chatdash, ledger=ledger)) as e:
        first = list(e.enrich_many(rows(), write=write))
        before = {agent: e.fingerprint_static(agent) for agent in TOPICS}
    assert all(r.ok and not r.result.reused for r in first)
    assert len(fake_llm.requests) == 9

    changed = {**AGENTS, "agent-shoes": {**AGENTS["agent-shoes"], "taxonomy": [{"name": "Boots"}]}}
    fake_llm.requests.clear()
    puts = len(fake_chatdash.puts)
    with Enricher(config(fake_llm, fake_chatdash, agents=changed, ledger=ledger)) as e:
        again = list(e.enrich_many(rows(), write=write))
        after = {agent: e.fingerprint_static(agent) for agent in TOPICS}
    assert all(r.ok for r in again) and len(again) == 9
    # only agent-shoes's conversations went to the LLM again, with its new taxonomy
    assert sorted(agent_of(req) for req in fake_llm.requests) == ["agent-shoes"] * 3
    assert all(topics_of(req) == ["Boots"] for req in fake_llm.requests)
    for r in again:
        if r.agent_id == "agent-shoes":
            assert not r.result.reused and r.result.enrichment.topic == "Boots"
        else:  # from the ledger: no LLM call
            assert r.result.reused and r.result.usage.total_tokens == 0
            assert r.result.enrichment.topic == TOPICS[r.agent_id][0]
    if write:
        new_puts = fake_chatdash.puts[puts:]
        assert len(new_puts) == 3 and all("/agents/agent-shoes/" in p for _, p, _, _ in new_puts)
    # the fingerprint is per profile: only agent-shoes's taxonomy hash moved
    assert after["agent-shoes"][2] != before["agent-shoes"][2]
    assert after["agent-shoes"][:2] == before["agent-shoes"][:2]
    assert after["agent-air"] == before["agent-air"]
    assert after["agent-plain"] == before["agent-plain"]


def test_the_enricher_pickles_with_its_profiles(fake_llm, fake_chatdash):
    e = Enricher(config(fake_llm, fake_chatdash))
    clone = pickle.loads(pickle.dumps(e))
    try:
        assert clone.config == e.config and clone.config.agents == AGENTS
        assert clone.profile("agent-air").analysis.language == "French"
        assert clone.profile("agent-plain") is clone.profile()
        result = clone.enrich(TRANSCRIPT + "User: ref agent-shoes 0\n", agent_id="agent-shoes")
        assert result.enrichment.topic == "Orders"
        assert_own_profile(fake_llm.requests[-1])
    finally:
        clone.close()
        e.close()


# -- the configuration ---------------------------------------------------------------------------


def test_for_agent_merges_the_overrides_over_analysis(tmp_path):
    path = tmp_path / "enrich.yaml"
    path.write_text(YAML + "  agent-empty:\n")  # an agent whose overrides are all commented out
    cfg = load_config(path, environ={})
    air = cfg.for_agent("agent-air")
    assert air.analysis.language == "French"  # replaced
    assert [t.name for t in air.analysis.taxonomy] == ["Flights"]  # a list is replaced whole
    assert air.analysis.success_criteria == cfg.analysis.success_criteria  # kept
    assert air.agents == {} and air.llm == cfg.llm and air.write == cfg.write
    assert [t.name for t in air.spec().taxonomy] == ["Flights"]
    for plain in ("agent-plain", "agent-empty", None):  # the defaults
        assert cfg.for_agent(plain).analysis == cfg.analysis
    assert cfg.agents["agent-empty"] == {}
    # mappings are merged key by key, lists and scalars replaced
    base = {"a": {"x": 1, "y": [1, 2]}, "b": [1], "c": "s"}
    merged = _overlay(base, {"a": {"y": [3]}, "b": [2], "c": {"k": 1}})
    assert merged == {"a": {"x": 1, "y": [3]}, "b": [2], "c": {"k": 1}}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": [1], "c": "s"}  # untouched


def test_an_agents_prompts_folder_is_relative_to_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "conf"
    (folder / "air-prompts").mkdir(parents=True)
    path = folder / "enrich.yaml"
    path.write_text("agents:\n  agent-air:\n    prompts_dir: air-prompts\n")
    cfg = load_config(path, environ={})
    assert cfg.for_agent("agent-air").analysis.prompts_dir == folder / "air-prompts"
    assert cfg.for_agent("agent-x").analysis.prompts_dir is None
    # ENRICH_PROMPTS_DIR sets the default folder; the agent's own still wins for the agent
    cfg = load_config(path, environ={"ENRICH_PROMPTS_DIR": str(tmp_path)})
    assert cfg.for_agent("agent-air").analysis.prompts_dir == folder / "air-prompts"
    assert cfg.for_agent("agent-x").analysis.prompts_dir == tmp_path


@pytest.mark.parametrize(
    ("agents", "where", "words"),
    [
        ("  agent-a:\n    colour: red\n", "agents.agent-a.colour", "unknown setting"),
        ("  agent-a:\n    min_user_turns: -1\n", "agents.agent-a.min_user_turns", "greater"),
        (
            "  agent-a:\n    taxonomy: [{name: X}, {name: X}]\n",
            "agents.agent-a.taxonomy",
            "topic listed twice: X",
        ),
        ("  agent-a:\n    taxonomy: [{name: ''}]\n", "agents.agent-a.taxonomy.0.name", "at least"),
        ("  agent-a:\n    llm: {model: x}\n", "agents.agent-a.llm", "unknown setting"),
        ("  agent-a: [taxonomy]\n", "agents.agent-a", "dictionary"),
        ("  12345: {language: German}\n", "agents", "quote it"),
    ],
)
def test_a_broken_profile_fails_at_load_time_naming_its_key(tmp_path, agents, where, words):
    path = tmp_path / "enrich.yaml"
    path.write_text("analysis:\n  language: English\nagents:\n" + agents)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith(f"{path}: {where}: "), message
    assert words in message


def test_a_profile_built_in_code_is_validated_too():
    with pytest.raises(ValidationError) as info:
        Config(agents={"agent-a": {"language": 3}})
    assert info.value.errors()[0]["loc"] == ("agents", "agent-a", "language")
    ok = Config(analysis=DEFAULT_ANALYSIS, agents=AGENTS)
    assert ok.for_agent("agent-shoes").analysis.taxonomy[0].name == "Orders"


def test_a_missing_agent_prompts_folder_fails_before_any_call(fake_llm, tmp_path):
    agents = {"agent-a": {"prompts_dir": str(tmp_path / "nowhere")}}
    with pytest.raises(TemplateError, match=r"agents\.agent-a\.prompts_dir"):
        Enricher(config(fake_llm, agents=agents))
    assert fake_llm.requests == []


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture
def cli(env):
    """The CLI's environment, its configuration file holding the profiles."""
    env["config"].write_text(env["config"].read_text() + YAML)
    return env


def test_schema_shows_the_agents_json_schema(cli):
    for agent, topics in TOPICS.items():
        r = runner.invoke(app, ["schema", "--agent-id", agent])
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["properties"]["topic"]["enum"] == topics
    default = json.loads(runner.invoke(app, ["schema"]).stdout)
    assert default["properties"]["topic"]["enum"] == ["Claims"]


def test_render_shows_the_agents_messages_and_run_sends_them(cli, fake_llm):
    r = runner.invoke(app, ["render", "-t", str(cli["transcript"]), "-a", "agent-air", "--json"])
    assert r.exit_code == 0, r.stderr
    messages = json.loads(r.stdout)
    assert CONTEXT["agent-air"] in messages[0]["content"] and "French" in messages[0]["content"]
    default = json.loads(
        runner.invoke(app, ["render", "-t", str(cli["transcript"]), "--json"]).stdout
    )
    assert CONTEXT["agent-plain"] in default[0]["content"]
    assert fake_llm.requests == []
    # what render shows for the agent is what run sends for the agent's conversation
    run = ["run", "-t", str(cli["transcript"]), "-a", "agent-air", "-C", "c1", "--dry-run"]
    r = runner.invoke(app, run)
    assert r.exit_code == 0, r.stderr
    assert fake_llm.requests[0]["messages"] == messages
    assert topics_of(fake_llm.requests[0]) == ["Flights"]
    assert json.loads(r.stdout)["topic"] == "Flights"


def test_config_shows_the_defaults_and_overrides_or_one_agents_resolved_configuration(cli):
    r = runner.invoke(app, ["config"])
    assert r.exit_code == 0, r.stderr
    shown = yaml.safe_load(r.stdout)
    assert shown["analysis"]["business_context"] == CONTEXT["agent-plain"]
    assert shown["agents"] == AGENTS

    r = runner.invoke(app, ["config", "--agent-id", "agent-shoes"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("# agent agent-shoes: analysis with its overrides merged")
    shown = yaml.safe_load(r.stdout)
    assert "agents" not in shown
    assert shown["analysis"]["business_context"] == CONTEXT["agent-shoes"]
    assert [t["name"] for t in shown["analysis"]["taxonomy"]] == ["Orders", "Products"]
    assert shown["analysis"]["language"] == "English"  # from the defaults
    assert shown["llm"]["max_retries"] == 0  # the rest of the configuration as resolved
    assert shown["llm"]["api_key"] == "***"

    r = runner.invoke(app, ["config", "-a", "agent-plain"])
    assert "no overrides" in r.stdout.splitlines()[0]
    assert yaml.safe_load(r.stdout)["analysis"]["business_context"] == CONTEXT["agent-plain"]


def test_an_agents_own_templates(cli):
    mine = cli["config"].parent / "air-prompts"
    mine.mkdir()
    (mine / "user.j2").write_text("FLIGHT CALL:\n{% for t in turns %}{{ t.text }}\n{% endfor %}")
    text = (
        cli["config"]
        .read_text()
        .replace("  agent-air:\n", "  agent-air:\n    prompts_dir: air-prompts\n")
    )
    cli["config"].write_text(text)
    listed = runner.invoke(app, ["templates", "list", "-a", "agent-air"]).stdout
    assert "user.j2    yours" in listed and "system.j2  default" in listed
    assert "yours" not in runner.invoke(app, ["templates", "list"]).stdout
    shown = runner.invoke(app, ["templates", "show", "user.j2", "-a", "agent-air"]).stdout
    assert shown.startswith("FLIGHT CALL:")
    for agent, mark in (("agent-air", True), ("agent-shoes", False)):
        r = runner.invoke(app, ["render", "-t", str(cli["transcript"]), "-a", agent, "--json"])
        assert json.loads(r.stdout)[1]["content"].startswith("FLIGHT CALL:") is mark


def test_cli_batch_of_mixed_agents(cli, fake_llm, fake_chatdash):
    path = cli["tmp"] / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows(2)))
    out = cli["tmp"] / "out.jsonl"
    r = runner.invoke(app, ["batch", str(path), "-j", "3", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    assert len(fake_llm.requests) == 6
    for request in fake_llm.requests:
        assert_own_profile(request)
    for line in out.read_text().splitlines():
        result = json.loads(line)
        assert result["result"]["enrichment"]["topic"] == TOPICS[result["agent_id"]][0]


def test_backfill_uses_the_agents_profile(cli, fake_llm, fake_chatdash):
    start = datetime(2026, 11, 1, tzinfo=UTC)
    for i in range(3):
        key = ("agent-air", f"conv-{i}")
        fake_chatdash.conversations[key] = {"createdAt": (start + timedelta(hours=i)).isoformat()}
        fake_chatdash.messages[key] = [
            {"sender": "bot", "type": "text", "content": {"text": "Hello, how can I help?"}},
            {"sender": "user", "type": "text", "content": {"text": f"ref agent-air {i}"}},
        ]
    r = runner.invoke(
        app, ["backfill", "-a", "agent-air", "--since", "2026-11-01", "--until", "2026-11-02"]
    )
    assert r.exit_code == 0, r.stderr
    assert len(fake_llm.requests) == 3
    for request in fake_llm.requests:
        assert topics_of(request) == ["Flights"]
        assert CONTEXT["agent-air"] in request["messages"][0]["content"]
    assert {body["topic"] for _, _, _, body in fake_chatdash.puts} == {"Flights"}


@pytest.mark.parametrize("command", [["schema"], ["config"], ["render", "-t", "-"]])
def test_a_broken_profile_is_exit_2_naming_the_key_and_the_file(cli, fake_llm, command):
    cli["config"].write_text(cli["config"].read_text() + "  agent-bad:\n    taxonomy: Billing\n")
    r = runner.invoke(app, command, input=TRANSCRIPT)
    assert r.exit_code == 2, r.stderr
    assert f"{cli['config']}: agents.agent-bad.taxonomy: " in r.stderr
    assert fake_llm.requests == []


# -- the instructions, rendered once where they are the same for every conversation -------------


def _sent_systems(tmp_path, system_j2: str | None, transcripts: list[str]) -> list[str]:
    """The system message of each conversation's request, with ``system_j2`` as the user's
    ``system.j2`` (None: the packaged one)."""
    folder = tmp_path / "prompts"
    folder.mkdir(exist_ok=True)
    if system_j2 is not None:
        (folder / "system.j2").write_text(system_j2)
    with FakeLLM() as llm:
        config = make_config(llm, analysis={"prompts_dir": str(folder)})
        with Enricher(config) as e:
            for text in transcripts:
                e.enrich(text, format="text")
        return [r["messages"][0]["content"] for r in llm.requests]


CALLS = [
    "User: I was charged twice.\nAgent: Refunded.",
    "User: Where is my parcel?\nAgent: It ships today.",
]
RETELL_CALLS = [
    {"call_id": f"call-{n}", "transcript_object": [{"role": "user", "content": "Hello"}],
     "duration_ms": ms}
    for n, ms in ((1, 61000), (2, 125000))
]  # fmt: skip


def test_instructions_that_read_no_conversation_are_rendered_once_and_sent_to_each(tmp_path):
    profile = Enricher(Config()).profile()
    calls = []
    real = profile.prompts.system
    profile.prompts.system = lambda context: calls.append(1) or real(context)
    texts = [profile.system(profile.context(transcript=None)) for _ in range(3)]
    assert len(calls) == 1 and texts[0] == texts[1] == texts[2] == real(profile.context())
    # the packaged system.j2 reads `strategy`: the final call of a long one has its own text
    reduce = profile.system(profile.context(strategy="map_reduce"))
    assert len(calls) == 2 and reduce != texts[0] and reduce == real(
        profile.context(strategy="map_reduce")
    )
    # and every conversation's request carries them whole
    sent = _sent_systems(tmp_path, None, CALLS)
    assert len(sent) == 2 and sent[0] == sent[1] == texts[0]


def test_instructions_that_read_the_conversation_are_rendered_for_each(tmp_path):
    # a system.j2 of the user's own that reads the call's metadata: never one call's for another
    template = "Analyse. {% if metadata %}Call of {{ metadata.duration_seconds }} s.{% endif %}"
    with FakeLLM() as llm:
        config = make_config(llm, analysis={"prompts_dir": str(tmp_path)})
        (tmp_path / "system.j2").write_text(template)
        with Enricher(config) as e:
            for call in RETELL_CALLS:
                e.enrich(call, format="retell")
        sent = [r["messages"][0]["content"] for r in llm.requests]
    assert sent == ["Analyse. Call of 61.0 s.", "Analyse. Call of 125.0 s."]
    # and one that includes another template cannot be read ahead: rendered for each
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "user.j2").write_text("{{ turns | length }} turns")
    include = "Analyse. {% include 'user.j2' %}"
    sent = _sent_systems(tmp_path, include, [CALLS[0], CALLS[0] + "\nUser: Thanks."])
    assert sent == ["Analyse. 2 turns", "Analyse. 3 turns"]
