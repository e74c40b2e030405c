"""Bounds on what one conversation may cost the engine, whatever its source.

- :func:`parse_bounded`: ``input.max_bytes`` applies to every transcript, not only to bytes and
  text: a value that arrives already parsed (a dict or a list, from the library, inline in a
  batch line, or ChatDash's messages) is measured by its JSON encoding (UTF-8, compact), and a
  :class:`~enrich.models.transcript.Transcript` by its turns' text, before anything is parsed or
  sent anywhere. Over the limit: the same :class:`~enrich.errors.TranscriptError` as a file.
- :func:`aground`: grounding the misunderstood queries in the user's turns (near-linear, see
  :func:`~enrich.models.enrichment.ground_queries`) runs in a worker thread when the user's text
  is large, so one long call never blocks the other conversations of a batch.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

from ..errors import TranscriptError
from ..formats import parse_transcript
from ..models.enrichment import MisunderstoodQuery, ground_queries
from ..models.transcript import Transcript

__all__ = ["parse_bounded", "encoded_size", "aground", "GROUND_IN_THREAD_CHARS"]

#: User text longer than this (characters) is grounded in a worker thread, off the event loop.
GROUND_IN_THREAD_CHARS = 50_000


def encoded_size(value: Any, limit: int) -> int:
    """The size in bytes of ``value``'s compact JSON (UTF-8) encoding; counting stops just past
    ``limit``, so a huge value is never encoded whole."""
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
    size = 0
    for chunk in encoder.iterencode(value):
        size += len(chunk.encode("utf-8", "surrogatepass"))
        if size > limit:
            break
    return size


def _transcript_size(transcript: Transcript, limit: int) -> int:
    size = 0
    for turn in transcript.turns:
        size += len(turn.text.encode("utf-8", "surrogatepass"))
        if size > limit:
            break
    return size


def parse_bounded(data: Any, *, format: str | None, source: str, max_bytes: int) -> Transcript:
    """:func:`~enrich.formats.parse_transcript`, with ``max_bytes`` applied to every kind of
    input (text and bytes are measured by the parser itself)."""
    if isinstance(data, (dict, list)):
        size, what = encoded_size(data, max_bytes), "input (as JSON)"
    elif isinstance(data, Transcript):
        size, what = _transcript_size(data, max_bytes), "transcript's text"
    else:
        size, what = 0, ""
    if size > max_bytes:
        raise TranscriptError(
            f"{what} is over {max_bytes:,} bytes, the limit (input.max_bytes in the configuration)",
            source=source,
        )
    return parse_transcript(data, format=format, source=source, max_bytes=max_bytes)


async def aground(
    queries: Iterable[MisunderstoodQuery], user_texts: list[str]
) -> tuple[list[MisunderstoodQuery], list[str]]:
    """:func:`~enrich.models.enrichment.ground_queries`, off the event loop for large text."""
    queries = list(queries)
    if queries and sum(len(t) for t in user_texts) > GROUND_IN_THREAD_CHARS:
        return await asyncio.to_thread(ground_queries, queries, user_texts)
    return ground_queries(queries, user_texts)
