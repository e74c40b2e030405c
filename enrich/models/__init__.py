"""Pure data: the transcript, the analysis spec, the enrichment, the PUT body, results, usage and
fingerprints. No I/O and nothing from the layers above (configuration, adapters, the engine)."""

from .enrichment import (
    CriterionVerdict,
    Enrichment,
    Evaluation,
    MisunderstoodQuery,
    PartNotes,
    ground_queries,
)
from .fields import PRESETS, Criterion, CustomField
from .fingerprint import Fingerprint, digest
from .results import (
    BatchItem,
    BatchResult,
    BatchTotals,
    CostEstimate,
    EnrichmentResult,
    EstimateRow,
    ReplayReport,
)
from .spec import WRITABLE_FIELDS, AnalysisSpec, Subtopic, Topic
from .transcript import ROLE_LABELS, CallMetadata, Role, Transcript, Turn
from .update import ConversationUpdate, UpdateEvaluation, UpdateQuery
from .usage import Usage

__all__ = [
    "AnalysisSpec",
    "Criterion",
    "CriterionVerdict",
    "CustomField",
    "PRESETS",
    "BatchItem",
    "BatchResult",
    "BatchTotals",
    "CallMetadata",
    "ConversationUpdate",
    "CostEstimate",
    "Enrichment",
    "EnrichmentResult",
    "EstimateRow",
    "Evaluation",
    "Fingerprint",
    "MisunderstoodQuery",
    "PartNotes",
    "ROLE_LABELS",
    "ReplayReport",
    "Role",
    "Subtopic",
    "Topic",
    "Transcript",
    "Turn",
    "UpdateEvaluation",
    "UpdateQuery",
    "Usage",
    "WRITABLE_FIELDS",
    "digest",
    "ground_queries",
]
