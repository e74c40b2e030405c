"""Fingerprints: what an enrichment depends on. The same fingerprint is the same question to the
LLM, so the ledger's answer is reused instead of paying again.

A fingerprint carries a ``version``: the way its hashes are computed. Hashes of another version
never match, so a change in how they are computed re-enriches rather than reusing a stale answer.
Version 1 is the scheme of release 0.1; ledgers it wrote are read as version 1.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

__all__ = ["Fingerprint", "digest", "FINGERPRINT_VERSION"]

#: The version of the hashing scheme this release computes.
FINGERPRINT_VERSION = 1


def digest(value: Any) -> str:
    """A stable SHA-256 of a JSON-able value."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Fingerprint(BaseModel):
    """What an enrichment depends on: the transcript, the model, the prompts and analysis
    (``prompt_hash``), and the taxonomy."""

    transcript_hash: str
    model: str
    prompt_hash: str
    taxonomy_hash: str
    version: int = FINGERPRINT_VERSION

    def key(self) -> str:
        """One string for the whole fingerprint (a lease's holder, a Batch API row's key)."""
        return digest(self.model_dump(exclude={"version"}))
