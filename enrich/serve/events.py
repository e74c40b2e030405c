"""What a verified webhook is: its event, whether that event ends a call (and is enriched), and
the platform's call id, read from the payload as each platform sends it.

- Retell: ``{"event": ..., "call": {"call_id": ...}}`` (``event_type`` for some senders, the
  older ``data`` for ``call``); the event enriched is ``serve.retell_event``
  (``call_analyzed``, or ``call_ended``).
- Vapi: ``{"message": {"type": "end-of-call-report", "call": {"id": ...}}}``.
- ElevenLabs: ``{"type": "post_call_transcription", "data": {"conversation_id": ...}}``.

Any other event is ignored (answered 204). A payload that is not a JSON object, has no event,
or ends a call without saying which, is :class:`Malformed` (answered 400 with the reason).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["Event", "Malformed", "read_event"]

VAPI_END = "end-of-call-report"
ELEVENLABS_END = "post_call_transcription"


class Malformed(Exception):
    """A body that cannot be a webhook of the platform: the message says why."""


@dataclass(frozen=True)
class Event:
    """A webhook's event; ``call_id`` is set when it ends a call (``ends`` True)."""

    name: str
    ends: bool
    call_id: str | None = None
    payload: Any = None


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Malformed(f"{where} is not a JSON object")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise Malformed(f"no event type ({where})")
    return value


def _call_id(value: Any, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise Malformed(f"the call-end event has no call id ({where})")
    return value.strip()


def read_event(platform: str, body: bytes, *, retell_event: str = "call_analyzed") -> Event:
    """The event of a webhook's ``body``; :class:`Malformed` if it is not one."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, nested too deep
        raise Malformed(f"the body is not JSON ({type(exc).__name__})") from None
    root = _obj(payload, "the body")
    if platform == "retell":
        name = _name(root.get("event", root.get("event_type")), "event")
        if name != retell_event:
            return Event(name, False)
        holder = "call" if "call" in root else "data"
        call = _obj(root.get(holder), holder)
        return Event(name, True, _call_id(call.get("call_id"), f"{holder}.call_id"), payload)
    if platform == "vapi":
        message = _obj(root.get("message"), "message")
        name = _name(message.get("type"), "message.type")
        if name != VAPI_END:
            return Event(name, False)
        call = _obj(message.get("call"), "message.call")
        return Event(name, True, _call_id(call.get("id"), "message.call.id"), payload)
    if platform == "elevenlabs":
        name = _name(root.get("type"), "type")
        if name != ELEVENLABS_END:
            return Event(name, False)
        data = _obj(root.get("data"), "data")
        return Event(
            name, True, _call_id(data.get("conversation_id"), "data.conversation_id"), payload
        )
    raise Malformed(f"unknown platform {platform!r}")
