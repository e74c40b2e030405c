"""The HTTP retry rules both of enrich's clients follow: the LLM's (``openai`` SDK) and
ChatDash's (``httpx``). It imports nothing from enrich, so every layer can use it.

One set of transient statuses, for both servers: 408, 409, 429, 500, 502, 503 and 504.

- 429 (rate limited) and 502/503/504 (a proxy or the server is overloaded or restarting) are the
  classic "try again later".
- 500 is retried too: providers answer it for a passing fault far more often than for a request
  that will always fail, and a retry is cheap next to a lost enrichment.
- 408 (Request Timeout) is the server closing a connection it waited on too long: the request
  was never processed, and RFC 9110 lets a client send it again.
- 409 (Conflict) is what OpenAI answers when a concurrent request held a lock; for ChatDash it
  can be a concurrent edit of the same conversation. Both our requests are safe to repeat (a
  completion is a fresh question; a ChatDash ``PUT`` sends the same body again), and a conflict
  that lasts still fails after the last try.

These are also the statuses the ``openai`` SDK retries by default, so the LLM keeps the
behaviour it had, and ChatDash gains 408 and 409. Any other 4xx is *permanent*: the request is
wrong (a bad key, an unknown id, a rejected body) and sending it again changes nothing. 501 and
505 (not implemented, HTTP version) are neither: they are not retried, but they are the server's
failing, not the request's.

A server's ``Retry-After`` never makes a run hang. The LLM client honours it up to
:data:`LONGEST_RETRY_AFTER`: a longer wait (a date years away, a quota that resets tomorrow) is
not waited for, the request fails at once saying what the server asked, and the rate limiter's
pause is capped too. ChatDash's client waits at most ``chatdash.max_backoff``, within
``chatdash.max_total_seconds``. An unreadable or infinite value is no value: the usual backoff.

:func:`same_origin` is the redirect rule: a redirect to another origin (scheme, host, port) is
never followed, since it would send the request's body there.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

__all__ = [
    "TRANSIENT_STATUSES",
    "LONGEST_RETRY_AFTER",
    "is_transient",
    "is_permanent",
    "retry_after",
    "backoff",
    "origin",
    "same_origin",
]

#: The longest ``Retry-After`` (seconds) the LLM client waits before one retry; a server asking
#: for more gets an error at once, rather than a run that hangs.
LONGEST_RETRY_AFTER = 60.0

#: HTTP statuses worth sending the same request again for (see the module's docstring).
TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


def is_transient(status: int | None) -> bool:
    """Whether an answer with this HTTP ``status`` is worth retrying."""
    return status in TRANSIENT_STATUSES


def is_permanent(status: int | None) -> bool:
    """Whether ``status`` is a 4xx that is not transient: the request itself is refused, and
    sending it again (now or later) cannot succeed until something is fixed."""
    return status is not None and 400 <= status < 500 and not is_transient(status)


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # a plain dict is case-sensitive; httpx.Headers is not
        value = next((v for k, v in headers.items() if str(k).lower() == name), None)
    return None if value is None else str(value).strip()


def retry_after(headers: Mapping[str, Any] | None, *, now: float | None = None) -> float | None:
    """The wait in seconds a server asked for, or ``None`` when it asked for none we can read.

    Reads ``retry-after-ms`` (milliseconds, as OpenAI sends it) first, then ``Retry-After`` as
    seconds or as an HTTP-date (RFC 9110), measured from ``now`` (default: the clock). A date in
    the past is no wait (0).
    """
    if not headers:
        return None
    ms = _header(headers, "retry-after-ms")
    if ms:
        try:
            seconds = float(ms) / 1000
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds):
            return max(0.0, seconds)
    value = _header(headers, "retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # an HTTP-date is GMT even when it does not say so
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def backoff(retry: int, *, first: float = 0.5, cap: float = 8.0) -> float:
    """The wait before retry number ``retry`` (0 for the first): exponential from ``first``,
    at most ``cap``, with "equal jitter" (between half and all of it), so that callers that
    failed together do not all come back at the same moment."""
    base = min(cap, first * 2.0 ** min(max(retry, 0), 64))
    return random.uniform(base / 2, base)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int | None]:
    """The origin of ``url`` (RFC 6454): its scheme, host (lower case) and port (the scheme's
    default when none is given)."""
    parts = urlsplit(str(url))
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # not a number: no origin is equal to it
        return (scheme, str(url), -1)
    return (scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme))


def same_origin(url: str, location: str) -> bool:
    """Whether a redirect from ``url`` to ``location`` (absolute, or relative to ``url``) stays
    on the same origin: the only redirect that may be followed."""
    return origin(url) == origin(urljoin(str(url), location))
