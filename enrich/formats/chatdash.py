"""ChatDash messages: the list ``GET /agents/{agentId}/conversations/{id}/messages`` answers.

``[{"sender": "user" | "bot" | "agent", "type": "text", "content": {"text": "..."},
"metadata": {...}, "createdAt": "..."}]``. ``bot`` is the AI agent; ``agent`` is a human live
agent who took over, and stays distinct (:attr:`Role.HUMAN_AGENT`). Messages without a
``content.text`` (images, files, locations...) are skipped, and so are ``debug`` and
``transition`` messages whatever they carry. A turn's ``start`` is its ``createdAt`` in seconds
after the first message's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..errors import TranscriptError
from ..models.transcript import Role, Transcript, Turn
from ._common import (
    add_turn,
    expect_object,
    from_epoch,
    from_iso,
    json_type,
    role_of,
    skip_unknown_role,
    transcript,
)
from ._registry import TranscriptFormat, register_format

NAME = "chatdash"

_SENDERS = {"user": Role.USER, "bot": Role.AGENT, "agent": Role.HUMAN_AGENT}
_NOT_DIALOGUE = {"debug", "transition"}


def detect(value: Any) -> bool:
    if not isinstance(value, list):
        return False
    messages = [m for m in value if isinstance(m, dict)]
    has_role = any("role" in m for m in messages)  # that is the generic chat list's
    return any("sender" in m for m in messages) and not has_role


def _created(value: Any) -> datetime | None:
    if isinstance(value, (int, float)):
        return from_epoch(value, unit=0.001)  # epoch milliseconds
    return from_iso(value)


def _text(message: dict[str, Any], path: str) -> str | None:
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, dict):
        raise TranscriptError(
            f"{path}: content must be an object with a text, not {json_type(content)}"
        )
    text = content.get("text")
    if text is None or isinstance(text, str):
        return text
    raise TranscriptError(f"{path}: content.text must be a string, not {json_type(text)}")


def parse(value: Any) -> Transcript:
    if not isinstance(value, list):
        raise TranscriptError(f"expected a list of ChatDash messages, not {json_type(value)}")
    spoken: list[tuple[Role, str | None, datetime | None]] = []
    times: list[datetime] = []
    for index, item in enumerate(value):
        path = f"message {index}"
        message = expect_object(item, path)
        sender = role_of(message, path, "sender")
        kind = message.get("type", "text")
        if kind is not None and not isinstance(kind, str):
            raise TranscriptError(f"{path}: type must be a string, not {json_type(kind)}")
        text = _text(message, path)
        created = _created(message.get("createdAt"))
        if created is not None:
            times.append(created)
        if sender not in _SENDERS:
            skip_unknown_role(NAME, path, sender)
        elif (kind or "text").lower() not in _NOT_DIALOGUE:
            spoken.append((_SENDERS[sender], text, created))

    first = times[0] if times else None
    turns: list[Turn] = []
    for role, text, created in spoken:
        start = (created - first).total_seconds() if first and created else None
        add_turn(turns, role, text, start)
    return transcript(
        turns,
        NAME,
        platform=NAME,
        started_at=first,
        ended_at=max(times) if times else None,
    )


register_format(
    TranscriptFormat(
        name=NAME,
        kind="json",
        description="ChatDash messages (GET .../conversations/{id}/messages): "
        '[{"sender": "user" | "bot" | "agent", "content": {"text": "..."}, "createdAt": ...}]; '
        "'agent' is a human who took over; messages without text are skipped.",
        detect=detect,
        parse=parse,
    )
)
