"""Transcripts: any supported format in, one ordered list of turns out.

Formats live in a registry (:func:`register_format`, :func:`formats`). Each format says whether it
reads text or JSON, how to recognise its input, and how to turn it into a :class:`Transcript`.
:func:`parse_transcript` decodes and checks the raw input once, then asks the formats in turn (or
only the one named).

Bytes are read as UTF-8; text that is not UTF-8 but plain Windows-1252 (else Latin-1) text is read
as such, with a warning on this module's logger; binary data is refused. The platforms' formats
(ChatDash, Retell, Vapi, ElevenLabs) live in :mod:`enrich.formats`, imported at the end of this
module so the registry is always complete.

Anything that cannot become a transcript with at least one user turn raises
:class:`~enrich.errors.TranscriptError` with one line naming the problem and where it is.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from .errors import TranscriptError

__all__ = [
    "Role",
    "Turn",
    "Transcript",
    "CallMetadata",
    "TranscriptFormat",
    "register_format",
    "formats",
    "parse_transcript",
    "read_transcript",
    "DEFAULT_MAX_BYTES",
]

DEFAULT_MAX_BYTES = 50 * 1024 * 1024

logger = logging.getLogger(__name__)


class Role(StrEnum):
    """Who spoke a turn."""

    USER = "user"
    AGENT = "agent"  # the AI agent
    HUMAN_AGENT = "human_agent"  # a person who took over from the AI
    TOOL = "tool"  # a tool's result, offered as context, never as dialogue


ROLE_LABELS = {
    Role.USER: "User",
    Role.AGENT: "Agent",
    Role.HUMAN_AGENT: "Human agent",
    Role.TOOL: "Tool",
}


class Turn(BaseModel):
    """One turn of the dialogue. ``start`` is seconds from the start of the call, when known."""

    role: Role
    text: str
    start: float | None = None


class CallMetadata(BaseModel):
    """What a platform's payload says about the call, beyond the dialogue. All optional.

    ``phone`` and ``phone_secondary`` follow ChatDash's meaning: for Retell the FROM and the TO
    number; for Vapi and ElevenLabs the CUSTOMER and the AGENT number.
    """

    platform: str | None = None
    platform_id: str | None = None
    agent_id: str | None = Field(default=None, description="the platform's own agent id")
    phone: str | None = None
    phone_secondary: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_seconds: float | None = None
    ended_reason: str | None = None
    recording_url: str | None = None
    cost: float | None = None
    extra: dict[str, Any] = Field(
        default_factory=dict, description="anything else worth keeping (the platform's analysis...)"
    )

    def is_empty(self) -> bool:
        return not any(v for v in self.model_dump().values())


class Transcript(BaseModel):
    """An ordered dialogue, the format it was read from, and the call's metadata (if any)."""

    turns: list[Turn]
    format: str
    metadata: CallMetadata = Field(default_factory=CallMetadata)

    @property
    def user_turns(self) -> list[Turn]:
        return [t for t in self.turns if t.role == Role.USER]

    @property
    def dialogue(self) -> list[Turn]:
        """The spoken turns: users, the AI agent and human agents (tools left out)."""
        return [t for t in self.turns if t.role != Role.TOOL]

    def as_text(self) -> str:
        """The dialogue as ``Label: text`` lines, the way the default prompt shows it."""
        return "\n".join(f"{ROLE_LABELS[t.role]}: {t.text}" for t in self.dialogue)


@dataclass(frozen=True)
class TranscriptFormat:
    """A transcript format: ``detect`` recognises decoded input, ``parse`` turns it into turns.

    For ``kind="json"`` both receive the parsed JSON value; for ``kind="text"`` the decoded text.
    ``parse`` raises :class:`TranscriptError` (without a source; the caller adds it).
    """

    name: str
    kind: Literal["text", "json"]
    description: str
    detect: Callable[[Any], bool]
    parse: Callable[[Any], Transcript]


_FORMATS: dict[str, TranscriptFormat] = {}


def register_format(fmt: TranscriptFormat) -> TranscriptFormat:
    """Add a format to the registry (a later registration of the same name replaces it)."""
    _FORMATS[fmt.name] = fmt
    return fmt


def formats() -> list[TranscriptFormat]:
    """The registered formats, in the order detection tries them."""
    return list(_FORMATS.values())


# --------------------------------------------------------------------------------------------
# Decoding and checks shared by every format


def _has_words(text: str | None) -> bool:
    return bool(text) and any(ch.isalnum() for ch in text)  # type: ignore[union-attr]


def _decode(raw: bytes, source: str, max_bytes: int, *, legacy: bool = True) -> str:
    """Decode UTF-8 (with or without a BOM); with ``legacy``, text that is not UTF-8 is read as
    Windows-1252 (else Latin-1) with a warning, unless it looks binary."""
    if len(raw) > max_bytes:
        raise TranscriptError(
            f"input is {len(raw):,} bytes, over the limit of {max_bytes:,} "
            "(input.max_bytes in the configuration)",
            source=source,
        )
    if b"\x00" in raw[:8192]:
        raise TranscriptError("binary data, not a transcript (found NUL bytes)", source=source)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        where = f"byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        if not legacy:
            raise TranscriptError(
                f"not valid UTF-8: {where} cannot be decoded", source=source
            ) from None
    try:
        text, label = raw.decode("cp1252"), "Windows-1252"
    except UnicodeDecodeError:  # one of the five bytes Windows-1252 leaves undefined
        text, label = raw.decode("latin-1"), "Latin-1"  # decodes any byte string
    if _looks_binary(text):
        raise TranscriptError(
            f"not valid UTF-8 ({where} cannot be decoded) and not {label} text either: "
            "binary data, not a transcript",
            source=source,
        )
    logger.warning("%s: not valid UTF-8 (%s); read as %s", source, where, label)
    return text


def _looks_binary(text: str) -> bool:
    """Many control characters (C0 other than whitespace, DEL, C1): not text."""
    sample = text[:8192]
    controls = len(_CONTROLS.findall(sample))
    return controls > max(8, len(sample) // 100)


_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


def parse_transcript(
    data: str | bytes | list[Any] | dict[str, Any] | Transcript,
    *,
    format: str | None = None,
    source: str = "<input>",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Transcript:
    """Parse ``data`` into a :class:`Transcript`.

    ``data`` may be raw bytes, text, or an already parsed JSON value (a list or a dict). With
    ``format`` only that format is tried; otherwise formats are detected in registry order.
    ``source`` names the input in error messages (a path, ``<stdin>``...).
    """
    if isinstance(data, Transcript):
        return data
    if format is not None and format not in _FORMATS:
        raise TranscriptError(
            f"unknown format {format!r}; known formats: {', '.join(_FORMATS)}", source=source
        )

    if isinstance(data, (list, dict)):
        value: Any = data
        text = None
    else:
        if isinstance(data, str):
            # already text: never re-read it as a legacy encoding (lone surrogates are an error)
            text = _decode(data.encode("utf-8", "surrogatepass"), source, max_bytes, legacy=False)
        else:
            text = _decode(data, source, max_bytes)
        if not text.strip():
            raise TranscriptError("empty transcript (no text at all)", source=source)
        if "\x00" in text or _looks_binary(text):
            raise TranscriptError("binary data, not a transcript", source=source)
        value = None

    candidates = [_FORMATS[format]] if format else formats()
    if text is not None:
        stripped = text.lstrip()
        json_like = stripped[:1] in ("[", "{")
        text_formats = [f for f in candidates if f.kind == "text"]
        if json_like:
            try:
                value = _json_loads(text, source)
            except json.JSONDecodeError as exc:
                # "[00:12] Agent: hi" starts with "[" but is text: let a text format claim it.
                for fmt in text_formats:
                    if fmt.detect(text):
                        return _run(fmt, text, source)
                msg = exc.msg
                if msg.endswith(" at"):  # "Unterminated string starting at": say where
                    msg = f"{msg} that position (the input ends inside it)"
                raise TranscriptError(
                    f"invalid JSON at line {exc.lineno}, column {exc.colno}: {msg}",
                    source=source,
                ) from None
        else:
            if format is not None and _FORMATS[format].kind == "json":
                raise TranscriptError(
                    f"format {format!r} expects JSON, but the input does not start "
                    "with '[' or '{'",
                    source=source,
                )
            for fmt in text_formats:
                if format is not None or fmt.detect(text):
                    return _run(fmt, text, source)
            try:  # a bare JSON number, string or literal: say so, rather than "no labels"
                value = json.loads(text)
            except (ValueError, RecursionError):
                value = None
            else:
                tried = ", ".join(f.name for f in candidates if f.kind == "json")
                raise TranscriptError(
                    f"JSON of an unknown shape ({_describe_json(value)}); tried formats: {tried}",
                    source=source,
                )
            raise TranscriptError(
                "no speaker labels found: expected lines like 'Agent: ...' and 'User: ...', "
                "or a JSON transcript",
                source=source,
            )

    json_formats = [f for f in candidates if f.kind == "json"]
    if format is not None and not json_formats:
        raise TranscriptError(f"format {format!r} expects text, not JSON", source=source)
    for fmt in json_formats:
        if format is not None or fmt.detect(value):
            return _run(fmt, value, source)
    tried = ", ".join(f.name for f in json_formats)
    raise TranscriptError(
        f"JSON of an unknown shape ({_describe_json(value)}); tried formats: {tried}",
        source=source,
    )


def _json_loads(text: str, source: str) -> Any:
    """``json.loads``, with the errors it raises besides JSONDecodeError made TranscriptErrors."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise TranscriptError("invalid JSON: nested too deeply", source=source) from None
    except ValueError as exc:  # an integer literal over Python's int-string conversion limit
        reason = "a number with too many digits" if "digits" in str(exc) else str(exc)
        raise TranscriptError(f"invalid JSON: {reason}", source=source) from None


def _run(fmt: TranscriptFormat, value: Any, source: str) -> Transcript:
    try:
        transcript = fmt.parse(value)
    except TranscriptError as exc:
        raise TranscriptError(f"{fmt.name}: {exc.reason}", source=source) from None
    if not transcript.user_turns:
        raise TranscriptError(
            f"no user turn: the {fmt.name} transcript has {len(transcript.turns)} turn(s), "
            "none of them spoken by the user",
            source=source,
        )
    return transcript


def _describe_json(value: Any) -> str:
    if isinstance(value, dict):
        # repr()'s escapes keep the message on one line whatever the keys hold
        keys = ", ".join(repr(str(key))[1:-1] for key in list(value)[:6]) or "no keys"
        return f"an object with keys {keys}"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, bool) or value is None:
        return f"the literal {json.dumps(value)}"
    if isinstance(value, (int, float)):
        return "a number"
    return "a string"


def read_transcript(
    path: str | Path,
    *,
    format: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Transcript:
    """Read and parse a transcript file; ``"-"`` reads standard input."""
    if str(path) == "-":
        raw = sys.stdin.buffer.read(max_bytes + 1)
        return parse_transcript(raw, format=format, source="<stdin>", max_bytes=max_bytes)
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise TranscriptError(
                f"file is {size:,} bytes, over the limit of {max_bytes:,} "
                "(input.max_bytes in the configuration)",
                source=str(p),
            )
        raw = p.read_bytes()
    except TranscriptError:
        raise
    except FileNotFoundError:
        raise TranscriptError("no such file", source=str(p)) from None
    except IsADirectoryError:
        raise TranscriptError("is a directory, not a transcript file", source=str(p)) from None
    except OSError as exc:
        raise TranscriptError(f"cannot read: {exc.strerror}", source=str(p)) from None
    return parse_transcript(raw, format=format, source=str(p), max_bytes=max_bytes)


# --------------------------------------------------------------------------------------------
# Plain text: "Agent: ..." / "User: ..." lines


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


def _detect_text(text: str) -> bool:
    return any(_SPEAKER.match(line) for line in text.splitlines()[:200])


def _parse_text(text: str) -> Transcript:
    turns: list[Turn] = []
    current: dict[str, Any] | None = None

    def flush() -> None:
        if current is not None and _has_words(current["text"]):
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
        detect=_detect_text,
        parse=_parse_text,
    )
)


# --------------------------------------------------------------------------------------------
# A JSON list of chat messages: [{"role": ..., "content": ...}]


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
        raise TranscriptError(f"expected a list of messages, not {_describe_json(value)}")
    turns: list[Turn] = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise TranscriptError(
                f"message {index}: expected an object, not {_describe_json(message)}"
            )
        role_name = message.get("role")
        if not isinstance(role_name, str) or role_name.lower() not in _CHAT_ROLES:
            known = ", ".join(_CHAT_ROLES)
            raise TranscriptError(f"message {index}: unknown role {role_name!r} (known: {known})")
        role = _CHAT_ROLES[role_name.lower()]
        text = _chat_content(message.get("content"), index)
        if role is None or not _has_words(text):
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


# --------------------------------------------------------------------------------------------
# The platform formats (ChatDash, Retell, Vapi, ElevenLabs) register themselves after these two.

from . import formats as _formats  # noqa: E402,F401  registers the platform formats
