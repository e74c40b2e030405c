"""Payloads the platforms and open-source receivers published (tests/fixtures/published/, each
one's source in its SOURCES.md), read as the platform meant them.

For each: the one format that claims it, every turn in order with its role and time, that tool
plumbing and system prompts stay out of the dialogue, and the call's metadata; then the same
dialogue in what ``enrich render`` shows the model. Then what the issue that brought them
(issue 15) asked of them: Retell's keypad entries and tool results when a call carries both
arrays, the older ``{"event": ..., "data": {...}}`` envelope, the fallback when the first source
has no user turn, a transcript on one line, and calls with nothing to analyse reaching the skip.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from enrich.cli import app
from enrich.formats import formats, parse_transcript
from enrich.models.transcript import ROLE_LABELS, Role, Transcript

PUBLISHED = Path(__file__).parent / "fixtures" / "published"
FORMATS_DIR = Path(__file__).parent / "fixtures" / "formats"

A, U, H, T = Role.AGENT, Role.USER, Role.HUMAN_AGENT, Role.TOOL

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def load(name: str) -> Any:
    return json.loads((PUBLISHED / name).read_text(encoding="utf-8"))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@dataclass
class Expected:
    format: str
    turns: list[tuple[Role, str, float | None]]
    metadata: dict[str, Any]
    extra: list[str] = field(default_factory=list)
    #: words of tool plumbing and system prompts that must never reach the dialogue
    hidden: tuple[str, ...] = ()


RETELL_DOCS_DIALOGUE = [
    (A, "hi how are you doing?", None),
    (U, "Doing pretty well. How are you?", None),
    (A, "That's great to hear! I'm doing well too, thanks! What's up?", None),
    (U, "I don't have anything in particular.", None),
    (A, "Got it, just checking in!", None),
    (U, "Alright. See you.", None),
    (A, "have a nice day", None),
]

#: The gro-dashboard call in Tamil: its turns are checked against the payload's own entries
GRO = "elevenlabs-gro-dashboard-language-switch.json"

EXPECTED: dict[str, Expected] = {
    # -- Retell ---------------------------------------------------------------------------------
    "retell-create-web-call-docs.json": Expected(
        "retell",
        # the one-entry arrays have no user turn: the seven-line transcript is read instead
        RETELL_DOCS_DIALOGUE,
        {
            "platform": "retell",
            "platform_id": "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6",
            "agent_id": "oBeDLoLOeuAbiuaMFXRtDOLriTJ5tSxD",
            "started_at": datetime(2023, 12, 23, 3, 33, 27, 333000, tzinfo=UTC),
            "ended_at": datetime(2023, 12, 23, 3, 33, 48, 855000, tzinfo=UTC),
            "duration_seconds": 10.0,  # duration_ms, not the timestamps' difference
            "ended_reason": "agent_hangup",
            "recording_url": "https://retellai.s3.us-west-2.amazonaws.com/"
            "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6/recording.wav",
            # call_status "registered" (the example of a call just created): answered unknown
        },
        ["call_analysis"],
        ("eyJhbGciOiJIUzI1NiJ9", "Test node", "public_log"),
    ),
    "retell-get-chat-docs.json": Expected(
        "retell",
        RETELL_DOCS_DIALOGUE,  # the one-entry message_with_tool_calls, then the transcript
        {
            "platform": "retell",
            "platform_id": "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6",
            "agent_id": "oBeDLoLOeuAbiuaMFXRtDOLriTJ5tSxD",
            "started_at": datetime(2023, 12, 23, 3, 33, 27, 333000, tzinfo=UTC),
            "ended_at": datetime(2023, 12, 23, 3, 33, 48, 855000, tzinfo=UTC),
            "duration_seconds": 21.522,
        },
        ["chat_analysis"],
        ("Test node",),
    ),
    "retell-dashboard-call-ended.json": Expected(
        "retell",
        [
            (A, "Thank you for calling Downtown Dental, this is Rover. How can I help you today?",
             None),
            (U, "Hi, my name is Sarah Mitchell. I need to schedule a cleaning.", None),
            (A, "Of course! We have Tuesday at 9 AM available. Does that work for you?", None),
            (U, "That sounds perfect, thank you!", None),
            (A, "Great, you're all set for Tuesday at 9 AM.", None),
        ],
        {
            "platform": "retell",
            "platform_id": "fixture_call_001",
            "agent_id": "agent_rover_main",
            "phone": "+16025550142",
            "phone_secondary": "+16025550101",
            "started_at": utc(2025, 5, 23, 11, 33, 20),
            "ended_at": utc(2025, 5, 23, 11, 37, 20),
            "duration_seconds": 240.0,
            "answered": True,  # call_status ended, not in voicemail
            # recording_url "" is no recording
        },
        ["call_analysis"],
        ("appointment_scheduled", "Rover (AI)"),
    ),
    "retell-pc-retell-webhook-test-payload.json": Expected(
        "retell",
        # one line, "agent: ... user: ...": split on its labels
        [
            (A, "Thank you for calling ProCircular Incident Response hotline. This is your AI "
             "assistant. I'm here to help you report a cybersecurity incident. Can you please "
             "tell me your name?", None),
            (U, "Yes, my name is Jim Sherlock.", None),
            (A, "Thank you, Jim. And what company are you calling from?", None),
            (U, "Cyberpave.", None),
            (A, "Thank you. Can you please describe the incident you're experiencing?", None),
            (U, "All of my machines are locked up with malware. It says I need to pay Bitcoin. "
             "Everything is locked up internally and external system, including our payroll "
             "system.", None),
            (A, "I understand. That sounds like a ransomware attack. Do you have Cyber Liability "
             "Insurance?", None),
            (U, "Yes, we do.", None),
            (A, "Great. Can you tell me the name of your insurance provider?", None),
            (U, "Cowbell Cyber.", None),
            (A, "Thank you. And do you currently have an active Incident Response contract with "
             "ProCircular?", None),
            (U, "Yes, we do.", None),
            (A, "Perfect. I have all the information I need. Our Incident Response Team will be "
             "notified immediately and will contact you shortly at the phone number you're "
             "calling from. Is there anything else you'd like to add?", None),
            (U, "No, that's all.", None),
            (A, "Okay. Thank you for calling ProCircular. Our team will be in touch very soon.",
             None),
            (U, "Okay. Thank you.", None),
            (A, "You're welcome. Goodbye.", None),
        ],
        {
            "platform": "retell",
            "platform_id": "584f904a8cda77eb733224",
            "agent_id": "agent_dc74e30b4",
            # start/end_timestamp given in seconds (1760013120), not Retell's milliseconds
            "started_at": utc(2025, 10, 9, 12, 32, 0),
            "ended_at": utc(2025, 10, 9, 12, 34, 16),
            "duration_seconds": 136.0,
        },
        [],
        ("incident_liability_insurance_status", "jsherlock@"),
    ),
    # -- Vapi -----------------------------------------------------------------------------------
    "vapi-events-docs.json": Expected(
        "vapi",
        [(A, "How can I help?", None), (U, "What's the weather?", None)],
        {"platform": "vapi", "ended_reason": "hangup"},
    ),
    "vapi-events-docs-2024.json": Expected(
        "vapi",
        [(A, "How can I help?", None), (U, "What's the weather?", None)],
        {
            "platform": "vapi",
            "ended_reason": "hangup",
            "recording_url": "https://vapi-public.s3.amazonaws.com/recordings/1234.wav",
        },
        [],
        ("The user picked up the phone",),  # Vapi's summary is not dialogue
    ),
    "vapi-vapi4k-squad-transfer.json": Expected(
        "vapi",
        [
            (A, "Hi there. I'm assistant 1.", 1.52),
            (U, "Transfer what's the weather in Danville, California?", 6.34),
            (T, "getWeatherByCity_001: The weather in Danville, California is windy", 10.48),
            (A, "1 moment. The weather in Danville, California is windy.", 10.639999),
            (U, "Transfer to assistant 2.", 16.1),
            (T, "transferCall: Success.", 18.83),
            # the second assistant's secondsFromStart counts from 0 again: its epoch time wins
            (A, "Hi there. I'm assistant 2.", 20.296),
            (U, "What's the weather in San Francisco, California?", 23.146),
            (A, "This will just take a sec.", 27.366),
            (T, "getWeatherByCity_002: The weather in San Francisco, California is rainy",
             27.438),
            (A, "The weather in San Francisco, California is rainy,", 29.606),
            (U, "Great.", 33.586),
        ],
        {
            "platform": "vapi",
            "platform_id": "b1223960-1b4d-4585-91b8-a69b0f57ec2f",
            "phone": "+14566836490",
            "phone_secondary": "+19254207621",
            "ended_reason": "customer-ended-call",
            "recording_url": "https://auth.vapi.ai/storage/v1/object/public/recordings/"
            "b2d2c06d-bca1-4804-8b68-cb1b6fd7debd-1722115443568-3b56a504-192d-4ec0-a034-"
            "a055c60e0277-mono.wav",
        },
        ["analysis"],
        ("You are an assistant.", "getWeatherByCity", "transferCall", "assistant2\""),
    ),
    "vapi-vapi4k-eo-care.json": Expected(
        "vapi",
        [
            (A, "Welcome to EO Care. My name is Julie. I'd like to collect some information from "
             "you today. That alright?", 1.8399999),
            (U, "Sure.", 7.72),
            (A, "Great. Let's start with your full name. Could you please tell me your first and "
             "last name?", 10.62),
            (U, "Matthew Ambrose.", 16.08),
            (A, "Thank you. Let me confirm. First name, m m a t t h e w. Last name, e m b r o s "
             "e. Is that correct?", 21.279999),
            (U, "Correct.", 31.11),
            (A, "This will just take a sec.", 34.25),
            # the saveName tool's result is "{}": no words, no turn
        ],
        {
            "platform": "vapi",
            "platform_id": "ef71627d-9673-40f8-8491-31aa3fe7a540",
            "phone": "+19256836490",
            "phone_secondary": "+19254207621",
            "ended_reason": "customer-ended-call",
            "recording_url": "https://auth.vapi.ai/storage/v1/object/public/recordings/"
            "ef71627d-9673-40f8-8491-31aa3fe7a540-1721022327982-33555c60-b397-4ae7-bc04-"
            "ed2eac84e23d-mono.wav",
        },
        ["analysis"],
        ("[Identity]", "friendly and helpful voice", "DemoNameService", "firstName"),
    ),
    # -- ElevenLabs -----------------------------------------------------------------------------
    "elevenlabs-post-call-webhook-docs.json": Expected(
        "elevenlabs",
        [
            (A, "Hey there angelo. How are you?", 0.0),
            (U, "Hey, can you tell me, like, a fun fact about 11 Labs?", 2.0),
            (A, "I do not have access to fun facts about Eleven Labs. However, I can share some "
             "general information about the company. Eleven Labs is an AI voice technology "
             "platform that specializes in voice cloning and text-to-speech...", 9.0),
        ],
        {
            "platform": "elevenlabs",
            "platform_id": "abc",
            "agent_id": "xyz",
            "started_at": utc(2025, 2, 14, 12, 48, 17),
            "ended_at": utc(2025, 2, 14, 12, 48, 39),
            "duration_seconds": 22.0,
            # termination_reason "" is no reason; a web conversation has no phone numbers
        },
        ["analysis"],
        ("convai_llm_service_ttfb",),
    ),
    "elevenlabs-simulate-conversation-docs.json": Expected(
        "elevenlabs",
        [
            (U, "Maybe a little. I'll think about it, but I'm still not convinced it's the right "
             "move.", 0.0),
            (A, "I understand. If you want to explore more at your own pace, I can direct you to "
             "our documentation, which has guides and API references. Would you like me to send "
             "you a link?", 0.0),
            (U, "I guess it wouldn't hurt to take a look. Go ahead and send it over.", 0.0),
            (T, "redirectToDocs: Tool Called.", 0.0),
            (A, "Okay, I've sent you a link to the introduction to our API reference.  It "
             "provides a good starting point for understanding our different tools and how they "
             "can be integrated. Let me know if you have any questions as you explore it.", 0.0),
        ],
        {"platform": "elevenlabs"},
        [],
        ("redirectToDocs", "api-reference/introduction", "Tool Called"),
    ),
    GRO: Expected(
        "elevenlabs",
        [],  # built from the payload below: 15 spoken turns and the language tool's result
        {
            "platform": "elevenlabs",
            "platform_id": "conv_01jwzz3ygceg7v0te0rewn2nzj",
            "agent_id": "agent_01jwwmjdzzecpbk0j5jd1348cx",
            "phone": "+9190000 00000",  # the published number, redacted (SOURCES.md)
            "phone_secondary": "+19122998165",
            "started_at": utc(2025, 6, 5, 11, 55, 22),
            "ended_at": utc(2025, 6, 5, 11, 58, 1),
            "duration_seconds": 159.0,
            "ended_reason": "Client disconnected",
        },
        ["analysis", "main_language"],
        ("language_detection", "User explicitly requested", "toolu_vrtx"),
    ),
}  # fmt: skip


def gro_turns() -> list[tuple[Role, str, float | None]]:
    """The language-switching call: each entry with a message, in order, and the one tool result
    (language_detection) where it came; the tool call without a result is no turn."""
    entries = load(GRO)["transcript"]
    expected: list[tuple[Role, str, float | None]] = []
    for entry in entries:
        role = {"agent": A, "user": U}[entry["role"]]
        if entry["message"] is not None:
            expected.append((role, entry["message"].strip(), float(entry["time_in_call_secs"])))
        for result in entry["tool_results"]:
            expected.append((T, f"{result['tool_name']}: {result['result_value']}", 29.0))
    return expected


def expected_turns(name: str) -> list[tuple[Role, str, float | None]]:
    return gro_turns() if name == GRO else EXPECTED[name].turns


def turns(t: Transcript) -> list[tuple[Role, str, float | None]]:
    return [(turn.role, turn.text, turn.start) for turn in t.turns]


def parse_file(name: str) -> Transcript:
    return parse_transcript((PUBLISHED / name).read_bytes(), source=name)


# --------------------------------------------------------------------------------------------
# Every published fixture, as the platform meant it


def test_every_published_fixture_has_an_expectation_and_a_source():
    names = sorted(p.name for p in PUBLISHED.glob("*.json"))
    assert names == sorted(EXPECTED)
    sources = (PUBLISHED / "SOURCES.md").read_text(encoding="utf-8")
    for name in names:
        assert f"`{name}`" in sources, f"{name} has no source in SOURCES.md"
    # every platform from more than one independent source
    for platform, publishers in {
        "retell": ("docs.retellai.com", "bsparkma/", "jrsherlock/"),
        "vapi": ("VapiAI/docs", "vapi4k"),
        "elevenlabs": ("elevenlabs/elevenlabs-docs", "deepak-chowdry/"),
    }.items():
        assert {p for p in publishers if p in sources} == set(publishers), platform


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_published_fixture_is_read_as_the_platform_meant_it(name):
    expected = EXPECTED[name]
    value = load(name)
    claimed = [f.name for f in formats() if f.kind == "json" and f.detect(value)]
    assert claimed == [expected.format]

    t = parse_file(name)
    assert t.format == expected.format
    assert turns(t) == expected_turns(name)
    # bytes, the parsed value and the format forced agree
    assert parse_transcript(value) == t
    assert parse_transcript(value, format=expected.format) == t

    # tool plumbing and system prompts never reach the dialogue
    assert all(turn.role != T for turn in t.dialogue)
    shown = t.as_text()
    for word in expected.hidden:
        assert word not in shown, word

    metadata = t.metadata.model_dump(exclude_defaults=True)
    assert sorted(metadata.pop("extra", {})) == sorted(expected.extra)
    assert metadata == expected.metadata


def test_the_language_switch_is_read_in_both_languages():
    t = parse_file(GRO)
    spoken = [turn.text for turn in t.dialogue]
    assert spoken[3] == "Can you repeat this in Tamil? Can you speak in Tamil?"
    assert spoken[4].startswith("நான் ஏஞ்சலோ, CPGRAMS")  # the agent goes on in Tamil
    assert spoken[5] == "My Aadhaar number is 112244668899"
    assert len(t.user_turns) == 7
    # the switch itself is tool context, never dialogue; the interrupted turns are what was said
    tool = [turn for turn in t.turns if turn.role == T]
    assert [turn.text.split(":")[0] for turn in tool] == ["language_detection"]
    assert '"language": "ta"' in tool[0].text
    assert t.metadata.extra["main_language"] == "en"
    entries = load(GRO)["transcript"]
    cut = next(e for e in entries if e["interrupted"] and e["message"])
    assert cut["message"] in spoken and cut["original_message"] not in spoken


# --------------------------------------------------------------------------------------------
# The same, in what `enrich render` shows the model


LINE = re.compile(r"^(?P<label>Agent|User|Human agent)(?: \[[0-9:]+\])?: (?P<text>.*)$")


def rendered_dialogue(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    content = messages[-1]["content"]
    block = content.split("<transcript>", 1)[1].split("</transcript>", 1)[0]
    lines = [line for line in block.splitlines() if line.strip()]
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    return [(m["label"], m["text"]) for m in parsed]  # type: ignore[index]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_render_shows_the_dialogue_and_nothing_else(env, fake_llm, fake_chatdash, name):
    r = run("render", "-t", str(PUBLISHED / name), "--json")
    assert r.exit_code == 0, r.stderr
    messages = json.loads(r.stdout)
    expected = [(ROLE_LABELS[role], text) for role, text, _ in expected_turns(name) if role != T]
    assert rendered_dialogue(messages) == expected
    everything = "\n".join(m["content"] for m in messages)
    for word in EXPECTED[name].hidden:
        assert word not in everything, word
    for role, text, _ in expected_turns(name):
        if role == T:
            assert text not in everything  # tool results are context, not shown by default
    assert fake_llm.requests == [] and fake_chatdash.requests == []


# --------------------------------------------------------------------------------------------
# Retell: both arrays, keypad entries and tool results; the older envelope


def retell_analyzed_with_keypad() -> dict[str, Any]:
    """A call_analyzed webhook carrying both arrays, as every real call does, the caller's keypad
    entries and a tool result in transcript_with_tool_calls only (Retell's SDK documents the
    entries: {"role": "dtmf", "digit": "4"}, {"role": "tool_call_result", ...})."""
    value = json.loads((FORMATS_DIR / "retell-call-analyzed.json").read_text())
    woven = value["call"]["transcript_with_tool_calls"]
    assert [e["role"] for e in woven] == ["agent", "user", "tool_call_invocation", "agent"]
    woven[2:2] = [
        {"role": "dtmf", "digit": "4"},
        {"role": "dtmf", "digit": "4"},
        {"role": "dtmf", "digit": "1"},
        {"role": "dtmf", "digit": "7"},
    ]
    woven.insert(
        7,
        {
            "role": "tool_call_result",
            "tool_call_id": "tc_transfer_1",
            "content": "transferred to billing",
            "successful": True,
        },
    )
    return value


def test_retell_call_with_both_arrays_keeps_keypad_entries_and_tool_results():
    t = parse_transcript(retell_analyzed_with_keypad())
    assert turns(t) == [
        (A, "Thanks for calling Acme Shoes, this is Ava. How can I help?", 0.42),
        (U, "Hi, I was charged twice for my order.", 4.1),
        (U, "[keypad: 4417]", None),
        (T, "transfer_to_billing: transferred to billing", None),
        (A, "I'm sorry about that. Let me connect you with our billing team.", 8.05),
        # transcript_with_tool_calls ends here; transcript_object goes on
        (U, "Okay, thanks.", 14.2),
        (H, "Billing, this is Marco. I can see the duplicate charge and I'll refund it now.", 31.0),
        (U, "Great, thank you.", None),
    ]  # fmt: skip


def test_render_of_a_retell_call_analyzed_with_both_arrays_shows_the_keypad_turn(
    env, fake_llm, fake_chatdash
):
    path = env["tmp"] / "call_analyzed.json"
    path.write_text(json.dumps(retell_analyzed_with_keypad()))
    r = run("render", "-t", str(path), "--json")
    assert r.exit_code == 0, r.stderr
    dialogue = rendered_dialogue(json.loads(r.stdout))
    assert dialogue[:3] == [
        ("Agent", "Thanks for calling Acme Shoes, this is Ava. How can I help?"),
        ("User", "Hi, I was charged twice for my order."),
        ("User", "[keypad: 4417]"),
    ]
    assert ("Human agent", dialogue[-2][1]) == dialogue[-2]
    assert "transfer_to_billing" not in r.stdout


@pytest.mark.parametrize(
    "name", ["retell-create-web-call-docs.json", "retell-dashboard-call-ended.json"]
)
@pytest.mark.parametrize("event", ["call_started", "call_ended", "call_analyzed"])
def test_retell_older_data_envelope_is_read_like_the_call_envelope(name, event):
    value = load(name)
    call = value.get("call", value)  # the bare call, or the call of a webhook
    older = {"event": event, "data": call}
    assert [f.name for f in formats() if f.kind == "json" and f.detect(older)] == ["retell"]
    assert parse_transcript(older) == parse_transcript({"event": event, "call": call})
    assert parse_transcript(older) == parse_transcript(call)


def test_retell_older_envelope_of_a_chat():
    chat = load("retell-get-chat-docs.json")
    older = {"event": "chat_analyzed", "data": chat}
    t = parse_transcript(older)
    assert t == parse_transcript(chat)
    assert list(t.metadata.extra) == ["chat_analysis"]


def test_render_reads_the_older_envelope(env, fake_llm, fake_chatdash):
    path = env["tmp"] / "archived.json"
    path.write_text(
        json.dumps(
            {"event": "call_ended", "data": load("retell-dashboard-call-ended.json")["call"]}
        )
    )
    r = run("render", "-t", str(path), "--json")
    assert r.exit_code == 0, r.stderr
    assert rendered_dialogue(json.loads(r.stdout))[1] == (
        "User",
        "Hi, my name is Sarah Mitchell. I need to schedule a cleaning.",
    )


# --------------------------------------------------------------------------------------------
# The first source with no user turn falls back to the next; a transcript on one line


def test_first_source_without_a_user_turn_falls_back_to_the_next():
    call = load("retell-create-web-call-docs.json")
    assert [e["role"] for e in call["transcript_object"]] == ["agent"]
    assert len(parse_file("retell-create-web-call-docs.json").user_turns) == 3
    chat = load("retell-get-chat-docs.json")
    assert [e["role"] for e in chat["message_with_tool_calls"]] == ["agent"]
    assert len(parse_file("retell-get-chat-docs.json").user_turns) == 3
    # without the plain transcript, the one agent turn is what there is (the engine skips it)
    del call["transcript"]
    t = parse_transcript(call)
    assert turns(t) == [(A, "hi how are you doing?", 0.7)] and t.user_turns == []


def test_vapi_one_line_transcript_is_split_on_its_labels():
    report = load("vapi-events-docs.json")
    assert "\n" not in report["message"]["artifact"]["transcript"]
    del report["message"]["artifact"]["messages"]  # the transcript alone
    t = parse_transcript(report)
    assert turns(t) == [(A, "How can I help?", None), (U, "What's the weather? ...", None)]
    older = load("vapi-events-docs-2024.json")
    del older["message"]["messages"]
    assert turns(parse_transcript(older)) == turns(t)


# --------------------------------------------------------------------------------------------
# Calls with nothing to analyse: skipped, exit 0, no LLM call


def retell_not_connected_from_docs() -> dict[str, Any]:
    """The docs' call as a not_connected call's webhook sends it: empty transcript fields."""
    call = load("retell-create-web-call-docs.json")
    call.update(
        call_type="phone_call",
        call_status="not_connected",
        disconnection_reason="dial_no_answer",
        duration_ms=0,
        transcript="",
        transcript_object=[],
        transcript_with_tool_calls=[],
        scrubbed_transcript_with_tool_calls=[],
    )
    return {"event": "call_ended", "call": call}


def elevenlabs_silent_from_docs() -> dict[str, Any]:
    """The docs' webhook of a caller who stayed silent after the greeting ("..." transcribed)."""
    value = load("elevenlabs-post-call-webhook-docs.json")
    greeting, said = value["data"]["transcript"][:2]
    value["data"]["transcript"] = [greeting, {**said, "message": "..."}]
    return value


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (retell_not_connected_from_docs, "the call was not answered: dial_no_answer"),
        (elevenlabs_silent_from_docs, "no LLM call"),
    ],
    ids=["retell-not-connected", "elevenlabs-silent"],
)
def test_calls_with_nothing_to_analyse_are_skipped(env, fake_llm, fake_chatdash, payload, why):
    path = env["tmp"] / "call.json"
    path.write_text(json.dumps(payload()))
    assert parse_transcript(path.read_bytes()).user_turns == []
    r = run("run", "-t", str(path), "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("enrich: skipped: ") and why in line
    assert fake_llm.requests == [] and fake_chatdash.requests == []
