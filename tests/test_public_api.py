"""The public API: what ``from enrich import ...`` offers, and that it is enough to use enrich.

A class that a public method or function takes or returns is part of the API whether or not it is
exported; if it is not in ``enrich.__all__``, a user can only name it (in a type hint, an
``isinstance``) through a private module path that the next layout change breaks.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import typing
from typing import Any

import pytest

import enrich

# What `from enrich import X` offered at release 0.1: each must keep working.
RELEASE_0_1 = [
    "__version__",
    "Enricher",
    "EnrichmentResult",
    "Config",
    "load_config",
    "Enrichment",
    "Evaluation",
    "MisunderstoodQuery",
    "ConversationUpdate",
    "Transcript",
    "Turn",
    "Role",
    "parse_transcript",
    "read_transcript",
    "CallMetadata",
    "Usage",
    "EnrichError",
    "InputError",
    "TranscriptError",
    "ConfigError",
    "TemplateError",
    "LLMError",
    "LLMTransportError",
    "LLMRefusalError",
    "LLMTruncatedError",
    "LLMValidationError",
    "ChatDashError",
    "ChatDashLookupError",
]

# Classes a batch hands to, or takes from, its caller; once missing from __all__. BatchItem is
# taken through ``items: Iterable[Any]``, so no signature names it: hence this explicit list.
BATCH_API = ["BatchItem", "BatchResult", "BatchRun", "ReplayReport", "CostEstimate"]

# Classes that a public method of an exported class reaches but that are deliberately not
# exported: the engine's plumbing, public on EnricherCore for the Batch API path and the CLI.
# Each entry says why; the test below fails when one is no longer reached, so the list stays true.
NOT_EXPORTED = {
    "LLMResult": "Enricher.afinish(): one LLM answer; the engine's own step, for the Batch API",
    "State": "Enricher.afinish(): a ledger state; the engine's own step, for the Batch API",
    "Price": "Config.price(): one model's row of the configured price table",
    "AnswerBase": "AnalysisSpec.output_model(): the base of the answer models a spec builds; "
    "users read the Enrichment it becomes",
}

# Dunder methods whose types a user meets: construction, iteration, context managers, calls.
PROTOCOL = {
    "__init__",
    "__call__",
    "__iter__",
    "__next__",
    "__aiter__",
    "__anext__",
    "__enter__",
    "__aenter__",
    "__getitem__",
}


def _namespace() -> dict[str, Any]:
    """Every class of every loaded enrich module, to resolve names imported for type checking
    only (``if TYPE_CHECKING:``), which ``get_type_hints`` cannot see in the module itself."""
    names: dict[str, Any] = {}
    for name, module in list(sys.modules.items()):
        if name == "enrich" or name.startswith("enrich."):
            for key, value in vars(module).items():
                if isinstance(value, type):
                    names.setdefault(key, value)
    return names


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj)
    except NameError:
        return typing.get_type_hints(obj, localns=_namespace())


def _enrich_classes(annotation: Any) -> set[type]:
    """The classes defined in enrich that ``annotation`` names, inside generics and unions."""
    found: set[type] = set()
    if isinstance(annotation, type) and annotation.__module__.split(".")[0] == "enrich":
        found.add(annotation)
    origin = typing.get_origin(annotation)
    if origin is not None:
        found |= _enrich_classes(origin)
    for arg in typing.get_args(annotation):
        found |= _enrich_classes(arg)
    return found


def _callables(cls: type) -> list[tuple[str, Any]]:
    """The public methods (with classmethods, staticmethods, properties and the protocol
    dunders) of ``cls`` and its bases, as plain functions."""
    out = []
    for name in dir(cls):
        if name.startswith("_") and name not in PROTOCOL:
            continue
        static = inspect.getattr_static(cls, name)
        if isinstance(static, property):
            static = static.fget
        elif isinstance(static, classmethod | staticmethod):
            static = static.__func__
        if inspect.isfunction(static) and static.__module__.split(".")[0] == "enrich":
            out.append((f"{cls.__name__}.{name}", static))
    return out


def _reached() -> dict[type, str]:
    """Each enrich class taken or returned by Enricher's public methods and by the functions and
    the classes' public methods in ``enrich.__all__``, with one place that names it."""
    targets: list[tuple[str, Any]] = [("Enricher", enrich.Enricher)]
    targets += [(name, getattr(enrich, name)) for name in enrich.__all__ if name != "__version__"]
    functions: list[tuple[str, Any]] = []
    for name, obj in targets:
        if isinstance(obj, type):
            functions += _callables(obj)
        elif callable(obj):
            functions.append((name, obj))
    reached: dict[type, str] = {}
    for where, function in functions:
        for param, annotation in _hints(function).items():
            for cls in _enrich_classes(annotation):
                reached.setdefault(cls, f"{where} ({param})")
    return reached


def _covered(cls: type, exported: set[type]) -> bool:
    """Exported itself, or a base of an exported class (EnricherCore: pass an Enricher)."""
    return cls in exported or any(issubclass(e, cls) for e in exported)


@pytest.mark.parametrize("name", enrich.__all__)
def test_every_name_in_all_is_defined(name):
    assert getattr(enrich, name, None) is not None, name
    namespace: dict[str, Any] = {}
    exec(f"from enrich import {name}", namespace)
    assert namespace[name] is getattr(enrich, name)


def test_all_has_no_duplicates_and_star_import_gives_it():
    assert len(enrich.__all__) == len(set(enrich.__all__))
    namespace: dict[str, Any] = {}
    exec("from enrich import *", namespace)
    assert set(enrich.__all__) <= set(namespace)


@pytest.mark.parametrize("name", RELEASE_0_1)
def test_what_release_0_1_exported_still_imports(name):
    module = importlib.import_module("enrich")
    assert hasattr(module, name), f"`from enrich import {name}` worked at release 0.1"
    assert name in enrich.__all__


@pytest.mark.parametrize("name", BATCH_API)
def test_batch_classes_are_exported(name):
    assert name in enrich.__all__
    assert isinstance(getattr(enrich, name), type)


def test_every_class_in_a_public_signature_is_exported():
    exported = {v for k in enrich.__all__ if isinstance(v := getattr(enrich, k), type)}
    missing = {
        f"{cls.__module__}.{cls.__qualname__}: {where}"
        for cls, where in _reached().items()
        if not _covered(cls, exported) and cls.__name__ not in NOT_EXPORTED
    }
    assert not missing, "public signatures name classes missing from enrich.__all__:\n" + (
        "\n".join(sorted(missing))
    )


def test_signature_walk_finds_the_batch_classes():
    """The walk itself works: it reaches the classes a batch returns (so dropping one from
    __all__ fails the test above), and every NOT_EXPORTED entry is still reached."""
    names = {cls.__name__ for cls in _reached()}
    assert {"BatchRun", "BatchResult", "ReplayReport", "CostEstimate", "EnrichmentResult"} <= names
    stale = set(NOT_EXPORTED) - names
    assert not stale, f"NOT_EXPORTED lists classes no public signature reaches: {sorted(stale)}"
    exported = set(enrich.__all__)
    assert not set(NOT_EXPORTED) & exported, "exported now: remove from NOT_EXPORTED"
