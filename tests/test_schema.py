"""The output schema, validation, grounding and the PUT body model against the contract."""

from __future__ import annotations

import typing

import pytest
from conftest import answer, put_schema
from pydantic import ValidationError

from enrich.config import Topic
from enrich.models.enrichment import Enrichment, MisunderstoodQuery, ground_queries
from enrich.models.spec import AnalysisSpec, build_update
from enrich.models.update import ConversationUpdate
from enrich.testing import validate_openapi


def output_schema(taxonomy=()):
    """The JSON schema the model is asked to follow, for a spec with ``taxonomy``."""
    return AnalysisSpec(taxonomy=tuple(taxonomy)).json_schema()


TAXONOMY = [
    Topic(name="Billing", subtopics=["Refund", "Invoice"]),
    Topic(name="Product", subtopics=["Availability"]),
]


def _objects(node):
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield node
        for v in node.values():
            yield from _objects(v)
    elif isinstance(node, list):
        for v in node:
            yield from _objects(v)


@pytest.mark.parametrize("taxonomy", [[], TAXONOMY])
def test_output_schema_is_strict_mode_compatible(taxonomy):
    schema = output_schema(taxonomy)
    objects = list(_objects(schema))
    assert len(objects) == 3  # the answer, a query, the evaluation
    for obj in objects:
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])
    text = str(schema)
    assert "$ref" not in text and "$defs" not in text and "minLength" not in text
    # reason before verdict: the model argues, then decides
    assert list(schema["properties"]["evaluation"]["properties"]) == ["reason", "is_success"]


def test_topic_without_subtopics_leaves_subtopic_free():
    schema = output_schema([Topic(name="Billing", subtopics=["Refund"]), Topic(name="Other")])
    assert schema["properties"]["topic"]["enum"] == ["Billing", "Other"]
    assert "enum" not in schema["properties"]["subtopic"]
    ok = Enrichment.model_validate(
        answer(topic="Other", subtopic="Anything"),
        context={"taxonomy": [Topic(name="Billing", subtopics=["Refund"]), Topic(name="Other")]},
    )
    assert ok.subtopic == "Anything"


def test_validation_needs_every_field_and_no_more():
    with pytest.raises(ValidationError, match="summary"):
        Enrichment.model_validate({k: v for k, v in answer().items() if k != "summary"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        Enrichment.model_validate(answer(sentiment="happy"))
    with pytest.raises(ValidationError, match="at least 1 character"):
        Enrichment.model_validate(answer(summary="   "))


def test_taxonomy_validation_needs_context():
    value = answer(topic="Shipping", subtopic="Late")
    assert Enrichment.model_validate(value).topic == "Shipping"  # no taxonomy: free text
    with pytest.raises(ValidationError, match="not in the taxonomy"):
        Enrichment.model_validate(value, context={"taxonomy": TAXONOMY})
    with pytest.raises(ValidationError, match="does not belong to topic 'Product'"):
        Enrichment.model_validate(
            answer(topic="Product", subtopic="Refund"), context={"taxonomy": TAXONOMY}
        )


# -- grounding -----------------------------------------------------------------------------------

USER_TURNS = [
    "Hi, I was charged twice for my order and I'd like a refund for the extra charge.",
    "Also, do you sell waterproof hiking boots in size 46?",
    "Yes.",
]


@pytest.mark.parametrize(
    "question",
    [
        "do you sell waterproof hiking boots in size 46?",  # verbatim
        "DO YOU SELL WATERPROOF HIKING BOOTS, IN SIZE 46",  # case and punctuation
        "Do you sell waterproof hiking boot in size 46?",  # a small wording change
        "I'd like a refund for the extra charge",  # a stretch of a longer turn
        "Id like a refund for the extra charges",  # apostrophe and plural
        "yes",
    ],
)
def test_grounded_queries_are_kept(question):
    kept, dropped = ground_queries([MisunderstoodQuery(question=question)], USER_TURNS)
    assert [q.question for q in kept] == [question] and dropped == []


@pytest.mark.parametrize(
    "question",
    [
        "Can I pay with bitcoin?",
        "Where is my parcel?",
        "I want to cancel my subscription and get a refund",
        "do you sell shoes for kids in red and blue with laces",
    ],
)
def test_invented_queries_are_dropped(question):
    kept, dropped = ground_queries([MisunderstoodQuery(question=question)], USER_TURNS)
    assert kept == [] and dropped == [question]


# -- the PUT body --------------------------------------------------------------------------------


def test_update_model_has_exactly_the_contract_fields_with_matching_types():
    spec = put_schema()["properties"]
    model_fields = {(f.alias or name): f for name, f in ConversationUpdate.model_fields.items()}
    assert set(model_fields) == set(spec)
    assert "mistunderstoodQueries" in model_fields  # the API's own spelling

    py_type = {"string": str, "boolean": bool, "number": float, "object": dict, "array": list}
    for name, prop in spec.items():
        annotation = model_fields[name].annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        origin = typing.get_origin(args[0]) or args[0]
        if prop.get("format") == "date-time":
            assert args[0].__name__ == "datetime", name
        elif name == "status":
            assert set(typing.get_args(args[0])) == set(prop["enum"])
        elif name == "evaluation":
            fields = {(f.alias or n) for n, f in args[0].model_fields.items()}
            assert fields == set(prop["properties"])
        elif prop["type"] == "object":
            assert origin is dict, name
        else:
            assert origin is py_type[prop["type"]], name


def test_full_update_body_passes_the_contract():
    update = ConversationUpdate(
        platformId="call_1",
        phone="+15550100",
        duration=2.5,
        endedAt="2026-11-24T10:00:00Z",
        status="human",
        countryCode="DE",
        summary="s",
        topic="t",
        subtopic="u",
        evaluation={"isSuccess": False, "reason": "r"},
        mistunderstoodQueries=[{"question": "q"}],
        customAnalysis={"x": 1},
        metadata={"k": "v"},
    )
    body = update.body()
    assert validate_openapi(body, put_schema()) == []
    assert body["endedAt"] == "2026-11-24T10:00:00Z"
    assert "read" not in body and None not in body.values()


def test_update_rejects_what_the_contract_rejects():
    with pytest.raises(ValidationError):
        ConversationUpdate(status="closed")
    with pytest.raises(ValidationError):
        ConversationUpdate(unknownField=1)
    with pytest.raises(ValidationError):
        ConversationUpdate(countryCode="Germany")


def test_contract_validator_catches_violations():
    schema = put_schema()
    assert validate_openapi({"topic": 3}, schema) == ["body.topic: expected a string"]
    assert validate_openapi({"status": "closed"}, schema)
    assert validate_openapi({"mistunderstoodQueries": [{"q": "x"}]}, schema) == [
        "body.mistunderstoodQueries[0].q: unknown field"
    ]
    # the dictionary spelling is not the API's
    assert validate_openapi({"misunderstoodQueries": []}, schema) == [
        "body.misunderstoodQueries: unknown field"
    ]
    assert validate_openapi({"summary": None}, schema) == ["body.summary: null is not allowed"]


def test_build_update_narrows_to_the_chosen_fields():
    enrichment = Enrichment.model_validate(answer())
    assert set(build_update(enrichment).body()) == {
        "summary",
        "topic",
        "subtopic",
        "evaluation",
        "mistunderstoodQueries",
    }
    assert build_update(enrichment, ["evaluation"]).body() == {
        "evaluation": {"isSuccess": True, "reason": answer()["evaluation"]["reason"]}
    }
    with pytest.raises(ValueError, match="not enriched fields: read"):
        build_update(enrichment, ["read"])
