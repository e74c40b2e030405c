"""Plain text: ``Agent: ...`` / ``User: ...`` lines (also ``AI:``, ``Bot:``, ``Customer:``...).

A turn may span lines; ``[00:12]`` times are read. A transcript written on one line ("AI: How can
I help? User: What's the weather?", as Vapi's and some Retell payloads carry it) is split on its
speaker labels: a label inside the line starts a new turn when it follows the end of a sentence
(``.``, ``?``, ``!``, ``…``, perhaps closed by a quote or a bracket) or is capitalised (``User:``,
``AI:``); a lower-case word followed by a colon in the middle of a sentence ("ask the agent: ...")
stays text. Only a one-line transcript is split this way: in a transcript of several lines, a
label starts a turn only at the start of a line.
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


_INLINE = re.compile(
    r"\s(?:\[(?:(?:\d{1,2}:)?\d{1,2}:\d{2}(?:\.\d+)?)\]\s*)?"
    r"(?P<label>" + "|".join(sorted(_AGENT_LABELS | _USER_LABELS)) + r")\s*:(?=\s|$)",
    re.IGNORECASE,
)
_SENTENCE_END = frozenset(".!?…")
_CLOSERS = frozenset("\"'”’)]")


def _ends_sentence(line: str, end: int) -> bool:
    """Whether ``line[:end]`` ends a sentence (trailing spaces and one closing quote aside)."""
    i = end - 1
    while i >= 0 and line[i].isspace():
        i -= 1
    if i >= 0 and line[i] in _CLOSERS:
        i -= 1
        while i >= 0 and line[i].isspace():
            i -= 1
    return i >= 0 and line[i] in _SENTENCE_END


def _split_one_line(line: str) -> list[str]:
    """A one-line transcript cut into one line per turn, at its inner speaker labels."""
    first = _SPEAKER.match(line)
    if first is None:
        return [line]
    pieces, start = [], 0
    for m in _INLINE.finditer(line, first.end("label")):
        if _ends_sentence(line, m.start()) or m["label"][0].isupper():
            pieces.append(line[start : m.start()].strip())
            start = m.start()
    pieces.append(line[start:].strip())
    return pieces


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

    lines = text.splitlines()
    filled = [line for line in lines if line.strip()]
    if len(filled) == 1:  # a one-line transcript: split on its inner speaker labels
        lines = _split_one_line(filled[0])
    for line in lines:
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
        "'User:'/'Customer:'/'Caller:' labels; a turn may span lines; '[00:12]' times allowed; "
        "a one-line transcript is split on its labels.",
        detect=detect_text,
        parse=parse_text,
    )
)
