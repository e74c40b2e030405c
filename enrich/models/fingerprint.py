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

    def parts(self) -> list[str]:
        """The fingerprint as strings (a Batch API row's key in the ledger). Version 1 is the
        four hashes alone, as release 0.1 wrote them; a later version adds itself."""
        out = [self.transcript_hash, self.model, self.prompt_hash, self.taxonomy_hash]
        return out if self.version == 1 else [*out, f"v{self.version}"]

    def key(self) -> str:
        """One string for the whole fingerprint (a lease's holder): for version 1 the digest
        release 0.1 computed, so the two releases wait for each other's leases."""
        if self.version == 1:
            return digest(self.model_dump(exclude={"version"}))
        return digest(self.model_dump())
