"""Retell: a call's (or a chat's) webhook, or the bare call object from the API.

Accepted: the webhook envelope ``{"event" | "event_type": ..., "call": {...}}`` (``"chat"`` for
chat agents) and the bare call or chat object (recognised by its ``call_id`` or ``chat_id``).

The transcript is taken from the first of these that is present and not empty:
``transcript_object``, ``transcript_with_tool_calls``, ``message_with_tool_calls`` (chat agents),
then the plain ``transcript`` text ("Agent: ...\\nUser: ..." lines, read by the text format's
rules).

Entry roles: ``agent`` is the AI agent, ``user`` the caller, ``transfer_target`` the person a call
was transferred to (:attr:`Role.HUMAN_AGENT`). A ``tool_call_result`` becomes a TOOL turn
``"<tool name>: <result>"`` (the name comes from its ``tool_call_invocation``, which is not a turn
of its own). Consecutive ``dtmf`` entries (keys the caller pressed) become one user turn
``"[keypad: 4417]"``: what the caller entered matters to the analysis. ``node_transition``,
``state_transition``, ``sms`` and ``injected`` entries are not dialogue and are left out; so is an
entry of a role this version does not know (with a warning). A turn's ``start`` is its first
word's ``start`` (calls) or its ``created_timestamp`` after the chat's start (chats).

A call with nothing said (no answer, voicemail) is a transcript with no turns, not an error, when
its transcript fields are there but empty, or when the call says it was not answered; a payload
with no transcript field at all (a ``call_started`` event) is refused.

Whether the call was answered (:attr:`CallMetadata.answered`): not when ``call_status`` is
``not_connected``, ``disconnection_reason`` is one of :data:`NOT_ANSWERED`, or
``call_analysis.in_voicemail`` is true; answered when ``call_status`` is ``ongoing`` or ``ended``
otherwise; unknown for chats and anything else.
"""

from __future__ import annotations

from typing import Any

from ..errors import TranscriptError
from ..models.transcript import Role, Transcript, Turn
from ._common import (
    add_tool_turn,
    add_turn,
    expect_list,
    expect_object,
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
_CALL_SOURCES = ("transcript_object", "transcript_with_tool_calls", "transcript")
_CHAT_SOURCES = ("message_with_tool_calls", "transcript")
_ALL_SOURCES = (
    "transcript_object",
    "transcript_with_tool_calls",
    "message_with_tool_calls",
    "transcript",
)

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


def _is_envelope(value: dict[str, Any]) -> bool:
    return ("event" in value or "event_type" in value) and ("call" in value or "chat" in value)


def detect(value: Any) -> bool:
    return isinstance(value, dict) and (
        _is_envelope(value) or "call_id" in value or "chat_id" in value
    )


def _words_start(entry: dict[str, Any]) -> float | None:
    words = entry.get("words")
    if isinstance(words, list) and words and isinstance(words[0], dict):
        return opt_float(words[0].get("start"))
    return None


def _entries(entries: list[Any], path: str, chat_start_ms: float | None) -> list[Turn]:
    turns: list[Turn] = []
    tool_names: dict[str, str] = {}
    keys: list[str] = []

    def flush_keys() -> None:
        if keys:
            add_turn(turns, Role.USER, f"[keypad: {''.join(keys)}]", None)
            keys.clear()

    base_ms = chat_start_ms
    for index, item in enumerate(entries):
        where = index_path(path, index)
        entry = expect_object(item, where)
        role = role_of(entry, where)
        if role != "dtmf":
            flush_keys()
        created = opt_float(entry.get("created_timestamp"))
        if created is not None and base_ms is None:
            base_ms = created
        start = _words_start(entry)
        if start is None and created is not None and base_ms is not None:
            start = (created - base_ms) / 1000
        if role in _SPEAKERS:
            add_turn(turns, _SPEAKERS[role], text_of(entry, "content", where), start)
        elif role == "tool_call_invocation":
            call_id, name = entry.get("tool_call_id"), entry.get("name")
            if isinstance(call_id, str) and isinstance(name, str):
                tool_names[call_id] = name
        elif role == "tool_call_result":
            call_id = entry.get("tool_call_id")
            name = tool_names.get(call_id) if isinstance(call_id, str) else None
            add_tool_turn(turns, name, text_of(entry, "content", where), start)
        elif role == "dtmf":
            digit = entry.get("digit")
            if isinstance(digit, int) and not isinstance(digit, bool):
                digit = str(digit)
            if not isinstance(digit, str):
                raise TranscriptError(f"{where}: digit must be a string, not {json_type(digit)}")
            keys.append(digit.strip())
        elif role not in _NOT_DIALOGUE:
            skip_unknown_role(NAME, where, role)
    flush_keys()
    return turns


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


def _turns(obj: dict[str, Any], prefix: str, kind: str, answered: bool | None) -> list[Turn]:
    sources = _CALL_SOURCES if kind == "call" else _CHAT_SOURCES
    found = [key for key in _ALL_SOURCES if obj.get(key) is not None]
    chosen = next((key for key in found if not _empty(obj[key])), None)
    if chosen is None:
        if found or answered is False:  # nothing was said: a transcript with no turns
            return []
        listed = ", ".join(sources[:-1]) + f" and {sources[-1]}"
        raise TranscriptError(f"the {kind} has no transcript ({listed} are all missing)")
    path = key_path(prefix, chosen)
    value = obj[chosen]
    if chosen == "transcript":
        if not isinstance(value, str):
            raise TranscriptError(f"{path}: expected a string, not {json_type(value)}")
        return text_turns(value, path)
    chat_start = opt_float(obj.get("start_timestamp")) if kind == "chat" else None
    return _entries(expect_list(value, path), path, chat_start)


def parse(value: Any) -> Transcript:
    if not isinstance(value, dict):
        raise TranscriptError(f"expected a Retell call object or webhook, not {json_type(value)}")
    if _is_envelope(value):
        kind = "call" if "call" in value else "chat"
        obj, prefix = expect_object(value[kind], kind), kind
    else:
        kind = "chat" if "chat_id" in value and "call_id" not in value else "call"
        obj, prefix = value, ""

    answered = _answered(obj, kind)
    turns = _turns(obj, prefix, kind, answered)

    started_at = from_epoch(obj.get("start_timestamp"), unit=0.001)
    ended_at = from_epoch(obj.get("end_timestamp"), unit=0.001)
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
        description='Retell call or chat: the webhook ({"event": ..., "call": {...}}) or the bare '
        "call object; transcript_object, transcript_with_tool_calls, message_with_tool_calls "
        "or the plain transcript.",
        detect=detect,
        parse=parse,
    )
)
