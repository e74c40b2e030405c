"""Round trip of the 600 labeled dialogues through every format.

Each dialogue of tests/fixtures/datasets/*/sample.jsonl (real, human-written: see the README
there) is rendered into each format by a small renderer below, serialised, parsed back with
format detection, and must give the same turns: the same roles and texts, after the dropping and
trimming every format does (turns with no words are dropped, texts are stripped; the text formats
also drop blank lines and trim each line of a turn spanning lines). Where a format carries times,
they come back too. Tool plumbing and system prompts that the renderers add never reach the
dialogue.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enrich.formats import parse_transcript
from enrich.models.transcript import Role, Transcript
from enrich.models.transcript import has_words as _has_words

DATASETS = Path(__file__).parent / "fixtures" / "datasets"
DATASET_NAMES = ["star", "uss_multiwoz", "tweetsumm"]
ROLES = {"agent": Role.AGENT, "user": Role.USER}
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
SYSTEM_PROMPT = "You are a helpful agent. INTERNAL-ONLY instructions."


def load_dialogues(name: str) -> list[dict[str, Any]]:
    lines = (DATASETS / name / "sample.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_the_datasets_are_all_there():
    counts = {name: len(load_dialogues(name)) for name in DATASET_NAMES}
    assert counts == {"star": 200, "uss_multiwoz": 200, "tweetsumm": 200}
    assert (DATASETS / "README.md").read_text().count("license") >= 1


def at(i: int) -> float:
    """The start (seconds) the renderers give the i-th turn."""
    return i * 2.5


# --------------------------------------------------------------------------------------------
# What the parser must give back


def json_text(text: str) -> str:
    return text.strip()


def lines_text(text: str) -> str:
    """The text formats read a turn's lines trimmed, without the blank ones."""
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def expected(
    dialogue: dict[str, Any], normalise: Callable[[str], str], timed: bool
) -> list[tuple[Role, str, float | None]]:
    out = []
    for i, turn in enumerate(dialogue["turns"]):
        text = normalise(turn["text"])
        if _has_words(text):
            out.append((ROLES[turn["role"]], text, at(i) if timed else None))
    return out


# --------------------------------------------------------------------------------------------
# Renderers: a dialogue into each format


def labelled_lines(turns: list[dict[str, Any]], agent_label: str) -> str:
    labels = {"agent": agent_label, "user": "User"}
    return "\n".join(f"{labels[t['role']]}: {t['text']}" for t in turns) + "\n"


def render_text(d: dict[str, Any]) -> str:
    return labelled_lines(d["turns"], "Agent")


def render_chat(d: dict[str, Any]) -> list[dict[str, Any]]:
    roles = {"agent": "assistant", "user": "user"}
    return [{"role": "system", "content": SYSTEM_PROMPT}] + [
        {"role": roles[t["role"]], "content": t["text"]} for t in d["turns"]
    ]


def render_chatdash(d: dict[str, Any]) -> list[dict[str, Any]]:
    senders = {"agent": "bot", "user": "user"}
    messages = []
    for i, t in enumerate(d["turns"]):
        created = (T0 + timedelta(seconds=at(i))).isoformat().replace("+00:00", "Z")
        messages.append(
            {
                "_id": f"{d['id']}-{i}",
                "sender": senders[t["role"]],
                "type": "text",
                "content": {"text": t["text"]},
                "metadata": {},
                "createdAt": created,
            }
        )
        if i == 1:  # an image between turns: no text, skipped
            messages.append(
                {"sender": "user", "type": "image", "content": {"url": "https://x/y.png"}}
            )
    return messages


def words(text: str, start: float) -> list[dict[str, Any]]:
    return [
        {"word": w, "start": start + 0.1 * k, "end": start + 0.1 * k + 0.08}
        for k, w in enumerate(text.split()[:3])
    ] or [{"word": "", "start": start, "end": start}]


def retell_call(d: dict[str, Any], **transcript: Any) -> dict[str, Any]:
    return {
        "event": "call_analyzed",
        "call": {
            "call_type": "phone_call",
            "call_id": f"call_{d['id']}",
            "agent_id": "agent_roundtrip",
            "from_number": "+14155550123",
            "to_number": "+14155559876",
            "start_timestamp": T0_MS,
            "end_timestamp": T0_MS + 60_000,
            "duration_ms": 60_000,
            **transcript,
            "call_analysis": {"call_summary": "n/a"},
        },
    }


def render_retell_object(d: dict[str, Any]) -> dict[str, Any]:
    entries = [
        {"role": t["role"], "content": t["text"], "words": words(t["text"], at(i))}
        for i, t in enumerate(d["turns"])
    ]
    return retell_call(d, transcript_object=entries)


def render_retell_tool_calls(d: dict[str, Any]) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    for i, t in enumerate(d["turns"]):
        entries.append({"role": t["role"], "content": t["text"], "words": words(t["text"], at(i))})
        if i % 3 == 1:
            call_id = f"tc_{i}"
            entries += [
                {
                    "role": "node_transition",
                    "former_node_id": "a",
                    "former_node_name": "A",
                    "new_node_id": "b",
                    "new_node_name": "B",
                },
                {
                    "role": "tool_call_invocation",
                    "tool_call_id": call_id,
                    "name": "lookup",
                    "arguments": "{}",
                },
                {"role": "tool_call_result", "tool_call_id": call_id, "content": f"result {i}"},
            ]
    return retell_call(d, transcript_with_tool_calls=entries)


def render_retell_plain(d: dict[str, Any]) -> dict[str, Any]:
    return retell_call(d, transcript=labelled_lines(d["turns"], "Agent"))["call"]  # bare call


def vapi_report(d: dict[str, Any], **artifact: Any) -> dict[str, Any]:
    return {
        "message": {
            "type": "end-of-call-report",
            "endedReason": "customer-ended-call",
            "cost": 0.05,
            "call": {"id": f"vapi-{d['id']}"},
            "customer": {"number": "+15125550147"},
            "phoneNumber": {"number": "+15125550100"},
            "artifact": {**artifact, "recordingUrl": "https://storage.vapi.ai/x.wav"},
            "analysis": {"summary": "n/a"},
        }
    }


def render_vapi_messages(d: dict[str, Any]) -> dict[str, Any]:
    roles = {"agent": "bot", "user": "user"}
    messages: list[dict[str, Any]] = [
        {"role": "system", "message": SYSTEM_PROMPT, "time": T0_MS, "secondsFromStart": 0}
    ]
    for i, t in enumerate(d["turns"]):
        messages.append(
            {
                "role": roles[t["role"]],
                "message": t["text"],
                "time": T0_MS + int(at(i) * 1000),
                "secondsFromStart": at(i),
            }
        )
        if i == 0:
            tool_call = {"id": "call_1", "type": "function", "function": {"name": "lookup"}}
            messages += [
                {"role": "tool_calls", "toolCalls": [tool_call], "message": ""},
                {
                    "role": "tool_call_result",
                    "toolCallId": "call_1",
                    "name": "lookup",
                    "result": "found",
                },
            ]
    return vapi_report(d, messages=messages)


def render_vapi_transcript(d: dict[str, Any]) -> dict[str, Any]:
    return vapi_report(d, transcript=labelled_lines(d["turns"], "AI"))["message"]  # bare


def render_elevenlabs(d: dict[str, Any]) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    for i, t in enumerate(d["turns"]):
        entries.append(
            {
                "role": t["role"],
                "message": t["text"],
                "tool_calls": None,
                "tool_results": None,
                "time_in_call_secs": at(i),
            }
        )
        if i == 0:
            entries += [
                {"role": "user", "message": "...", "time_in_call_secs": at(i)},  # phone filler
                {
                    "role": "agent",
                    "message": None,
                    "tool_calls": [{"request_id": "r1", "tool_name": "lookup"}],
                    "tool_results": [
                        {"request_id": "r1", "tool_name": "lookup", "result_value": "found"}
                    ],
                    "time_in_call_secs": at(i),
                },
            ]
    return {
        "type": "post_call_transcription",
        "event_timestamp": 1727740861,
        "data": {
            "agent_id": "agent_roundtrip",
            "conversation_id": f"conv_{d['id']}",
            "transcript": entries,
            "metadata": {"call_duration_secs": 60, "termination_reason": "hangup"},
            "analysis": {"transcript_summary": "n/a"},
        },
    }


# name -> (renderer, format detected, how texts come back, whether starts come back, platform id)
CONVERTERS: dict[str, tuple[Callable[[dict[str, Any]], Any], str, Callable[[str], str], bool]] = {
    "text": (render_text, "text", lines_text, False),
    "chat": (render_chat, "chat", json_text, False),
    "chatdash": (render_chatdash, "chatdash", json_text, True),
    "retell-transcript_object": (render_retell_object, "retell", json_text, True),
    "retell-transcript_with_tool_calls": (render_retell_tool_calls, "retell", json_text, True),
    "retell-plain": (render_retell_plain, "retell", lines_text, False),
    "vapi-messages": (render_vapi_messages, "vapi", json_text, True),
    "vapi-transcript": (render_vapi_transcript, "vapi", lines_text, False),
    "elevenlabs": (render_elevenlabs, "elevenlabs", json_text, True),
}


def serialise(rendered: Any) -> bytes:
    text = rendered if isinstance(rendered, str) else json.dumps(rendered, ensure_ascii=False)
    return text.encode("utf-8")


def check(dialogue: dict[str, Any], converter: str) -> None:
    render, fmt, normalise, timed = CONVERTERS[converter]
    want = expected(dialogue, normalise, timed)
    source = f"{dialogue['id']} as {converter}"
    data = serialise(render(dialogue))
    t: Transcript = parse_transcript(data, source=source)
    assert t.format == fmt, source
    # a dialogue where the user never speaks parses (the engine skips it, no LLM call)
    assert bool(t.user_turns) == any(role == Role.USER for role, _, _ in want), source
    got = [(turn.role, turn.text, turn.start) for turn in t.dialogue]
    if got != want:  # name the first difference, not 600 dialogues of diff
        for i, (g, w) in enumerate(zip(got, want, strict=False)):
            assert g == w, f"{source}: turn {i}"
        assert len(got) == len(want), f"{source}: {len(got)} turns, expected {len(want)}"
    assert SYSTEM_PROMPT not in t.as_text(), source
    tools = [turn.text for turn in t.turns if turn.role == Role.TOOL]
    if converter == "retell-transcript_with_tool_calls":
        assert tools == [f"lookup: result {i}" for i in range(1, len(dialogue["turns"]), 3)]
    elif converter in ("vapi-messages", "elevenlabs"):
        assert tools == ["lookup: found"]
    else:
        assert tools == []
    if fmt != "text" and fmt != "chat":
        assert t.metadata.platform == fmt
        assert t.metadata.platform_id or fmt == "chatdash"


@pytest.mark.parametrize("dataset", DATASET_NAMES)
@pytest.mark.parametrize("converter", list(CONVERTERS))
def test_round_trip(dataset, converter):
    dialogues = load_dialogues(dataset)
    for dialogue in dialogues:
        check(dialogue, converter)


def test_texts_with_newlines_and_no_words_are_covered():
    """The datasets do exercise the tricky cases the expectations account for."""
    turns = [t for name in DATASET_NAMES for d in load_dialogues(name) for t in d["turns"]]
    assert sum("\n" in t["text"] for t in turns) > 50
    assert sum(t["text"] != t["text"].strip() for t in turns) > 50


def test_a_dialogue_with_no_user_words_is_refused_in_every_format():
    dialogue = {
        "id": "made-up",
        "turns": [{"role": "agent", "text": "Hello?"}, {"role": "user", "text": "..."}],
    }
    for converter in CONVERTERS:
        check(dialogue, converter)
