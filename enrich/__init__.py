"""enrich: turn a finished conversation into analytics and write them back to ChatDash.

>>> from enrich import Enricher
>>> enricher = Enricher.from_env()                  # doctest: +SKIP
>>> transcript = open("call.txt").read()                                   # doctest: +SKIP
>>> result = enricher.enrich_and_write("agent-1", "conv-1", transcript)     # doctest: +SKIP

The modules, in the order data flows through them: ``transcript`` (any format into turns),
``prompts`` (render), ``llm`` (structured output), ``schema`` (validated enrichment, then the
PUT body), ``chatdash`` (write); ``pipeline`` composes them, ``cli`` is a thin shell over it,
``config`` and ``errors`` are shared.
"""

from ._version import __version__
from .config import Config, load_config
from .errors import (
    ChatDashError,
    ChatDashLookupError,
    ConfigError,
    EnrichError,
    InputError,
    LLMError,
    LLMRefusalError,
    LLMTransportError,
    LLMTruncatedError,
    LLMValidationError,
    TemplateError,
    TranscriptError,
)
from .pipeline import Enricher, EnrichmentResult
from .schema import ConversationUpdate, Enrichment, Evaluation, MisunderstoodQuery
from .transcript import CallMetadata, Role, Transcript, Turn, parse_transcript, read_transcript
from .usage import Usage

__all__ = [
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
