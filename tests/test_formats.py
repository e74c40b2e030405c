"""The platform formats (enrich/formats/): ChatDash messages, Retell, Vapi and ElevenLabs payloads.

Each fixture in tests/fixtures/formats/ is a realistic payload of one shape, written from the
platforms' documented fields. For each: the format detected, the exact turns, the call metadata,
and that system prompts and tool plumbing never reach ``Transcript.dialogue``; then the errors for
broken variants of it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from enrich.errors import TranscriptError
from enrich.formats import formats, parse_transcript
from enrich.models.transcript import Role, Transcript

FORMATS_DIR = Path(__file__).parent / "fixtures" / "formats"

A, U, H, T = Role.AGENT, Role.USER, Role.HUMAN_AGENT, Role.TOOL

#: fixture file -> the format that must claim it
FIXTURES = {
    "chatdash-messages.json": "chatdash",
    "retell-call-analyzed.json": "retell",
    "retell-call-ended-tool-calls.json": "retell",
    "retell-call-plain.json": "retell",
    "retell-chat.json": "retell",
    "vapi-end-of-call-report.json": "vapi",
    "vapi-transcript-only.json": "vapi",
    "elevenlabs-webhook.json": "elevenlabs",
    "elevenlabs-conversation.json": "elevenlabs",
}


def load(name: str) -> Any:
    return json.loads((FORMATS_DIR / name).read_text())


def parse_file(name: str, **kwargs: Any) -> Transcript:
    return parse_transcript((FORMATS_DIR / name).read_bytes(), **kwargs)


def parse(value: Any, **kwargs: Any) -> Transcript:
    return parse_transcript(value, **kwargs)


def turns(t: Transcript) -> list[tuple[Role, str, float | None]]:
    return [(turn.role, turn.text, turn.start) for turn in t.turns]


def error(value: Any, **kwargs: Any) -> str:
    with pytest.raises(TranscriptError) as info:
        parse_transcript(value, **kwargs)
    return str(info.value)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def assert_dialogue_clean(t: Transcript, *secrets: str) -> None:
    """No TOOL turn in the dialogue, and none of ``secrets`` in what the model is shown."""
    assert all(turn.role != T for turn in t.dialogue)
    shown = t.as_text()
    for secret in secrets:
        assert secret not in shown
        assert not any(secret in turn.text for turn in t.dialogue)


# --------------------------------------------------------------------------------------------
# Registry and detection


def test_registry_order_and_descriptions():
    registered = formats()
    assert [f.name for f in registered] == [
        "text",
        "chat",
        "chatdash",
        "elevenlabs",
        "retell",
        "vapi",
    ]
    for fmt in registered:
        assert fmt.description and "\n" not in fmt.description
    assert {f.name: f.kind for f in registered if f.kind == "text"} == {"text": "text"}


def test_every_fixture_has_an_expectation():
    assert sorted(p.name for p in FORMATS_DIR.glob("*.json")) == sorted(FIXTURES)


@pytest.mark.parametrize(("name", "expected"), sorted(FIXTURES.items()))
def test_fixture_is_detected_by_exactly_one_format(name, expected):
    value = load(name)
    claimed = [f.name for f in formats() if f.kind == "json" and f.detect(value)]
    assert claimed == [expected]
    t = parse_file(name)
    assert t.format == expected
    assert t.metadata.platform == expected
    # bytes, text and the parsed value give the same transcript; so does forcing the format
    assert parse(value) == t
    assert parse(json.dumps(value)) == t
    assert parse(value, format=expected) == t


@pytest.mark.parametrize(
    "value",
    [
        [{"role": "user", "content": "hi"}],
        [{"role": "assistant", "content": "hello", "sender": "bot"}],
        {"conversation_id": "abc", "lines": []},  # the registry test's unknown shape
        {"message": "hello"},
        {"type": "status", "data": {"x": 1}},
        {"event": "call_started"},
        [],
        {},
    ],
)
def test_platform_formats_do_not_claim_other_shapes(value):
    platforms = {"chatdash", "retell", "vapi", "elevenlabs"}
    assert not [f.name for f in formats() if f.name in platforms and f.detect(value)]


def test_generic_chat_list_keeps_its_behaviour():
    t = parse([{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Hello"}])
    assert t.format == "chat"
    assert t.metadata.is_empty()


def test_forcing_a_platform_format_on_the_wrong_shape():
    assert error(load("chatdash-messages.json"), format="retell") == (
        "<input>: retell: expected a Retell call object or webhook, not a list"
    )
    assert error(load("retell-call-plain.json"), format="chatdash") == (
        "<input>: chatdash: expected a list of ChatDash messages, not an object"
    )
    assert error(load("retell-call-plain.json"), format="vapi") == (
        "<input>: vapi: neither an end-of-call-report (no type 'end-of-call-report') nor a call "
        "object"
    )
    assert error([1, 2], format="elevenlabs") == (
        "<input>: elevenlabs: expected an ElevenLabs webhook or conversation object, not a list"
    )
    assert "format 'vapi' expects JSON" in error("Agent: hi\nUser: hello", format="vapi")


# --------------------------------------------------------------------------------------------
# ChatDash messages


def test_chatdash_messages():
    t = parse_file("chatdash-messages.json", source="messages.json")
    assert t.format == "chatdash"
    assert turns(t) == [
        (A, "Hi! I'm the Lumen Bank assistant. How can I help?", 0.0),
        (U, "Someone used my card in another country. I need to block it.", 12.0),
        (A, "I'm sorry to hear that. I'm connecting you with a member of our fraud team.", 22.5),
        (
            H,
            "Hello, this is Priya from the fraud team. I've blocked the card; a new one is on "
            "its way.",
            120.0,
        ),
        (U, "Thank you so much!", 150.0),
    ]
    assert t.as_text().splitlines()[3].startswith("Human agent: Hello, this is Priya")
    # the image (no text) and the debug message (internal) are skipped; so is the "..." filler
    assert_dialogue_clean(t, "statement.png", "intent=card_fraud")
    assert t.metadata.model_dump(exclude_defaults=True) == {
        "platform": "chatdash",
        "started_at": utc(2024, 10, 1, 9, 0, 0),
        "ended_at": utc(2024, 10, 1, 9, 2, 30),
    }


def test_chatdash_start_is_relative_to_the_first_message_even_if_skipped():
    value = load("chatdash-messages.json")
    value.insert(0, {"sender": "user", "type": "image", "createdAt": "2024-10-01T08:59:50Z"})
    t = parse(value)
    assert [turn.start for turn in t.turns] == [10.0, 22.0, 32.5, 130.0, 160.0]


def test_chatdash_times_are_best_effort():
    value = load("chatdash-messages.json")
    value[0]["createdAt"] = "yesterday"
    value[1]["createdAt"] = {"$date": 1}
    value[4]["createdAt"] = 1727773222500  # epoch milliseconds are read too (09:00:22.5)
    del value[5]["createdAt"]
    t = parse(value)
    # the first time that parses (the image's, 09:00:20) is the origin now
    assert [turn.start for turn in t.turns] == [None, None, 2.5, None, 130.0]


def test_chatdash_without_times_and_with_plain_string_content():
    t = parse(
        [
            {"sender": "bot", "content": "Hello"},  # no type: text
            {"sender": "user", "type": "text", "content": {"text": "  hi there  "}},
            {"sender": "user", "type": "button", "content": {"text": "Talk to a person"}},
            {"sender": "user", "type": "file", "content": None},
        ]
    )
    assert turns(t) == [(A, "Hello", None), (U, "hi there", None), (U, "Talk to a person", None)]
    assert t.metadata.started_at is None


def test_chatdash_unknown_sender_is_left_out_with_a_warning(caplog):
    value = load("chatdash-messages.json")
    value[0]["sender"] = "system"
    with caplog.at_level("WARNING", logger="enrich.transcript"):
        t = parse(value)
    assert t.turns[0].role == U
    assert caplog.messages == ["chatdash: message 0: left out an entry of unknown role 'system'"]


@pytest.mark.parametrize(
    ("index", "change", "message"),
    [
        (1, {"content": {"text": 42}}, "message 1: content.text must be a string, not a number"),
        (
            1,
            {"content": ["hi"]},
            "message 1: content must be an object with a text, not a list",
        ),
        (2, {"sender": None}, "message 2: sender must be a string, not null"),
        (3, {"type": 7}, "message 3: type must be a string, not a number"),
    ],
)
def test_chatdash_wrong_types_name_the_message(index, change, message):
    value = load("chatdash-messages.json")
    value[index].update(change)
    assert error(value) == f"<input>: chatdash: {message}"


def test_chatdash_missing_sender_and_non_object_message():
    value = load("chatdash-messages.json")
    del value[6]["sender"]
    assert error(value) == "<input>: chatdash: message 6: no sender"
    value = load("chatdash-messages.json")
    value.append("Thanks")
    assert error(value) == "<input>: chatdash: message 8: expected an object, not a string"


def test_chatdash_without_a_user_turn_parses_with_no_user_turn():
    # no longer an error: the engine skips it (analysis.min_user_turns), the parser reads it
    value = [m for m in load("chatdash-messages.json") if m["sender"] != "user"]
    t = parse(value)
    assert t.format == "chatdash" and len(t.turns) == 3 and t.user_turns == []
    assert t.metadata.answered is None  # ChatDash messages do not say


# --------------------------------------------------------------------------------------------
# Retell


def test_retell_call_analyzed_uses_transcript_object():
    t = parse_file("retell-call-analyzed.json")
    assert t.format == "retell"
    assert turns(t) == [
        (A, "Thanks for calling Acme Shoes, this is Ava. How can I help?", 0.42),
        (U, "Hi, I was charged twice for my order.", 4.1),
        (A, "I'm sorry about that. Let me connect you with our billing team.", 8.05),
        (U, "Okay, thanks.", 14.2),  # the "..." before it is dropped
        (H, "Billing, this is Marco. I can see the duplicate charge and I'll refund it now.", 31.0),
        (U, "Great, thank you.", None),  # no words timed
    ]
    # merged with transcript_with_tool_calls (issue 15), which adds only an invocation here: no
    # tool result, so no TOOL turn; the times come from transcript_object's words
    assert all(turn.role != T for turn in t.turns)
    m = t.metadata
    assert m.platform == "retell"
    assert m.platform_id == "call_9f3c2a7d81b64e0c9a1d"
    assert m.agent_id == "agent_4b1e0c5f2a9d7e3b"
    assert (m.phone, m.phone_secondary) == ("+14155550123", "+14155559876")
    assert m.started_at == utc(2024, 5, 1, 10, 0, 0)
    assert m.ended_at == datetime(2024, 5, 1, 10, 1, 52, 500000, tzinfo=UTC)
    assert m.duration_seconds == 112.5
    assert m.ended_reason == "call_transfer"
    assert m.recording_url.endswith("/call_9f3c2a7d81b64e0c9a1d/recording.wav")
    assert m.cost is None
    assert m.extra == {"call_analysis": load("retell-call-analyzed.json")["call"]["call_analysis"]}


def test_retell_transcript_with_tool_calls():
    t = parse_file("retell-call-ended-tool-calls.json")
    assert turns(t) == [
        (
            A,
            "Hello, you've reached Northwind Pharmacy. Please enter your member number on the "
            "keypad.",
            0.3,
        ),
        (U, "[keypad: 4417]", None),  # four dtmf entries, one user turn
        (U, "I'd like to know if my refill is ready.", 12.4),
        (T, 'lookup_refill: {"status": "ready", "pickup_after": "14:00"}', None),
        (A, "Your refill is ready for pickup after 2 pm today.", 19.8),
        (U, "Perfect, thanks!", 23.5),
    ]
    # the tool result is context only; node transitions, the SMS and end_call are not there at all
    assert [turn.role for turn in t.dialogue] == [A, U, U, A, U]
    assert_dialogue_clean(t, "lookup_refill", 'ready"', "pickup_after")
    everything = "\n".join(turn.text for turn in t.turns)
    for plumbing in ("Refill status", "Greeting", "STOP", "end_call", "member_number"):
        assert plumbing not in everything
    m = t.metadata
    assert m.platform_id == "call_51ab7e0f9c2d4d8e8f60"
    assert m.duration_seconds == 95.0  # from the timestamps: there is no duration_ms
    assert m.ended_reason == "user_hangup"
    assert m.extra == {}  # call_ended: no call_analysis yet


def test_retell_bare_call_with_only_the_plain_transcript():
    t = parse_file("retell-call-plain.json")
    assert turns(t) == [
        (A, "Hi, this is Sam from Bright Dental. Are you calling to book a cleaning?", None),
        (U, "Yes, for next Tuesday if possible.", None),
        (A, "I have 10 am or 3 pm on Tuesday.", None),
        (U, "3 pm works.", None),
        (A, "You're booked for Tuesday at 3 pm. See you then!", None),
    ]
    assert t.format == "retell"
    assert t.metadata.platform_id == "call_0d6e2b9a4f1c4b7aa3e5"
    assert t.metadata.phone is None
    assert t.metadata.duration_seconds == 61.0


def test_retell_chat_message_with_tool_calls():
    t = parse_file("retell-chat.json")
    assert turns(t) == [
        (U, "Do you ship to Canada?", 2.0),
        (T, "shipping_policy: Canada: 5-7 business days, $12 flat", 4.0),
        (A, "Yes, we ship to Canada. Delivery takes 5 to 7 business days.", 5.0),
        (U, "How much does it cost?", 30.0),
        (A, "A flat $12 per order.", 31.5),
    ]
    assert_dialogue_clean(t, "shipping_policy", "VIP", "intro")
    m = t.metadata
    assert m.platform_id == "chat_7e1f0a9b8c2d4e6f"
    assert m.agent_id == "agent_chat_1a2b3c4d"
    assert m.duration_seconds == 120.0
    assert list(m.extra) == ["chat_analysis"]
    assert m.extra["chat_analysis"]["chat_summary"].startswith("The user asked about shipping")


def test_retell_chat_times_relative_to_the_first_message_without_start_timestamp():
    value = load("retell-chat.json")
    del value["chat"]["start_timestamp"]
    t = parse(value)
    assert [turn.start for turn in t.turns] == [0.0, 2.0, 3.0, 28.0, 29.5]
    assert t.metadata.started_at is None
    assert t.metadata.duration_seconds is None


def test_retell_bare_call_object_equals_the_webhook():
    value = load("retell-call-analyzed.json")
    assert parse(value["call"]).turns == parse(value).turns
    assert parse(value["call"]).metadata == parse(value).metadata


def test_retell_falls_back_when_earlier_sources_are_empty():
    value = load("retell-call-analyzed.json")
    value["call"]["transcript_object"] = []
    del value["call"]["transcript_with_tool_calls"]
    t = parse(value)  # the plain transcript
    assert [turn.text for turn in t.turns] == [
        "Thanks for calling Acme Shoes, this is Ava. How can I help?",
        "Hi, I was charged twice for my order.",
        "I'm sorry about that. Let me connect you with our billing team.",
        "Okay, thanks.",
    ]


def test_retell_unknown_entry_role_is_left_out_with_a_warning(caplog):
    value = load("retell-call-ended-tool-calls.json")
    value["call"]["transcript_with_tool_calls"].insert(1, {"role": "hold_music", "content": "♪"})
    with caplog.at_level("WARNING", logger="enrich.transcript"):
        t = parse(value)
    assert len(t.turns) == 6
    assert caplog.messages == [
        "retell: call.transcript_with_tool_calls[1]: left out an entry of unknown role 'hold_music'"
    ]


def test_retell_metadata_is_best_effort():
    value = load("retell-call-analyzed.json")
    call = value["call"]
    call.update(
        start_timestamp="soon",
        end_timestamp=10**30,
        duration_ms=True,
        from_number=14155550123,
        to_number=["+1"],
        call_analysis=None,
    )
    call["transcript_object"][0]["words"] = "Thanks"
    call["transcript_object"][1]["words"][0]["start"] = "4.1"
    t = parse(value)
    assert [turn.start for turn in t.turns][:3] == [None, None, 8.05]
    m = t.metadata
    assert (m.started_at, m.ended_at, m.duration_seconds) == (None, None, None)
    assert (m.phone, m.phone_secondary) == ("14155550123", None)
    assert m.extra == {}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda c: c["transcript_object"][3].update(content=42),
            "call.transcript_object[3]: content must be a string, not a number",
        ),
        (
            lambda c: c["transcript_object"].__setitem__(1, "User: hi"),
            "call.transcript_object[1]: expected an object, not a string",
        ),
        (
            lambda c: c["transcript_object"][0].pop("role"),
            "call.transcript_object[0]: no role",
        ),
        (
            lambda c: c["transcript_object"][0].update(role=["agent"]),
            "call.transcript_object[0]: role must be a string, not a list",
        ),
        (
            lambda c: c.update(transcript_object={"0": {}}),
            "call.transcript_object: expected a list, not an object",
        ),
        (
            lambda c: (
                [c.pop(k) for k in ("transcript_object", "transcript_with_tool_calls")]
                and c.update(transcript=17)
            ),
            "call.transcript: expected a string, not a number",
        ),
        (
            lambda c: (
                [c.pop(k) for k in ("transcript_object", "transcript_with_tool_calls")]
                and c.update(transcript="Hello? Is anyone there?")
            ),
            "call.transcript: no turn with words after the speaker labels",
        ),
        (
            lambda c: [
                c.pop(k) for k in ("transcript_object", "transcript_with_tool_calls", "transcript")
            ],
            "the call has no transcript (transcript_object, transcript_with_tool_calls and "
            "transcript are all missing)",
        ),
    ],
)
def test_retell_errors(mutate, message):
    value = load("retell-call-analyzed.json")
    mutate(value["call"])
    assert error(value, source="hook.json") == f"hook.json: retell: {message}"


def test_retell_more_errors():
    value = load("retell-call-ended-tool-calls.json")
    value["call"]["transcript_with_tool_calls"][1]["digit"] = None
    assert error(value) == (
        "<input>: retell: call.transcript_with_tool_calls[1]: digit must be a string, not null"
    )
    value = load("retell-call-ended-tool-calls.json")
    value["call"]["transcript_with_tool_calls"][8]["content"] = {"status": "ready"}
    assert error(value) == (
        "<input>: retell: call.transcript_with_tool_calls[8]: content must be a string, not an "
        "object"
    )
    assert error({"event": "call_started", "call": "call_1"}) == (
        "<input>: retell: call: expected an object, not a string"
    )
    assert error({"event": "call_started", "call": {"call_id": "c1"}}) == (
        "<input>: retell: the call has no transcript (transcript_object, "
        "transcript_with_tool_calls and transcript are all missing)"
    )
    assert error({"event": "chat_started", "chat": {"chat_id": "c1"}}) == (
        "<input>: retell: the chat has no transcript (message_with_tool_calls and transcript "
        "are all missing)"
    )
    bare = load("retell-call-plain.json")
    bare["transcript"] = ["Agent: hi"]
    assert error(bare) == "<input>: retell: transcript: expected a string, not a list"


def test_retell_agent_only_call_has_no_user_turn():
    # no longer an error: it parses, and the engine skips it (analysis.min_user_turns). Every
    # source says the same (issue 15: a source with no user turn falls back to the next one)
    value = load("retell-call-analyzed.json")
    call = value["call"]
    call["transcript_object"] = call["transcript_object"][:1]
    call["transcript_with_tool_calls"] = call["transcript_with_tool_calls"][:1]
    call["transcript"] = call["transcript"].splitlines()[0]
    t = parse(value)
    assert len(t.turns) == 1 and t.user_turns == []
    assert t.metadata.answered is True  # call_status ended, call_analysis.in_voicemail false


def test_retell_empty_transcript_fields_are_a_call_with_no_turns():
    # was "the call has no transcript (... all missing or empty)": present but empty now parses
    value = load("retell-call-analyzed.json")
    value["call"].update(transcript_object=[], transcript_with_tool_calls=None, transcript="")
    t = parse(value)
    assert t.turns == [] and t.metadata.platform_id == "call_9f3c2a7d81b64e0c9a1d"


def retell_not_connected() -> dict[str, Any]:
    """An outbound Retell call that was never answered, as its webhook sends it."""
    value = load("retell-call-analyzed.json")
    call = value["call"]
    for key in ("transcript", "transcript_object", "transcript_with_tool_calls", "call_analysis"):
        del call[key]
    call.update(
        call_status="not_connected",
        disconnection_reason="dial_no_answer",
        direction="outbound",
        duration_ms=0,
    )
    del call["recording_url"]
    return value


def test_retell_not_connected_call_is_not_answered_and_has_no_turns():
    t = parse(retell_not_connected())  # no transcript field at all: not refused, it says why
    assert t.format == "retell" and t.turns == []
    m = t.metadata
    assert m.answered is False and m.ended_reason == "dial_no_answer"
    assert m.platform_id == "call_9f3c2a7d81b64e0c9a1d"


@pytest.mark.parametrize(
    ("change", "answered"),
    [
        ({"disconnection_reason": "dial_busy"}, False),
        ({"disconnection_reason": "voicemail_reached"}, False),
        ({"disconnection_reason": "machine_detected"}, False),
        ({"call_status": "not_connected", "disconnection_reason": "marked_as_spam"}, False),
        ({"call_analysis": {"in_voicemail": True}}, False),
        ({"disconnection_reason": "user_hangup"}, True),
        ({"call_status": "registered", "disconnection_reason": None}, None),
        ({"call_status": ["ended"], "disconnection_reason": {"x": 1}}, None),  # wrong types
    ],
)
def test_retell_answered(change, answered):
    value = load("retell-call-analyzed.json")
    value["call"].update(change)
    assert parse(value).metadata.answered is answered
    assert parse(load("retell-chat.json")).metadata.answered is None  # a chat is no call


# --------------------------------------------------------------------------------------------
# Vapi


VAPI_TURNS = [
    (A, "Hi, this is Riley from Wellspring Clinic. How can I help you today?", 1.1),
    (U, "I need to move my appointment on Friday.", 6.0),
    (T, 'find_appointment: {"appointment": "Fri 09:30 with Dr. Patel"}', 9.8),
    (A, "I see your appointment with Dr. Patel on Friday at 9:30. When would you like to move "
     "it to?", 10.5),
    (U, "Um...", 16.0),
    (U, "Monday afternoon, please.", 17.0),
    (A, "Done: Monday at 2 pm with Dr. Patel. Anything else?", 22.0),
    (U, "No, that's all. Bye.", 26.0),
]  # fmt: skip


def test_vapi_end_of_call_report():
    t = parse_file("vapi-end-of-call-report.json")
    assert t.format == "vapi"
    assert turns(t) == VAPI_TURNS
    # the system prompt never appears; the tool result is context, not dialogue
    assert_dialogue_clean(t, "SECRET-PROMPT", "You are Riley", "find_appointment")
    assert not any("SECRET-PROMPT" in turn.text for turn in t.turns)
    m = t.metadata
    assert m.platform == "vapi"
    assert m.platform_id == "3f2a9c1e-7b4d-4e8a-9c21-5d6f7a8b9c0d"
    assert m.agent_id == "a9b8c7d6-1111-4222-8333-444455556666"
    assert (m.phone, m.phone_secondary) == ("+15125550147", "+15125550100")
    assert m.started_at == utc(2024, 9, 1, 0, 0, 2)
    assert m.ended_at == datetime(2024, 9, 1, 0, 1, 30, 500000, tzinfo=UTC)
    assert m.duration_seconds == 88.5
    assert m.ended_reason == "customer-ended-call"
    assert m.recording_url.endswith("-mono.wav") and "stereo" not in m.recording_url
    assert m.cost == 0.1834
    assert m.extra == {"analysis": load("vapi-end-of-call-report.json")["message"]["analysis"]}


def test_vapi_inner_message_bare_equals_the_envelope():
    value = load("vapi-end-of-call-report.json")
    assert parse(value["message"]) == parse(value)


def test_vapi_transcript_only():
    t = parse_file("vapi-transcript-only.json")
    assert turns(t) == [
        (A, "Good afternoon, Harbour Pizza. Pickup or delivery?", None),
        (U, "Pickup. One large margherita.", None),
        (A, "One large margherita for pickup, ready in 20 minutes.", None),
        (U, "Thanks!", None),
    ]
    m = t.metadata
    assert m.platform_id == "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"
    assert m.phone == "+61291234567" and m.phone_secondary is None
    assert m.recording_url == "https://storage.vapi.ai/9e8d7c6b-mono.wav"  # artifact's is null
    assert m.duration_seconds == 41.0  # from startedAt/endedAt
    assert m.extra == {"analysis": {"summary": "Pickup order for one large margherita."}}


def test_vapi_messages_win_over_the_transcript_and_empty_messages_fall_back():
    value = load("vapi-end-of-call-report.json")
    assert parse(value).turns[0].start == 1.1  # messages (timed), not the transcript text
    value["message"]["artifact"]["messages"] = []
    t = parse(value)
    assert [turn.text for turn in t.turns] == [text for role, text, _ in VAPI_TURNS if role != T]
    assert all(turn.start is None for turn in t.turns)


def test_vapi_get_call_object():
    report = load("vapi-end-of-call-report.json")["message"]
    call = {
        "id": "3f2a9c1e-7b4d-4e8a-9c21-5d6f7a8b9c0d",
        "orgId": "b1c2d3e4-0000-4000-8000-000000000001",
        "type": "inboundPhoneCall",
        "assistantId": "a9b8c7d6-1111-4222-8333-444455556666",
        "customer": {"number": "+15125550147"},
        "endedReason": "customer-ended-call",
        "cost": 0.18,
        "artifact": report["artifact"],
        "analysis": report["analysis"],
    }
    t = parse(call)
    assert t.format == "vapi"
    assert turns(t) == VAPI_TURNS
    assert t.metadata.platform_id == call["id"]
    assert t.metadata.agent_id == call["assistantId"]
    assert t.metadata.cost == 0.18


def test_vapi_tool_result_name_from_its_tool_call():
    value = load("vapi-end-of-call-report.json")
    del value["message"]["artifact"]["messages"][4]["name"]
    assert parse(value).turns[2].text.startswith("find_appointment: ")
    value["message"]["artifact"]["messages"][4]["result"] = {"appointment": None}
    assert parse(value).turns[2].text == 'find_appointment: {"appointment": null}'


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda m: m["artifact"]["messages"][2].update(message=["I need"]),
            "message.artifact.messages[2]: message must be a string, not a list",
        ),
        (
            lambda m: m["artifact"]["messages"].__setitem__(5, None),
            "message.artifact.messages[5]: expected an object, not null",
        ),
        (
            lambda m: m["artifact"]["messages"][1].update(role=1),
            "message.artifact.messages[1]: role must be a string, not a number",
        ),
        (
            lambda m: m["artifact"].update(messages="AI: hi"),
            "message.artifact.messages: expected a list, not a string",
        ),
        (
            lambda m: m.update(artifact=["x"]),
            "message.artifact: expected an object, not a list",
        ),
        (
            lambda m: m["artifact"].update(messages=None, transcript=3),
            "message.artifact.transcript: expected a string, not a number",
        ),
        (
            lambda m: m.update(artifact={"recordingUrl": "https://x"}),
            "the call has no transcript (artifact.messages and artifact.transcript are both "
            "missing)",
        ),
        (
            lambda m: m.update(type="status-update"),
            "message.type: a 'status-update' message, not an end-of-call-report: only the "
            "end-of-call report carries the transcript",
        ),
    ],
)
def test_vapi_errors(mutate, message):
    value = load("vapi-end-of-call-report.json")
    mutate(value["message"])
    assert error(value) == f"<input>: vapi: {message}"


def test_vapi_unknown_role_left_out_with_a_warning(caplog):
    value = load("vapi-end-of-call-report.json")
    value["message"]["artifact"]["messages"][6]["role"] = "voicemail"
    with caplog.at_level("WARNING", logger="enrich.transcript"):
        t = parse(value)
    assert "Um..." not in [turn.text for turn in t.turns]
    assert caplog.messages == [
        "vapi: message.artifact.messages[6]: left out an entry of unknown role 'voicemail'"
    ]


def test_vapi_system_only_call_has_no_user_turn():
    # no longer an error: it parses, and the engine skips it (analysis.min_user_turns). The
    # transcript says the same (issue 15: messages with no user turn fall back to the transcript)
    value = load("vapi-end-of-call-report.json")
    artifact = value["message"]["artifact"]
    artifact["messages"] = artifact["messages"][:2]
    artifact["transcript"] = artifact["transcript"].splitlines()[0]
    t = parse(value)
    assert len(t.turns) == 1 and t.user_turns == []
    assert t.metadata.answered is None  # customer-ended-call: Vapi does not say


@pytest.mark.parametrize(
    "reason", ["customer-did-not-answer", "customer-busy", "voicemail"], ids=str
)
def test_vapi_unanswered_call_has_no_turns_and_says_so(reason):
    value = load("vapi-end-of-call-report.json")
    message = value["message"]
    message["endedReason"] = reason
    del message["artifact"]  # nothing was recorded: no messages, no transcript at all
    t = parse(value)
    assert t.turns == [] and t.metadata.answered is False and t.metadata.ended_reason == reason
    message["artifact"] = {"messages": [], "transcript": ""}
    message["endedReason"] = "customer-ended-call"
    t = parse(value)  # present but empty: a call with no turns, answered or not unknown
    assert t.turns == [] and t.metadata.answered is None


# --------------------------------------------------------------------------------------------
# ElevenLabs


def test_elevenlabs_webhook():
    t = parse_file("elevenlabs-webhook.json")
    assert t.format == "elevenlabs"
    assert turns(t) == [
        (A, "Hello, this is Nova from City Energy. How can I help?", 0.0),
        (U, "My power's been out since this morning at 12 Elm Street.", 5.0),
        (T, 'check_outage: {"outage": true, "eta": "16:00"}', 9.0),
        (A, "There's a known outage on your street; power should be back by 4 pm.", 10.0),
        (U, "Okay. Will I get a credit on my bill?", 19.0),  # the "..." before it is dropped
        (A, "Outages over 12 hours get an automatic credit. Anything else?", 25.0),
    ]
    # the end_call tool turn (null message, no result) is dropped
    assert_dialogue_clean(t, "check_outage", "end_call", "...")
    m = t.metadata
    assert m.platform == "elevenlabs"
    assert m.platform_id == "conv_01jxyz0123456789abcdefg"
    assert m.agent_id == "agent_01jabcdeffghjkmnpqrstv"
    assert (m.phone, m.phone_secondary) == ("+13125550199", "+13125550100")
    assert m.started_at == utc(2024, 10, 1, 0, 0, 0)
    assert m.ended_at == utc(2024, 10, 1, 0, 0, 58)
    assert m.duration_seconds == 58.0
    assert m.ended_reason == "Call ended by remote party"
    assert m.cost is None  # ElevenLabs' cost is in credits, not money
    data = load("elevenlabs-webhook.json")["data"]
    assert m.extra == {"analysis": data["analysis"], "main_language": "en"}


def test_elevenlabs_bare_conversation():
    t = parse_file("elevenlabs-conversation.json")
    assert turns(t) == [
        (A, "Hi! I'm the Trailhead Outfitters assistant. What are you looking for?", 0.0),
        (U, "Do you have waterproof hiking boots in size 46?", 4.0),
        (A, "We have two models in size 46: the Ridge GTX and the Summit Pro.", 8.0),
        (U, "Which one is lighter?", 15.0),
        (A, "The Ridge GTX, at 520 grams per boot.", 18.0),
    ]
    m = t.metadata
    assert m.platform_id == "conv_01jwebconvo11111111111111"
    assert (m.phone, m.phone_secondary) == (None, None)  # a web conversation
    assert m.duration_seconds == 31.0
    assert m.ended_reason == "end_call tool was called."


def test_elevenlabs_webhook_and_bare_data_agree():
    value = load("elevenlabs-webhook.json")
    assert parse(value["data"]) == parse(value)
    wrapped = {
        "type": "post_call_transcription",
        "event_timestamp": 1,
        "data": load("elevenlabs-conversation.json"),
    }
    assert parse(wrapped) == parse_file("elevenlabs-conversation.json")


def test_elevenlabs_message_and_tool_results_on_one_entry():
    value = load("elevenlabs-conversation.json")
    value["transcript"][2]["tool_results"] = [
        {"tool_name": "stock", "result_value": {"ridge_gtx": 3}, "is_error": False}
    ]
    t = parse(value)
    assert turns(t)[2:4] == [
        (A, "We have two models in size 46: the Ridge GTX and the Summit Pro.", 8.0),
        (T, 'stock: {"ridge_gtx": 3}', 8.0),
    ]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["transcript"][1].update(message=5),
            "data.transcript[1]: message must be a string, not a number",
        ),
        (
            lambda d: d["transcript"][1].update(role=None),
            "data.transcript[1]: role must be a string, not null",
        ),
        (
            lambda d: d["transcript"].__setitem__(0, ["agent", "Hello"]),
            "data.transcript[0]: expected an object, not a list",
        ),
        (
            lambda d: d["transcript"][2].update(tool_results={"tool_name": "x"}),
            "data.transcript[2].tool_results: expected a list, not an object",
        ),
        (
            lambda d: d["transcript"][2].update(tool_results=["ok"]),
            "data.transcript[2].tool_results[0]: expected an object, not a string",
        ),
        (
            lambda d: d.update(transcript="Agent: hi"),
            "data.transcript: expected a list, not a string",
        ),
        (
            lambda d: d.pop("transcript"),
            "the conversation has no transcript (data.transcript is missing)",
        ),
    ],
)
def test_elevenlabs_errors(mutate, message):
    value = load("elevenlabs-webhook.json")
    mutate(value["data"])
    assert error(value) == f"<input>: elevenlabs: {message}"


def test_elevenlabs_other_webhooks_hold_no_transcript():
    audio = {
        "type": "post_call_audio",
        "event_timestamp": 1727740900,
        "data": {"agent_id": "a", "conversation_id": "c", "full_audio": "UklGRg=="},
    }
    assert error(audio) == (
        "<input>: elevenlabs: a post_call_audio webhook holds no transcript (only "
        "post_call_transcription does)"
    )
    # a call that never connected: no longer refused, a call with no turns, not answered
    failure = {
        "type": "call_initiation_failure",
        "event_timestamp": 1727740900,
        "data": {
            "agent_id": "a",
            "conversation_id": "c",
            "failure_reason": "busy",
            "metadata": {"type": "twilio", "body": {"CallStatus": "busy"}},
        },
    }
    t = parse(failure)
    assert t.format == "elevenlabs" and t.turns == []
    m = t.metadata
    assert (m.answered, m.ended_reason, m.platform_id, m.agent_id) == (False, "busy", "c", "a")
    assert error({"conversation_id": "c", "agent_id": "a"}) == (
        "<input>: elevenlabs: the conversation has no transcript (transcript is missing)"
    )


def test_elevenlabs_silent_caller_and_voicemail():
    value = load("elevenlabs-webhook.json")
    data = value["data"]
    greeting = data["transcript"][0]
    assert greeting["role"] == "agent"
    silent = {"role": "user", "message": "...", "time_in_call_secs": 4}  # filler: no words
    data["transcript"] = [greeting, silent]
    t = parse(value)  # the caller never spoke: parsed, for the engine to skip
    assert [turn.role for turn in t.turns] == [A] and t.metadata.answered is None
    data["transcript"] = []
    assert parse(value).turns == []
    data["metadata"]["termination_reason"] = "Voicemail detected by the voicemail_detection tool"
    assert parse(value).metadata.answered is False


def test_elevenlabs_unknown_role_left_out_with_a_warning(caplog):
    value = load("elevenlabs-conversation.json")
    value["transcript"][0]["role"] = "narrator"
    with caplog.at_level("WARNING", logger="enrich.transcript"):
        t = parse(value)
    assert len(t.turns) == 4
    assert caplog.messages == [
        "elevenlabs: transcript[0]: left out an entry of unknown role 'narrator'"
    ]


# --------------------------------------------------------------------------------------------
# Issue 15: both Retell arrays merged, the older envelope, falling back to the next source, a
# transcript on one line, ElevenLabs' transcript entries alone (published payloads, in
# tests/test_published.py, show each of these on real data)


def retell_both_arrays() -> dict[str, Any]:
    """The tool-call fixture with a transcript_object beside it, as real calls carry both."""
    value = load("retell-call-ended-tool-calls.json")
    call = value["call"]
    call["transcript_object"] = [
        {key: entry[key] for key in ("role", "content", "words")}
        for entry in call["transcript_with_tool_calls"]
        if entry["role"] in ("agent", "user")
    ]
    return value


def test_retell_woven_array_splits_an_utterance_around_a_tool_call():
    value = retell_both_arrays()
    call = value["call"]
    # transcript_object has the agent's answer as one utterance; the woven array splits it
    call["transcript_object"][2]["content"] = (
        "Let me check. Your refill is ready for pickup after 2 pm today."
    )
    call["transcript_object"][2]["words"] = [{"word": "Let", "start": 13.0, "end": 13.2}]
    woven = call["transcript_with_tool_calls"]
    woven.insert(7, {"role": "agent", "content": "Let me check.", "words": []})
    woven[10]["words"] = []
    assert turns(parse(value)) == [
        (A, "Hello, you've reached Northwind Pharmacy. Please enter your member number on the "
         "keypad.", 0.3),
        (U, "[keypad: 4417]", None),
        (U, "I'd like to know if my refill is ready.", 12.4),
        (A, "Let me check.", 13.0),  # its time from transcript_object's utterance
        (T, 'lookup_refill: {"status": "ready", "pickup_after": "14:00"}', None),
        (A, "Your refill is ready for pickup after 2 pm today.", None),  # not counted twice
        (U, "Perfect, thanks!", 23.5),
    ]  # fmt: skip


def test_retell_utterances_only_transcript_object_has_stay_in_their_place():
    value = retell_both_arrays()
    call = value["call"]
    woven = call["transcript_with_tool_calls"]
    del woven[6]  # the woven array lacks the user's question
    t = parse(value)
    # from transcript_object, just before the next utterance both arrays have
    assert [turn.text for turn in t.turns][1:5] == [
        "[keypad: 4417]",
        'lookup_refill: {"status": "ready", "pickup_after": "14:00"}',
        "I'd like to know if my refill is ready.",
        "Your refill is ready for pickup after 2 pm today.",
    ]
    assert [turn.start for turn in t.turns][3] == 12.4
    assert len(t.turns) == 6


def test_retell_both_arrays_read_like_the_woven_one_when_they_agree():
    value = retell_both_arrays()
    assert parse(value).turns == parse_file("retell-call-ended-tool-calls.json").turns


def test_retell_scrubbed_woven_array_when_the_unscrubbed_one_is_not_kept():
    value = retell_both_arrays()
    call = value["call"]
    call["scrubbed_transcript_with_tool_calls"] = call.pop("transcript_with_tool_calls")
    assert parse(value).turns == parse_file("retell-call-ended-tool-calls.json").turns
    del call["transcript_object"]
    assert parse(value).turns == parse_file("retell-call-ended-tool-calls.json").turns


def test_retell_errors_in_either_array_name_it():
    value = retell_both_arrays()
    value["call"]["transcript_object"][1]["content"] = 7
    assert error(value) == (
        "<input>: retell: call.transcript_object[1]: content must be a string, not a number"
    )
    value = retell_both_arrays()
    value["call"]["transcript_with_tool_calls"][2]["digit"] = []
    assert error(value) == (
        "<input>: retell: call.transcript_with_tool_calls[2]: digit must be a string, not a list"
    )


def test_retell_older_data_envelope():
    value = load("retell-call-analyzed.json")
    older = {"event": "call_analyzed", "data": value["call"]}
    assert parse(older) == parse(value)
    older["data"]["transcript_object"][0]["role"] = 3
    assert error(older) == (
        "<input>: retell: data.transcript_object[0]: role must be a string, not a number"
    )
    chat = load("retell-chat.json")
    assert parse({"event_type": "chat_analyzed", "data": chat["chat"]}) == parse(chat)


@pytest.mark.parametrize(
    "value",
    [
        {"event": "call.ended", "data": {"call_id": "c1", "transcript": "Agent: hi"}},  # not Retell
        {"event": "call_ended", "data": {"id": "c1", "transcript": "Agent: hi"}},  # no call_id
        {"event": 5, "data": {"call_id": "c1"}},
        {"event": "call_ended", "data": ["call_id"]},
    ],
)
def test_retell_does_not_claim_other_data_envelopes(value):
    assert not [f.name for f in formats() if f.kind == "json" and f.detect(value)]


def test_retell_falls_back_when_the_arrays_have_no_user_turn():
    value = load("retell-call-analyzed.json")
    call = value["call"]
    call["transcript_object"] = call["transcript_object"][:1]
    call["transcript_with_tool_calls"] = call["transcript_with_tool_calls"][:1]
    t = parse(value)  # the plain transcript has the user's turns
    assert [turn.role for turn in t.turns] == [A, U, A, U]


def test_retell_a_fallback_source_that_cannot_be_read_is_passed_over(caplog):
    value = load("retell-call-analyzed.json")
    call = value["call"]
    call["transcript_object"] = call["transcript_object"][:1]
    del call["transcript_with_tool_calls"]
    call["transcript"] = "Hello? Is anyone there?"
    with caplog.at_level("WARNING", logger="enrich.transcript"):
        t = parse(value)
    assert turns(t) == [(A, "Thanks for calling Acme Shoes, this is Ava. How can I help?", 0.42)]
    assert caplog.messages == [
        "retell: call.transcript: no turn with words after the speaker labels (passed over)"
    ]


def test_retell_epoch_seconds_are_read_as_seconds():
    value = load("retell-call-plain.json")
    value.update(start_timestamp=1717228800, end_timestamp=1717228861)
    m = parse(value).metadata
    assert (m.started_at, m.duration_seconds) == (utc(2024, 6, 1, 8, 0, 0), 61.0)
    value.update(start_timestamp=1717228800000, end_timestamp=1717228861500)
    assert parse(value).metadata.started_at == utc(2024, 6, 1, 8, 0, 0)


def test_vapi_messages_without_a_user_turn_fall_back_to_the_transcript():
    value = load("vapi-end-of-call-report.json")
    artifact = value["message"]["artifact"]
    artifact["messages"] = artifact["messages"][:2]  # the system prompt and the greeting
    t = parse(value)
    assert [turn.text for turn in t.turns] == [text for role, text, _ in VAPI_TURNS if role != T]
    assert_dialogue_clean(t, "SECRET-PROMPT")


def test_vapi_times_come_from_the_epoch_when_seconds_from_start_restarts():
    value = load("vapi-end-of-call-report.json")
    messages = value["message"]["artifact"]["messages"]
    # a squad's next assistant counts secondsFromStart from its own start
    for message in messages[6:]:
        message["secondsFromStart"] -= 15.0
    starts = [turn.start for turn in parse(value).turns]
    assert starts == [start for _, _, start in VAPI_TURNS]
    messages[2]["secondsFromStart"] += 1.5  # a small disagreement is the payload's own time
    assert parse(value).turns[1].start == 7.5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "AI: How can I help? User: What's the weather? ...",
            [(A, "How can I help?"), (U, "What's the weather? ...")],
        ),
        (
            "agent: Your name? user: Jim. agent: Thanks! user: Bye…",
            [(A, "Your name?"), (U, "Jim."), (A, "Thanks!"), (U, "Bye…")],
        ),
        (  # a lower-case label in the middle of a sentence is text
            "User: I told the agent: no refunds. Agent: I see.",
            [(U, "I told the agent: no refunds."), (A, "I see.")],
        ),
        (  # a capitalised label needs no full stop before it; a quote may close the sentence
            'Agent: Say "yes." User: yes Agent: Done',
            [(A, 'Say "yes."'), (U, "yes"), (A, "Done")],
        ),
        (
            "[00:01] AI: Hi. [00:04] User: Hello.\n",
            [(A, "Hi."), (U, "Hello.")],
        ),
    ],
)
def test_one_line_transcript_is_split_on_its_labels(text, expected):
    t = parse(text)
    assert t.format == "text"
    assert [(turn.role, turn.text) for turn in t.turns] == expected


def test_one_line_split_keeps_times_and_only_applies_to_one_line():
    assert [turn.start for turn in parse("[00:01] AI: Hi. [00:04] User: Hello.").turns] == [
        1.0,
        4.0,
    ]
    two_lines = parse("Agent: Hi. User: this stays the agent's\nUser: Hello.")
    assert [turn.text for turn in two_lines.turns] == ["Hi. User: this stays the agent's", "Hello."]


def test_elevenlabs_transcript_entries_alone():
    entries = load("elevenlabs-webhook.json")["data"]["transcript"]
    t = parse(entries)
    assert t.format == "elevenlabs" and t.metadata.model_dump(exclude_defaults=True) == {
        "platform": "elevenlabs"
    }
    assert t.turns == parse_file("elevenlabs-webhook.json").turns
    simulation = {"simulated_conversation": entries, "analysis": {"call_successful": "success"}}
    t = parse(simulation)
    assert t.turns == parse(entries).turns
    assert t.metadata.extra == {"analysis": {"call_successful": "success"}}
    entries[1]["message"] = 5
    assert error(entries) == "<input>: elevenlabs: [1]: message must be a string, not a number"


@pytest.mark.parametrize(
    "value",
    [
        [{"role": "bot", "message": "hi", "secondsFromStart": 1}],  # Vapi's messages
        [{"role": "agent", "message": "hi"}, {"role": "user", "message": "hello"}],  # no times
        [{"role": "agent", "message": "hi", "time_in_call_secs": 0}, "hello"],
        {"simulated_conversation": [{"role": "agent"}]},
    ],
)
def test_elevenlabs_does_not_claim_lists_that_are_not_its_entries(value):
    assert "elevenlabs" not in [f.name for f in formats() if f.kind == "json" and f.detect(value)]
