"""enrich: turn a finished conversation into analytics and write them back to ChatDash.

>>> from enrich import Enricher
>>> enricher = Enricher.from_env()                  # doctest: +SKIP
>>> transcript = open("call.txt").read()                                   # doctest: +SKIP
>>> result = enricher.enrich_and_write("agent-1", "conv-1", transcript)     # doctest: +SKIP

The package is layered; each layer imports only those below it (README, "Architecture"):
``errors``; ``models`` (pure data: transcript, analysis spec, enrichment, results); ``config``;
the adapters ``formats``, ``prompts``, ``llm``, ``chatdash``, ``ledger``, ``resultfiles``; the
``engine`` that composes them; the applications (``report``); and the ``cli``.
"""

from ._version import __version__
from .config import Config, load_config
from .engine import BatchRun, Enricher, Profile
from .errors import (
    ChatDashError,
    ChatDashLookupError,
    ConfigError,
    EnrichError,
    InputError,
    LLMError,
    LLMProtocolError,
    LLMRefusalError,
    LLMTransportError,
    LLMTruncatedError,
    LLMValidationError,
    TemplateError,
    TranscriptError,
)
from .formats import parse_transcript, read_transcript
from .models import (
    AnalysisSpec,
    BatchItem,
    BatchResult,
    CallMetadata,
    ConversationUpdate,
    CostEstimate,
    Criterion,
    CriterionVerdict,
    CustomField,
    Enrichment,
    EnrichmentResult,
    Evaluation,
    Fingerprint,
    MisunderstoodQuery,
    ReplayReport,
    Role,
    Transcript,
    Turn,
    Usage,
)

__all__ = [
    "__version__",
    "Enricher",
    "EnrichmentResult",
    "BatchItem",
    "BatchResult",
    "BatchRun",
    "CostEstimate",
    "ReplayReport",
    "Config",
    "load_config",
    "AnalysisSpec",
    "CustomField",
    "Criterion",
    "CriterionVerdict",
    "Profile",
    "Fingerprint",
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
    "LLMProtocolError",
    "LLMTransportError",
    "LLMRefusalError",
    "LLMTruncatedError",
    "LLMValidationError",
    "ChatDashError",
    "ChatDashLookupError",
]
