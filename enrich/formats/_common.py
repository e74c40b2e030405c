"""Helpers shared by the platform formats.

The rule they implement: the fields that make the dialogue (the list of entries, each entry's role
and text) are checked strictly, and a wrong type raises :class:`TranscriptError` naming its JSON
path (``call.transcript_object[3]: content must be a string, not a number``). Timing and call
metadata are best effort: a value of the wrong type or out of range is left out, never an error,
so a malformed timestamp never stops an otherwise good transcript.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import TranscriptError
from ..models.transcript import Role, Transcript, Turn, has_words
from .text import parse_text

logger = logging.getLogger("enrich.transcript")

# --------------------------------------------------------------------------------------------
# Paths and types in error messages


def json_type(value: Any) -> str:
    """The JSON name of a value's type, with its article: "a string", "null"..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def key_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def index_path(path: str, index: int) -> str:
    return f"{path}[{index}]"


def expect_object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TranscriptError(f"{path}: expected an object, not {json_type(value)}")
    return value


def expect_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise TranscriptError(f"{path}: expected a list, not {json_type(value)}")
    return value


def role_of(entry: dict[str, Any], path: str, key: str = "role") -> str:
    """The entry's role (lower case); missing or not a string is an error."""
    if key not in entry:
        raise TranscriptError(f"{path}: no {key}")
    role = entry[key]
    if not isinstance(role, str):
        raise TranscriptError(f"{path}: {key} must be a string, not {json_type(role)}")
    return role.strip().lower()


def text_of(entry: dict[str, Any], key: str, path: str) -> str | None:
    """``entry[key]`` when it is a string; missing or null gives None; another type is an error."""
    value = entry.get(key)
    if value is None or isinstance(value, str):
        return value
    raise TranscriptError(f"{path}: {key} must be a string, not {json_type(value)}")


def result_text(value: Any) -> str | None:
    """A tool result as text: strings as they are, other JSON values serialised."""
    if value is None or isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return str(value)


def skip_unknown_role(platform: str, path: str, role: str) -> None:
    """Entries of a kind this version does not know are left out (platforms add new kinds)."""
    logger.warning("%s: %s: left out an entry of unknown role %r", platform, path, role)


# --------------------------------------------------------------------------------------------
# Best-effort values: wrong types give None


def opt_str(value: Any) -> str | None:
    """A non-empty string (numbers are written out: phone numbers sometimes come as numbers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def opt_float(value: Any) -> float | None:
    """A finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def from_epoch(value: Any, *, unit: float = 1.0) -> datetime | None:
    """An epoch timestamp (``unit`` seconds per unit: 0.001 for milliseconds) as an aware UTC
    datetime, or None when it is not a number or out of range."""
    number = opt_float(value)
    if number is None:
        return None
    try:
        return datetime.fromtimestamp(number * unit, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def from_iso(value: Any) -> datetime | None:
    """An ISO 8601 time (``Z`` allowed; no zone means UTC), or None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def plus_seconds(start: datetime | None, seconds: float | None) -> datetime | None:
    if start is None or seconds is None:
        return None
    try:
        return start + timedelta(seconds=seconds)
    except OverflowError:
        return None


def get_in(value: Any, *keys: str) -> Any:
    """``value[k1][k2]...`` through objects only; None when any step is missing."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def present(**values: Any) -> dict[str, Any]:
    """The items whose value is not None (for ``CallMetadata.extra``)."""
    return {k: v for k, v in values.items() if v is not None}


# --------------------------------------------------------------------------------------------
# Turns


def add_turn(turns: list[Turn], role: Role, text: str | None, start: float | None) -> None:
    """Append a turn, unless its text has no words (``...``, empty, null)."""
    if has_words(text):
        turns.append(Turn(role=role, text=text.strip(), start=start))  # type: ignore[union-attr]


def add_tool_turn(
    turns: list[Turn], name: str | None, result: str | None, start: float | None
) -> None:
    """A tool's result as a TOOL turn (context for the model, never dialogue): ``name: result``."""
    if has_words(result):
        text = result.strip()  # type: ignore[union-attr]
        turns.append(Turn(role=Role.TOOL, text=f"{name}: {text}" if name else text, start=start))


def text_turns(text: str, path: str) -> list[Turn]:
    """A platform's plain-text transcript ("Agent: ...\\nUser: ..." lines), by the text format's
    rules."""
    try:
        return parse_text(text).turns
    except TranscriptError as exc:
        raise TranscriptError(f"{path}: {exc.reason}") from None


def first_with_user(platform: str, sources: Sequence[Callable[[], list[Turn]]]) -> list[Turn]:
    """The turns of the first source that has a user turn; when none has, of the first that has
    any turn (else none).

    A payload can carry the same dialogue more than once (an array and a plain-text transcript),
    and the source read first may hold less of it than another: a one-entry array beside a
    complete transcript. The first source is read strictly (its errors are the payload's); one
    tried after it that cannot be read is passed over with a warning.
    """
    first: list[Turn] | None = None
    for number, read in enumerate(sources):
        if number == 0:
            turns = read()
        else:
            try:
                turns = read()
            except TranscriptError as exc:
                logger.warning("%s: %s (passed over)", platform, exc.reason)
                continue
        if any(turn.role == Role.USER for turn in turns):
            return turns
        if first is None and turns:
            first = turns
    return first or []


def transcript(turns: list[Turn], name: str, **metadata: Any) -> Transcript:
    return Transcript(turns=turns, format=name, metadata=metadata)
