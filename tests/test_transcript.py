"""Transcript parsing: plain text and JSON chat lists in, ordered turns out; one-line errors."""

from __future__ import annotations

import io
import json
import sys

import pytest
from conftest import TRANSCRIPT

from enrich.errors import InputError, TranscriptError
from enrich.formats import (
    TranscriptFormat,
    formats,
    parse_transcript,
    read_transcript,
    register_format,
)
from enrich.formats import _registry as transcript_module
from enrich.models.transcript import Role, Transcript, Turn

#: every registered format, in detection order: the two built in here, then the platforms'
BUILT_IN = ["text", "chat", "chatdash", "elevenlabs", "retell", "vapi"]
#: the JSON formats, as "tried formats: ..." lists them
JSON_TRIED = "chat, chatdash, elevenlabs, retell, vapi"


def _error(data, **kwargs) -> TranscriptError:
    with pytest.raises(TranscriptError) as info:
        parse_transcript(data, **kwargs)
    return info.value


# --------------------------------------------------------------------------------------------
# Plain text


def test_shared_transcript_parses_as_text():
    t = parse_transcript(TRANSCRIPT)
    assert t.format == "text"
    assert [turn.role for turn in t.turns] == [
        Role.AGENT,
        Role.USER,
        Role.AGENT,
        Role.USER,
        Role.AGENT,
        Role.USER,
        Role.AGENT,
        Role.USER,
    ]
    assert t.turns[0].text == "Thanks for calling Acme Shoes, this is Ava. How can I help?"
    assert t.turns[3].text == "Sure, it's 4417."
    assert all(turn.start is None for turn in t.turns)


@pytest.mark.parametrize(
    "label", ["Agent", "AI", "Bot", "Assistant", "agent", "ASSISTANT", "bOt", "ai"]
)
def test_agent_labels_case_insensitive(label):
    t = parse_transcript(f"{label}: hello there\nUser: hi")
    assert t.turns[0] == Turn(role=Role.AGENT, text="hello there")
    assert t.turns[1].role == Role.USER


@pytest.mark.parametrize("label", ["User", "Customer", "Caller", "user", "CUSTOMER", "cAlLeR"])
def test_user_labels_case_insensitive(label):
    t = parse_transcript(f"Agent: hello\n{label}: I need help")
    assert t.turns[1] == Turn(role=Role.USER, text="I need help")
    assert len(t.user_turns) == 1


def test_turn_spanning_lines_is_one_turn():
    t = parse_transcript(TRANSCRIPT)
    assert t.turns[1].role == Role.USER
    assert t.turns[1].text == (
        "Hi, I was charged twice for my order\nand I'd like a refund for the extra charge."
    )


def test_blank_lines_inside_a_turn_are_skipped():
    t = parse_transcript("Agent: first line\n\n   second line  \nUser: ok")
    assert t.turns[0].text == "first line\nsecond line"


def test_timestamps_give_start_seconds():
    text = "[00:12] Agent: hello\n[01:05] User: hi\n[1:02:03] Agent: later\n[00:07.5] User: bye"
    t = parse_transcript(text)
    assert [turn.start for turn in t.turns] == [12.0, 65.0, 3723.0, 7.5]
    assert [turn.text for turn in t.turns] == ["hello", "hi", "later", "bye"]


def test_mixed_timestamps_leave_start_none_where_missing():
    t = parse_transcript("Agent: hello\n[00:30] User: hi")
    assert t.turns[0].start is None
    assert t.turns[1].start == 30.0


def test_turns_without_words_are_dropped():
    t = parse_transcript("Agent: ...\nUser: hello\nAgent:   \nUser: --\nAgent: bye")
    assert [(turn.role, turn.text) for turn in t.turns] == [
        (Role.USER, "hello"),
        (Role.AGENT, "bye"),
    ]


def test_leading_header_lines_are_ignored():
    text = "Call ID: 1234\nDate 2024-05-01\n\nAgent: hello\nUser: hi"
    t = parse_transcript(text)
    assert [turn.text for turn in t.turns] == ["hello", "hi"]
    assert "1234" not in t.as_text()


def test_text_starting_with_timestamp_bracket_is_text_not_bad_json():
    t = parse_transcript("[00:01] Agent: hello\n[00:04] User: hi there")
    assert t.format == "text"
    assert [turn.start for turn in t.turns] == [1.0, 4.0]
    assert t.turns[1].text == "hi there"


def test_utf8_bom_is_accepted():
    t = parse_transcript("\ufeffAgent: hello\nUser: héllo".encode())
    assert t.turns[0].text == "hello"
    assert t.turns[1].text == "héllo"


def test_bytes_and_str_give_the_same_transcript():
    assert parse_transcript(TRANSCRIPT.encode()) == parse_transcript(TRANSCRIPT)


def test_parse_transcript_returns_a_transcript_unchanged():
    t = parse_transcript(TRANSCRIPT)
    assert parse_transcript(t) is t


# --------------------------------------------------------------------------------------------
# JSON chat lists


def test_chat_string_content():
    data = json.dumps(
        [
            {"role": "assistant", "content": "Hello, how can I help?"},
            {"role": "user", "content": "  I need a refund.  "},
        ]
    )
    t = parse_transcript(data)
    assert t.format == "chat"
    assert t.turns == [
        Turn(role=Role.AGENT, text="Hello, how can I help?"),
        Turn(role=Role.USER, text="I need a refund."),
    ]


def test_chat_list_of_text_parts():
    data = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "first part"},
                {"type": "image_url", "image_url": {"url": "http://x"}},
                "second part",
            ],
        }
    ]
    t = parse_transcript(data)
    assert t.turns == [Turn(role=Role.USER, text="first part\nsecond part")]


def test_chat_system_and_developer_dropped():
    data = [
        {"role": "system", "content": "You are a bot. SECRET-INSTRUCTIONS"},
        {"role": "developer", "content": "dev notes"},
        {"role": "assistant", "content": "Hi"},
        {"role": "user", "content": "Hello"},
    ]
    t = parse_transcript(data)
    assert [turn.role for turn in t.turns] == [Role.AGENT, Role.USER]
    assert "SECRET-INSTRUCTIONS" not in t.as_text()
    assert "dev notes" not in t.as_text()


def test_chat_tool_role_and_assistant_mapping():
    data = [
        {"role": "user", "content": "Where is my order?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        {"role": "tool", "content": '{"status": "shipped"}'},
        {"role": "Assistant", "content": "It has shipped."},
    ]
    t = parse_transcript(data)
    assert [turn.role for turn in t.turns] == [Role.USER, Role.TOOL, Role.AGENT]
    assert t.turns[1].text == '{"status": "shipped"}'
    # the null-content assistant message is dropped
    assert len(t.turns) == 3


def test_chat_null_content_dropped():
    data = [
        {"role": "user", "content": None},
        {"role": "user", "content": "real question"},
    ]
    t = parse_transcript(data)
    assert t.turns == [Turn(role=Role.USER, text="real question")]


def test_chat_unknown_role_names_the_message_index():
    data = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "narrator", "content": "meanwhile"},
    ]
    err = _error(data)
    assert "message 2" in str(err)
    assert "unknown role 'narrator'" in str(err)
    assert str(err).startswith("<input>: chat: ")


def test_chat_bad_content_type_names_the_message_index():
    err = _error([{"role": "user", "content": {"text": "hi"}}])
    assert "message 0: content must be a string or a list of text parts, not dict" in str(err)


def test_chat_json_as_text_and_as_parsed_value_agree():
    data = [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Hello"}]
    assert parse_transcript(json.dumps(data)) == parse_transcript(data)


# --------------------------------------------------------------------------------------------
# Errors


def test_errors_are_input_errors():
    assert issubclass(TranscriptError, InputError)
    err = _error("")
    assert isinstance(err, InputError)


def test_empty_input():
    err = _error(b"")
    assert str(err) == "<input>: empty transcript (no text at all)"
    assert err.source == "<input>"
    assert err.reason == "empty transcript (no text at all)"


def test_whitespace_only_input():
    err = _error("  \n\t\n   ")
    assert "empty transcript (no text at all)" in str(err)


def test_source_names_the_input():
    err = _error("", source="call-17.txt")
    assert str(err).startswith("call-17.txt: ")


def test_truncated_json_names_line_and_column():
    err = _error('[\n  {"role": "user", "content": "hi"')
    message = str(err)
    assert message.startswith("<input>: invalid JSON at line 2, column 35: ")
    assert "Expecting" in message


def test_invalid_json_object():
    err = _error('{"role": user}')
    assert "invalid JSON at line 1, column 10" in str(err)


def test_json_number_is_not_a_transcript():
    err = _error("42")
    assert str(err) == f"<input>: JSON of an unknown shape (a number); tried formats: {JSON_TRIED}"


@pytest.mark.parametrize(
    ("data", "described"),
    [
        ("-3.5e2", "a number"),
        ('"hello"', "a string"),
        ("null", "the literal null"),
        ("true", "the literal true"),
    ],
)
def test_bare_json_values_are_described(data, described):
    err = _error(data)
    assert f"JSON of an unknown shape ({described}); tried formats: {JSON_TRIED}" in str(err)


def test_json_object_of_unknown_shape_says_which_formats_were_tried():
    err = _error('{"conversation_id": "abc", "lines": []}')
    message = str(err)
    assert "JSON of an unknown shape" in message
    assert "an object with keys conversation_id, lines" in message
    assert f"tried formats: {JSON_TRIED}" in message


def test_json_list_of_unknown_shape():
    err = _error(["User: hi", "Agent: hello"])
    assert f"JSON of an unknown shape (a list of 2 item(s)); tried formats: {JSON_TRIED}" in str(
        err
    )


def test_nul_bytes_are_binary():
    err = _error(b"User: hi\x00\x01\x02Agent: hello")
    assert "binary data, not a transcript (found NUL bytes)" in str(err)


def test_control_characters_are_binary():
    err = _error(bytes(range(1, 9)) * 20 + b"User: hi")
    assert "binary data, not a transcript" in str(err)


def test_windows_1252_text_is_read_with_a_warning(caplog):
    # "café" and curly quotes as Windows-1252 (0xe9, 0x93/0x94): not UTF-8, but plain text
    with caplog.at_level("WARNING", logger="enrich.transcript"):
        t = parse_transcript(b"Agent: hi\nUser: caf\xe9 \x93please\x94", source="old.txt")
    assert t.turns[1].text == "café \u201cplease\u201d"
    assert caplog.messages == [
        "old.txt: not valid UTF-8 (byte 0xe9 at offset 19); read as Windows-1252"
    ]


def test_latin_1_fallback_for_bytes_windows_1252_leaves_undefined(caplog):
    # 0x81 is undefined in Windows-1252: Latin-1 reads it (one C1 control is still text)
    with caplog.at_level("WARNING", logger="enrich.transcript"):
        t = parse_transcript(b"User: caf\xe9\x81 please")
    assert t.turns[0].text == "café\x81 please"
    assert caplog.messages[0].endswith("read as Latin-1")


def test_undecodable_binary_names_the_offset_and_is_refused():
    err = _error(b"User: caf\xe9 " + bytes(range(1, 9)) * 4)
    assert str(err) == (
        "<input>: not valid UTF-8 (byte 0xe9 at offset 9 cannot be decoded) and not "
        "Windows-1252 text either: binary data, not a transcript"
    )
    err = _error(b"User: \xff\xfe" + bytes(range(0x80, 0xA0)))
    assert "and not Latin-1 text either: binary data" in str(err)


def test_str_input_is_never_read_as_a_legacy_encoding():
    err = _error("User: lone \ud800 surrogate")
    assert "not valid UTF-8: byte 0xed at offset 11 cannot be decoded" in str(err)


def test_over_max_bytes():
    data = "User: " + "x" * 100
    err = _error(data, max_bytes=50)
    assert "input is 106 bytes, over the limit of 50" in str(err)
    assert "input.max_bytes" in str(err)
    # exactly at the limit is fine
    assert parse_transcript(data, max_bytes=106).user_turns[0].text == "x" * 100


def test_no_user_turn_is_a_transcript():
    # no longer an error: the engine skips it before any LLM call (analysis.min_user_turns)
    t = parse_transcript("Agent: hello\nAgent: anyone there?")
    assert t.format == "text" and len(t.turns) == 2 and t.user_turns == []


def test_no_user_turn_in_chat_is_a_transcript():
    t = parse_transcript(
        [{"role": "system", "content": "x"}, {"role": "assistant", "content": "hi"}]
    )
    assert t.format == "chat" and [turn.text for turn in t.turns] == ["hi"]
    assert t.user_turns == []
    only_system = parse_transcript([{"role": "system", "content": "You are a helpful agent."}])
    assert only_system.turns == []


def test_no_speaker_labels():
    err = _error("Hello, I was charged twice.\nSorry about that.")
    assert "no speaker labels found: expected lines like 'Agent: ...' and 'User: ...'" in str(err)


def test_unknown_format_name():
    err = _error(TRANSCRIPT, format="xml")
    message = str(err)
    assert "unknown format 'xml'" in message
    assert "known formats: text, chat" in message


def test_forcing_chat_on_text_input():
    err = _error(TRANSCRIPT, format="chat")
    assert "format 'chat' expects JSON, but the input does not start with '[' or '{'" in str(err)


def test_forcing_text_on_json_input():
    err = _error('[{"role": "user", "content": "hi"}]', format="text")
    assert "format 'text' expects text, not JSON" in str(err)


def test_forcing_text_on_unlabelled_text():
    err = _error("just some words", format="text")
    assert "text: no turn with words after the speaker labels" in str(err)


def test_forced_format_is_used():
    assert parse_transcript(TRANSCRIPT, format="text").format == "text"
    assert parse_transcript([{"role": "user", "content": "hi"}], format="chat").format == "chat"


# --------------------------------------------------------------------------------------------
# Files


def test_read_transcript_file(tmp_path):
    path = tmp_path / "call.txt"
    path.write_text(TRANSCRIPT)
    t = read_transcript(path)
    assert t == parse_transcript(TRANSCRIPT)
    assert read_transcript(str(path)) == t


def test_read_transcript_errors_name_the_file(tmp_path):
    # an agent-only file is no longer an error (it is skipped later): an unlabelled one is
    path = tmp_path / "unlabelled.txt"
    path.write_text("hello, is anyone there?")
    with pytest.raises(TranscriptError) as info:
        read_transcript(path)
    assert str(info.value).startswith(f"{path}: no speaker labels found")
    assert info.value.source == str(path)
    agent_only = tmp_path / "agent-only.txt"
    agent_only.write_text("Agent: hello")
    assert read_transcript(agent_only).user_turns == []


def test_read_transcript_over_max_bytes(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"User: " + b"x" * 994)
    with pytest.raises(TranscriptError) as info:
        read_transcript(path, max_bytes=100)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "file is 1,000 bytes, over the limit of 100" in message


def test_read_transcript_missing_file(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(TranscriptError) as info:
        read_transcript(path)
    assert str(info.value) == f"{path}: no such file"


def test_read_transcript_directory(tmp_path):
    with pytest.raises(TranscriptError) as info:
        read_transcript(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, not a transcript file"


def test_read_transcript_forced_format(tmp_path):
    path = tmp_path / "call.json"
    path.write_text(TRANSCRIPT)
    with pytest.raises(TranscriptError) as info:
        read_transcript(path, format="chat")
    assert "format 'chat' expects JSON" in str(info.value)


def test_read_transcript_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(TRANSCRIPT.encode())))
    assert read_transcript("-") == parse_transcript(TRANSCRIPT)


def test_read_transcript_stdin_over_max_bytes(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(TRANSCRIPT.encode())))
    with pytest.raises(TranscriptError) as info:
        read_transcript("-", max_bytes=20)
    assert str(info.value).startswith("<stdin>: input is 21 bytes, over the limit of 20")


# --------------------------------------------------------------------------------------------
# The Transcript model


def test_as_text():
    t = parse_transcript(
        [
            {"role": "assistant", "content": "Hi"},
            {"role": "tool", "content": "lookup result"},
            {"role": "user", "content": "Hello\nthere"},
        ]
    )
    assert t.as_text() == "Agent: Hi\nUser: Hello\nthere"


def test_as_text_labels_human_agent():
    t = Transcript(
        turns=[
            Turn(role=Role.USER, text="help"),
            Turn(role=Role.HUMAN_AGENT, text="I'm Bob"),
            Turn(role=Role.TOOL, text="ignored"),
        ],
        format="custom",
    )
    assert t.as_text() == "User: help\nHuman agent: I'm Bob"


def test_user_turns_and_dialogue():
    t = Transcript(
        turns=[
            Turn(role=Role.AGENT, text="a"),
            Turn(role=Role.USER, text="u1"),
            Turn(role=Role.TOOL, text="t"),
            Turn(role=Role.HUMAN_AGENT, text="h"),
            Turn(role=Role.USER, text="u2"),
        ],
        format="custom",
    )
    assert [x.text for x in t.user_turns] == ["u1", "u2"]
    assert [x.text for x in t.dialogue] == ["a", "u1", "h", "u2"]
    assert t.metadata.is_empty()


# --------------------------------------------------------------------------------------------
# The format registry


@pytest.fixture
def restore_formats():
    saved = dict(transcript_module._FORMATS)
    yield
    transcript_module._FORMATS.clear()
    transcript_module._FORMATS.update(saved)


def test_formats_registry():
    registered = formats()
    assert [f.name for f in registered] == BUILT_IN
    kinds = {f.name: f.kind for f in registered}
    assert kinds == {name: "text" if name == "text" else "json" for name in BUILT_IN}
    assert all(f.description for f in registered)
    # a copy: changing it does not change the registry
    registered.clear()
    assert [f.name for f in formats()] == BUILT_IN


def _lines_format() -> TranscriptFormat:
    def detect(value):
        return isinstance(value, dict) and isinstance(value.get("lines"), list)

    def parse(value):
        turns = []
        for i, line in enumerate(value["lines"]):
            if line.get("speaker") not in ("customer", "bot"):
                raise TranscriptError(f"line {i}: bad speaker")
            role = Role.USER if line["speaker"] == "customer" else Role.AGENT
            turns.append(Turn(role=role, text=line["said"], start=line.get("t")))
        return Transcript(turns=turns, format="lines", metadata={"platform_id": value.get("id")})

    return TranscriptFormat(
        name="lines", kind="json", description="test format", detect=detect, parse=parse
    )


def test_register_custom_format(restore_formats):
    fmt = _lines_format()
    assert register_format(fmt) is fmt
    assert [f.name for f in formats()] == [*BUILT_IN, "lines"]

    data = {
        "id": "call-9",
        "lines": [
            {"speaker": "bot", "said": "hello", "t": 0},
            {"speaker": "customer", "said": "hi", "t": 2.5},
        ],
    }
    t = parse_transcript(json.dumps(data))
    assert t.format == "lines"
    assert t.metadata.platform_id == "call-9"
    assert t.turns == [
        Turn(role=Role.AGENT, text="hello", start=0),
        Turn(role=Role.USER, text="hi", start=2.5),
    ]
    # forced by name too
    assert parse_transcript(data, format="lines").format == "lines"
    # and it now shows among the formats tried for unknown JSON
    err = _error({"something": 1})
    assert f"tried formats: {JSON_TRIED}, lines" in str(err)


def test_custom_format_errors_are_prefixed_with_its_name(restore_formats):
    register_format(_lines_format())
    err = _error({"lines": [{"speaker": "ghost", "said": "boo"}]}, source="x.json")
    assert str(err) == "x.json: lines: line 0: bad speaker"


def test_registering_a_name_again_replaces_it(restore_formats):
    original = transcript_module._FORMATS["text"]

    def parse(text):
        return Transcript(turns=[Turn(role=Role.USER, text="REPLACED")], format="text")

    register_format(
        TranscriptFormat(
            name="text", kind="text", description="replaced", detect=original.detect, parse=parse
        )
    )
    assert [f.name for f in formats()] == BUILT_IN
    assert parse_transcript(TRANSCRIPT).turns[0].text == "REPLACED"


def test_registry_restored_after_custom_formats():
    # runs after the tests above in file order: the fixture put the registry back
    assert [f.name for f in formats()] == BUILT_IN
    assert parse_transcript(TRANSCRIPT).turns[0].text.startswith("Thanks for calling")
