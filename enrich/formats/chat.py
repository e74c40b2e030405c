"""A JSON list of chat messages: ``[{"role": ..., "content": ...}]``; system messages dropped."""

from __future__ import annotations

from typing import Any

from ..errors import TranscriptError
from ..models.transcript import Role, Transcript, Turn, has_words
from ._registry import TranscriptFormat, describe_json, register_format

__all__: list[str] = []


_CHAT_ROLES: dict[str, Role | None] = {
    "user": Role.USER,
    "assistant": Role.AGENT,
    "agent": Role.AGENT,
    "bot": Role.AGENT,
    "tool": Role.TOOL,
    "function": Role.TOOL,
    "system": None,  # the agent's instructions: never part of the dialogue
    "developer": None,
}


def _detect_chat(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and "role" in m for m in value)
        and any("content" in m for m in value)
    )


def _chat_content(content: Any, index: int) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    raise TranscriptError(
        f"message {index}: content must be a string or a list of text parts, "
        f"not {type(content).__name__}"
    )


def _parse_chat(value: list[dict[str, Any]]) -> Transcript:
    if not isinstance(value, list):  # only when the format is forced
        raise TranscriptError(f"expected a list of messages, not {describe_json(value)}")
    turns: list[Turn] = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise TranscriptError(
                f"message {index}: expected an object, not {describe_json(message)}"
            )
        role_name = message.get("role")
        if not isinstance(role_name, str) or role_name.lower() not in _CHAT_ROLES:
            known = ", ".join(_CHAT_ROLES)
            raise TranscriptError(f"message {index}: unknown role {role_name!r} (known: {known})")
        role = _CHAT_ROLES[role_name.lower()]
        text = _chat_content(message.get("content"), index)
        if role is None or not has_words(text):
            continue
        turns.append(Turn(role=role, text=text.strip()))  # type: ignore[union-attr]
    return Transcript(turns=turns, format="chat")


register_format(
    TranscriptFormat(
        name="chat",
        kind="json",
        description='A JSON list of chat messages: [{"role": "user" | "assistant" | ..., '
        '"content": "..."}]; content may be a list of text parts; system messages are dropped.',
        detect=_detect_chat,
        parse=_parse_chat,
    )
)
