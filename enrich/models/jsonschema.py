"""The JSON Schema of a ``json`` custom field: made strict, and checked against the answer.

Structured outputs in strict mode take a subset of JSON Schema: every object lists its
properties, all of them required, and no others. A user's schema is accepted when it stays
within the keywords below; :func:`make_strict` then closes every object and turns each property
the schema did not require into one that may be ``null`` ("not mentioned"), so the model is never
pushed into inventing a value. Anything else (``oneOf``, ``$ref``, ``patternProperties``, an
object without properties...) cannot be made strict and is refused with its place.

:func:`check` validates a value against the strict schema, for the modes whose server does not
enforce the schema itself (``json_object``, ``tools``) and as a last guard for the others; its
messages go back to the model in a re-ask.
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_strict", "nullable", "check", "SchemaError", "KEYWORDS"]

#: The keywords a field's schema may use.
KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "description",
        "title",
        "anyOf",
        "minimum",
        "maximum",
        "minItems",
        "maxItems",
    }
)
_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})


class SchemaError(ValueError):
    """A schema that cannot be made strict; the message names the place (``$.a.b``)."""


def _types(node: dict[str, Any], where: str) -> list[str]:
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for k in kinds:
        if k not in _TYPES:
            raise SchemaError(f"{where}: unknown type {k!r} (use {', '.join(sorted(_TYPES))})")
    return kinds


def make_strict(schema: Any, where: str = "$") -> dict[str, Any]:
    """``schema`` made strict-mode compatible, or :class:`SchemaError` saying where it cannot."""
    if not isinstance(schema, dict):
        raise SchemaError(f"{where}: a schema must be an object")
    unknown = sorted(set(schema) - KEYWORDS)
    if unknown:
        raise SchemaError(
            f"{where}: {', '.join(repr(k) for k in unknown)} cannot be made strict "
            f"(supported: {', '.join(sorted(KEYWORDS))})"
        )
    if "anyOf" in schema:
        options = schema["anyOf"]
        if not isinstance(options, list) or not options:
            raise SchemaError(f"{where}.anyOf: a non-empty list of schemas")
        out = {k: v for k, v in schema.items() if k not in ("anyOf", "title")}
        out["anyOf"] = [make_strict(o, f"{where}.anyOf[{i}]") for i, o in enumerate(options)]
        return out
    kinds = _types(schema, where)
    if not kinds and "enum" not in schema:
        raise SchemaError(f"{where}: needs a 'type' (or an 'enum')")
    out = {k: v for k, v in schema.items() if k != "title"}
    if "object" in kinds:
        properties = schema.get("properties")
        if not isinstance(properties, dict) or not properties:
            raise SchemaError(f"{where}: an object needs its 'properties' listed in strict mode")
        if schema.get("additionalProperties", False) is not False:
            raise SchemaError(f"{where}: additionalProperties must be false in strict mode")
        required = schema.get("required", list(properties))
        if not isinstance(required, list) or set(required) - set(properties):
            raise SchemaError(f"{where}.required: names of listed properties only")
        props = {}
        for name, sub in properties.items():
            strict = make_strict(sub, f"{where}.{name}")
            props[name] = strict if name in required else nullable(strict)
        out["properties"] = props
        out["required"] = list(properties)
        out["additionalProperties"] = False
    if "array" in kinds:
        if "items" not in schema:
            raise SchemaError(f"{where}: an array needs 'items'")
        out["items"] = make_strict(schema["items"], f"{where}[]")
    return out


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` that also admits ``null``."""
    kind = schema.get("type")
    if "anyOf" in schema:
        if not any(o.get("type") == "null" for o in schema["anyOf"]):
            return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}
        return schema
    if isinstance(kind, list):
        return schema if "null" in kind else {**schema, "type": [*kind, "null"]}
    if kind is None:  # an enum alone
        values = schema.get("enum", [])
        return schema if None in values else {**schema, "enum": [*values, None]}
    out = {**schema, "type": [kind, "null"]}
    if "enum" in out and None not in out["enum"]:
        out["enum"] = [*out["enum"], None]
    return out


def _is(value: Any, kind: str) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    return isinstance(value, dict)  # object


def check(value: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """Where ``value`` breaks the strict ``schema``: one line per problem (none: valid)."""
    at = where or "value"
    if "anyOf" in schema:
        if any(not check(value, option, where) for option in schema["anyOf"]):
            return []
        return [f"{at}: matches none of the allowed shapes"]
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(repr(v) for v in schema["enum"])
        return [f"{at}: {value!r} is not one of {allowed}"]
    kinds = _types(schema, at) if "type" in schema else []
    if kinds and not any(_is(value, k) for k in kinds):
        return [f"{at}: expected {' or '.join(kinds)}, got {type(value).__name__}"]
    problems: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        for name in sorted(set(value) - set(props)):
            problems.append(f"{at}: unexpected key {name!r}")
        for name, sub in props.items():
            if name not in value:
                problems.append(f"{at}: missing key {name!r}")
            else:
                problems += check(value[name], sub, f"{where}.{name}" if where else name)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += check(item, schema["items"], f"{where}[{i}]")
        if "minItems" in schema and len(value) < schema["minItems"]:
            problems.append(f"{at}: at least {schema['minItems']} item(s)")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append(f"{at}: at most {schema['maxItems']} item(s)")
    if _is(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{at}: at least {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{at}: at most {schema['maximum']}")
    return problems
