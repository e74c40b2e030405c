"""Labeled items: a labeled set read line by line, and its labels mapped to what enrich answers.

A labeled set is JSON Lines, one conversation a line::

    {"id": "...", "turns": [{"role": "agent" | "user", "text": "..."}], "labels": {...}}

or ``"transcript"`` instead of ``"turns"``: a transcript in any supported format (text, or the
JSON of a platform's payload). ``labels`` holds what people said about the conversation, under
the set's own names; a :class:`LabelMap` says what each one scores:

- ``topic``, ``subtopic``: a name (compared with the answer's ignoring case and spacing, after
  the ``values`` mapping turns the set's names into the taxonomy's);
- ``is_success``: true or false (null: not labeled);
- ``summaries``: one reference summary or a list of them;
- ``misunderstood``: the user turns the agent misunderstood, as texts or as indexes among the
  user turns (0 is the first thing the user said);
- any other name: a custom field of that name (its ``enum`` or ``boolean`` value is scored).

The shared datasets' own names work as they are (:data:`KNOWN_LABELS`); a label named after
what it scores (``topic``...) too. ``eval.labels`` in the configuration and ``--map NAME=WHAT``
add to them and win; ``-`` ignores a label.

A line that cannot be read (not JSON, no transcript, a label of the wrong type, an index past
the user turns) is an :class:`~enrich.errors.InputError` naming the file and line, raised while
the set is loaded: before anything is sent to the LLM.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..formats import parse_transcript
from ..models.transcript import Transcript

__all__ = [
    "TARGETS",
    "KNOWN_LABELS",
    "IGNORE",
    "LabelMap",
    "Gold",
    "LabeledItem",
    "read_lines",
    "to_item",
    "norm",
]

#: What a label can score besides a custom field (named after the answer's own fields).
TARGETS = ("topic", "subtopic", "is_success", "summaries", "misunderstood")

#: The shared datasets' label names (STAR, USS over MultiWOZ, TweetSumm) and what they score.
KNOWN_LABELS: dict[str, str] = {
    "primary_domain": "topic",
    "primary_task": "subtopic",
    "user_reported_task_success": "is_success",
    "abstractive_summaries": "summaries",
    "low_satisfaction_user_turns": "misunderstood",
}

#: The target that ignores a label.
IGNORE = "-"

_ROLES = {"agent": "assistant", "ai": "assistant", "bot": "assistant"}


def norm(value: Any) -> str:
    """A name as it is compared: case and runs of spaces ignored."""
    return " ".join(str(value).split()).casefold()


@dataclass(frozen=True)
class LabelMap:
    """What each label of a set scores (``names``: a label's name to a target, ``-`` to ignore
    it) and how its values read in the taxonomy's words (``values``: per target, a label's value
    to the answer's). :meth:`target` resolves a name: the explicit mapping, then a target's own
    name, then :data:`KNOWN_LABELS`, else the label is a custom field of its own name."""

    names: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        labels: Mapping[str, str] | None = None,
        values: Mapping[str, Mapping[str, str]] | None = None,
        flags: list[str] | None = None,
    ) -> LabelMap:
        """The configuration's ``eval.labels`` and ``eval.values``, then ``--map NAME=WHAT``
        flags (which win)."""
        names = dict(labels or {})
        for flag in flags or []:
            name, sep, target = flag.partition("=")
            if not sep or not name.strip() or not target.strip():
                raise InputError(
                    f"--map {flag!r}: expected LABEL=WHAT, e.g. --map primary_domain=topic "
                    f"(WHAT: {', '.join(TARGETS)}, a field's name, or {IGNORE} to ignore it)"
                )
            names[name.strip()] = target.strip()
        lowered = {norm(k): v for k, v in (values or {}).items()}
        return cls(
            names=names,
            values={t: {norm(k): str(v) for k, v in m.items()} for t, m in lowered.items()},
        )

    def target(self, name: str) -> str:
        if name in self.names:
            return self.names[name]
        if name in TARGETS:
            return name
        return KNOWN_LABELS.get(name, name)

    def explicit_fields(self) -> set[str]:
        """The custom fields the mapping names on purpose (each must be a variant's field)."""
        return {t for t in self.names.values() if t not in TARGETS and t != IGNORE}

    def value(self, target: str, value: Any) -> Any:
        """``value`` in the taxonomy's words (unchanged without a mapping for it)."""
        mapping = self.values.get(norm(target))
        if mapping and isinstance(value, str):
            return mapping.get(norm(value), value)
        return value

    def described(self, present: set[str]) -> dict[str, str]:
        """The mapping in force for the labels ``present`` in a set: name to target."""
        return {n: self.target(n) for n in sorted(present) if self.target(n) != IGNORE}


@dataclass
class Gold:
    """One item's labels, as what they score. ``None`` (or an absent custom field): not
    labeled, so not scored."""

    topic: str | None = None
    subtopic: str | None = None
    is_success: bool | None = None
    summaries: list[str] | None = None
    misunderstood: list[str] | None = None
    custom: dict[str, Any] = field(default_factory=dict)


@dataclass
class LabeledItem:
    """One labeled conversation: its id, where it was read, its transcript and its labels."""

    id: str
    line: int
    transcript: Transcript
    gold: Gold
    label_names: set[str] = field(default_factory=set)


def read_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a labeled set, read as it goes."""
    where = str(path)
    try:
        stream = path.open(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{where}: cannot read the labeled set: {exc.strerror or exc}") from None
    with stream:
        try:
            for n, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise InputError(f"{where}, line {n}: not JSON ({exc})") from None
                if not isinstance(obj, dict):
                    raise InputError(f"{where}, line {n}: expected a JSON object")
                yield n, obj
        except UnicodeDecodeError as exc:
            raise InputError(f"{where}: not UTF-8 text ({exc.reason})") from None


def _chat(turns: Any, where: str) -> list[dict[str, Any]]:
    """``turns`` (``[{"role", "text"}]``) as chat messages, which the ``chat`` format reads."""
    if not isinstance(turns, list) or not turns:
        raise InputError(f"{where}: turns must be a non-empty list of {{role, text}}")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("text"), str):
            raise InputError(f"{where}: turn {i} is not an object with a text")
        role = str(turn.get("role") or "")
        out.append({"role": _ROLES.get(role.lower(), role.lower()), "content": turn["text"]})
    return out


def _text_list(value: Any, what: str, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise InputError(f"{where}: {what} must be a text or a list of texts")
    return [v for v in items if v.strip()]


def _boolean(value: Any, what: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and norm(value) in ("true", "false", "yes", "no"):
        return norm(value) in ("true", "yes")
    raise InputError(f"{where}: {what} must be true or false, not {value!r}")


def _misunderstood(value: Any, user_texts: list[str], what: str, where: str) -> list[str]:
    if not isinstance(value, list):
        raise InputError(f"{where}: {what} must be a list of user-turn texts or indexes")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise InputError(f"{where}: {what}: {v!r} is neither a text nor an index")
        if isinstance(v, int):
            if not 0 <= v < len(user_texts):
                raise InputError(
                    f"{where}: {what}: user turn {v} does not exist "
                    f"(the conversation has {len(user_texts)} user turns, from 0)"
                )
            out.append(user_texts[v])
        else:
            out.append(v)
    return out


def to_item(
    line: int, obj: dict[str, Any], labels: LabelMap, *, source: str, max_bytes: int
) -> LabeledItem:
    """The labeled item of one line (see the module's docstring for its shape)."""
    where = f"{source}, line {line}"
    raw_id = obj.get("id", f"line-{line}")
    if not isinstance(raw_id, str | int) or isinstance(raw_id, bool) or not str(raw_id).strip():
        raise InputError(f"{where}: id must be a non-empty text or number")
    item_id = str(raw_id)
    if ("turns" in obj) == ("transcript" in obj):
        raise InputError(f"{where}: give either turns or transcript (one of them)")
    if "turns" in obj:
        data: Any = _chat(obj["turns"], where)
        fmt: str | None = "chat"
        user_texts = [
            str(t.get("text", "")) for t in obj["turns"] if norm(t.get("role", "")) == "user"
        ]
    else:
        data, fmt, user_texts = obj["transcript"], None, []
    transcript = parse_transcript(data, format=fmt, source=where, max_bytes=max_bytes)
    if not user_texts:
        user_texts = [t.text for t in transcript.user_turns]
    raw_labels = obj.get("labels", {})
    if not isinstance(raw_labels, dict):
        raise InputError(f"{where}: labels must be an object")
    gold = Gold()
    for name, value in raw_labels.items():
        target = labels.target(name)
        if target == IGNORE or value is None:
            continue
        what = f"label {name!r} ({target})" if target != name else f"label {name!r}"
        value = labels.value(target, value)
        if target in ("topic", "subtopic"):
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise InputError(f"{where}: {what} must be a name")
            setattr(gold, target, str(value))
        elif target == "is_success":
            gold.is_success = _boolean(value, what, where)
        elif target == "summaries":
            gold.summaries = _text_list(value, what, where) or None
        elif target == "misunderstood":
            gold.misunderstood = _misunderstood(value, user_texts, what, where)
        elif isinstance(value, bool | str | int | float):
            gold.custom[target] = value
    return LabeledItem(
        id=item_id, line=line, transcript=transcript, gold=gold, label_names=set(raw_labels)
    )
