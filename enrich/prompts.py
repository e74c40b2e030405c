"""Prompt templates: jinja2, sandboxed, with ``StrictUndefined``.

Six templates make the conversations with the model:

- ``system.j2``: the instructions (language, business context, success criteria, taxonomy);
- ``analysis.j2``: added to them when the analysis has its own fields or named criteria;
- ``user.j2``: the transcript, fenced between ``<transcript>`` tags;
- ``reask.j2``: the message sent back after an answer that failed validation;
- ``map.j2`` and ``reduce.j2``: for a call too long for one request, the instructions for
  taking notes on one part, and the notes on every part for the final call.

The defaults ship inside the package. A user's folder (``analysis.prompts_dir``) is searched
first, so a user overrides one template by writing a file of the same name; any template missing
there falls back to the packaged one. A variable the context does not have is an error, never an
empty string.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import AnalysisSettings
from .errors import TemplateError
from .models.spec import AnalysisSpec
from .models.transcript import ROLE_LABELS, CallMetadata, Role, Transcript, Turn

__all__ = ["Prompts", "TEMPLATE_NAMES", "packaged_prompts_dir"]

TEMPLATE_NAMES = ("system.j2", "user.j2", "reask.j2", "map.j2", "reduce.j2", "analysis.j2")
#: The templates every analysis uses; ``analysis.j2`` joins them when the analysis has its own
#: fields or named criteria (and only then counts in :meth:`Prompts.fingerprint`).
BASE_TEMPLATES = TEMPLATE_NAMES[:5]

_FENCE = re.compile(r"<(/?)(transcript|notes)", re.IGNORECASE)


def packaged_prompts_dir() -> Path:
    """The folder of default templates: inside the wheel, or ``prompts/`` in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_prompts", here.parent / "prompts"):
        if (candidate / "system.j2").is_file():
            return candidate
    raise TemplateError(
        f"the packaged prompt templates are missing (looked in {here / '_prompts'})"
    )


def _data(text: str) -> str:
    """Keep dialogue from opening or closing the ``<transcript>`` and ``<notes>`` fences."""
    return _FENCE.sub(lambda m: f"<{m.group(1)}\u200b{m.group(2)}", text)


def _mmss(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Prompts:
    """The templates of one configuration: the user's folder first, then the packaged ones."""

    def __init__(self, prompts_dir: Path | str | None = None) -> None:
        from jinja2 import ChoiceLoader, FileSystemLoader, StrictUndefined
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.user_dir = Path(prompts_dir).expanduser() if prompts_dir else None
        if self.user_dir is not None and not self.user_dir.is_dir():
            raise TemplateError(f"{self.user_dir}: prompts folder not found (analysis.prompts_dir)")
        self.packaged_dir = packaged_prompts_dir()
        dirs = [d for d in (self.user_dir, self.packaged_dir) if d is not None]
        self._env = ImmutableSandboxedEnvironment(
            loader=ChoiceLoader([FileSystemLoader(str(d)) for d in dirs]),
            undefined=StrictUndefined,
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        self._env.filters["data"] = _data
        self._env.filters["mmss"] = _mmss

    # -- listing, for `enrich templates` -------------------------------------------------------

    def origin(self, name: str) -> Path:
        """The file that provides template ``name``."""
        for folder in (self.user_dir, self.packaged_dir):
            if folder is not None and (folder / name).is_file():
                return folder / name
        raise TemplateError(f"no template named {name!r} (known: {', '.join(TEMPLATE_NAMES)})")

    def source(self, name: str) -> str:
        return self.origin(name).read_text(encoding="utf-8")

    def listing(self) -> list[tuple[str, Path, bool]]:
        """``(name, file, overridden)`` for every template."""
        out = []
        for name in TEMPLATE_NAMES:
            path = self.origin(name)
            out.append((name, path, self.user_dir is not None and path.parent == self.user_dir))
        return out

    def fingerprint(self, names: Sequence[str] = BASE_TEMPLATES) -> str:
        """A hash of the templates ``names`` (those an analysis uses): it changes when any of
        their texts changes."""
        digest = hashlib.sha256()
        for name in names:
            digest.update(name.encode() + b"\0" + self.source(name).encode() + b"\0")
        return digest.hexdigest()

    # -- rendering ------------------------------------------------------------------------------

    def render(self, name: str, **context: Any) -> str:
        from jinja2 import TemplateError as JinjaError
        from jinja2 import TemplateNotFound, TemplateSyntaxError
        from jinja2.exceptions import SecurityError

        try:
            template = self._env.get_template(name)
            return template.render(**context).strip()
        except TemplateNotFound as exc:
            missing = exc.name or name
            where = "" if missing == name else f"{name}: "
            raise TemplateError(f"{where}no template named {missing!r}") from None
        except TemplateSyntaxError as exc:
            where = f"{exc.filename or name}:{exc.lineno}"
            raise TemplateError(f"{where}: template syntax error: {exc.message}") from None
        except SecurityError as exc:
            raise TemplateError(f"{name}: unsafe operation in template: {exc}") from None
        except JinjaError as exc:  # UndefinedError and the rest
            raise TemplateError(f"{name}: {exc.message or exc}") from None

    def context(
        self,
        analysis: AnalysisSettings,
        *,
        schema: dict[str, Any],
        mode: str,
        transcript: Transcript | None = None,
        turns: Sequence[Turn] | None = None,
        spec: AnalysisSpec | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """The variables every template sees (see each template's header comment). ``spec``
        brings the analysis's own fields and named criteria."""
        if turns is None:
            turns = transcript.dialogue if transcript is not None else []
        metadata = transcript.metadata if transcript is not None else CallMetadata()
        fields = spec.fields if spec is not None else ()
        criteria = spec.criteria if spec is not None else ()
        return {
            "language": analysis.language,
            "business_context": analysis.business_context,
            # a named criterion reads "name: description" where the plain ones are listed
            "success_criteria": [
                c if isinstance(c, str) else f"{c.name}: {c.description}"
                for c in analysis.success_criteria
            ],
            "fields": [
                {
                    "name": f.name,
                    "type": f.type,
                    "kind": f.describe_type(),
                    "description": f.description,
                    "required": f.required,
                }
                for f in fields
            ],
            "criteria": [{"name": c.name, "description": c.description} for c in criteria],
            "taxonomy": [t.model_dump() for t in analysis.taxonomy],
            "mode": mode,
            "schema_json": json.dumps(schema, ensure_ascii=False),
            "metadata": metadata.model_dump(mode="json", exclude_defaults=True),
            "turns": _turns(turns),
            # tools' results, for a template that wants them as context (the defaults do not)
            "tool_turns": _turns(
                [t for t in transcript.turns if t.role == Role.TOOL] if transcript else []
            ),
            "strategy": "single",
            "part": None,
            "merging": False,
            **extra,
        }

    def messages(
        self,
        transcript: Transcript,
        analysis: AnalysisSettings,
        *,
        schema: dict[str, Any],
        mode: str,
        spec: AnalysisSpec | None = None,
    ) -> list[dict[str, str]]:
        """The chat messages for one conversation: the system prompt, then the transcript."""
        context = self.context(analysis, schema=schema, mode=mode, transcript=transcript, spec=spec)
        return [
            {"role": "system", "content": self.system(context)},
            {"role": "user", "content": self.render("user.j2", **context)},
        ]

    def system(self, context: dict[str, Any]) -> str:
        """The instructions: ``system.j2``, then ``analysis.j2`` when the analysis has its own
        fields or named criteria."""
        text = self.render("system.j2", **context)
        if context.get("fields") or context.get("criteria"):
            text += "\n\n" + self.render("analysis.j2", **context)
        return text

    def part_messages(
        self,
        turns: Sequence[Turn] | None,
        analysis: AnalysisSettings,
        *,
        schema: dict[str, Any],
        mode: str,
        index: int,
        count: int,
        notes: Sequence[Any] | None = None,
    ) -> list[dict[str, str]]:
        """Messages for part ``index`` of ``count`` of a long call (map), given as ``turns``, or
        as ``notes`` on its sub-parts (merge)."""
        context = self.context(
            analysis,
            schema=schema,
            mode=mode,
            turns=turns or [],
            part={"index": index, "count": count},
            merging=notes is not None,
        )
        if notes is None:
            user = self.render("user.j2", **context)
        else:
            user = self.render("reduce.j2", parts=_notes(notes), last_turns=[])
        return [
            {"role": "system", "content": self.render("map.j2", **context)},
            {"role": "user", "content": user},
        ]

    def reduce_messages(
        self,
        notes: Sequence[Any],
        last_turns: Sequence[Turn],
        analysis: AnalysisSettings,
        *,
        schema: dict[str, Any],
        mode: str,
        spec: AnalysisSpec | None = None,
    ) -> list[dict[str, str]]:
        """Messages for the final call over the notes on every part of a long call (reduce)."""
        context = self.context(analysis, schema=schema, mode=mode, strategy="map_reduce", spec=spec)
        return [
            {"role": "system", "content": self.system(context)},
            {
                "role": "user",
                "content": self.render(
                    "reduce.j2", parts=_notes(notes), last_turns=_turns(last_turns)
                ),
            },
        ]

    def reask(self, errors: list[str]) -> str:
        return self.render("reask.j2", errors=errors)


def _turns(turns: Sequence[Turn]) -> list[dict[str, Any]]:
    return [
        {"role": t.role.value, "label": ROLE_LABELS[t.role], "text": t.text, "start": t.start}
        for t in turns
    ]


def _notes(notes: Sequence[Any]) -> list[dict[str, Any]]:
    return [n.model_dump() if hasattr(n, "model_dump") else dict(n) for n in notes]
