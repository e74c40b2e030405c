"""The platforms' transcript formats: each module registers its format with
:func:`enrich.transcript.register_format` when imported.

``enrich.transcript`` imports this package at its end, so the registry is complete whenever
transcripts are parsed. Detection tries the formats in registration order: ``text`` and ``chat``
(from ``enrich.transcript``), then ``chatdash``, ``elevenlabs``, ``retell``, ``vapi``. Each
recognises its own shape only (ChatDash: a list of messages with ``sender``; Retell: ``call_id``,
``chat_id`` or an ``event`` + ``call`` envelope; Vapi: the ``end-of-call-report`` message;
ElevenLabs: ``conversation_id`` or a ``post_call_*`` webhook), so the order does not decide
between them.
"""

from . import chatdash, elevenlabs, retell, vapi  # noqa: F401  (import order = detection order)

__all__ = ["chatdash", "elevenlabs", "retell", "vapi"]
