"""Retell: a call's (or a chat's) webhook, or the bare call object from the API.

Accepted: the webhook envelope ``{"event" | "event_type": ..., "call": {...}}`` (``"chat"`` for
chat agents), the older envelope ``{"event": ..., "data": {...}}`` (Retell's webhook docs say the
``data`` property is being deprecated in favour of ``call``; archived payloads still carry it), and
the bare call or chat object (recognised by its ``call_id`` or ``chat_id``).

Where the dialogue comes from. A call carries up to four transcript fields: ``transcript_object``
(the utterances, with word timings), ``transcript_with_tool_calls`` (the same utterances woven with
tool calls and their results, the caller's keypad entries, node transitions...; without PII it is
``scrubbed_transcript_with_tool_calls``, the only one kept under ``everything_except_pii``) and the
plain ``transcript`` text ("Agent: ...\\nUser: ..." lines, read by the text format's rules). When
both arrays are there they are merged in order: the woven array gives the order, the tool results
and the keypad entries (an utterance it splits around a tool call stays split), and each utterance
takes its time from ``transcript_object`` when the woven array has none; an utterance only
``transcript_object`` has (a woven array cut short) is kept in its place. A chat carries
``message_with_tool_calls``, then ``transcript``. The first of these sources that has a user turn
is read; when none has, the first that has any turn is (a published payload can hold a one-entry
array beside a complete plain transcript). A source tried after the first that cannot be read is
passed over with a warning; the first one is read strictly.

Entry roles: ``agent`` is the AI agent, ``user`` the caller, ``transfer_target`` the person a call
was transferred to (:attr:`Role.HUMAN_AGENT`). A ``tool_call_result`` becomes a TOOL turn
``"<tool name>: <result>"`` (the name comes from its ``tool_call_invocation``, which is not a turn
of its own). Consecutive ``dtmf`` entries (keys the caller pressed) become one user turn
``"[keypad: 4417]"``: what the caller entered matters to the analysis. ``node_transition``,
``state_transition``, ``sms`` and ``injected`` entries are not dialogue and are left out; so is an
entry of a role this version does not know (with a warning). A turn's ``start`` is its first
word's ``start`` (calls) or its ``created_timestamp`` after the chat's start (chats).

Times are epoch milliseconds, as Retell documents them; a value too small to be milliseconds of
this era (under 10^11, i.e. before 1973) is read as seconds, as some hand-written payloads give it.

A call with nothing said (no answer, voicemail) is a transcript with no turns, not an error, when
its transcript fields are there but empty, or when the call says it was not answered; a payload
with no transcript field at all (a ``call_started`` event) is refused.

Whether the call was answered (:attr:`CallMetadata.answered`): not when ``call_status`` is
``not_connected``, ``disconnection_reason`` is one of :data:`NOT_ANSWERED`, or
``call_analysis.in_voicemail`` is true; answered when ``call_status`` is ``ongoing`` or ``ended``
otherwise; unknown for chats and anything else.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import TranscriptError
from ..models.transcript import Role, Transcript, Turn
from ._common import (
    add_tool_turn,
    add_turn,
    expect_list,
    expect_object,
    first_with_user,
    from_epoch,
    get_in,
    index_path,
    json_type,
    key_path,
    opt_float,
    opt_str,
    present,
    role_of,
    seconds_between,
    skip_unknown_role,
    text_of,
    text_turns,
    transcript,
)
from ._registry import TranscriptFormat, register_format

NAME = "retell"

_SPEAKERS = {"agent": Role.AGENT, "user": Role.USER, "transfer_target": Role.HUMAN_AGENT}
_NOT_DIALOGUE = {"node_transition", "state_transition", "sms", "injected"}
#: The transcript fields named when a call or a chat has none (the order they are described in).
_CALL_SOURCES = ("transcript_object", "transcript_with_tool_calls", "transcript")
_CHAT_SOURCES = ("message_with_tool_calls", "transcript")
_WOVEN = ("transcript_with_tool_calls", "scrubbed_transcript_with_tool_calls")
_ALL_SOURCES = (
    "transcript_object",
    *_WOVEN,
    "message_with_tool_calls",
    "transcript",
)
#: Webhook events, for the older ``{"event": ..., "data": {...}}`` envelope.
_EVENT = re.compile(r"^(?:call|chat|transcript|transfer)_[a-z_]+$")
#: Under this, an epoch timestamp is read as seconds rather than milliseconds (see the docstring).
_SECONDS_BELOW = 1e11

#: ``disconnection_reason`` values that say no one answered the call: the number was busy, did
#: not pick up, could not be dialled or declined (these calls are also ``not_connected``), or a
#: voicemail or answering machine took it.
NOT_ANSWERED = frozenset(
    {
        "dial_no_answer",
        "dial_busy",
        "dial_failed",
        "invalid_destination",
        "telephony_provider_permission_denied",
        "telephony_provider_unavailable",
        "sip_routing_error",
        "marked_as_spam",
        "user_declined",
        "voicemail_reached",
        "machine_detected",
    }
)
#: ``call_status`` of a call that never connected, and of calls that did.
NOT_CONNECTED = "not_connected"
CONNECTED = frozenset({"ongoing", "ended"})


def _legacy_data(value: dict[str, Any]) -> dict[str, Any] | None:
    """The call or chat of an older ``{"event": ..., "data": {...}}`` webhook, else None."""
    event, data = value.get("event", value.get("event_type")), value.get("data")
    if (
        isinstance(event, str)
        and _EVENT.match(event)
        and isinstance(data, dict)
        and ("call_id" in data or "chat_id" in data)
    ):
        return data
    return None


def _is_envelope(value: dict[str, Any]) -> bool:
    return (
        ("event" in value or "event_type" in value) and ("call" in value or "chat" in value)
    ) or _legacy_data(value) is not None


def detect(value: Any) -> bool:
    return isinstance(value, dict) and (
        _is_envelope(value) or "call_id" in value or "chat_id" in value
    )


def _as_ms(value: Any) -> float | None:
    """An epoch time in milliseconds (a value in seconds is converted), else None."""
    number = opt_float(value)
    if number is None:
        return None
    return number * 1000 if abs(number) < _SECONDS_BELOW else number


def _words_start(entry: dict[str, Any]) -> float | None:
    words = entry.get("words")
    if isinstance(words, list) and words and isinstance(words[0], dict):
        return opt_float(words[0].get("start"))
    return None


# --------------------------------------------------------------------------------------------
# Entries: read strictly into items, merged when a call has both arrays, then made turns


@dataclass
class _Item:
    """One entry of a transcript array, checked: what it says and when."""

    kind: str  # "speech", "invocation", "result", "dtmf" or "other" (not dialogue)
    role: Role | None = None
    text: str | None = None
    start: float | None = None
    call_id: str | None = None
    name: str | None = None


def _items(entries: list[Any], path: str, chat_start_ms: float | None) -> list[_Item]:
    items: list[_Item] = []
    base_ms = chat_start_ms
    for index, item in enumerate(entries):
        where = index_path(path, index)
        entry = expect_object(item, where)
        role = role_of(entry, where)
        created = _as_ms(entry.get("created_timestamp"))
        if created is not None and base_ms is None:
            base_ms = created
        start = _words_start(entry)
        if start is None and created is not None and base_ms is not None:
            start = (created - base_ms) / 1000
        if role in _SPEAKERS:
            items.append(_Item("speech", _SPEAKERS[role], text_of(entry, "content", where), start))
        elif role == "tool_call_invocation":
            call_id, name = entry.get("tool_call_id"), entry.get("name")
            if isinstance(call_id, str) and isinstance(name, str):
                items.append(_Item("invocation", call_id=call_id, name=name))
            else:
                items.append(_Item("other"))
        elif role == "tool_call_result":
            call_id = entry.get("tool_call_id")
            items.append(
                _Item(
                    "result",
                    text=text_of(entry, "content", where),
                    start=start,
                    call_id=call_id if isinstance(call_id, str) else None,
                )
            )
        elif role == "dtmf":
            digit = entry.get("digit")
            if isinstance(digit, int) and not isinstance(digit, bool):
                digit = str(digit)
            if not isinstance(digit, str):
                raise TranscriptError(f"{where}: digit must be a string, not {json_type(digit)}")
            items.append(_Item("dtmf", text=digit.strip()))
        else:
            if role not in _NOT_DIALOGUE:
                skip_unknown_role(NAME, where, role)
            items.append(_Item("other"))
    return items


def _turns_of(items: list[_Item]) -> list[Turn]:
    turns: list[Turn] = []
    tool_names: dict[str, str] = {}
    keys: list[str] = []

    def flush_keys() -> None:
        if keys:
            add_turn(turns, Role.USER, f"[keypad: {''.join(keys)}]", None)
            keys.clear()

    for item in items:
        if item.kind != "dtmf":
            flush_keys()
        if item.kind == "speech":
            add_turn(turns, item.role, item.text, item.start)  # type: ignore[arg-type]
        elif item.kind == "invocation":
            tool_names[item.call_id] = item.name  # type: ignore[index,assignment]
        elif item.kind == "result":
            name = tool_names.get(item.call_id) if item.call_id else None
            add_tool_turn(turns, name, item.text, item.start)
        elif item.kind == "dtmf":
            keys.append(item.text or "")
    flush_keys()
    return turns


def _words(text: str | None) -> list[str]:
    return re.findall(r"\w+", text.casefold()) if text else []


_LOOKAHEAD = 3  # utterances of transcript_object the woven array may lack before a match


def _merge(woven: list[_Item], plain: list[_Item]) -> list[_Item]:
    """The woven array in its order, each utterance timed from ``transcript_object`` when it has
    no time of its own, and the utterances only ``transcript_object`` has kept in their place.

    An utterance of the woven array matches the next utterance of ``transcript_object`` (same
    speaker, its words the start of what is left of that utterance): the woven array may split one
    utterance around a tool call. Utterances of ``transcript_object`` it skipped (at most a few)
    come before the match; those left over at the end follow the woven array.
    """
    spoken = [item for item in plain if item.kind == "speech"]
    words = [_words(item.text) for item in spoken]
    merged: list[_Item] = []
    i, used = 0, 0  # the utterance of transcript_object next to match, and words of it matched

    def fits(k: int, piece: list[str], item: _Item) -> bool:
        rest = words[k][used:] if k == i else words[k]
        return spoken[k].role == item.role and rest[: len(piece)] == piece

    for item in woven:
        piece = _words(item.text) if item.kind == "speech" else []
        match = None
        if piece:
            match = next(
                (k for k in range(i, min(i + 1 + _LOOKAHEAD, len(spoken))) if fits(k, piece, item)),
                None,
            )
        if match is None:
            merged.append(item)
            continue
        skipped = spoken[i + 1 : match] if used else spoken[i:match]
        merged.extend(skipped)
        fresh = match != i or not used
        if fresh:
            used = 0
        start = item.start if item.start is not None else (spoken[match].start if fresh else None)
        merged.append(_Item("speech", item.role, item.text, start))
        i, used = match, used + len(piece)
        if used >= len(words[match]):
            i, used = match + 1, 0
    merged.extend(spoken[i + 1 :] if used else spoken[i:])
    return merged


# --------------------------------------------------------------------------------------------
# Sources


def _empty(value: Any) -> bool:
    return (isinstance(value, list) and not value) or (isinstance(value, str) and not value.strip())


def _answered(obj: dict[str, Any], kind: str) -> bool | None:
    """What the call says of being answered (see the module's docstring)."""
    if kind != "call":
        return None
    status = opt_str(obj.get("call_status"))
    if (
        status == NOT_CONNECTED
        or opt_str(obj.get("disconnection_reason")) in NOT_ANSWERED
        or get_in(obj, "call_analysis", "in_voicemail") is True
    ):
        return False
    return True if status in CONNECTED else None


def _sources(obj: dict[str, Any], prefix: str, kind: str) -> list[Callable[[], list[Turn]]]:
    """The transcript sources present and not empty, each a function reading its turns, in the
    order they are tried."""
    chat_start = _as_ms(obj.get("start_timestamp")) if kind == "chat" else None

    def array(key: str) -> list[_Item]:
        path = key_path(prefix, key)
        return _items(expect_list(obj[key], path), path, chat_start)

    def text() -> list[Turn]:
        path = key_path(prefix, "transcript")
        value = obj["transcript"]
        if not isinstance(value, str):
            raise TranscriptError(f"{path}: expected a string, not {json_type(value)}")
        return text_turns(value, path)

    def filled(key: str) -> bool:
        return obj.get(key) is not None and not _empty(obj[key])

    sources: list[Callable[[], list[Turn]]] = []
    if kind == "call":
        woven = next((key for key in _WOVEN if filled(key)), None)
        if woven and filled("transcript_object"):
            sources.append(lambda: _turns_of(_merge(array(woven), array("transcript_object"))))
        elif woven or filled("transcript_object"):
            only = woven or "transcript_object"
            sources.append(lambda: _turns_of(array(only)))
    elif filled("message_with_tool_calls"):
        sources.append(lambda: _turns_of(array("message_with_tool_calls")))
    if filled("transcript"):
        sources.append(text)
    return sources


def _turns(obj: dict[str, Any], prefix: str, kind: str, answered: bool | None) -> list[Turn]:
    sources = _sources(obj, prefix, kind)
    if not sources:
        found = any(obj.get(key) is not None for key in _ALL_SOURCES)
        if found or answered is False:  # nothing was said: a transcript with no turns
            return []
        named = _CALL_SOURCES if kind == "call" else _CHAT_SOURCES
        listed = ", ".join(named[:-1]) + f" and {named[-1]}"
        raise TranscriptError(f"the {kind} has no transcript ({listed} are all missing)")
    return first_with_user(NAME, sources)


def parse(value: Any) -> Transcript:
    if not isinstance(value, dict):
        raise TranscriptError(f"expected a Retell call object or webhook, not {json_type(value)}")
    legacy = None if "call" in value or "chat" in value else _legacy_data(value)
    if legacy is not None:
        kind = "chat" if "chat_id" in legacy and "call_id" not in legacy else "call"
        obj, prefix = legacy, "data"
    elif _is_envelope(value):
        kind = "call" if "call" in value else "chat"
        obj, prefix = expect_object(value[kind], kind), kind
    else:
        kind = "chat" if "chat_id" in value and "call_id" not in value else "call"
        obj, prefix = value, ""

    answered = _answered(obj, kind)
    turns = _turns(obj, prefix, kind, answered)

    started_at = from_epoch(_as_ms(obj.get("start_timestamp")), unit=0.001)
    ended_at = from_epoch(_as_ms(obj.get("end_timestamp")), unit=0.001)
    duration_ms = opt_float(obj.get("duration_ms"))
    duration = duration_ms / 1000 if duration_ms is not None else None
    analysis_key = f"{kind}_analysis"
    return transcript(
        turns,
        NAME,
        platform=NAME,
        platform_id=opt_str(obj.get(f"{kind}_id")),
        agent_id=opt_str(obj.get("agent_id")),
        phone=opt_str(obj.get("from_number")),
        phone_secondary=opt_str(obj.get("to_number")),
        started_at=started_at,
        ended_at=ended_at,
        duration_seconds=duration
        if duration is not None
        else seconds_between(started_at, ended_at),
        ended_reason=opt_str(obj.get("disconnection_reason")),
        recording_url=opt_str(obj.get("recording_url")),
        answered=answered,
        extra=present(**{analysis_key: obj.get(analysis_key)}),
    )


register_format(
    TranscriptFormat(
        name=NAME,
        kind="json",
        description='Retell call or chat: the webhook ({"event": ..., "call": {...}}, or the '
        'older "data"), or the bare call object; transcript_object and '
        "transcript_with_tool_calls merged, message_with_tool_calls, or the plain transcript.",
        detect=detect,
        parse=parse,
    )
)
