"""ElevenLabs: the ``post_call_transcription`` webhook, or a conversation from the API.

Accepted: ``{"type": "post_call_transcription", "event_timestamp": ..., "data": {...}}``, the
bare conversation (the ``data`` object, also what ``GET /v1/convai/conversations/{id}``
answers; recognised by its ``conversation_id``), and the transcript entries alone: the list
itself (``data.transcript`` kept on its own, the "conversation history" the docs show), or the
simulate-conversation answer ``{"simulated_conversation": [...], "analysis": {...}}``. The list is
recognised by its entries: objects with a ``role`` of ``agent`` or ``user`` and a ``message`` key,
one of them at least with ``time_in_call_secs``, ``tool_calls`` or ``tool_results``. A
``call_initiation_failure`` webhook (an outbound call that never connected: busy, no answer...) is
a transcript with no turns whose call was not answered, its ``failure_reason`` the ended reason.
``post_call_audio`` is recognised and refused: it holds no transcript.

``transcript`` entries: ``role`` ``agent`` or ``user``, the words in ``message``, the time in
``time_in_call_secs``. ``message`` is null on tool turns: their ``tool_results`` become TOOL turns
``"<tool name>: <result>"`` (a null message with no result is dropped). Filler such as ``...`` is
dropped like any turn without words. An empty ``transcript`` (the caller never spoke, or no
one did) is a transcript with no turns; a conversation with no ``transcript`` at all is refused.

Whether the call was answered (:attr:`CallMetadata.answered`): not for a
``call_initiation_failure``, nor when ``metadata.termination_reason`` (free text) mentions
voicemail (:data:`VOICEMAIL`); otherwise ElevenLabs does not say (``None``).
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
    plus_seconds,
    present,
    result_text,
    role_of,
    skip_unknown_role,
    text_of,
    transcript,
)
from ._registry import TranscriptFormat, register_format

NAME = "elevenlabs"
TRANSCRIPTION = "post_call_transcription"
FAILURE = "call_initiation_failure"
WEBHOOK_TYPES = {TRANSCRIPTION, "post_call_audio", FAILURE}

#: Found (case aside) in a ``termination_reason``, it says a voicemail took the call.
VOICEMAIL = "voicemail"

_SPEAKERS = {"agent": Role.AGENT, "user": Role.USER}


def _is_webhook(value: dict[str, Any]) -> bool:
    kind, data = value.get("type"), value.get("data")
    return isinstance(kind, str) and (
        kind in WEBHOOK_TYPES or (isinstance(data, dict) and "conversation_id" in data)
    )


_ENTRY_KEYS = ("time_in_call_secs", "tool_calls", "tool_results")


def _is_entries(value: Any) -> bool:
    """A list of transcript entries on its own (see the module's docstring)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(entry, dict)
            and "message" in entry
            and isinstance(entry.get("role"), str)
            and entry["role"].strip().lower() in _SPEAKERS
            for entry in value
        )
        and any(key in entry for entry in value for key in _ENTRY_KEYS)
    )


def _is_simulation(value: dict[str, Any]) -> bool:
    return _is_entries(value.get("simulated_conversation"))


def detect(value: Any) -> bool:
    if _is_entries(value):
        return True
    return isinstance(value, dict) and (
        _is_webhook(value)
        or _is_simulation(value)
        or ("conversation_id" in value and ("transcript" in value or "agent_id" in value))
    )


def _tool_results(entry: dict[str, Any], where: str, turns: list[Turn], start: float | None):
    results = entry.get("tool_results")
    if results is None:
        return
    path = key_path(where, "tool_results")
    for index, item in enumerate(expect_list(results, path)):
        result = expect_object(item, index_path(path, index))
        add_tool_turn(
            turns, opt_str(result.get("tool_name")), result_text(result.get("result_value")), start
        )


def _entries(entries: list[Any], path: str) -> list[Turn]:
    turns: list[Turn] = []
    for index, item in enumerate(entries):
        where = index_path(path, index)
        entry = expect_object(item, where)
        role = role_of(entry, where)
        message = text_of(entry, "message", where)
        start = opt_float(entry.get("time_in_call_secs"))
        if role in _SPEAKERS:
            add_turn(turns, _SPEAKERS[role], message, start)
        else:
            skip_unknown_role(NAME, where, role)
            continue
        _tool_results(entry, where, turns, start)
    return turns


def _not_connected(data: dict[str, Any]) -> Transcript:
    """A call that never connected (``call_initiation_failure``): no turns, not answered."""
    return transcript(
        [],
        NAME,
        platform=NAME,
        platform_id=opt_str(data.get("conversation_id")),
        agent_id=opt_str(data.get("agent_id")),
        ended_reason=opt_str(data.get("failure_reason")),
        answered=False,
    )


def parse(value: Any) -> Transcript:
    if isinstance(value, list) and _is_entries(value):
        return transcript(_entries(value, ""), NAME, platform=NAME)
    if isinstance(value, dict) and _is_simulation(value):
        path = "simulated_conversation"
        return transcript(
            _entries(value[path], path),
            NAME,
            platform=NAME,
            extra=present(analysis=value.get("analysis")),
        )
    if not isinstance(value, dict):
        raise TranscriptError(
            f"expected an ElevenLabs webhook or conversation object, not {json_type(value)}"
        )
    if "data" in value and isinstance(value.get("type"), str):
        kind = value["type"]
        data, prefix = expect_object(value["data"], "data"), "data"
        if kind == FAILURE and data.get("transcript") is None:
            return _not_connected(data)
        if kind != TRANSCRIPTION and data.get("transcript") is None:
            named = kind if kind in WEBHOOK_TYPES else repr(kind)
            raise TranscriptError(
                f"a {named} webhook holds no transcript (only {TRANSCRIPTION} does)"
            )
    else:
        data, prefix = value, ""

    path = key_path(prefix, "transcript")
    entries = data.get("transcript")
    if entries is None:
        raise TranscriptError(f"the conversation has no transcript ({path} is missing)")
    turns = _entries(expect_list(entries, path), path)

    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    duration = opt_float(metadata.get("call_duration_secs"))
    started_at = from_epoch(metadata.get("start_time_unix_secs"))
    phone_call = metadata.get("phone_call")
    ended_reason = opt_str(metadata.get("termination_reason"))
    voicemail = ended_reason is not None and VOICEMAIL in ended_reason.casefold()
    return transcript(
        turns,
        NAME,
        platform=NAME,
        platform_id=opt_str(data.get("conversation_id")),
        agent_id=opt_str(data.get("agent_id")),
        phone=opt_str(get_in(phone_call, "external_number")),
        phone_secondary=opt_str(get_in(phone_call, "agent_number")),
        started_at=started_at,
        ended_at=plus_seconds(started_at, duration),
        duration_seconds=duration,
        ended_reason=ended_reason,
        answered=False if voicemail else None,
        extra=present(analysis=data.get("analysis"), main_language=metadata.get("main_language")),
    )


register_format(
    TranscriptFormat(
        name=NAME,
        kind="json",
        description='ElevenLabs post_call_transcription webhook ({"type": ..., "data": {...}}) or '
        'the conversation object, or its transcript entries alone {"role": "agent" | "user", '
        '"message", "time_in_call_secs"}; tool results are not dialogue.',
        detect=detect,
        parse=parse,
    )
)
