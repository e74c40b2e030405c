"""Plain text: ``Agent: ...`` / ``User: ...`` lines (also ``AI:``, ``Bot:``, ``Customer:``...).

A turn may span lines; ``[00:12]`` times are read.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import TranscriptError
from ..models.transcript import Role, Transcript, Turn, has_words
from ._registry import TranscriptFormat, register_format

__all__ = ["parse_text", "detect_text"]


_AGENT_LABELS = {"agent", "ai", "bot", "assistant"}
_USER_LABELS = {"user", "customer", "caller"}
_SPEAKER = re.compile(
    r"^\s*(?:\[(?P<ts>(?:\d{1,2}:)?\d{1,2}:\d{2}(?:\.\d+)?)\]\s*)?"
    r"(?P<label>" + "|".join(sorted(_AGENT_LABELS | _USER_LABELS)) + r")\s*:[ \t]?(?P<text>.*)$",
    re.IGNORECASE,
)


def _seconds(ts: str | None) -> float | None:
    if not ts:
        return None
    seconds = 0.0
    for part in ts.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def detect_text(text: str) -> bool:
    return any(_SPEAKER.match(line) for line in text.splitlines()[:200])


def parse_text(text: str) -> Transcript:
    turns: list[Turn] = []
    current: dict[str, Any] | None = None

    def flush() -> None:
        if current is not None and has_words(current["text"]):
            turns.append(
                Turn(role=current["role"], text=current["text"].strip(), start=current["start"])
            )

    for line in text.splitlines():
        m = _SPEAKER.match(line)
        if m:
            flush()
            label = m["label"].lower()
            role = Role.AGENT if label in _AGENT_LABELS else Role.USER
            current = {"role": role, "text": m["text"].strip(), "start": _seconds(m["ts"])}
        elif current is not None and line.strip():
            current["text"] = f"{current['text']}\n{line.strip()}"
    flush()
    if not turns:
        raise TranscriptError("no turn with words after the speaker labels")
    return Transcript(turns=turns, format="text")


register_format(
    TranscriptFormat(
        name="text",
        kind="text",
        description="Plain text with 'Agent:'/'AI:'/'Bot:'/'Assistant:' and "
        "'User:'/'Customer:'/'Caller:' labels; a turn may span lines; '[00:12]' times allowed.",
        detect=detect_text,
        parse=parse_text,
    )
)
