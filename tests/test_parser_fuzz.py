"""Property: ``parse_transcript`` returns a Transcript or raises TranscriptError, never anything
else, whatever it is given.

The inputs start from the fixtures of every format (tests/fixtures/formats/, plus a text and a chat
transcript) and are mutated: keys deleted, values replaced by random JSON values of other types,
strings replaced by random unicode (lone surrogates included), lists emptied or duplicated; then
given as the parsed value, as JSON text, or as bytes that may be truncated or corrupted. Each
format is also forced on inputs of other formats. Random JSON values and random bytes complete it.

Bounded for CI: ``ENRICH_FUZZ_EXAMPLES`` examples per test (250 by default), derandomised so a run
is reproducible; set ``ENRICH_FUZZ_RANDOM=1`` (and raise the count) to explore further.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import TRANSCRIPT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrich.errors import TranscriptError
from enrich.formats import formats, parse_transcript
from enrich.models.transcript import Role, Transcript
from enrich.models.transcript import has_words as _has_words

FORMATS_DIR = Path(__file__).parent / "fixtures" / "formats"
FORMAT_NAMES = {f.name for f in formats()}

SEEDS: dict[str, list[Any]] = {"text": [TRANSCRIPT], "chat": []}
SEEDS["chat"].append(
    [
        {"role": "system", "content": "You are a bot."},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": [{"type": "text", "text": "I need a refund."}]},
        {"role": "tool", "content": '{"ok": true}'},
    ]
)
for path in sorted(FORMATS_DIR.glob("*.json")):
    SEEDS.setdefault(path.name.split("-")[0], []).append(json.loads(path.read_text()))

FORMAT_NAMES = [f.name for f in formats()]
EXAMPLES = int(os.environ.get("ENRICH_FUZZ_EXAMPLES", "250"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=os.environ.get("ENRICH_FUZZ_RANDOM") != "1",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# any code point, lone surrogates included: they reach the parsers through JSON escapes
unicode_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | unicode_text
    | st.sampled_from(
        ["", "...", "user", "agent", "bot", "Agent: hi\nUser: hello", "end-of-call-report"]
    )
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["role", "content", "message", "text", "type", "call", "data", "sender"]
            )
            | unicode_text,
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


def check(data: Any, **kwargs: Any) -> None:
    try:
        result = parse_transcript(data, **kwargs)
    except TranscriptError as exc:
        assert len(str(exc).splitlines()) == 1, repr(str(exc))  # one line, always
        return
    assert isinstance(result, Transcript)
    # a transcript may have no user turn (the engine skips it), but it is in a known format,
    # and a text transcript always has a turn with words (else: no speaker labels, an error)
    assert result.format in FORMAT_NAMES
    assert result.turns or result.format != "text"
    for turn in result.turns:
        assert _has_words(turn.text) and turn.text == turn.text.strip()
    assert all(turn.role != Role.TOOL for turn in result.dialogue)


# --------------------------------------------------------------------------------------------
# Mutations


def node_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            paths += node_paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            paths += node_paths(child, (*prefix, index))
    return paths


def get(value: Any, path: tuple) -> Any:
    for step in path:
        value = value[step]
    return value


@st.composite
def mutated(draw: st.DrawFn, seeds: list[Any]) -> Any:
    value = copy.deepcopy(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(node_paths(value)))
        op = draw(st.sampled_from(["delete", "replace", "unicode", "empty", "duplicate"]))
        if not path:  # the root itself
            if op in ("replace", "delete"):
                value = draw(json_values)
            continue
        parent, key = get(value, path[:-1]), path[-1]
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(json_values)
        elif op == "unicode":
            parent[key] = draw(unicode_text)
        elif op == "empty":
            parent[key] = draw(st.sampled_from([None, "", "...", [], {}, 0, False]))
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
    return value


def as_bytes(value: Any) -> bytes:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def corrupted_bytes(draw: st.DrawFn, value: Any) -> bytes:
    raw = bytearray(as_bytes(value))
    op = draw(st.sampled_from(["truncate", "flip", "insert", "legacy"]))
    if op == "truncate":
        del raw[draw(st.integers(0, len(raw))) :]
    elif op == "flip" and raw:
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    elif op == "insert":
        at = draw(st.integers(0, len(raw)))
        raw[at:at] = draw(st.binary(max_size=16))
    else:  # re-encoded as Windows-1252 where it can be
        raw = bytearray(raw.decode("utf-8", "replace").encode("cp1252", "replace"))
    return bytes(raw)


# --------------------------------------------------------------------------------------------
# The properties


@pytest.mark.parametrize("name", sorted(SEEDS))
@FUZZ
@given(data=st.data())
def test_mutated_payloads(name, data):
    value = data.draw(mutated(SEEDS[name]))
    how = data.draw(st.sampled_from(["value", "text", "bytes", "corrupted"]))
    forced = data.draw(st.sampled_from([None, None, name, *FORMAT_NAMES]))
    if how == "value" and not isinstance(value, (list, dict)):
        how = "text"
    if how == "value":
        check(value, format=forced if forced in FORMAT_NAMES else None)
    elif how == "text":
        check(value if isinstance(value, str) else json.dumps(value), format=forced)
    elif how == "bytes":
        check(as_bytes(value), format=forced)
    else:
        check(data.draw(corrupted_bytes(value)), format=forced)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seeds_parse(name):
    for seed in SEEDS[name]:
        assert parse_transcript(seed).format == name


@FUZZ
@given(value=json_values, forced=st.sampled_from([None, *FORMAT_NAMES]))
def test_random_json_values(value, forced):
    if isinstance(value, (list, dict)):
        check(value, format=forced)
    check(json.dumps(value), format=forced)


@FUZZ
@given(
    raw=st.binary(max_size=200) | unicode_text.map(as_bytes),
    forced=st.sampled_from([None, *FORMAT_NAMES]),
)
def test_random_bytes(raw, forced):
    check(raw, format=forced)


# --------------------------------------------------------------------------------------------
# Inputs random generation rarely reaches


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ("[" * 100_000, "invalid JSON: nested too deeply"),
        ('{"a": ' * 100_000, "invalid JSON: nested too deeply"),
        ("[" + "1" * 5000 + "]", "invalid JSON: a number with too many digits"),
        ("1" * 5000, "no speaker labels found"),
        ({"\r\n": 1, "a\u2028b": 2}, "an object with keys \\r\\n, a\\u2028b"),
        ([None, {"role": "user", "content": "hi"}], "JSON of an unknown shape"),
    ],
)
def test_edge_inputs_are_one_line_transcript_errors(data, words):
    with pytest.raises(TranscriptError) as info:
        parse_transcript(data)
    assert words in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_forced_chat_on_other_shapes():
    with pytest.raises(
        TranscriptError, match="chat: message 0: expected an object, not the literal null"
    ):
        parse_transcript([None, {"role": "user", "content": "hi"}], format="chat")
    with pytest.raises(TranscriptError, match="chat: expected a list of messages, not an object"):
        parse_transcript({"role": "user", "content": "hi"}, format="chat")


@pytest.mark.parametrize(
    "value",
    [
        [
            {"sender": "user", "content": {"text": "hi"}, "createdAt": "0001-01-01T00:00:00+01:00"},
            {"sender": "bot", "content": {"text": "yo"}, "createdAt": "9999-12-31T23:59:59-05:00"},
        ],
        {
            "conversation_id": "c",
            "transcript": [{"role": "user", "message": "hi", "time_in_call_secs": 1e300}],
            "metadata": {"start_time_unix_secs": 1.7e9, "call_duration_secs": 1e300},
        },
        {
            "call_id": "c",
            "start_timestamp": -1e20,
            "end_timestamp": 10**400,
            "transcript_object": [{"role": "user", "content": "hi", "words": [{"start": 1e308}]}],
        },
        {
            "type": "end-of-call-report",
            "startedAt": "0001-01-01T00:00:00+05:00",
            "endedAt": "9999-12-31T23:59:59-12:00",
            "artifact": {"transcript": "User: hi"},
        },
        '{"call_id": "c", "duration_ms": NaN, "transcript_object": '
        '[{"role": "user", "content": "hi", "words": [{"start": Infinity}]}]}',
    ],
)
def test_extreme_times_and_numbers_are_best_effort(value):
    t = parse_transcript(value)
    assert [turn.text for turn in t.turns] == ["hi"] or t.format == "chatdash"
