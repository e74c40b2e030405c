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
there falls back to the packaged one; the folder gives those names only (never another file of
it, nor a path). A variable the context does not have is an error, never an empty string. The
sandbox is bounded (:data:`MAX_RANGE`, :data:`MAX_REPEAT`, :data:`MAX_POWER_BITS`), and
whatever fails while a template renders is a :class:`~enrich.errors.TemplateError` naming it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import AnalysisSettings
from .errors import TemplateError
from .models.spec import AnalysisSpec
from .models.transcript import ROLE_LABELS, CallMetadata, Role, Transcript, Turn

__all__ = [
    "Prompts",
    "TEMPLATE_NAMES",
    "PER_CONVERSATION",
    "conversation_context",
    "system_templates",
    "packaged_prompts_dir",
]

TEMPLATE_NAMES = ("system.j2", "user.j2", "reask.j2", "map.j2", "reduce.j2", "analysis.j2")
#: The templates every analysis uses; ``analysis.j2`` joins them when the analysis has its own
#: fields or named criteria (and only then counts in :meth:`Prompts.fingerprint`).
BASE_TEMPLATES = TEMPLATE_NAMES[:5]

#: What opens a tag, as a reader sees it: ``<``, the characters NFKC makes ``<`` (full-width,
#: small) and look-alikes (angle brackets and quotation marks); then what reads as ``/``.
_OPENERS = "<\ufe64\uff1c\u2039\u2329\u3008\u27e8\u02c2\u1438"
_SLASHES = "/\uff0f\u2044\u2215\u29f8"
_OPENER = re.compile(f"[{_OPENERS}]")
#: The fences' names, as NFKC and casefold make them.
_FENCE_NAMES = ("transcript", "notes")
#: Characters a reader does not see between a tag's parts: spaces, controls, format characters
#: (zero-width, bidi) and combining marks.
_UNSEEN = frozenset(("Cc", "Cf", "Mn", "Me", "Zs", "Zl", "Zp"))
#: How far after its ``<`` a look-alike tag's name may end.
_TAG_REACH = 64
#: The most a template's ``range()`` may count, the longest sequence its ``*`` may repeat and
#: the largest power its ``**`` may raise: a template cannot stall or exhaust the process.
MAX_RANGE = 10_000
MAX_REPEAT = 1_000_000
MAX_POWER_BITS = 4_096


def packaged_prompts_dir() -> Path:
    """The folder of default templates: inside the wheel, or ``prompts/`` in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_prompts", here.parent / "prompts"):
        if (candidate / "system.j2").is_file():
            return candidate
    raise TemplateError(
        f"the packaged prompt templates are missing (looked in {here / '_prompts'})"
    )


def _fold(ch: str) -> str:
    return unicodedata.normalize("NFKC", ch).casefold()


def _unseen(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in _UNSEEN


def _fence_name_at(text: str, i: int) -> int | None:
    """Where the fence's name starts when ``text[i]`` opens something that reads as a
    ``<transcript>``, ``</transcript>``, ``<notes>`` or ``</notes>`` tag (after NFKC and
    casefold, with unseen characters anywhere inside it); else ``None``."""
    end = min(len(text), i + _TAG_REACH)
    j = i + 1
    while j < end and _unseen(text[j]):
        j += 1
    if j < end and (text[j] in _SLASHES or _fold(text[j]) == "/"):
        j += 1
        while j < end and _unseen(text[j]):
            j += 1
    start, folded = j, ""
    while j < end:
        ch = text[j]
        j += 1
        if _unseen(ch):
            continue
        folded += _fold(ch)
        if any(folded.startswith(name) for name in _FENCE_NAMES):
            return start
        if not any(name.startswith(folded) for name in _FENCE_NAMES):
            return None
    return None


def _data(text: str) -> str:
    """Keep dialogue from opening or closing the ``<transcript>`` and ``<notes>`` fences: a
    zero-width space goes before the name of anything that reads as one of their tags, whatever
    its case, spaces or look-alike characters (``</ transcript>``, ``\uff1c/transcript\uff1e``)."""
    text = str(text)
    cuts = [
        at for m in _OPENER.finditer(text) if (at := _fence_name_at(text, m.start())) is not None
    ]
    if not cuts:
        return text
    parts, last = [], 0
    for at in cuts:
        parts += [text[last:at], "\u200b"]
        last = at
    parts.append(text[last:])
    return "".join(parts)


def _bounded_range(*args: int) -> range:
    """``range`` for templates: at most :data:`MAX_RANGE` numbers."""
    from jinja2.exceptions import SecurityError

    numbers = range(*args)
    try:
        count = len(numbers)
    except OverflowError:  # more than the machine can count
        count = MAX_RANGE + 1
    if count > MAX_RANGE:
        raise SecurityError(f"{numbers}: over {MAX_RANGE:,} numbers")
    return numbers


@functools.cache
def _sandbox() -> type:
    """jinja2's immutable sandbox, bounded: a template's ``range()`` counts to
    :data:`MAX_RANGE` at most, ``*`` repeats a sequence to :data:`MAX_REPEAT` items and ``**``
    makes numbers of :data:`MAX_POWER_BITS` bits at most."""
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.globals["range"] = _bounded_range

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "**" and _whole(left) and _whole(right) and abs(left) > 1:
                if right * abs(left).bit_length() > MAX_POWER_BITS:
                    raise SecurityError(f"{left} ** {right}: a number too large")
            if operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if isinstance(seq, str | bytes | list | tuple) and _whole(times):
                        if len(seq) * times > MAX_REPEAT:
                            raise SecurityError(
                                f"a sequence repeated {times:,} times (over {MAX_REPEAT:,} items)"
                            )
            return super().call_binop(context, operator, left, right)

    return Sandbox


def _known_names_only(loader: Any) -> Any:
    """``loader``, serving the templates of :data:`TEMPLATE_NAMES` and nothing else."""
    from jinja2 import FunctionLoader, TemplateNotFound

    def load(name: str) -> Any:
        if name not in TEMPLATE_NAMES:
            raise TemplateNotFound(name)
        try:
            return loader.get_source(None, name)
        except TemplateNotFound:
            return None

    return FunctionLoader(load)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _mmss(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Prompts:
    """The templates of one configuration: the user's folder first, then the packaged ones."""

    def __init__(self, prompts_dir: Path | str | None = None) -> None:
        from jinja2 import ChoiceLoader, FileSystemLoader, StrictUndefined

        self.user_dir = Path(prompts_dir).expanduser() if prompts_dir else None
        if self.user_dir is not None and not self.user_dir.is_dir():
            raise TemplateError(f"{self.user_dir}: prompts folder not found (analysis.prompts_dir)")
        self.packaged_dir = packaged_prompts_dir()
        loaders = [FileSystemLoader(str(self.packaged_dir))]
        if self.user_dir is not None:  # the user's folder gives the known templates only
            loaders.insert(0, _known_names_only(FileSystemLoader(str(self.user_dir))))
        self._env = _sandbox()(
            loader=ChoiceLoader(loaders),
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
        """The file that provides template ``name``: one of :data:`TEMPLATE_NAMES`, never a path."""
        if name not in TEMPLATE_NAMES:
            raise TemplateError(f"no template named {name!r} (known: {', '.join(TEMPLATE_NAMES)})")
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
        except Exception as exc:  # noqa: BLE001 - whatever a template does wrong is its error
            raise TemplateError(f"{name}: rendering failed: {type(exc).__name__}: {exc}") from None

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
        static = self.static_context(analysis, schema=schema, mode=mode, spec=spec)
        return {**static, **conversation_context(transcript, turns), **extra}

    @staticmethod
    def static_context(
        analysis: AnalysisSettings,
        *,
        schema: dict[str, Any],
        mode: str,
        spec: AnalysisSpec | None = None,
    ) -> dict[str, Any]:
        """The variables of :meth:`context` that are the same for every conversation of an
        analysis (its settings, the schema): a caller with many conversations computes them
        once, and adds :func:`conversation_context`'s."""
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
        }

    def conversation_variables(self, names: Sequence[str]) -> frozenset[str] | None:
        """The variables of :data:`PER_CONVERSATION` that the templates ``names`` read, or
        None when that cannot be known (a template that includes, imports or extends another,
        or one that does not parse). A text rendered from templates that read none of them is
        the same for every conversation of an analysis."""
        from jinja2 import TemplateError as JinjaError
        from jinja2 import meta

        read: set[str] = set()
        for name in names:
            try:
                source = self._env.loader.get_source(self._env, name)[0]  # type: ignore[union-attr]
                ast = self._env.parse(source)
                if any(True for _ in meta.find_referenced_templates(ast)):
                    return None
                read |= meta.find_undeclared_variables(ast) & PER_CONVERSATION
            except (JinjaError, OSError):
                return None
        return frozenset(read)

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
        return "\n\n".join(self.render(name, **context) for name in system_templates(context))

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


#: The variables of a template's context that change from one conversation (or one part of a
#: long call) to the next: everything else is :meth:`Prompts.static_context`'s.
PER_CONVERSATION = frozenset(
    {"metadata", "turns", "tool_turns", "strategy", "part", "merging", "parts", "last_turns"}
)


def system_templates(context: dict[str, Any]) -> list[str]:
    """The templates of the instructions (:meth:`Prompts.system`), in order: ``system.j2``,
    then ``analysis.j2`` when the analysis has its own fields or named criteria."""
    if context.get("fields") or context.get("criteria"):
        return ["system.j2", "analysis.j2"]
    return ["system.j2"]


def conversation_context(
    transcript: Transcript | None = None, turns: Sequence[Turn] | None = None
) -> dict[str, Any]:
    """The variables of :meth:`Prompts.context` that depend on the conversation."""
    if turns is None:
        turns = transcript.dialogue if transcript is not None else []
    metadata = transcript.metadata if transcript is not None else CallMetadata()
    return {
        "metadata": metadata.model_dump(mode="json", exclude_defaults=True),
        "turns": _turns(turns),
        # tools' results, for a template that wants them as context (the defaults do not)
        "tool_turns": _turns(
            [t for t in transcript.turns if t.role == Role.TOOL] if transcript else []
        ),
        "strategy": "single",
        "part": None,
        "merging": False,
    }


def _turns(turns: Sequence[Turn]) -> list[dict[str, Any]]:
    return [
        {"role": t.role.value, "label": ROLE_LABELS[t.role], "text": t.text, "start": t.start}
        for t in turns
    ]


def _notes(notes: Sequence[Any]) -> list[dict[str, Any]]:
    return [n.model_dump() if hasattr(n, "model_dump") else dict(n) for n in notes]
