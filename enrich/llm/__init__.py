"""The LLM adapter: validated structured output from any OpenAI-compatible server.

- :mod:`~enrich.llm.client`: :class:`StructuredLLM`, the direct path (send, retry, re-ask);
- :mod:`~enrich.llm.tokens`: offline token counters;
- :mod:`~enrich.llm.ratelimit`: pacing requests and tokens under the provider's limits.
"""

from .client import TOOL_NAME, LLMResult, LLMStats, StructuredLLM, format_validation_errors
from .ratelimit import RateLimiter
from .tokens import get_counter

__all__ = [
    "StructuredLLM",
    "LLMResult",
    "LLMStats",
    "RateLimiter",
    "TOOL_NAME",
    "format_validation_errors",
    "get_counter",
]
