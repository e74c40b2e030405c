"""Items of a batch: reading them, and enriching one of them into a result that never raises.

Shared by the direct path (:mod:`enrich.engine.batch`) and the Batch API path
(:mod:`enrich.engine.batchapi`). An item is a :class:`~enrich.models.results.BatchItem`, a dict
with ``agent_id``, ``conversation_id`` (or ``platform_id``) and optionally ``transcript``, or an
``(agent_id, conversation_id[, transcript])`` tuple; one that cannot be read becomes a
:class:`~enrich.models.results.BadItem`, and then a failed result naming its line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import EnrichError, InputError, TranscriptError, error_class, validation_errors
from ..formats import decode_text
from ..models.results import BadItem, BatchItem, BatchResult, Stage, Status
from .core import EnricherCore

__all__ = [
    "to_item",
    "read_items",
    "aiter_items",
    "where",
    "bad_result",
    "failed_result",
    "skipped_result",
    "enrich_item",
    "STAGES",
]

#: A failed item's stage, by the class of its error (:func:`enrich.errors.error_class`).
STAGES: dict[str, Stage] = {
    "input": "input",
    "config": "config",
    "llm": "llm",
    "chatdash": "chatdash",
    "ledger": "ledger",
    "enrich": "config",
    "internal": "internal",
}


def to_item(raw: Any) -> BatchItem | BadItem:
    if isinstance(raw, (BatchItem, BadItem)):
        return raw
    try:
        if isinstance(raw, tuple):
            raw = dict(zip(("agent_id", "conversation_id", "transcript"), raw, strict=False))
        item = BatchItem.model_validate(raw)
    except ValidationError as exc:
        line = raw.get("line") if isinstance(raw, dict) else None
        return BadItem(line=line, error=validation_errors(exc)[0])
    if not (item.conversation_id or item.platform_id):
        return BadItem(line=item.line, error="needs conversation_id (or platform_id)")
    return item


def read_items(path: str | Path) -> Iterator[BatchItem | BadItem]:
    """Items from a JSON Lines file (``-`` for standard input), one at a time; a bad line
    becomes a failed result naming its number, not an error that stops the batch."""
    if str(path) != "-" and Path(path).is_dir():
        raise InputError(f"{path}: is a directory, not a JSON Lines file")
    stream = sys.stdin.buffer if str(path) == "-" else open(path, "rb")  # noqa: SIM115
    try:
        for number, raw in enumerate(stream, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
            except UnicodeDecodeError as exc:
                try:  # Windows-1252 or Latin-1 text is read, with a warning, as a file would be
                    line = decode_text(raw, f"line {number}", len(raw) + 1).strip()
                except TranscriptError:
                    yield BadItem(
                        line=number,
                        error=f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                        f"{exc.start + 1}), and not Windows-1252 or Latin-1 text either",
                    )
                    continue
            if not line:
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                yield BadItem(line=number, error=f"invalid JSON at column {exc.colno}: {exc.msg}")
                continue
            if not isinstance(data, dict):
                yield BadItem(line=number, error="expected a JSON object")
                continue
            data["line"] = number
            yield to_item(data)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def where(item: BatchItem) -> str:
    return f"line {item.line}" if item.line else f"conversation {item.conversation_id}"


def bad_result(item: BadItem) -> BatchResult:
    """The failed result of an item that could not be read."""
    return BatchResult(
        line=item.line,
        status="failed",
        ok=False,
        error=item.error,
        error_type="InputError",
        stage="input",
    )


def skipped_result(item: BatchItem, conversation_id: str, result: Any) -> BatchResult:
    """The result of an item skipped with no LLM call: written before (``result`` says so) or
    nothing to analyse (``result.skipped`` says why)."""
    return BatchResult(
        agent_id=item.agent_id,
        conversation_id=conversation_id,
        line=item.line,
        status="skipped",
        ok=True,
        result=result,
    )


def failed_result(
    item: BatchItem, conversation_id: str | None, exc: Exception, start: float
) -> BatchResult:
    """The failed result of an item whose enrichment raised ``exc`` (kept, if it was paid)."""
    message = str(exc) if isinstance(exc, EnrichError) else f"internal error: {exc!r}"
    return BatchResult(
        agent_id=item.agent_id,
        conversation_id=conversation_id,
        line=item.line,
        status="failed",
        ok=False,
        result=getattr(exc, "result", None),
        usage=getattr(exc, "usage", None),  # what an LLM error's attempts spent
        cost=getattr(exc, "cost", None),
        error=message,
        error_type=type(exc).__name__,
        stage=STAGES[error_class(exc)],
        seconds=time.perf_counter() - start,
    )


async def enrich_item(enricher: EnricherCore, raw: Any, *, write: bool, force: bool) -> BatchResult:
    start = time.perf_counter()
    item = to_item(raw)
    if isinstance(item, BadItem):
        return bad_result(item)
    conversation_id = item.conversation_id
    try:
        transcript = item.transcript
        if transcript is not None:  # parsed here, so that an error names the line
            transcript = enricher.parse(transcript, format=item.format, source=where(item))
        if conversation_id is None:
            conversation_id = await enricher.aresolve(item.agent_id, item.platform_id or "")
        if write:
            result = await enricher.aenrich_and_write(
                item.agent_id,
                conversation_id,
                transcript,
                format=item.format,
                force=force,
                skip_written=True,
            )
            status: Status = "skipped" if result.already_written or result.skipped else "written"
        else:
            if transcript is None:
                transcript = await enricher.afetch(item.agent_id, conversation_id)
            result = await enricher.aenrich(
                transcript,
                format=item.format,
                agent_id=item.agent_id,
                conversation_id=conversation_id,
                force=force,
            )
            status = "skipped" if result.skipped else "enriched"
    except Exception as exc:  # noqa: BLE001 - one failure never aborts the batch
        return failed_result(item, conversation_id, exc, start)
    return BatchResult(
        agent_id=item.agent_id,
        conversation_id=conversation_id,
        line=item.line,
        status=status,
        ok=True,
        result=result,
        seconds=time.perf_counter() - start,
    )


async def aiter_items(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
