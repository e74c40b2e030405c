"""OpenAI's Batch API, the LLM adapter's side: upload, create, poll, download.

:class:`BatchAPI` is built from a :class:`~enrich.llm.StructuredLLM` and uses its settings (the
request body of each row is exactly the one the direct path sends) and its SDK client. It knows
nothing of conversations or the ledger: :mod:`enrich.engine.batchapi` decides which rows to send,
keeps the job in the ledger, and re-asks what the batch did not answer well. Answers come back
as :class:`~enrich.llm.wire.Answer` objects, read as a direct answer is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import ValidationError

from .wire import Answer, read_answer

if TYPE_CHECKING:
    from .client import StructuredLLM

__all__ = ["BatchAPI", "BatchRequest", "BatchStatus", "BATCH_ENDPOINT"]

#: The endpoint every row of a batch is sent to.
BATCH_ENDPOINT = "/v1/chat/completions"
#: The statuses after which a batch changes no more.
_DONE = frozenset({"completed", "failed", "expired", "cancelled"})


class BatchRequest(NamedTuple):
    """One row of a batch: its ``custom_id`` (unique in the batch), the conversation so far and
    the schema the answer must follow."""

    custom_id: str
    messages: list[dict[str, Any]]
    schema: dict[str, Any]


@dataclass(frozen=True)
class BatchStatus:
    """Where a batch stands. ``total`` is ``None`` when the provider sent no counts yet."""

    id: str
    status: str
    completed: int = 0
    failed: int = 0
    total: int | None = None
    output_file_id: str | None = None

    @property
    def done(self) -> bool:
        """Completed, failed, expired or cancelled: polling again changes nothing."""
        return self.status in _DONE


class BatchAPI:
    """The Batch API calls of one :class:`~enrich.llm.StructuredLLM` (its settings, its client).

    Made, it has checked that the LLM can be called at all: a missing key is a
    :class:`~enrich.errors.ConfigError` at once, not a failed batch.
    """

    def __init__(self, llm: StructuredLLM) -> None:
        llm.check()
        self.llm = llm

    def __repr__(self) -> str:
        return f"BatchAPI({self.llm!r})"

    def jsonl(self, requests: Iterable[BatchRequest]) -> bytes:
        """The input file: one chat completion request a line, as the direct path would send
        it."""
        lines = [
            json.dumps(
                {
                    "custom_id": r.custom_id,
                    "method": "POST",
                    "url": BATCH_ENDPOINT,
                    "body": self.llm.request_body(r.messages, r.schema),
                },
                ensure_ascii=False,
            )
            for r in requests
        ]
        return ("\n".join(lines) + "\n").encode()

    async def submit(self, requests: Iterable[BatchRequest]) -> str:
        """Upload the rows and create a batch of them (24-hour window); return its id."""
        client = self.llm.client()
        upload = await client.files.create(
            file=("enrich-batch.jsonl", self.jsonl(requests)), purpose="batch"
        )
        created = await client.batches.create(
            input_file_id=upload.id, endpoint=BATCH_ENDPOINT, completion_window="24h"
        )
        return created.id

    async def status(self, batch_id: str) -> BatchStatus:
        """The batch's status and counts, as the provider has them now."""
        batch = await self.llm.client().batches.retrieve(batch_id)
        counts = batch.request_counts
        return BatchStatus(
            id=batch.id,
            status=batch.status,
            completed=counts.completed if counts else 0,
            failed=counts.failed if counts else 0,
            total=counts.total if counts else None,
            output_file_id=batch.output_file_id,
        )

    async def answers(self, status: BatchStatus) -> dict[str, Answer | None]:
        """The answer of every row in the batch's output file, by ``custom_id`` (none when it
        has no output file). A row the provider answered with an error (not HTTP 200), or whose
        body is not a ChatCompletion, maps to ``None``: it was attempted, but there is nothing to
        read."""
        if not status.output_file_id:
            return {}
        content = await self.llm.client().files.content(status.output_file_id)
        return read_output(content.text)


def read_output(text: str) -> dict[str, Answer | None]:
    """The rows of a batch output file (JSONL), by ``custom_id``: see :meth:`BatchAPI.answers`."""
    out: dict[str, Answer | None] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        response = row.get("response") or {}
        answer = None
        if response.get("status_code") == 200:
            try:
                answer = read_answer(response.get("body") or {})
            except ValidationError:  # not a ChatCompletion: ask this row directly
                answer = None
        out[row["custom_id"]] = answer
    return out
