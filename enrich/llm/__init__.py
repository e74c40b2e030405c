"""The LLM adapter: validated structured output from any OpenAI-compatible server.

- :mod:`~enrich.llm.wire`: the chat completions wire (request bodies, reading and validating
  answers, re-ask messages), pure and shared by both paths;
- :mod:`~enrich.llm.client`: :class:`StructuredLLM`, the direct path (send, retry, re-ask);
- :mod:`~enrich.llm.batches`: :class:`BatchAPI`, OpenAI's Batch API (upload, create, poll,
  download);
- :mod:`~enrich.llm.tokens`: offline token counters;
- :mod:`~enrich.llm.ratelimit`: pacing requests and tokens under the provider's limits.
"""

from .batches import BatchAPI, BatchRequest, BatchStatus
from .client import LLMResult, LLMStats, StructuredLLM
from .ratelimit import RateLimiter, SharedRateLimiter
from .tokens import get_counter
from .wire import TOOL_NAME, Answer, Validated, reask_messages, validate

__all__ = [
    "StructuredLLM",
    "LLMResult",
    "LLMStats",
    "BatchAPI",
    "BatchRequest",
    "BatchStatus",
    "Answer",
    "Validated",
    "validate",
    "reask_messages",
    "RateLimiter",
    "SharedRateLimiter",
    "TOOL_NAME",
    "get_counter",
]
