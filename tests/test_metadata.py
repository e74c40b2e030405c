"""Platform metadata is written back only when asked, under the PUT's own field names."""

from __future__ import annotations

from conftest import answer, make_config, put_schema

from enrich import CallMetadata, Enricher, Transcript, Turn
from enrich.models.enrichment import Enrichment
from enrich.models.spec import build_update
from enrich.testing import Reply, validate_openapi

META = CallMetadata(
    platform="retell",
    platform_id="call_8f2",
    phone="+14155550100",
    phone_secondary="+14155550199",
    duration_seconds=135,
    ended_reason="user_hangup",
    recording_url="https://example.com/rec.wav",
    cost=0.42,
)
CALL = Transcript(
    turns=[Turn(role="agent", text="Hello!"), Turn(role="user", text="I need a refund.")],
    format="retell",
    metadata=META,
)


def test_build_update_maps_metadata_to_the_put_fields():
    body = build_update(Enrichment.model_validate(answer()), ["topic"], META).body()
    assert body == {
        "topic": "Billing",
        "platformId": "call_8f2",
        "phone": "+14155550100",
        "phoneSecondary": "+14155550199",
        "duration": 2.25,  # minutes
        "endedReason": "user_hangup",
        "url": "https://example.com/rec.wav",
    }
    assert validate_openapi(body, put_schema()) == []


def test_missing_metadata_fields_are_not_sent():
    body = build_update(
        Enrichment.model_validate(answer()), ["topic"], CallMetadata(platform_id="c1")
    ).body()
    assert body == {"topic": "Billing", "platformId": "c1"}


def test_metadata_is_not_written_unless_asked(fake_llm, fake_chatdash):
    fake_llm.add(Reply.json(answer()), Reply.json(answer()))
    with Enricher(make_config(fake_llm, fake_chatdash)) as e:
        result = e.enrich_and_write("agent-1", "conv-1", CALL)
    assert "platformId" not in fake_chatdash.puts[0][3]
    assert result.metadata.platform_id == "call_8f2"  # kept for whoever wants it

    config = make_config(fake_llm, fake_chatdash, write={"metadata": True})
    with Enricher(config) as e:
        e.enrich_and_write("agent-1", "conv-1", CALL)
    body = fake_chatdash.puts[1][3]
    assert body["platformId"] == "call_8f2" and body["duration"] == 2.25
    assert fake_chatdash.violations == []
