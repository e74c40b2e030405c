"""Who sent a webhook: each platform's signature, checked on the raw body bytes as received.

A signature is always computed over the bytes that arrived (never over JSON parsed and
serialised again: that changes spacing, key order and escapes, and no longer matches), and
compared in constant time (:func:`hmac.compare_digest`). A signed timestamp outside the
platform's window is refused as ``stale``, so a delivery captured once cannot be replayed later
(one replayed inside the window is a duplicate: the queue keeps one item per call).

- **Retell**: ``x-retell-signature: v=<unix ms>,d=<hex>``, the HMAC-SHA256 of ``body + str(v)``
  keyed with the Retell API key; ``v`` within 5 minutes of now, either way (Retell's SDK,
  ``retell.lib.webhook_auth``).
- **ElevenLabs**: ``ElevenLabs-Signature: t=<unix s>,v0=<hex>``, the HMAC-SHA256 of
  ``f"{t}.{body}"`` keyed with the webhook's secret; ``t`` at most 30 minutes old (the
  ElevenLabs SDK's ``construct_event``), and not more than 5 minutes ahead of this clock.
- **Vapi**, as its credential on the server URL says: ``token`` (a Bearer Token credential,
  ``Authorization: Bearer <secret>``, or the legacy server secret, ``X-Vapi-Secret: <secret>``)
  or ``hmac`` (an HMAC credential: the signature in ``serve.vapi_signature_header``, an optional
  ``<algorithm>=`` prefix, hex or base64, over ``f"{timestamp}.{body}"`` with the timestamp of
  ``serve.vapi_timestamp_header`` (seconds or milliseconds, within 5 minutes), or over the body
  alone when that header is set to ``''``).

:class:`Rejected` says why a delivery is refused, in words that never contain a secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import ServeSettings

__all__ = ["Rejected", "Verifier", "verifiers", "PLATFORMS"]

#: The platforms served, in the order of their routes.
PLATFORMS = ("retell", "vapi", "elevenlabs")

RETELL_WINDOW = 5 * 60.0
ELEVENLABS_MAX_AGE = 30 * 60.0
VAPI_WINDOW = 5 * 60.0
#: How far ahead of this clock a signed timestamp may be (the sender's clock runs fast).
AHEAD = 5 * 60.0

_RETELL = re.compile(r"v=(\d{1,16}),d=([0-9a-f]{64})")
_DIGITS = re.compile(r"\d{1,16}")


class Rejected(Exception):
    """A delivery refused: ``reason`` is a metric's label (``no_secret``, ``missing_signature``,
    ``bad_signature``, ``stale``), the message says what to check."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _hmac(key: bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(key, message, getattr(hashlib, algorithm)).digest()


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def _unhex(text: str) -> bytes | None:
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def _in_window(sent: float, now: float, *, older: float, ahead: float, platform: str) -> None:
    if now - sent > older or sent - now > ahead:
        raise Rejected(
            "stale",
            f"{platform}: the signature's timestamp is {abs(now - sent):.0f}s away from this "
            "server's clock (a replayed delivery, or a clock to set right)",
        )


def _header(headers: Mapping[str, str], name: str, platform: str) -> str:
    value = headers.get(name.lower())
    if not value:
        raise Rejected("missing_signature", f"{platform}: no {name} header")
    return value


@dataclass(frozen=True)
class Verifier:
    """Checks one platform's deliveries; ``secret`` None lets them all through (only with
    ``--insecure-no-verify``; see :func:`verifiers`)."""

    platform: str
    secret: bytes | None
    vapi_auth: str = "token"
    vapi_signature_header: str = "x-signature"
    vapi_timestamp_header: str = "x-timestamp"
    vapi_algorithm: str = "sha256"

    def __repr__(self) -> str:  # never the secret
        kind = "unverified" if self.secret is None else "verified"
        return f"Verifier({self.platform!r}, {kind})"

    def verify(self, body: bytes, headers: Mapping[str, str], now: float | None = None) -> None:
        """Return if ``body`` with ``headers`` (names in lower case) is the platform's; else
        raise :class:`Rejected`."""
        if self.secret is None:
            return
        now = time.time() if now is None else now
        check = {"retell": self._retell, "elevenlabs": self._elevenlabs, "vapi": self._vapi}
        check[self.platform](body, headers, now, self.secret)

    def _retell(self, body: bytes, headers: Mapping[str, str], now: float, key: bytes) -> None:
        match = _RETELL.fullmatch(_header(headers, "x-retell-signature", "retell").strip())
        if match is None:
            raise Rejected("bad_signature", "retell: x-retell-signature is not v=<ms>,d=<hex>")
        sent_ms, digest = match.group(1), match.group(2)
        _in_window(
            int(sent_ms) / 1000, now, older=RETELL_WINDOW, ahead=RETELL_WINDOW, platform="retell"
        )
        expected = _hmac(key, body + sent_ms.encode())
        if not _same(expected, bytes.fromhex(digest)):
            raise Rejected("bad_signature", "retell: the signature does not match (RETELL_API_KEY)")

    def _elevenlabs(self, body: bytes, headers: Mapping[str, str], now: float, key: bytes) -> None:
        header = _header(headers, "elevenlabs-signature", "elevenlabs")
        sent, digests = None, []
        for part in header.split(","):
            name, _, value = part.strip().partition("=")
            if name == "t" and _DIGITS.fullmatch(value):
                sent = value
            elif name == "v0":
                digests.append(_unhex(value))
        if sent is None or not digests:
            raise Rejected(
                "bad_signature", "elevenlabs: ElevenLabs-Signature is not t=<s>,v0=<hex>"
            )
        _in_window(int(sent), now, older=ELEVENLABS_MAX_AGE, ahead=AHEAD, platform="elevenlabs")
        expected = _hmac(key, sent.encode() + b"." + body)
        # every v0 is compared (no early exit): the time taken does not depend on which matched
        matched = [_same(expected, d) for d in digests if d is not None]
        if not any(matched):
            raise Rejected(
                "bad_signature",
                "elevenlabs: the signature does not match (ELEVENLABS_WEBHOOK_SECRET)",
            )

    def _vapi(self, body: bytes, headers: Mapping[str, str], now: float, key: bytes) -> None:
        if self.vapi_auth == "hmac":
            return self._vapi_hmac(body, headers, now, key)
        bearer = headers.get("authorization", "")
        scheme, _, token = bearer.strip().partition(" ")
        given = [headers.get("x-vapi-secret")]
        given.append(token.strip() if scheme.lower() == "bearer" else None)
        if all(g is None for g in given):
            raise Rejected("missing_signature", "vapi: no Authorization: Bearer nor X-Vapi-Secret")
        matched = [_same(key, g.encode()) for g in given if g is not None]
        if not any(matched):
            raise Rejected("bad_signature", "vapi: the secret does not match (VAPI_WEBHOOK_SECRET)")
        return None

    def _vapi_hmac(self, body: bytes, headers: Mapping[str, str], now: float, key: bytes) -> None:
        signature = _header(headers, self.vapi_signature_header, "vapi").strip()
        prefix = f"{self.vapi_algorithm}="
        if signature.lower().startswith(prefix):
            signature = signature[len(prefix) :]
        message = body
        if self.vapi_timestamp_header:
            sent = _header(headers, self.vapi_timestamp_header, "vapi").strip()
            if not _DIGITS.fullmatch(sent):
                raise Rejected("bad_signature", f"vapi: {self.vapi_timestamp_header} is not a time")
            seconds = int(sent) / 1000 if int(sent) >= 10**11 else int(sent)  # ms or s
            _in_window(seconds, now, older=VAPI_WINDOW, ahead=VAPI_WINDOW, platform="vapi")
            message = sent.encode() + b"." + body
        expected = _hmac(key, message, self.vapi_algorithm)
        candidates = [_unhex(signature)]
        try:
            candidates.append(base64.b64decode(signature, validate=True))
        except (binascii.Error, ValueError):
            pass
        matched = [_same(expected, c) for c in candidates if c is not None]
        if not any(matched):
            raise Rejected(
                "bad_signature", "vapi: the HMAC signature does not match (VAPI_WEBHOOK_SECRET)"
            )
        return None


def verifiers(settings: ServeSettings) -> dict[str, Verifier | None]:
    """One :class:`Verifier` per platform; None for a platform that has no secret and is
    therefore refused (unless ``insecure_no_verify``: then it is served unverified)."""
    secrets = {
        "retell": settings.retell_api_key,
        "vapi": settings.vapi_secret,
        "elevenlabs": settings.elevenlabs_secret,
    }
    out: dict[str, Verifier | None] = {}
    for platform, secret in secrets.items():
        if secret is None and not settings.insecure_no_verify:
            out[platform] = None
            continue
        out[platform] = Verifier(
            platform,
            None if secret is None else secret.get_secret_value().encode(),
            vapi_auth=settings.vapi_auth,
            vapi_signature_header=settings.vapi_signature_header,
            vapi_timestamp_header=settings.vapi_timestamp_header,
            vapi_algorithm=settings.vapi_algorithm,
        )
    return out
