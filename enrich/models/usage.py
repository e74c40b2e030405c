"""Token usage, summed over every LLM request that one result cost."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["Usage"]


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
        """Read an OpenAI ``CompletionUsage`` (or ``None``, for servers that send none)."""
        if usage is None:
            return cls(requests=1)
        details = getattr(usage, "prompt_tokens_details", None)
        cached = getattr(details, "cached_tokens", None) or 0
        return cls(
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            cached_tokens=cached,
            requests=1,
        )
