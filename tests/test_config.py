"""Configuration: flags > environment > YAML file > defaults; errors name their origin; secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CHATDASH_KEY, OPENAI_KEY
from pydantic import SecretStr, ValidationError

from enrich.config import (
    DEFAULT_CHATDASH_BASE_URL,
    ENV_VARS,
    WRITABLE_FIELDS,
    AnalysisSettings,
    Config,
    LLMSettings,
    load_config,
)
from enrich.errors import ConfigError


def _write(tmp_path: Path, text: str, name: str = "enrich.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _error(*args, **kwargs) -> str:
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------------------------
# Layers


def test_defaults():
    config = load_config(None, None, environ={})
    assert config.llm.model == "gpt-4o-mini"
    assert config.llm.mode == "json_schema"
    assert config.llm.api_key is None
    assert config.llm.base_url is None
    assert config.chatdash.base_url == DEFAULT_CHATDASH_BASE_URL
    assert config.chatdash.api_key is None
    assert config.write.fields == list(WRITABLE_FIELDS)
    assert config.analysis.prompts_dir is None
    assert config.source is None


def test_load_config_ignores_real_environ_when_environ_given(monkeypatch):
    for var in [*ENV_VARS, "ENRICH_CONFIG"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ENRICH_MODEL", "from-real-env")
    assert load_config(environ={}).llm.model == "gpt-4o-mini"
    assert load_config().llm.model == "from-real-env"


def test_file_wins_over_defaults(tmp_path):
    path = _write(tmp_path, "llm:\n  model: file-model\n  max_tokens: 500\n")
    config = load_config(path, environ={})
    assert config.llm.model == "file-model"
    assert config.llm.max_tokens == 500
    assert config.llm.mode == "json_schema"  # untouched default
    assert config.source == str(path)


def test_environ_wins_over_file(tmp_path):
    path = _write(tmp_path, "llm:\n  model: file-model\n  mode: tools\n")
    config = load_config(path, environ={"ENRICH_MODEL": "env-model"})
    assert config.llm.model == "env-model"
    assert config.llm.mode == "tools"  # the file still fills what the environment does not


def test_flags_win_over_environ_and_file(tmp_path):
    path = _write(tmp_path, "llm:\n  model: file-model\n  temperature: 0.5\n")
    config = load_config(
        path,
        {"llm": {"model": "flag-model"}},
        environ={"ENRICH_MODEL": "env-model", "ENRICH_LLM_MODE": "json_object"},
    )
    assert config.llm.model == "flag-model"
    assert config.llm.mode == "json_object"
    assert config.llm.temperature == 0.5


def test_flags_win_over_defaults():
    flags = {"llm": {"max_reasks": 5}, "chatdash": {"max_attempts": 2}}
    config = load_config(None, flags, environ={})
    assert config.llm.max_reasks == 5
    assert config.chatdash.max_attempts == 2


def test_none_flags_do_not_override(tmp_path):
    path = _write(tmp_path, "llm:\n  model: file-model\n")
    config = load_config(path, {"llm": {"model": None}, "chatdash": {"api_key": None}}, environ={})
    assert config.llm.model == "file-model"


def test_enrich_config_selects_the_file(tmp_path):
    path = _write(tmp_path, "llm:\n  model: chosen-by-env\n")
    config = load_config(None, environ={"ENRICH_CONFIG": str(path)})
    assert config.llm.model == "chosen-by-env"
    assert config.source == str(path)


def test_explicit_path_wins_over_enrich_config(tmp_path):
    env_file = _write(tmp_path, "llm:\n  model: env-file\n", "a.yaml")
    flag_file = _write(tmp_path, "llm:\n  model: flag-file\n", "b.yaml")
    config = load_config(flag_file, environ={"ENRICH_CONFIG": str(env_file)})
    assert config.llm.model == "flag-file"
    assert config.source == str(flag_file)


def test_empty_enrich_config_means_no_file():
    config = load_config(None, environ={"ENRICH_CONFIG": ""})
    assert config.source is None


def test_empty_file_is_defaults(tmp_path):
    path = _write(tmp_path, "# nothing yet\n")
    config = load_config(path, environ={})
    assert config.llm.model == "gpt-4o-mini"
    assert config.source == str(path)


ENV_SAMPLES = {
    "OPENAI_API_KEY": ("sk-env-openai-1234", lambda c: c.llm.api_key.get_secret_value()),
    "OPENAI_BASE_URL": ("http://llm.example:8000/v1", lambda c: c.llm.base_url),
    "ENRICH_MODEL": ("gpt-4.1-mini", lambda c: c.llm.model),
    "ENRICH_LLM_MODE": ("tools", lambda c: c.llm.mode),
    "ENRICH_LLM_SYSTEM_ROLE": ("false", lambda c: str(c.llm.system_role).lower()),
    "CHATDASH_API_KEY": ("CD.env-chatdash-key", lambda c: c.chatdash.api_key.get_secret_value()),
    "CHATDASH_BASE_URL": ("https://chatdash.example/v1", lambda c: c.chatdash.base_url),
    "ENRICH_PROMPTS_DIR": ("/srv/prompts", lambda c: c.analysis.prompts_dir),
    "ENRICH_LEDGER": ("/srv/enrich/ledger.sqlite3", lambda c: c.ledger.path),
    # enrich serve's secrets
    "RETELL_API_KEY": ("key_env_retell_1234", lambda c: c.serve.retell_api_key.get_secret_value()),
    "VAPI_WEBHOOK_SECRET": ("env-vapi-secret", lambda c: c.serve.vapi_secret.get_secret_value()),
    "ELEVENLABS_WEBHOOK_SECRET": (
        "wsec_env_elevenlabs",
        lambda c: c.serve.elevenlabs_secret.get_secret_value(),
    ),
}


def test_env_samples_cover_every_env_var():
    assert set(ENV_SAMPLES) == set(ENV_VARS)


@pytest.mark.parametrize("var", sorted(ENV_VARS))
def test_each_env_var_maps_to_its_setting(var):
    value, read = ENV_SAMPLES[var]
    config = load_config(None, environ={var: value})
    expected = Path(value) if var in ("ENRICH_PROMPTS_DIR", "ENRICH_LEDGER") else value
    assert read(config) == expected
    section, key = ENV_VARS[var]
    assert getattr(getattr(config, section), key) != getattr(getattr(Config(), section), key)


@pytest.mark.parametrize("var", sorted(ENV_VARS))
def test_each_env_var_wins_over_the_file(tmp_path, var):
    section, key = ENV_VARS[var]
    file_values = {
        "api_key": "file-key-0000",
        "base_url": "https://file.example",
        "model": "file-model",
        "mode": "json_object",
        "system_role": "true",
        "prompts_dir": "/file/prompts",
        "path": "/file/ledger.sqlite3",
        "retell_api_key": "file-retell-key",
        "vapi_secret": "file-vapi-secret",
        "elevenlabs_secret": "file-elevenlabs-secret",
    }
    path = _write(tmp_path, f"{section}:\n  {key}: {file_values[key]}\n")
    value, read = ENV_SAMPLES[var]
    config = load_config(path, environ={var: value})
    expected = Path(value) if var in ("ENRICH_PROMPTS_DIR", "ENRICH_LEDGER") else value
    assert read(config) == expected


def test_empty_env_var_counts_as_unset(tmp_path):
    path = _write(tmp_path, "llm:\n  model: file-model\n  mode: tools\n")
    environ = {var: "" for var in ENV_VARS}
    config = load_config(path, environ=environ)
    assert config.llm.model == "file-model"
    assert config.llm.mode == "tools"
    assert config.llm.api_key is None
    assert config.chatdash.base_url == DEFAULT_CHATDASH_BASE_URL


def test_chatdash_base_url_trailing_slash_dropped():
    config = load_config(None, environ={"CHATDASH_BASE_URL": "https://chatdash.example/v1/"})
    assert config.chatdash.base_url == "https://chatdash.example/v1"


# --------------------------------------------------------------------------------------------
# Errors name their origin


def test_invalid_env_mode_names_the_variable():
    message = _error(environ={"ENRICH_LLM_MODE": "xml"})
    assert message.startswith("ENRICH_LLM_MODE: ")
    assert "json_schema" in message


def test_invalid_env_base_url_names_the_variable(tmp_path):
    path = _write(tmp_path, "chatdash:\n  timeout: 3\n")
    message = _error(path, environ={"CHATDASH_BASE_URL": "ftp://nope"})
    assert message.startswith("CHATDASH_BASE_URL: ")
    assert "http://" in message


def test_invalid_file_value_names_file_and_key(tmp_path):
    path = _write(tmp_path, "llm:\n  max_tokens: 5\n")
    message = _error(path)
    assert message.startswith(f"{path}: llm.max_tokens: ")
    assert "16" in message


def test_invalid_flag_value_names_the_command_line():
    message = _error(None, {"chatdash": {"timeout": 0}})
    assert message.startswith("command line: chatdash.timeout: ")


def test_invalid_value_from_enrich_config_file(tmp_path):
    path = _write(tmp_path, "chatdash:\n  max_attempts: 0\n")
    message = _error(None, environ={"ENRICH_CONFIG": str(path)})
    assert message.startswith(f"{path}: chatdash.max_attempts: ")


def test_unknown_key_says_unknown_setting(tmp_path):
    path = _write(tmp_path, "llm:\n  modle: gpt-4o\n")
    message = _error(path)
    assert message.startswith(f"{path}: llm.modle: unknown setting")


def test_unknown_section_says_unknown_setting(tmp_path):
    path = _write(tmp_path, "database:\n  url: x\n")
    message = _error(path)
    assert message.startswith(f"{path}: database: unknown setting")


def test_several_errors_are_counted(tmp_path):
    path = _write(tmp_path, "llm:\n  max_tokens: 1\n  timeout: -1\n  colour: red\n")
    message = _error(path)
    assert "(and 2 more)" in message


def test_invalid_yaml_names_line_and_column(tmp_path):
    path = _write(tmp_path, "llm:\n  model: gpt\n bad: indent\n")
    message = _error(path)
    assert message.startswith(f"{path}: invalid YAML at line 3, column 2: ")


def test_invalid_yaml_unclosed_bracket(tmp_path):
    path = _write(tmp_path, "llm:\n  model: [unclosed\n")
    message = _error(path)
    assert f"{path}: invalid YAML at line " in message
    assert "column" in message


def test_missing_file(tmp_path):
    path = tmp_path / "missing.yaml"
    assert _error(path) == f"{path}: configuration file not found"


def test_missing_file_from_enrich_config(tmp_path):
    path = tmp_path / "missing.yaml"
    message = _error(None, environ={"ENRICH_CONFIG": str(path)})
    assert message == f"{path}: configuration file not found"


def test_file_that_is_a_list(tmp_path):
    path = _write(tmp_path, "- llm\n- chatdash\n")
    assert _error(path) == f"{path}: the configuration must be a mapping of sections"


def test_file_that_is_a_scalar(tmp_path):
    path = _write(tmp_path, "just a string\n")
    assert "must be a mapping of sections" in _error(path)


def test_empty_section_in_file_counts_as_empty(tmp_path):
    # A section whose keys are all commented out is YAML null; it works when an env var fills
    # the section, so it must work without one too.
    path = _write(tmp_path, "llm:\n  # model: gpt-4o\nchatdash:\n  timeout: 3\n")
    assert load_config(path, environ={"ENRICH_MODEL": "m"}).llm.model == "m"
    config = load_config(path, environ={})
    assert config.llm.model == "gpt-4o-mini"
    assert config.chatdash.timeout == 3


# --------------------------------------------------------------------------------------------
# Analysis and write settings


def test_taxonomy_subtopics_as_strings_or_objects(tmp_path):
    path = _write(
        tmp_path,
        """\
analysis:
  taxonomy:
    - name: Billing
      description: charges and refunds
      subtopics:
        - Refund
        - name: Invoice copy
          description: a PDF of an invoice
    - name: Products
""",
    )
    taxonomy = load_config(path, environ={}).analysis.taxonomy
    assert [t.name for t in taxonomy] == ["Billing", "Products"]
    billing = taxonomy[0]
    assert billing.description == "charges and refunds"
    assert [(s.name, s.description) for s in billing.subtopics] == [
        ("Refund", ""),
        ("Invoice copy", "a PDF of an invoice"),
    ]
    assert taxonomy[1].subtopics == []


def test_duplicate_topics_rejected(tmp_path):
    path = _write(
        tmp_path,
        "analysis:\n  taxonomy:\n    - name: Billing\n    - name: Products\n    - name: Billing\n",
    )
    message = _error(path)
    assert message.startswith(f"{path}: analysis.taxonomy: ")
    assert "topic listed twice: Billing" in message


def test_empty_topic_name_rejected(tmp_path):
    path = _write(tmp_path, "analysis:\n  taxonomy:\n    - name: ''\n")
    assert _error(path).startswith(f"{path}: analysis.taxonomy.0.name: ")


def test_success_criteria_one_string_becomes_a_list(tmp_path):
    path = _write(tmp_path, "analysis:\n  success_criteria: The order was refunded.\n")
    config = load_config(path, environ={})
    assert config.analysis.success_criteria == ["The order was refunded."]
    assert AnalysisSettings(success_criteria="x").success_criteria == ["x"]


def test_success_criteria_list(tmp_path):
    path = _write(tmp_path, "analysis:\n  success_criteria:\n    - one\n    - two\n")
    assert load_config(path, environ={}).analysis.success_criteria == ["one", "two"]


def test_write_fields_narrowed(tmp_path):
    path = _write(tmp_path, "write:\n  fields: [summary, topic]\n")
    assert load_config(path, environ={}).write.fields == ["summary", "topic"]


def test_write_fields_unknown_field_rejected(tmp_path):
    path = _write(tmp_path, "write:\n  fields: [summary, sentiment]\n")
    message = _error(path)
    assert message.startswith(f"{path}: write.fields.1: ")
    assert "summary" in message  # the allowed values are listed


def test_write_fields_empty_rejected(tmp_path):
    path = _write(tmp_path, "write:\n  fields: []\n")
    assert _error(path).startswith(f"{path}: write.fields: ")


def test_prompts_dir_relative_to_the_yaml_folder(tmp_path):
    path = _write(tmp_path, "analysis:\n  prompts_dir: my-prompts\n", "conf/enrich.yaml")
    config = load_config(path, environ={})
    assert config.analysis.prompts_dir == tmp_path / "conf" / "my-prompts"


def test_prompts_dir_relative_via_enrich_config(tmp_path):
    path = _write(tmp_path, "analysis:\n  prompts_dir: ./p\n", "conf/enrich.yaml")
    config = load_config(None, environ={"ENRICH_CONFIG": str(path)})
    assert config.analysis.prompts_dir == tmp_path / "conf" / "p"


def test_prompts_dir_absolute_in_file_kept(tmp_path):
    target = tmp_path / "elsewhere"
    path = _write(tmp_path, f"analysis:\n  prompts_dir: {target}\n", "conf/enrich.yaml")
    assert load_config(path, environ={}).analysis.prompts_dir == target


def test_prompts_dir_from_flag_or_env_not_rebased(tmp_path):
    path = _write(tmp_path, "analysis:\n  prompts_dir: from-file\n", "conf/enrich.yaml")
    by_flag = load_config(path, {"analysis": {"prompts_dir": "from-flag"}}, environ={})
    assert by_flag.analysis.prompts_dir == Path("from-flag")
    by_env = load_config(path, environ={"ENRICH_PROMPTS_DIR": "from-env"})
    assert by_env.analysis.prompts_dir == Path("from-env")


def test_prompts_dir_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(None, {"analysis": {"prompts_dir": "~/prompts"}}, environ={})
    assert config.analysis.prompts_dir == tmp_path / "prompts"


# --------------------------------------------------------------------------------------------
# Secrets


def _config_with_keys(tmp_path) -> Config:
    path = _write(tmp_path, f"chatdash:\n  api_key: {CHATDASH_KEY}\n")
    return load_config(path, environ={"OPENAI_API_KEY": OPENAI_KEY})


def test_secrets_hidden_in_repr_and_str(tmp_path):
    config = _config_with_keys(tmp_path)
    for text in (repr(config), str(config), repr(config.llm), str(config.chatdash)):
        assert OPENAI_KEY not in text
        assert CHATDASH_KEY not in text
    assert "**********" in repr(config.llm)


def test_secrets_hidden_in_redacted(tmp_path):
    config = _config_with_keys(tmp_path)
    data = config.redacted()
    dumped = json.dumps(data)
    assert OPENAI_KEY not in dumped
    assert CHATDASH_KEY not in dumped
    assert data["llm"]["api_key"] == "***"
    assert data["chatdash"]["api_key"] == "***"
    assert data["llm"]["model"] == "gpt-4o-mini"


def test_redacted_without_keys_shows_null():
    data = load_config(environ={}).redacted()
    assert data["llm"]["api_key"] is None
    assert data["chatdash"]["api_key"] is None


def test_secret_values_still_reachable(tmp_path):
    config = _config_with_keys(tmp_path)
    assert isinstance(config.llm.api_key, SecretStr)
    assert config.llm.api_key.get_secret_value() == OPENAI_KEY
    assert config.chatdash.api_key.get_secret_value() == CHATDASH_KEY
    assert {s.get_secret_value() for s in config.secrets()} == {OPENAI_KEY, CHATDASH_KEY}


def test_secret_not_in_error_message(tmp_path):
    path = _write(tmp_path, f"llm:\n  api_key: {OPENAI_KEY}\n  max_tokens: 1\n")
    message = _error(path)
    assert OPENAI_KEY not in message
    assert "llm.max_tokens" in message


def test_config_is_frozen():
    config = load_config(environ={})
    with pytest.raises(ValidationError):
        config.llm.model = "other"  # type: ignore[misc]
    assert config.llm.model == "gpt-4o-mini"


def test_settings_built_directly_in_code():
    llm = LLMSettings(model="m", api_key="sk-direct-secret", base_url="")
    assert llm.base_url is None  # an empty base URL counts as unset
    assert "sk-direct-secret" not in repr(Config(llm=llm))
