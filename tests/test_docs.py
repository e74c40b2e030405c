"""The documentation says what the code does: config.example.yaml and the README."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel

from enrich.config import ENV_VARS, Config, load_config

ROOT = Path(__file__).resolve().parent.parent


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        if name == "source":
            continue
        out.add(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _keys(ann, f"{prefix}{name}.")
    return out


def _yaml_keys(data: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in data.items():
        out.add(prefix + k)
        if isinstance(v, dict) and k != "pricing":
            out |= _yaml_keys(v, f"{prefix}{k}.")
    return out


def test_example_config_documents_every_key_with_its_default():
    path = ROOT / "config.example.yaml"
    data = yaml.safe_load(path.read_text())
    assert _yaml_keys(data) == _keys(Config)
    loaded = load_config(path, environ={})
    assert loaded.model_dump(exclude={"source"}) == Config().model_dump(exclude={"source"})


def test_readme_names_every_environment_variable_and_command():
    readme = (ROOT / "README.md").read_text()
    for var in ENV_VARS:
        assert f"`{var}`" in readme, var
    for command in (
        "enrich run",
        "enrich batch",
        "enrich backfill",
        "enrich replay",
        "enrich report",
        "enrich show",
        "enrich ledger stats",
        "enrich render",
        "enrich templates",
        "enrich formats",
        "enrich presets",
        "enrich schema",
        "enrich serve",
        "enrich eval",
        "enrich batch --workers",
    ):
        assert command in readme, command


def test_readme_setup_is_the_ci_setup():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -e '.[test]'" in readme and "pip install -e '.[test]'" in ci
    assert "python -m pytest" in readme and "python -m pytest" in ci


# -- the README's "Your own analysis" example, run as a user would -------------------------------

#: What the model answers in the README's example (the fake LLM is told to say it).
AGENCY_ANSWER = {
    "summary": "The caller moved her cleaning from Tuesday to Thursday December 4th at 10 am "
    "and asked whether her plan covers fluoride; billing will call her back.",
    "topic": "Appointments",
    "subtopic": "Rescheduling",
    "misunderstood_queries": [{"question": "does my plan cover the fluoride treatment?"}],
    "evaluation": {
        "criteria": {
            "resolved": {
                "rationale": "The appointment was moved and the coverage question was handed "
                "to billing with a callback today.",
                "verdict": "success",
            },
            "accurate": {
                "rationale": "The agent offered real slots and did not guess the coverage.",
                "verdict": "success",
            },
        },
        "reason": "The caller's request was handled and the open question has an owner.",
        "verdict": "success",
    },
    "custom_analysis": {
        "sentiment": "positive",
        "callback_requested": True,
        "appointment_date": "2026-12-04",
        "urgency": "routine",
    },
}


def _block(text: str, after: str, lang: str) -> str:
    start = text.index(f"```{lang}\n", text.index(after)) + len(lang) + 4
    return text[start : text.index("```", start)]


def test_the_readme_agency_example_writes_the_body_it_shows(env, fake_llm, fake_chatdash):
    """The README's agency configuration is examples/agency.yaml, and `enrich run` with it
    PUTs exactly the body the README shows."""
    import json

    from typer.testing import CliRunner

    from enrich.cli import app
    from enrich.testing import Reply

    readme = (ROOT / "README.md").read_text()
    config = _block(readme, "## Your own analysis", "yaml")
    assert yaml.safe_load(config) == yaml.safe_load((ROOT / "examples/agency.yaml").read_text())
    shown = json.loads(_block(readme, "It writes:", "json"))
    fake_llm.add(Reply.json(AGENCY_ANSWER))
    result = CliRunner().invoke(
        app,
        [
            "run",
            "-c",
            str(ROOT / "examples/agency.yaml"),
            "-a",
            "agent-dental",
            "-C",
            "6650f0c2e4b0a1b2c3d4e5f6",
            "-t",
            str(ROOT / "examples/dental-call.txt"),
        ],
    )
    assert result.exit_code == 0, result.stderr
    (put,) = fake_chatdash.puts
    assert put[3] == shown
    assert fake_chatdash.violations == []
    request = fake_llm.requests[0]
    schema = request["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["topic"]["enum"] == ["Appointments", "Billing"]
    assert list(schema["properties"]["custom_analysis"]["properties"]) == [
        "sentiment",
        "callback_requested",
        "appointment_date",
        "urgency",
    ]
