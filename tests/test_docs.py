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
    ):
        assert command in readme, command


def test_readme_setup_is_the_ci_setup():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -e '.[test]'" in readme and "pip install -e '.[test]'" in ci
    assert "python -m pytest" in readme and "python -m pytest" in ci
