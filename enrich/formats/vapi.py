"""Vapi: the ``end-of-call-report`` server message, or a call object from the API.

Accepted: ``{"message": {"type": "end-of-call-report", ...}}`` (what a server URL receives), the
inner message bare, and the call object of ``GET /call/{id}`` (recognised by its ``artifact`` and
``orgId``). Another server message type (``status-update``...) is recognised and refused: only the
end-of-call report carries the transcript.

The transcript is ``artifact.messages`` when present and not empty (older payloads: ``messages``
beside ``artifact``), else ``artifact.transcript`` (or ``transcript``), "AI: ...\\nUser: ..."
lines read by the text format's rules (a transcript on one line is split on its labels). When the
messages have no user turn but the transcript has, the transcript is read. Message roles:
``system`` (the agent's prompt; a squad has one per assistant) is dropped, ``bot`` (or
``assistant``) is the AI agent, ``user`` the caller; a ``tool_call_result`` becomes a TOOL turn
``"<tool name>: <result>"``, while ``tool_calls`` (the request, with no result) is not a turn; an
unknown role is left out with a warning. Times come from ``secondsFromStart``; when it disagrees
with the message's epoch ``time`` by more than :data:`DRIFT` seconds (a squad's next assistant
counts from its own start), the time is taken from ``time``, counted from the call's start.

A call with nothing said (no answer, voicemail) is a transcript with no turns, not an error, when
its messages or transcript are there but empty, or when ``endedReason`` says it was not answered;
a report with neither at all is refused.

Whether the call was answered (:attr:`CallMetadata.answered`): not when ``endedReason`` is one of
:data:`NOT_ANSWERED`; otherwise Vapi does not say (``None``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import TranscriptError
from ..models.transcript import Role, Transcript, Turn
from ._common import (
    add_tool_turn,
    add_turn,
    expect_list,
    expect_object,
    first_with_user,
    from_iso,
    get_in,
    index_path,
    json_type,
    key_path,
    opt_float,
    opt_str,
    present,
    result_text,
    role_of,
    seconds_between,
    skip_unknown_role,
    text_of,
    text_turns,
    transcript,
)
from ._registry import TranscriptFormat, register_format

NAME = "vapi"
REPORT = "end-of-call-report"

#: Seconds ``secondsFromStart`` may differ from the message's epoch ``time`` before ``time`` wins.
DRIFT = 2.0

_SPEAKERS = {"bot": Role.AGENT, "assistant": Role.AGENT, "user": Role.USER}
_NOT_DIALOGUE = {"system", "tool_calls"}

#: ``endedReason`` values that say no one answered the call: it rang out, the line was busy, a
#: voicemail took it, or the telephony provider could not connect it.
NOT_ANSWERED = frozenset(
    {
        "customer-did-not-answer",
        "customer-busy",
        "voicemail",
        "twilio-failed-to-connect-call",
        "vonage-failed-to-connect-call",
    }
)


def _is_call(value: dict[str, Any]) -> bool:
    return "orgId" in value and isinstance(value.get("artifact"), dict)


def _is_envelope(value: dict[str, Any]) -> bool:
    message = value.get("message")
    return (
        isinstance(message, dict)
        and isinstance(message.get("type"), str)
        and (message["type"] == REPORT or "call" in message or "artifact" in message)
    )


def detect(value: Any) -> bool:
    return isinstance(value, dict) and (
        _is_envelope(value) or value.get("type") == REPORT or _is_call(value)
    )


def _tool_names(entry: dict[str, Any], names: dict[str, str]) -> None:
    calls = entry.get("toolCalls")
    for call in calls if isinstance(calls, list) else []:
        call_id, name = get_in(call, "id"), get_in(call, "function", "name")
        if isinstance(call_id, str) and isinstance(name, str):
            names[call_id] = name


def _messages(messages: list[Any], path: str) -> list[Turn]:
    turns: list[Turn] = []
    names: dict[str, str] = {}
    origin: float | None = None  # the call's start, in epoch seconds, from the first timed message
    for index, item in enumerate(messages):
        where = index_path(path, index)
        entry = expect_object(item, where)
        role = role_of(entry, where)
        start = opt_float(entry.get("secondsFromStart"))
        epoch_ms = opt_float(entry.get("time"))
        if start is not None and epoch_ms is not None:
            if origin is None:
                origin = epoch_ms / 1000 - start
            elif abs(epoch_ms / 1000 - origin - start) > DRIFT:
                start = round(epoch_ms / 1000 - origin, 3)
        if role in _SPEAKERS:
            add_turn(turns, _SPEAKERS[role], text_of(entry, "message", where), start)
        elif role == "tool_call_result":
            name = opt_str(entry.get("name"))
            call_id = entry.get("toolCallId")
            if name is None and isinstance(call_id, str):
                name = names.get(call_id)
            add_tool_turn(turns, name, result_text(entry.get("result")), start)
        elif role == "tool_calls":
            _tool_names(entry, names)
        elif role not in _NOT_DIALOGUE:
            skip_unknown_role(NAME, where, role)
    return turns


def _turns(report: dict[str, Any], prefix: str, answered: bool | None) -> list[Turn]:
    artifact_path = key_path(prefix, "artifact")
    artifact = report.get("artifact")
    if artifact is not None:
        expect_object(artifact, artifact_path)
    places = [(artifact or {}, artifact_path), (report, prefix)]

    sources: list[Callable[[], list[Turn]]] = []
    for holder, base in places:
        messages = holder.get("messages")
        if messages is not None and messages != []:
            path = key_path(base, "messages")
            sources.append(lambda m=messages, p=path: _messages(expect_list(m, p), p))
            break
    for holder, base in places:
        text = holder.get("transcript")
        if text is not None and not (isinstance(text, str) and not text.strip()):
            path = key_path(base, "transcript")
            sources.append(lambda t=text, p=path: _transcript_turns(t, p))
            break
    if not sources:
        if answered is False or any(
            holder.get(key) is not None
            for holder, _ in places
            for key in ("messages", "transcript")
        ):
            return []  # nothing was said: a transcript with no turns
        raise TranscriptError(
            "the call has no transcript (artifact.messages and artifact.transcript are both "
            "missing)"
        )
    return first_with_user(NAME, sources)


def _transcript_turns(text: Any, path: str) -> list[Turn]:
    if not isinstance(text, str):
        raise TranscriptError(f"{path}: expected a string, not {json_type(text)}")
    return text_turns(text, path)


def parse(value: Any) -> Transcript:
    if not isinstance(value, dict):
        raise TranscriptError(
            f"expected a Vapi end-of-call-report or call object, not {json_type(value)}"
        )
    if isinstance(value.get("message"), dict):
        report, prefix = value["message"], "message"
    else:
        report, prefix = value, ""
    kind = report.get("type")
    if not _is_call(report) and kind != REPORT:
        if isinstance(kind, str):
            raise TranscriptError(
                f"{key_path(prefix, 'type')}: a {kind!r} message, not an {REPORT}: only the "
                "end-of-call report carries the transcript"
            )
        raise TranscriptError(f"neither an {REPORT} (no type {REPORT!r}) nor a call object")

    call = report.get("call") if isinstance(report.get("call"), dict) else report

    def field(key: str) -> Any:  # the report's own value, else the call's
        value = report.get(key)
        return value if value is not None else get_in(call, key)

    ended_reason = opt_str(field("endedReason"))
    answered = False if ended_reason in NOT_ANSWERED else None
    turns = _turns(report, prefix, answered)

    started_at, ended_at = from_iso(field("startedAt")), from_iso(field("endedAt"))
    duration = opt_float(field("durationSeconds"))
    duration_ms = opt_float(field("durationMs"))
    if duration is None and duration_ms is not None:
        duration = duration_ms / 1000
    if duration is None:
        duration = seconds_between(started_at, ended_at)
    return transcript(
        turns,
        NAME,
        platform=NAME,
        platform_id=opt_str(get_in(call, "id")),
        agent_id=opt_str(get_in(call, "assistantId")) or opt_str(get_in(report, "assistant", "id")),
        phone=opt_str(get_in(field("customer"), "number")),
        phone_secondary=opt_str(get_in(field("phoneNumber"), "number")),
        started_at=started_at,
        ended_at=ended_at,
        duration_seconds=duration,
        ended_reason=ended_reason,
        recording_url=opt_str(get_in(report, "artifact", "recordingUrl"))
        or opt_str(report.get("recordingUrl")),
        cost=opt_float(field("cost")),
        answered=answered,
        extra=present(analysis=field("analysis")),
    )


register_format(
    TranscriptFormat(
        name=NAME,
        kind="json",
        description='Vapi end-of-call-report ({"message": {"type": "end-of-call-report", ...}}, '
        "or the message bare, or a GET /call object); artifact.messages or "
        "artifact.transcript; system and tool messages are not dialogue.",
        detect=detect,
        parse=parse,
    )
)
