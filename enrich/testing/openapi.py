"""A validator for the subset of OpenAPI 3.0 schemas the ChatDash contract uses: what
:class:`~enrich.testing.FakeChatDash` checks each PUT body with, and tests check bodies with."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["validate_openapi"]


def validate_openapi(value: Any, schema: dict[str, Any], where: str = "body") -> list[str]:
    """Check ``value`` against an OpenAPI 3.0 schema (the subset the ChatDash contract uses).

    Objects with declared ``properties`` admit no other keys; ``null`` is never valid (the
    contract declares no nullable field).
    """
    errors: list[str] = []
    kind = schema.get("type")
    if value is None:
        return [f"{where}: null is not allowed"]
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{where}: expected an object"]
        props = schema.get("properties")
        if props is not None:
            for key, item in value.items():
                if key not in props:
                    errors.append(f"{where}.{key}: unknown field")
                else:
                    errors += validate_openapi(item, props[key], f"{where}.{key}")
    elif kind == "array":
        if not isinstance(value, list):
            return [f"{where}: expected an array"]
        for i, item in enumerate(value):
            errors += validate_openapi(item, schema.get("items", {}), f"{where}[{i}]")
    elif kind == "string":
        if not isinstance(value, str):
            return [f"{where}: expected a string"]
        if schema.get("format") == "date-time" and not re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value
        ):
            errors.append(f"{where}: not an RFC 3339 date-time")
    elif kind == "boolean":
        if not isinstance(value, bool):
            return [f"{where}: expected a boolean"]
    elif kind in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return [f"{where}: expected a number"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    return errors
