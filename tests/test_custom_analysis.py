"""The agency's own analysis: typed custom fields, presets and named success criteria, end to end
through the public surface (the ``enrich`` CLI and the library ``Enricher``) against the fake
servers, with the real openai SDK and httpx: the schema sent in every mode, validation and
re-asks, the PUT body (checked against the contract), ``schema``, ``render``, ``--json``, batch
outputs and ``report``. Also the fake LLM's default responder on the new schema shapes."""

from __future__ import annotations

import copy
import csv
import json
from typing import Any

import pytest
import yaml
from conftest import TRANSCRIPT, answer, make_config
from typer.testing import CliRunner

from enrich import Enricher
from enrich.cli import app
from enrich.models.jsonschema import check
from enrich.testing import FakeLLM, Reply, valid_answer

runner = CliRunner()

MODES = ["json_schema", "json_object", "tools"]

#: One field of every type.
FIELDS: list[dict[str, Any]] = [
    {"name": "order_number", "type": "string", "description": "The order number the user gave."},
    {
        "name": "refund_amount",
        "type": "number",
        "description": "The amount refunded, in the order's currency.",
        "required": False,
    },
    {"name": "charges", "type": "integer", "description": "How many times the user was charged."},
    {"name": "refunded", "type": "boolean", "description": "true if a refund was made."},
    {
        "name": "channel",
        "type": "enum",
        "values": ["phone", "chat", "email"],
        "description": "How the user reached the business.",
    },
    {"name": "products", "type": "list", "description": "The products the user asked about."},
    {
        "name": "refund",
        "type": "json",
        "description": "The refund made, if any.",
        "schema": {
            "type": "object",
            "properties": {
                "amount": {"type": "number", "minimum": 0},
                "currency": {"type": "string", "enum": ["EUR", "USD"]},
                "reasons": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["amount", "reasons"],
        },
    },
]
NAMES = [f["name"] for f in FIELDS]

#: A valid value of every field, for TRANSCRIPT.
CUSTOM: dict[str, Any] = {
    "order_number": "4417",
    "refund_amount": 59.9,
    "charges": 2,
    "refunded": True,
    "channel": "phone",
    "products": ["waterproof hiking boots"],
    "refund": {"amount": 59.9, "currency": None, "reasons": ["duplicate charge"]},
}

CRITERIA: list[Any] = [
    "The agent stayed polite.",  # a plain one, listed with the named ones
    {"name": "resolved", "description": "The user's request was resolved."},
    {"name": "accurate", "description": "The agent gave correct information."},
    {"name": "courteous", "description": "The user left satisfied."},
]
CRITERIA_NAMES = ["resolved", "accurate", "courteous"]

DEFAULT_KEYS = ["summary", "topic", "subtopic", "misunderstood_queries", "evaluation"]


def with_custom(custom: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """conftest's answer of TRANSCRIPT with ``custom_analysis`` (default: :data:`CUSTOM`)."""
    return answer(custom_analysis=copy.deepcopy(CUSTOM if custom is None else custom), **overrides)


def judged(verdicts: dict[str, str], overall: str) -> dict[str, Any]:
    """An evaluation with named criteria: a verdict and a rationale each, then the overall."""
    return {
        "criteria": {
            name: {"rationale": f"The transcript shows it ({name}).", "verdict": v}
            for name, v in verdicts.items()
        },
        "reason": "The refund was made but a question was ignored.",
        "verdict": overall,
    }


def schema_of(request: dict[str, Any]) -> dict[str, Any]:
    """The schema a request carried, in whichever mode it was sent."""
    rf = request.get("response_format") or {}
    if rf.get("type") == "json_schema":
        assert rf["json_schema"]["strict"] is True
        return rf["json_schema"]["schema"]
    if rf.get("type") == "json_object":
        return rf["schema"]
    (tool,) = request["tools"]
    assert tool["function"]["strict"] is True
    return tool["function"]["parameters"]


def walk(node: Any, where: str = "$"):
    """Every (place, dict) in a schema."""
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from walk(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{where}[{i}]")


def assert_strict(schema: dict[str, Any]) -> None:
    """Strict structured outputs: every object closed, with all its properties required; every
    node typed (or an anyOf, or an enum); no keyword strict mode refuses."""
    refused = {"oneOf", "allOf", "not", "$ref", "patternProperties", "minLength", "format"}
    for where, node in walk(schema):
        if where.endswith(".properties"):
            continue  # a map of names to schemas, not a schema
        assert not refused & set(node), (where, node)
        assert "type" in node or "anyOf" in node or "enum" in node, (where, node)
        kinds = node.get("type")
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if "object" in kinds:
            assert node["additionalProperties"] is False, where
            assert node["required"] == list(node["properties"]), where
        if "enum" in node and "type" in node:
            allowed = {"string": str, "null": type(None)}
            for value in node["enum"]:
                assert any(isinstance(value, allowed.get(k, object)) for k in kinds), where


def write_config(env: dict[str, Any], **sections: Any) -> None:
    """The CLI's config file (conftest's env) with ``sections`` added (a nested dict each)."""
    data = yaml.safe_load(env["config"].read_text())
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    env["config"].write_text(yaml.safe_dump(data, sort_keys=False))


def run(*args: str):
    return runner.invoke(app, list(args))


def assert_contract(chatdash) -> None:
    assert chatdash.violations == []
    assert chatdash.puts, "nothing was written"


# -- the fake LLM's default responder ------------------------------------------------------------


def test_valid_answer_picks_a_valid_value_for_every_new_shape():
    schema = {
        "type": "object",
        "properties": {
            "nullable_enum": {"type": ["string", "null"], "enum": [None, "b", "c"]},
            "nullable_number": {"type": ["null", "number"], "minimum": 2.5},
            "whole": {"type": "integer", "minimum": 1.5},
            "negative": {"type": "integer", "maximum": -0.5},
            "any_of": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 3}]},
            "enum_alone": {"enum": ["x", "y"]},
            "nested": {
                "type": "object",
                "properties": {
                    "deep": {
                        "type": "object",
                        "properties": {"flag": {"type": ["boolean", "null"]}},
                        "required": ["flag"],
                        "additionalProperties": False,
                    },
                    "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                },
                "required": ["deep", "tags"],
                "additionalProperties": False,
            },
            "only_null": {"type": "null"},
            "only_null_any_of": {"anyOf": [{"type": "null"}]},
        },
        "required": [],
        "additionalProperties": False,
    }
    schema["required"] = list(schema["properties"])
    request = {"response_format": {"type": "json_object", "schema": schema}}
    value = valid_answer(request)
    assert check(value, schema) == []
    assert value == {
        "nullable_enum": "b",
        "nullable_number": 2.5,
        "whole": 2,
        "negative": -1,
        "any_of": 3,
        "enum_alone": "x",
        "nested": {"deep": {"flag": True}, "tags": ["example", "example"]},
        "only_null": None,
        "only_null_any_of": None,
    }


def test_valid_answer_still_answers_an_empty_request():
    assert valid_answer({}) == {}


@pytest.mark.parametrize("mode", MODES)
def test_the_default_responder_answers_every_field_and_criterion_validly(fake_llm, mode):
    """No scripted reply: the fake builds the answer from the schema in the request (enums,
    nullable types, the json field's nested object), and it is accepted at once."""
    analysis = {"fields": FIELDS, "presets": ["sentiment"], "success_criteria": CRITERIA}
    with Enricher(make_config(fake_llm, llm={"mode": mode}, analysis=analysis)) as e:
        result = e.enrich(TRANSCRIPT)
    assert result.attempts == 1
    custom = result.enrichment.custom
    assert list(custom) == ["sentiment", *NAMES]
    assert custom["sentiment"] == "positive" and custom["channel"] == "phone"
    assert custom["refund_amount"] == 0 and custom["refund"]["currency"] == "EUR"
    assert check(valid_answer(fake_llm.requests[0]), schema_of(fake_llm.requests[0])) == []
    assert [c.verdict for c in result.enrichment.evaluation.criteria] == ["success"] * 3


# -- the schema ----------------------------------------------------------------------------------


def test_default_schema_is_the_five_keys_with_no_description(env, fake_llm, fake_chatdash):
    """No fields, plain criteria: the schema sent is today's, and no description from the
    system prompt is repeated in it (in the request and in `enrich schema`)."""
    shown = run("schema")
    assert shown.exit_code == 0, shown.stderr
    r = run("run", "-t", str(env["transcript"]), "--dry-run")
    assert r.exit_code == 0, r.stderr
    sent = schema_of(fake_llm.requests[0])
    assert json.loads(shown.stdout) == sent
    assert list(sent["properties"]) == DEFAULT_KEYS and sent["required"] == DEFAULT_KEYS
    assert list(sent["properties"]["evaluation"]["properties"]) == ["reason", "is_success"]
    assert [w for w, node in walk(sent) if "description" in node] == []
    assert_strict(sent)
    body = json.loads(r.stdout)  # the PUT body: today's fields only
    assert set(body) == {"summary", "topic", "subtopic", "evaluation", "mistunderstoodQueries"}
    assert set(body["evaluation"]) == {"isSuccess", "reason"}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_sends_the_fields_in_a_strict_schema(fake_llm, fake_chatdash, mode):
    fake_llm.add(Reply.json(with_custom()))
    config = make_config(fake_llm, fake_chatdash, llm={"mode": mode}, analysis={"fields": FIELDS})
    with Enricher(config) as e:
        result = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    (request,) = fake_llm.requests
    schema = schema_of(request)
    assert_strict(schema)
    assert list(schema["properties"]) == [*DEFAULT_KEYS, "custom_analysis"]
    custom = schema["properties"]["custom_analysis"]
    assert custom["required"] == NAMES
    props = custom["properties"]
    assert props["order_number"] == {"type": "string"}
    assert props["refund_amount"] == {"type": ["number", "null"]}  # required: false
    assert props["charges"] == {"type": "integer"}
    assert props["refunded"] == {"type": "boolean"}
    assert props["channel"] == {"type": "string", "enum": ["phone", "chat", "email"]}
    assert props["products"] == {"type": "array", "items": {"type": "string"}}
    refund = props["refund"]  # the user's schema, made strict
    assert refund["required"] == ["amount", "currency", "reasons"]
    assert refund["properties"]["currency"] == {
        "type": ["string", "null"],
        "enum": ["EUR", "USD", None],
    }
    # the descriptions are in the prompt, once, not in the schema
    assert [w for w, node in walk(schema) if "description" in node] == []
    system = request["messages"][0]["content"]
    for field in FIELDS:
        assert f"- {field['name']} (" in system and field["description"] in system
    assert "one of: phone, chat, email" in system
    assert "a number, or null when the conversation does not say" in system
    if mode == "json_object":  # JSON mode: the schema is printed in the prompt too
        assert json.dumps(schema, ensure_ascii=False) in system
    else:
        assert '"custom_analysis"' not in system
    assert result.enrichment.custom == CUSTOM
    assert_contract(fake_chatdash)
    assert fake_chatdash.puts[0][3]["customAnalysis"] == CUSTOM


def test_enrich_schema_and_render_show_the_fields(env, fake_llm, fake_chatdash):
    write_config(env, analysis={"fields": FIELDS, "success_criteria": CRITERIA})
    shown = run("schema")
    assert shown.exit_code == 0, shown.stderr
    schema = json.loads(shown.stdout)
    assert_strict(schema)
    assert schema["properties"]["custom_analysis"]["required"] == NAMES
    evaluation = schema["properties"]["evaluation"]
    assert evaluation["required"] == ["criteria", "reason", "verdict"]
    assert evaluation["properties"]["criteria"]["required"] == CRITERIA_NAMES

    rendered = run("render", "-t", str(env["transcript"]), "--json", "--mode", "json_object")
    assert rendered.exit_code == 0, rendered.stderr
    system = json.loads(rendered.stdout)[0]["content"]
    assert (
        "### Your own fields" in system and "### The evaluation, criterion by criterion" in system
    )
    assert "resolved, accurate, courteous" in system
    assert "- The agent stayed polite." in system  # the plain criterion, still listed
    assert "- resolved: The user's request was resolved." in system
    for field in FIELDS:
        assert field["description"] in system
    assert json.dumps(schema, ensure_ascii=False) in system  # json_object: printed
    assert fake_llm.requests == [] and fake_chatdash.requests == []


# -- every type, validated, re-asked, written ----------------------------------------------------


def test_every_type_is_validated_and_written_under_custom_analysis(env, fake_llm, fake_chatdash):
    write_config(env, analysis={"fields": FIELDS})
    custom = {**CUSTOM, "refund_amount": None}  # optional: not mentioned
    fake_llm.add(Reply.json(with_custom(custom)))
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"]), "--json")
    assert r.exit_code == 0, r.stderr
    assert len(fake_llm.requests) == 1  # null was a valid answer: not asked again
    out = json.loads(r.stdout)
    assert out["enrichment"]["custom"] == custom  # the result keeps the null...
    written = {k: v for k, v in custom.items() if k != "refund_amount"}
    assert out["update"]["customAnalysis"] == written  # ...the write leaves it out
    assert_contract(fake_chatdash)
    (put,) = fake_chatdash.puts
    assert put[3]["customAnalysis"] == written
    assert put[3]["topic"] == "Billing" and put[3]["evaluation"]["isSuccess"] is True


REASKS = [
    # (field, wrong value, the error the model is sent back, the corrected value)
    ("refund_amount", "42", "custom_analysis.refund_amount: Input should be a valid number", 42),
    ("charges", 2.5, "custom_analysis.charges: Input should be a valid integer", 2),
    ("charges", "2", "custom_analysis.charges: Input should be a valid integer", 2),
    ("refunded", "maybe", "custom_analysis.refunded: Input should be a valid boolean", True),
    ("refunded", None, "custom_analysis.refunded: Input should be a valid boolean", False),
    ("order_number", None, "custom_analysis.order_number: Input should be a valid string", "4417"),
    (
        "channel",
        "fax",
        "custom_analysis.channel: Input should be 'phone', 'chat' or 'email'",
        "chat",
    ),
    ("products", "boots", "custom_analysis.products: Input should be a valid array", ["boots"]),
    ("products", [46], "custom_analysis.products.0: Input should be a valid string", ["46"]),
    (
        "refund",
        {"amount": "ten", "currency": "EUR", "reasons": []},
        "custom_analysis.refund: amount: expected number, got str",
        {"amount": 10, "currency": "EUR", "reasons": []},
    ),
    (
        "refund",
        {"amount": -1, "currency": "GBP", "reasons": []},
        "custom_analysis.refund: amount: at least 0; currency: 'GBP' is not one of 'EUR', 'USD'",
        {"amount": 1, "currency": None, "reasons": []},
    ),
    (
        "refund",
        {"amount": 5, "reasons": []},
        "custom_analysis.refund: value: missing key 'currency'",
        {"amount": 5, "currency": None, "reasons": []},
    ),
    (
        "refund",
        None,
        "custom_analysis.refund: value: expected object, got NoneType",
        {"amount": 5, "currency": "USD", "reasons": ["late"]},
    ),
]


@pytest.mark.parametrize(
    ("name", "wrong", "error", "right"), REASKS, ids=[f"{c[0]}={c[1]!r}" for c in REASKS]
)
def test_a_wrong_value_is_reasked_with_the_error_then_accepted(
    fake_llm, fake_chatdash, name, wrong, error, right
):
    fake_llm.add(
        Reply.json(with_custom({**CUSTOM, name: wrong})),
        Reply.json(with_custom({**CUSTOM, name: right})),
    )
    config = make_config(fake_llm, fake_chatdash, analysis={"fields": FIELDS})
    with Enricher(config) as e:
        result = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    assert result.attempts == 2 and len(fake_llm.requests) == 2
    feedback = fake_llm.requests[1]["messages"][-1]["content"]
    assert error in feedback
    assert result.enrichment.custom[name] == right
    assert_contract(fake_chatdash)
    assert fake_chatdash.puts[0][3]["customAnalysis"][name] == right


@pytest.mark.parametrize("mode", MODES)
def test_a_wrong_value_is_reasked_in_every_mode(fake_llm, mode):
    fake_llm.add(
        Reply.json(with_custom({**CUSTOM, "refund_amount": "42"})),
        Reply.json(with_custom({**CUSTOM, "refund_amount": 42})),
    )
    config = make_config(fake_llm, llm={"mode": mode}, analysis={"fields": FIELDS})
    with Enricher(config) as e:
        result = e.enrich(TRANSCRIPT)
    assert result.attempts == 2
    feedback = fake_llm.requests[1]["messages"][-1]
    assert feedback["role"] == ("tool" if mode == "tools" else "user")
    assert "custom_analysis.refund_amount: Input should be a valid number" in feedback["content"]
    assert result.enrichment.custom["refund_amount"] == 42


def test_a_missing_or_extra_field_is_reasked(fake_llm):
    missing = {k: v for k, v in CUSTOM.items() if k != "channel"}
    fake_llm.add(
        Reply.json(with_custom(missing)),
        Reply.json(with_custom({**CUSTOM, "mood": "happy"})),
        Reply.json(answer()),  # no custom_analysis at all
        Reply.json(with_custom()),
    )
    config = make_config(fake_llm, llm={"max_reasks": 3}, analysis={"fields": FIELDS})
    with Enricher(config) as e:
        result = e.enrich(TRANSCRIPT)
    assert result.attempts == 4
    feedback = [r["messages"][-1]["content"] for r in fake_llm.requests[1:]]
    assert "custom_analysis.channel: Field required" in feedback[0]
    assert "custom_analysis.mood: Extra inputs are not permitted" in feedback[1]
    assert "custom_analysis: Field required" in feedback[2]
    assert result.enrichment.custom == CUSTOM


def test_still_wrong_after_every_reask_is_an_llm_failure_and_nothing_is_written(
    env, fake_llm, fake_chatdash
):
    write_config(env, analysis={"fields": FIELDS}, llm={"max_reasks": 1})
    bad = Reply.json(with_custom({**CUSTOM, "refunded": "maybe"}))
    fake_llm.add(bad, bad)
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"]))
    assert r.exit_code == 3, r.stderr  # an LLM failure
    assert "custom_analysis.refunded" in r.stderr
    assert len(fake_llm.requests) == 2 and fake_chatdash.puts == []


# -- presets -------------------------------------------------------------------------------------


def test_presets_are_switched_on_by_name(env, fake_llm, fake_chatdash):
    presets = ["sentiment", "voicemail", "callback_requested", "action_items"]
    write_config(env, analysis={"presets": presets})
    custom = {
        "sentiment": "negative",
        "voicemail": False,
        "callback_requested": True,
        "action_items": ["Call the user back tomorrow"],
    }
    fake_llm.add(Reply.json(answer(custom_analysis=custom)))
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"]), "--json")
    assert r.exit_code == 0, r.stderr
    (request,) = fake_llm.requests
    props = schema_of(request)["properties"]["custom_analysis"]["properties"]
    assert list(props) == presets
    assert props["sentiment"] == {"type": "string", "enum": ["positive", "neutral", "negative"]}
    assert props["voicemail"] == props["callback_requested"] == {"type": "boolean"}
    assert props["action_items"] == {"type": "array", "items": {"type": "string"}}
    system = request["messages"][0]["content"]
    assert "voicemail or an answering machine" in system and "called back" in system
    assert json.loads(r.stdout)["enrichment"]["custom"] == custom
    assert_contract(fake_chatdash)
    assert fake_chatdash.puts[0][3]["customAnalysis"] == custom

    listed = run("presets")
    assert listed.exit_code == 0, listed.stderr
    assert all(name in listed.stdout for name in presets)


def test_a_field_of_the_same_name_overrides_a_preset_in_its_place(fake_llm, fake_chatdash):
    mood = {
        "name": "sentiment",
        "type": "enum",
        "values": ["happy", "unhappy"],
        "description": "Did the user end happy?",
        "required": False,
    }
    analysis = {
        "presets": ["sentiment", "voicemail"],
        "fields": [{"name": "charges", "type": "integer"}, mood],
    }
    fake_llm.add(
        Reply.json(
            answer(custom_analysis={"sentiment": "negative", "voicemail": False, "charges": 2})
        ),
        Reply.json(answer(custom_analysis={"sentiment": None, "voicemail": False, "charges": 2})),
    )
    with Enricher(make_config(fake_llm, fake_chatdash, analysis=analysis)) as e:
        result = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    schema = schema_of(fake_llm.requests[0])
    props = schema["properties"]["custom_analysis"]["properties"]
    assert list(props) == ["sentiment", "voicemail", "charges"]  # the preset's place
    assert props["sentiment"] == {"type": ["string", "null"], "enum": ["happy", "unhappy", None]}
    system = fake_llm.requests[0]["messages"][0]["content"]
    assert "Did the user end happy?" in system and "overall sentiment" not in system
    # the preset's value is not the field's: asked again
    feedback = fake_llm.requests[1]["messages"][-1]["content"]
    assert "custom_analysis.sentiment: Input should be 'happy' or 'unhappy'" in feedback
    assert result.enrichment.custom == {"sentiment": None, "voicemail": False, "charges": 2}
    assert_contract(fake_chatdash)
    assert fake_chatdash.puts[0][3]["customAnalysis"] == {"voicemail": False, "charges": 2}


# -- named criteria ------------------------------------------------------------------------------


def test_each_named_criterion_gets_its_verdict_written_under_custom_analysis(
    env, fake_llm, fake_chatdash
):
    write_config(env, analysis={"success_criteria": CRITERIA})
    verdicts = {"resolved": "success", "accurate": "failure", "courteous": "unknown"}
    fake_llm.add(Reply.json(answer(evaluation=judged(verdicts, "failure"))))
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"]), "--json")
    assert r.exit_code == 0, r.stderr
    schema = schema_of(fake_llm.requests[0])
    assert_strict(schema)
    assert "custom_analysis" not in schema["properties"]  # criteria only: no fields
    criterion = schema["properties"]["evaluation"]["properties"]["criteria"]["properties"]
    assert list(criterion) == CRITERIA_NAMES
    assert criterion["courteous"]["properties"]["verdict"]["enum"] == [
        "success",
        "failure",
        "unknown",
    ]
    out = json.loads(r.stdout)
    evaluation = out["enrichment"]["evaluation"]
    assert evaluation["verdict"] == "failure" and evaluation["is_success"] is False
    assert [(c["name"], c["verdict"]) for c in evaluation["criteria"]] == list(verdicts.items())
    assert out["withheld"] == {}
    assert_contract(fake_chatdash)
    body = fake_chatdash.puts[0][3]
    assert body["evaluation"] == {
        "isSuccess": False,
        "reason": "The refund was made but a question was ignored.",
    }
    assert body["customAnalysis"] == {
        "criteria": {
            name: {"verdict": v, "rationale": f"The transcript shows it ({name})."}
            for name, v in verdicts.items()
        }
    }


def test_a_wrong_verdict_or_a_missing_criterion_is_reasked(fake_llm):
    wrong = judged({"resolved": "maybe", "accurate": "success", "courteous": "success"}, "success")
    missing = judged({"resolved": "success", "accurate": "success"}, "success")
    plain = answer()["evaluation"]  # is_success instead of the named criteria
    good = judged(dict.fromkeys(CRITERIA_NAMES, "success"), "success")
    fake_llm.add(*(Reply.json(answer(evaluation=e)) for e in (wrong, missing, plain, good)))
    config = make_config(fake_llm, llm={"max_reasks": 3}, analysis={"success_criteria": CRITERIA})
    with Enricher(config) as e:
        result = e.enrich(TRANSCRIPT)
    assert result.attempts == 4
    feedback = [r["messages"][-1]["content"] for r in fake_llm.requests[1:]]
    assert "evaluation.criteria.resolved.verdict: Input should be 'success'" in feedback[0]
    assert "evaluation.criteria.courteous: Field required" in feedback[1]
    assert "evaluation.is_success: Extra inputs are not permitted" in feedback[2]
    assert result.enrichment.evaluation.is_success is True


def test_an_unknown_overall_verdict_is_not_written_as_false(env, fake_llm, fake_chatdash):
    write_config(env, analysis={"success_criteria": CRITERIA, "fields": FIELDS})
    verdicts = dict.fromkeys(CRITERIA_NAMES, "unknown")
    fake_llm.add(Reply.json(with_custom(evaluation=judged(verdicts, "unknown"))))
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"]), "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["enrichment"]["evaluation"]["is_success"] is None
    assert out["enrichment"]["evaluation"]["verdict"] == "unknown"
    assert "evaluation" in out["withheld"] and "unknown" in out["withheld"]["evaluation"]
    assert_contract(fake_chatdash)
    body = fake_chatdash.puts[0][3]
    assert "evaluation" not in body and out["update"] == body
    assert body["customAnalysis"]["criteria"]["resolved"]["verdict"] == "unknown"
    assert body["customAnalysis"]["channel"] == "phone"  # the fields are still written


def test_an_unknown_verdict_is_written_as_false_when_configured(fake_llm, fake_chatdash):
    fake_llm.add(
        Reply.json(answer(evaluation=judged(dict.fromkeys(CRITERIA_NAMES, "unknown"), "unknown")))
    )
    config = make_config(
        fake_llm,
        fake_chatdash,
        analysis={"success_criteria": CRITERIA},
        write={"unknown_evaluation": "false", "criteria_key": "verdicts"},
    )
    with Enricher(config) as e:
        result = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    assert result.withheld == {}
    assert_contract(fake_chatdash)
    body = fake_chatdash.puts[0][3]
    assert body["evaluation"]["isSuccess"] is False
    assert list(body["customAnalysis"]) == ["verdicts"]  # write.criteria_key
    assert list(body["customAnalysis"]["verdicts"]) == CRITERIA_NAMES


def test_plain_criteria_keep_the_schema_and_the_body_unchanged(fake_llm, fake_chatdash):
    plain = ["The user's question was answered.", "The agent was polite."]
    fake_llm.add(Reply.json(answer()))
    config = make_config(fake_llm, fake_chatdash, analysis={"success_criteria": plain})
    with Enricher(config) as e:
        result = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    schema = schema_of(fake_llm.requests[0])
    assert list(schema["properties"]) == DEFAULT_KEYS
    assert list(schema["properties"]["evaluation"]["properties"]) == ["reason", "is_success"]
    system = fake_llm.requests[0]["messages"][0]["content"]
    assert all(f"- {c}" in system for c in plain) and "criterion by criterion" not in system
    assert result.enrichment.evaluation.criteria == [] and result.withheld == {}
    assert_contract(fake_chatdash)
    body = fake_chatdash.puts[0][3]
    assert set(body) == {"summary", "topic", "subtopic", "evaluation", "mistunderstoodQueries"}


def test_leaving_custom_analysis_out_of_write_fields_writes_none(fake_llm, fake_chatdash):
    fake_llm.add(
        Reply.json(
            with_custom(evaluation=judged(dict.fromkeys(CRITERIA_NAMES, "success"), "success"))
        )
    )
    fields = ["summary", "topic", "subtopic", "evaluation", "mistunderstoodQueries"]
    config = make_config(
        fake_llm,
        fake_chatdash,
        analysis={"fields": FIELDS, "success_criteria": CRITERIA},
        write={"fields": fields},
    )
    with Enricher(config) as e:
        result = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    assert result.enrichment.custom == CUSTOM  # still enriched...
    assert len(result.enrichment.evaluation.criteria) == 3
    assert_contract(fake_chatdash)
    assert set(fake_chatdash.puts[0][3]) == set(fields)  # ...not written


def test_changing_the_fields_asks_again_instead_of_reusing_the_ledger(fake_llm, tmp_path):
    ledger = {"path": str(tmp_path / "ledger.sqlite3")}
    first = make_config(fake_llm, ledger=ledger, analysis={"fields": FIELDS[:2]})
    with Enricher(first) as e:
        e.enrich(TRANSCRIPT, agent_id="agent-1", conversation_id="conv-1")
        again = e.enrich(TRANSCRIPT, agent_id="agent-1", conversation_id="conv-1")
    assert again.reused and len(fake_llm.requests) == 1
    assert list(again.enrichment.custom) == NAMES[:2]
    second = make_config(fake_llm, ledger=ledger, analysis={"fields": FIELDS})
    with Enricher(second) as e:
        result = e.enrich(TRANSCRIPT, agent_id="agent-1", conversation_id="conv-1")
    assert not result.reused and len(fake_llm.requests) == 2
    assert list(result.enrichment.custom) == NAMES


# -- configuration errors ------------------------------------------------------------------------


BAD_CONFIGS = [
    # (analysis, what stderr names)
    ({"fields": [{"name": "order count", "type": "string"}]}, "analysis.fields.0.name"),
    ({"fields": [{"name": "2fast", "type": "string"}]}, "analysis.fields.0.name"),
    (
        {"fields": [{"name": "a", "type": "string"}, {"name": "a", "type": "integer"}]},
        "analysis.fields: field listed twice: a",
    ),
    ({"fields": [{"name": "a", "type": "enum"}]}, "analysis.fields.0"),
    ({"fields": [{"name": "a", "type": "enum", "values": []}]}, "an enum needs its values"),
    ({"fields": [{"name": "a", "type": "date"}]}, "analysis.fields.0.type"),
    ({"fields": [{"name": "a", "type": "json"}]}, "type json needs a schema"),
    (
        {"fields": [{"name": "a", "type": "json", "schema": {"oneOf": [{"type": "string"}]}}]},
        "'oneOf' cannot be made strict",
    ),
    (
        {
            "fields": [
                {
                    "name": "a",
                    "type": "json",
                    "schema": {"type": "object", "additionalProperties": True, "properties": {}},
                }
            ]
        },
        "analysis.fields.0",
    ),
    (
        {
            "fields": [
                {
                    "name": "a",
                    "type": "json",
                    "schema": {
                        "type": "object",
                        "properties": {"b": {"type": "object", "additionalProperties": True}},
                    },
                }
            ]
        },
        "$.b",
    ),
    ({"fields": [{"name": "topic", "type": "string"}]}, "analysis.fields.0.name"),
    ({"presets": ["sentimint"]}, "analysis.presets: unknown preset(s) 'sentimint'"),
    (
        {"success_criteria": [{"name": "not ok", "description": "a"}]},
        "analysis.success_criteria: item 0: name: criterion name 'not ok' is not a plain",
    ),
    (
        {
            "fields": [{"name": "criterion_ok", "type": "string"}],
            "success_criteria": [{"name": "ok", "description": "fine"}],
        },
        "field 'criterion_ok' would collide with the column of criterion 'ok'",
    ),
    (
        {
            "success_criteria": [
                {"name": "ok", "description": "a"},
                {"name": "ok", "description": "b"},
            ]
        },
        "analysis.success_criteria",
    ),
    (
        {
            "fields": [{"name": "criteria", "type": "string"}],
            "success_criteria": [{"name": "ok", "description": "fine"}],
        },
        "write.criteria_key",
    ),
]


@pytest.mark.parametrize(("analysis", "named"), BAD_CONFIGS, ids=[c[1] for c in BAD_CONFIGS])
def test_a_bad_field_or_criterion_is_a_config_error_before_any_call(
    env, fake_llm, fake_chatdash, analysis, named
):
    write_config(env, analysis=analysis)
    r = run("run", "-a", "agent-1", "-C", "conv-1", "-t", str(env["transcript"]))
    assert r.exit_code == 2, r.stderr
    assert str(env["config"]) in r.stderr and named in r.stderr
    assert fake_llm.requests == [] and fake_chatdash.requests == []
    for command in (["schema"], ["render", "-t", str(env["transcript"])]):
        assert run(*command).exit_code == 2
    assert fake_llm.requests == [] and fake_chatdash.requests == []


def test_a_bad_field_is_a_config_error_in_the_library_too(fake_llm):
    from enrich.errors import ConfigError

    with pytest.raises(ConfigError, match="analysis.fields.0.type"):
        make_config(fake_llm, analysis={"fields": [{"name": "a", "type": "date"}]})
    assert fake_llm.requests == []


# -- batch outputs and the report ----------------------------------------------------------------


def rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "agent_id": "agent-1",
            "conversation_id": f"c{i}",
            "transcript": TRANSCRIPT + f"User: ref {i}\n",
        }
        for i in range(n)
    ]


def varied(request: dict[str, Any]) -> Reply:
    """The default valid answer, with field values and verdicts that depend on the row."""
    import re

    value = valid_answer(request)
    i = int(re.search(r"ref (\d+)", request["messages"][-1]["content"]).group(1))
    value["custom_analysis"] = {
        "order_number": f"44{i}",
        "refund_amount": [10.0, 20.0, None, 60.0][i % 4],
        "charges": i + 1,
        "refunded": i % 2 == 0,
        "channel": ["phone", "chat", "phone", "email"][i % 4],
        "products": ["boots", "socks"] if i % 2 else ["boots"],
        "refund": {"amount": float(i), "currency": "EUR", "reasons": []},
    }
    value["evaluation"] = judged(
        {
            "resolved": ["success", "failure", "unknown", "success"][i % 4],
            "accurate": "success",
            "courteous": "unknown",
        },
        ["success", "failure", "unknown", "success"][i % 4],
    )
    return Reply.json(value)


def test_batch_writes_one_column_per_field_and_report_summarises_them(env, fake_llm, fake_chatdash):
    pq = pytest.importorskip("pyarrow.parquet")
    write_config(env, analysis={"fields": FIELDS, "success_criteria": CRITERIA})
    fake_llm.responder = varied
    path = env["tmp"] / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows(4)))
    out_csv, out_parquet = env["tmp"] / "out.csv", env["tmp"] / "out.parquet"
    r = run("batch", str(path), "-o", str(out_csv))
    assert r.exit_code == 0, r.stderr
    assert len(fake_llm.requests) == 4
    assert_contract(fake_chatdash)
    bodies = {p[1].rsplit("/", 1)[1]: p[3] for p in fake_chatdash.puts}
    assert "refund_amount" not in bodies["c2"]["customAnalysis"]  # null: left out
    assert "evaluation" not in bodies["c2"]  # unknown: withheld
    assert bodies["c1"]["evaluation"]["isSuccess"] is False

    with out_csv.open(newline="") as f:
        table = list(csv.DictReader(f))
    header = list(table[0])
    assert header[header.index("misunderstood_queries") + 1 :][:11] == [
        "verdict",
        *(f"criterion_{n}" for n in CRITERIA_NAMES),
        *NAMES,
    ]
    by_id = {row["conversation_id"]: row for row in table}
    assert by_id["c1"]["products"] == "boots | socks"
    assert json.loads(by_id["c3"]["refund"]) == {"amount": 3.0, "currency": "EUR", "reasons": []}
    assert by_id["c2"]["refund_amount"] == "" and by_id["c2"]["is_success"] == ""
    assert by_id["c2"]["verdict"] == "unknown" and by_id["c1"]["criterion_resolved"] == "failure"

    # the same conversations again (--force: asked again, the same answers), into Parquet
    again = run("batch", str(path), "-o", str(out_parquet), "--force")
    assert again.exit_code == 0, again.stderr
    assert len(fake_llm.requests) == 8
    parquet = pq.read_table(out_parquet)
    types = {name: str(parquet.schema.field(name).type) for name in NAMES}
    assert types == {
        "order_number": "string",
        "refund_amount": "double",
        "charges": "int64",
        "refunded": "bool",
        "channel": "string",
        "products": "string",
        "refund": "string",
    }
    cols = {row["conversation_id"]: row for row in parquet.to_pylist()}
    assert cols["c2"]["refund_amount"] is None and cols["c3"]["refund_amount"] == 60.0
    assert cols["c0"]["refunded"] is True and cols["c3"]["charges"] == 4
    assert cols["c2"]["verdict"] == "unknown" and cols["c2"]["is_success"] is None

    reports = []
    for source in (str(out_csv), str(out_parquet), None):
        rep = run("report", *([source] if source else []), "--json")
        assert rep.exit_code == 0, rep.stderr
        reports.append(json.loads(rep.stdout))
    for rep in reports:
        fields = {f["name"]: f for f in rep["fields"]}
        assert list(fields) == NAMES
        assert fields["channel"]["counts"][0] == ["phone", 2]  # the most common first
        assert sorted(fields["channel"]["counts"]) == [["chat", 1], ["email", 1], ["phone", 2]]
        assert sorted(fields["refunded"]["counts"]) == [["false", 2], ["true", 2]]
        assert fields["refund_amount"]["answered"] == 3
        assert fields["refund_amount"]["mean"] == pytest.approx(30.0)
        assert fields["refund_amount"]["median"] == pytest.approx(20.0)
        assert fields["charges"]["mean"] == pytest.approx(2.5)
        assert fields["charges"]["median"] == pytest.approx(2.5)
        assert fields["products"]["counts"] == [["boots", 4], ["socks", 2]]
        criteria = {c["name"]: c for c in rep["criteria"]}
        assert criteria["resolved"] == {
            "name": "resolved",
            "success": 2,
            "failure": 1,
            "unknown": 1,
        }
        assert criteria["courteous"]["unknown"] == 4
        assert rep["success_rate"] == pytest.approx(2 / 3)  # the unknown one is not a failure
    text = run("report", str(out_parquet))
    assert text.exit_code == 0, text.stderr
    assert "your fields" in text.stdout and "mean 30, median 20" in text.stdout


def test_the_batch_api_validates_and_reasks_the_fields(fake_chatdash):
    with FakeLLM(batch_seconds=0.1) as llm:
        llm.add(Reply.json(with_custom({**CUSTOM, "charges": "two"})))  # one row is wrong
        config = make_config(
            llm, fake_chatdash, analysis={"fields": FIELDS, "presets": ["voicemail"]}
        )
        with Enricher(config) as e:
            results = list(e.enrich_many(rows(3), via="batch-api", poll_seconds=0.05))
        assert [r.status for r in results] == ["written"] * 3
        assert llm.count == 4  # three in the batch, one asked again directly
        assert (
            "custom_analysis.charges: Input should be a valid integer"
            in (llm.requests[-1]["messages"][-1]["content"])
        )
        (batch,) = llm.batches.values()
        line = json.loads(llm.files[batch["input_file_id"]]["content"].decode().splitlines()[0])
        sent = line["body"]["response_format"]["json_schema"]["schema"]
        assert list(sent["properties"]["custom_analysis"]["properties"]) == ["voicemail", *NAMES]
    assert_contract(fake_chatdash)
    assert all(set(p[3]["customAnalysis"]) == {"voicemail", *NAMES} for p in fake_chatdash.puts)


def test_a_call_over_the_budget_asks_for_the_fields_in_the_final_request(fake_llm, fake_chatdash):
    lines = [
        f"{'User' if i % 2 else 'Agent'}: marker{i} " + " ".join(f"w{i}x{j}" for j in range(40))
        for i in range(120)
    ]
    config = make_config(
        fake_llm,
        fake_chatdash,
        llm={"context_tokens": 4096, "max_tokens": 300},
        analysis={"fields": FIELDS, "success_criteria": CRITERIA},
    )
    with Enricher(config) as e:
        result = e.enrich_and_write("agent-1", "conv-1", "\n".join(lines))
    assert result.strategy == "map_reduce" and result.parts >= 3
    *parts, final = fake_llm.requests
    for request in parts:  # the notes on each part: no fields there
        assert "custom_analysis" not in schema_of(request)["properties"]
    schema = schema_of(final)
    assert schema["properties"]["custom_analysis"]["required"] == NAMES
    assert "## Your own fields" in final["messages"][0]["content"]
    assert list(result.enrichment.custom) == NAMES
    assert [c.name for c in result.enrichment.evaluation.criteria] == CRITERIA_NAMES
    assert_contract(fake_chatdash)
    assert set(fake_chatdash.puts[0][3]["customAnalysis"]) == {*NAMES, "criteria"}


def test_json_fields_of_any_shape_are_validated_and_written(fake_llm, fake_chatdash):
    """A json field need not be an object: a list of objects (with minItems, a minimum inside)
    and an anyOf; the errors name the place inside the value."""
    fields = [
        {
            "name": "lines",
            "type": "json",
            "required": False,
            "schema": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string"},
                        "qty": {"type": "integer", "minimum": 1},
                    },
                    "required": ["sku"],
                },
            },
        },
        {
            "name": "score",
            "type": "json",
            "schema": {"anyOf": [{"type": "integer"}, {"type": "string", "enum": ["n/a"]}]},
        },
    ]
    fake_llm.add(
        Reply.json(answer(custom_analysis={"lines": [{"sku": "boot", "qty": 0}], "score": "x"})),
        Reply.json(answer(custom_analysis={"lines": [], "score": "n/a"})),
        Reply.json(answer(custom_analysis={"lines": [{"sku": "boot", "qty": None}], "score": 7})),
    )
    config = make_config(fake_llm, fake_chatdash, analysis={"fields": fields})
    with Enricher(config) as e:
        result = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
    assert_strict(schema_of(fake_llm.requests[0]))
    first, second = (r["messages"][-1]["content"] for r in fake_llm.requests[1:])
    assert "custom_analysis.lines: [0].qty: at least 1" in first
    assert "custom_analysis.score: value: matches none of the allowed shapes" in first
    assert "custom_analysis.lines: value: at least 1 item(s)" in second
    assert result.enrichment.custom == {"lines": [{"sku": "boot", "qty": None}], "score": 7}
    assert_contract(fake_chatdash)
    assert fake_chatdash.puts[0][3]["customAnalysis"] == result.enrichment.custom


def test_a_reused_or_already_written_result_still_says_what_was_withheld(
    fake_llm, fake_chatdash, tmp_path
):
    """An unknown verdict left out of the write is reported on every path, the ledger's too."""
    config = make_config(
        fake_llm,
        fake_chatdash,
        analysis={"success_criteria": CRITERIA, "fields": FIELDS},
        ledger={"path": str(tmp_path / "l.sqlite3")},
    )
    verdicts = dict.fromkeys(CRITERIA_NAMES, "unknown")
    fake_llm.add(Reply.json(with_custom(evaluation=judged(verdicts, "unknown"))))
    with Enricher(config) as e:
        first = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)
        again = e.enrich_and_write("agent-1", "conv-1", TRANSCRIPT)  # reused, already written
        resumed = e.sync.run(e.awritten_result("agent-1", "conv-1"))  # a batch resuming
    assert len(fake_llm.requests) == 1 and len(fake_chatdash.puts) == 1
    assert "evaluation" in first.withheld
    assert again.reused and again.already_written and again.withheld == first.withheld
    assert resumed is not None and resumed.withheld == first.withheld
