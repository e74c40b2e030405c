"""Transcript formats: any supported payload in, one ordered list of turns out.

:func:`parse_transcript` (and :func:`read_transcript` for a file or standard input) decodes the
input once and asks the registered formats in turn, or only the one named. Each module here
registers its format when imported; this package imports them all, so the registry is complete
whenever a transcript is parsed. Detection tries them in this order: ``text`` and ``chat``, then
``chatdash``, ``elevenlabs``, ``retell``, ``vapi``. Each recognises its own shape only (ChatDash: a
list of messages with ``sender``; Retell: ``call_id``, ``chat_id`` or an ``event`` + ``call``
envelope, or the older ``event`` + ``data``; Vapi: the ``end-of-call-report`` message; ElevenLabs:
``conversation_id``, a ``post_call_*`` webhook, or its transcript entries alone), so the order does
not decide between them.

A new format is one module here that calls :func:`register_format`, imported below.
"""

from ._registry import (
    DEFAULT_MAX_BYTES,
    TranscriptFormat,
    decode_text,
    formats,
    parse_transcript,
    read_transcript,
    register_format,
)

# isort: off
# The import order is the detection order: each module registers its format when imported.
from . import text, chat, chatdash, elevenlabs, retell, vapi  # noqa: E402,F401
# isort: on

__all__ = [
    "DEFAULT_MAX_BYTES",
    "TranscriptFormat",
    "decode_text",
    "formats",
    "parse_transcript",
    "read_transcript",
    "register_format",
]
