"""Plain text: ``Agent: ...`` / ``User: ...`` lines (also ``AI:``, ``Bot:``, ``Customer:``...).

A turn may span lines; ``[00:12]`` times are read. A transcript written on one line ("AI: How can
I help? User: What's the weather?", as Vapi's and some Retell payloads carry it) is split on its
speaker labels: a label inside the line starts a new turn when it follows the end of a sentence
(``.``, ``?``, ``!``, ``…``, perhaps closed by a quote or a bracket) or is capitalised (``User:``,
``AI:``); a lower-case word followed by a colon in the middle of a sentence ("ask the agent: ...")
stays text. Only a one-line transcript is split this way: in a transcript of several lines, a
label starts a turn only at the start of a line.

The labels: the AI agent's (``Agent``, ``AI``, ``Bot``, ``Assistant``), a human agent's (``Human
Agent``, ``Live Agent``, ``Human``, ``Operator``, ``Representative``: :attr:`Role.HUMAN_AGENT`),
the user's (``User``, ``Customer``, ``Caller``), in any case, followed by ``:`` or by a dash
(``Agent - hello``). Generic speakers (``Speaker 1``, ``Speaker A``, ``Person 2``, and ``A`` /
``B`` in capitals) are read only when who is who is unambiguous:

- with named user lines and no named agent, one generic speaker is the agent;
- with named agent lines and no named user, one generic speaker is the user;
- with no named speaker, exactly two generic speakers: **the first to speak is the agent** (a
  voice agent answers the call), the other the user;
- anything else (three speakers, or generic ones beside both named sides) is an error naming
  them: label the lines ``Agent:`` and ``User:``.

Lines that are dropped (words before the first label) or that look like an unknown speaker
(``Narrator: ...``, read as part of the turn before) are warned about on the
``enrich.transcript`` logger.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ..errors import TranscriptError
from ..models.transcript import Role, Transcript, Turn, has_words
from ._registry import TranscriptFormat, register_format

__all__ = ["parse_text", "detect_text"]


_AGENT_LABELS = {"agent", "ai", "bot", "assistant"}
_HUMAN_LABELS = {"human agent", "live agent", "human", "operator", "representative"}
_USER_LABELS = {"user", "customer", "caller"}
_KNOWN = "|".join(
    label.replace(" ", r"\s+")
    for label in sorted(_AGENT_LABELS | _HUMAN_LABELS | _USER_LABELS, key=lambda x: (-len(x), x))
)
#: Generic speakers: "Speaker 1", "Speaker A", "Person 2", and "A" / "B" in capitals.
_GENERIC = r"(?:speaker|person|spk)\s*(?:\d{1,2}|[a-d])\b|(?-i:[AB])"
_TS = r"\[(?P<ts>(?:\d{1,2}:)?\d{1,2}:\d{2}(?:\.\d+)?)\]"
#: After the label: a colon, or a dash followed by a space ("Agent - hello").
_AFTER = r"(?:\s*:|\s*[-\u2013\u2014](?=\s|$))"
_SPEAKER = re.compile(
    rf"^\s*(?:{_TS}\s*)?(?P<label>{_KNOWN}|{_GENERIC}){_AFTER}[ \t]?(?P<text>.*)$",
    re.IGNORECASE,
)
#: What looks like a speaker label that is none of the above ("Narrator: ...").
_UNKNOWN_LABEL = re.compile(r"^\s*(?:\[[\d:.]+\]\s*)?([A-Z][\w'.]*(?: [\w'.]+){0,2}):\s+\S")

log = logging.getLogger("enrich.transcript")


def _seconds(ts: str | None) -> float | None:
    if not ts:
        return None
    seconds = 0.0
    for part in ts.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


_INLINE = re.compile(
    r"\s(?:\[(?:(?:\d{1,2}:)?\d{1,2}:\d{2}(?:\.\d+)?)\]\s*)?"
    rf"(?P<label>{_KNOWN}|(?:speaker|person)\s*\d{{1,2}})\s*:(?=\s|$)",
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


def _label(raw: str) -> str:
    return " ".join(raw.lower().split())


def _roles(labels: list[str]) -> dict[str, Role]:
    """The role of each label (in the order they first speak); generic ones decided as the
    module says, or an error when that is ambiguous."""
    roles: dict[str, Role] = {}
    generic: list[str] = []
    for label in labels:
        if label in _AGENT_LABELS:
            roles[label] = Role.AGENT
        elif label in _HUMAN_LABELS:
            roles[label] = Role.HUMAN_AGENT
        elif label in _USER_LABELS:
            roles[label] = Role.USER
        else:
            generic.append(label)
    if not generic:
        return roles
    named = set(roles.values())
    has_agent = bool(named & {Role.AGENT, Role.HUMAN_AGENT})
    if Role.USER in named and not has_agent and len(generic) == 1:
        sides = [Role.AGENT]
    elif has_agent and Role.USER not in named and len(generic) == 1:
        sides = [Role.USER]
    elif not named and len(generic) == 2:
        sides = [Role.AGENT, Role.USER]  # the first to speak answers the call: the agent
    else:
        shown = ", ".join(f"'{g}'" for g in generic)
        raise TranscriptError(
            f"cannot tell who is the user among the speakers {shown}: "
            "label the lines 'Agent:' and 'User:'"
        )
    for label, role in zip(generic, sides, strict=True):
        roles[label] = role
    log.info(
        "speakers read as: %s",
        ", ".join(f"'{g}' the {r.value}" for g, r in zip(generic, sides, strict=True)),
    )
    return roles


def _warn_dropped(before: list[str], unknown: dict[str, int]) -> None:
    if before:
        first = before[0].strip()
        first = first if len(first) <= 60 else first[:57] + "..."
        log.warning(
            "%d line(s) before the first speaker label dropped (the first: %r)",
            len(before),
            first,
        )
    for label, count in list(unknown.items())[:3]:
        log.warning(
            "%d line(s) start with %r, not a known speaker label: read as part of the turn "
            "before (see `enrich formats`)",
            count,
            f"{label}:",
        )


def parse_text(text: str) -> Transcript:
    said: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    before: list[str] = []  # words before the first label: dropped
    unknown: dict[str, int] = {}  # lines that look like a label we do not know

    lines = text.splitlines()
    filled = [line for line in lines if line.strip()]
    if len(filled) == 1:  # a one-line transcript: split on its inner speaker labels
        lines = _split_one_line(filled[0])
    for line in lines:
        m = _SPEAKER.match(line)
        if m:
            label = _label(m["label"])
            current = {"label": label, "text": m["text"].strip(), "start": _seconds(m["ts"])}
            said.append(current)
        elif line.strip():
            other = _UNKNOWN_LABEL.match(line)
            if other is not None:
                unknown[other[1]] = unknown.get(other[1], 0) + 1
            if current is None:
                before.append(line)
            else:
                current["text"] = f"{current['text']}\n{line.strip()}"
    said = [s for s in said if has_words(s["text"])]
    if not said:
        raise TranscriptError("no turn with words after the speaker labels")
    roles = _roles(list(dict.fromkeys(s["label"] for s in said)))
    turns = [Turn(role=roles[s["label"]], text=s["text"].strip(), start=s["start"]) for s in said]
    _warn_dropped([b for b in before if has_words(b)], unknown)  # once it is read
    return Transcript(turns=turns, format="text")


register_format(
    TranscriptFormat(
        name="text",
        kind="text",
        description="Plain text with 'Agent:'/'AI:'/'Bot:'/'Assistant:', "
        "'Human Agent:'/'Operator:' and 'User:'/'Customer:'/'Caller:' labels (or 'Agent - ...'; "
        "'Speaker 1:'/'A:' when unambiguous); a turn may span lines; '[00:12]' times allowed; "
        "a one-line transcript is split on its labels.",
        detect=detect_text,
        parse=parse_text,
    )
)
