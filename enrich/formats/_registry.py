"""The format registry, decoding and detection: raw input in, a :class:`Transcript` out.

Formats live in a registry (:func:`register_format`, :func:`formats`). Each format says whether it
reads text or JSON, how to recognise its input, and how to turn it into a :class:`Transcript`.
:func:`parse_transcript` decodes and checks the raw input once, then asks the formats in turn (or
only the one named).

Bytes are read as UTF-8; text that is not UTF-8 but plain Windows-1252 (else Latin-1) text is read
as such, with a warning on this module's logger; binary data is refused.

Anything that is not a transcript (empty, binary, invalid or unknown JSON, text without speaker
labels, a payload of a known platform with no transcript in it) raises
:class:`~enrich.errors.TranscriptError` with one line naming the problem and where it is. A
transcript in a known format is returned even when no user spoke in it (no answer, voicemail, a
caller who hung up before speaking): whether there is enough to analyse is the engine's call
(``analysis.min_user_turns``), not the parser's.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import TranscriptError
from ..models.transcript import Transcript

__all__ = [
    "TranscriptFormat",
    "register_format",
    "formats",
    "parse_transcript",
    "read_transcript",
    "describe_json",
    "decode_text",
    "DEFAULT_MAX_BYTES",
]

DEFAULT_MAX_BYTES = 50 * 1024 * 1024

logger = logging.getLogger("enrich.transcript")


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


def decode_text(raw: bytes, source: str, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """``raw`` as text, the way a transcript file is read: UTF-8, else Windows-1252 (or
    Latin-1) text with a warning naming ``source``; a :class:`TranscriptError` for binary data."""
    return _decode(raw, source, max_bytes)


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
        _check_turns(data, source)
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
                    f"JSON of an unknown shape ({describe_json(value)}); tried formats: {tried}",
                    source=source,
                )
            raise TranscriptError(
                "no speaker labels found: expected lines like 'Agent: ...' and 'User: ...', "
                "or a JSON transcript",
                source=source,
            )

    _check_json(value, source)
    json_formats = [f for f in candidates if f.kind == "json"]
    if format is not None and not json_formats:
        raise TranscriptError(f"format {format!r} expects text, not JSON", source=source)
    for fmt in json_formats:
        if format is not None or fmt.detect(value):
            return _run(fmt, value, source)
    tried = ", ".join(f.name for f in json_formats)
    raise TranscriptError(
        f"JSON of an unknown shape ({describe_json(value)}); tried formats: {tried}",
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


_SURROGATE = re.compile("[\ud800-\udfff]")


def _surrogate(text: str, where: str, source: str) -> None:
    """A lone surrogate (a ``\\ud800`` JSON escape, or a str from Python code) is not Unicode
    text: it cannot be encoded to be sent anywhere. A TranscriptError naming where it is."""
    found = _SURROGATE.search(text)
    if found is not None:
        raise TranscriptError(
            f"{where} holds a lone surrogate (U+{ord(found.group()):04X}) at character "
            f"{found.start()}: not valid Unicode text",
            source=source,
        )


def _check_json(value: Any, source: str) -> None:
    """Every string of a JSON value (keys too), without recursion: ``$[0].content``..."""
    stack: list[tuple[Any, str]] = [(value, "$")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            _surrogate(node, f"the string at {path}", source)
        elif isinstance(node, dict):
            for key, child in node.items():
                name = str(key)
                _surrogate(name, f"a key at {path}", source)
                stack.append((child, f"{path}.{repr(name)[1:-1]}"))
        elif isinstance(node, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node))


def _check_turns(transcript: Transcript, source: str) -> None:
    for i, turn in enumerate(transcript.turns, 1):
        _surrogate(turn.text, f"turn {i} ({turn.role})", source)


def _run(fmt: TranscriptFormat, value: Any, source: str) -> Transcript:
    try:
        return fmt.parse(value)
    except TranscriptError as exc:
        raise TranscriptError(f"{fmt.name}: {exc.reason}", source=source) from None


def describe_json(value: Any) -> str:
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
