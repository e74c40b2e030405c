"""Webhook deliveries signed exactly as each platform signs them, for tests of ``enrich serve``
(and of your own receiver): each function returns the headers to send with ``body``, the raw
bytes of the request.

- :func:`retell_headers`: ``x-retell-signature: v=<unix ms>,d=<hex>``, HMAC-SHA256 of
  ``body + str(v)`` keyed with the Retell API key (Retell's SDK, ``retell.lib.webhook_auth``:
  ``sign(input_str, secret, timestamp)``).
- :func:`elevenlabs_headers`: ``ElevenLabs-Signature: t=<unix s>,v0=<hex>``, HMAC-SHA256 of
  ``f"{t}.{body}"`` keyed with the webhook secret (the ElevenLabs SDK's ``construct_event``).
- :func:`vapi_headers`: a Bearer Token credential (``Authorization: Bearer <secret>``), the
  legacy server secret (``X-Vapi-Secret``), or an HMAC credential (signature and timestamp
  headers, ``{timestamp}.{body}`` signed, hex).
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["retell_headers", "elevenlabs_headers", "vapi_headers"]


def retell_headers(body: bytes, api_key: str, *, at_ms: int | None = None) -> dict[str, str]:
    stamp = int(time.time() * 1000) if at_ms is None else at_ms
    digest = hmac.new(api_key.encode(), body + str(stamp).encode(), hashlib.sha256).hexdigest()
    return {"x-retell-signature": f"v={stamp},d={digest}", "content-type": "application/json"}


def elevenlabs_headers(body: bytes, secret: str, *, at: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if at is None else at
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {"ElevenLabs-Signature": f"t={stamp},v0={digest}", "content-type": "application/json"}


def vapi_headers(
    body: bytes,
    secret: str,
    *,
    auth: str = "bearer",
    signature_header: str = "x-signature",
    timestamp_header: str = "x-timestamp",
    algorithm: str = "sha256",
    at: int | None = None,
) -> dict[str, str]:
    """``auth``: ``bearer``, ``secret`` (X-Vapi-Secret) or ``hmac``."""
    headers = {"content-type": "application/json"}
    if auth == "bearer":
        return {**headers, "Authorization": f"Bearer {secret}"}
    if auth == "secret":
        return {**headers, "X-Vapi-Secret": secret}
    message = body
    if timestamp_header:
        stamp = str(int(time.time()) if at is None else at)
        headers[timestamp_header] = stamp
        message = stamp.encode() + b"." + body
    digest = hmac.new(secret.encode(), message, getattr(hashlib, algorithm)).hexdigest()
    return {**headers, signature_header: digest}
