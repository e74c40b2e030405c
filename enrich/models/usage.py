"""Token usage, summed over every LLM request that one result cost."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

__all__ = ["Usage", "key_or_attr"]


class Usage(BaseModel):
    """Tokens spent: ``prompt_tokens`` includes ``cached_tokens``; ``requests`` counts the calls."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    requests: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            requests=self.requests + other.requests,
        )

    @classmethod
    def from_openai(cls, usage: Any) -> Usage:
        """Read an OpenAI ``CompletionUsage``, or its JSON (or ``None``, for servers that send
        none)."""
        if usage is None:
            return cls(requests=1)
        cached = key_or_attr(key_or_attr(usage, "prompt_tokens_details"), "cached_tokens") or 0
        return cls(
            prompt_tokens=key_or_attr(usage, "prompt_tokens") or 0,
            completion_tokens=key_or_attr(usage, "completion_tokens") or 0,
            cached_tokens=cached,
            requests=1,
        )


def key_or_attr(value: Any, name: str) -> Any:
    """``value``'s ``name``: a key of a dict (JSON), else an attribute (an SDK model)."""
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)
