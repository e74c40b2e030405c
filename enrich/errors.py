"""The exceptions enrich raises.

Every error is an :class:`EnrichError`. :func:`error_class` names the family of any exception, in
one place; the CLI's exit codes and a batch result's ``stage`` are tables over it::

    EnrichError                      exit 1 when nothing more specific applies
    ├── InputError                   exit 2  the input cannot be enriched (no LLM call, no write)
    │   └── TranscriptError              a transcript that is empty, malformed, binary, too big...
    ├── ConfigError                  exit 2  a bad or missing setting (a key, a URL, a YAML file)
    ├── TemplateError                exit 2  a prompt template is missing or fails to render
    ├── LLMError                     exit 3  the LLM failed after its retries
    │   ├── LLMTransportError            timeout, connection, 429/5xx after retries, 401...
    │   ├── LLMRefusalError              the model refused (or a content filter stopped it)
    │   ├── LLMTruncatedError            the answer was cut off (finish_reason "length")
    │   ├── LLMValidationError           still invalid after every re-ask
    │   └── LLMProtocolError             the answer is not an OpenAI-compatible API's (HTML,
    │                                    junk, not UTF-8, not a chat completion, too big)
    ├── ChatDashError                exit 4  ChatDash did not take the write (or answer a read)
    │   └── ChatDashLookupError      exit 2  a read refused before anything was paid for:
    │                                        an unknown id (404), a bad key (401/403)...
    ├── LedgerError                  exit 8  the ledger cannot be read or written: locked by
    │                                another process after its busy timeout, a full disk, a
    │                                corrupt page

An :class:`LLMError` carries ``attempts``, the token ``usage`` spent on every attempt, and the raw
answers, so a result that was paid for is never lost, even when it is unusable. A
:class:`ChatDashError` carries the ``method`` and ``url`` it tried and the HTTP ``status_code``.

Messages never contain secrets: anything built from a server's answer is passed through
:func:`redact` with the keys that were in use.
"""

from __future__ import annotations

import json
from typing import Any, Literal, NamedTuple

from ._http import is_permanent

#: The families of errors: ``input`` (bad input, nothing paid), ``config`` (a setting or a
#: template), ``llm``, ``chatdash`` (a write or a read that is not the input's fault), ``enrich``
#: (any other :class:`EnrichError`) and ``internal`` (not an :class:`EnrichError`: a bug).
ErrorClass = Literal["input", "config", "llm", "chatdash", "ledger", "enrich", "internal"]

__all__ = [
    "EnrichError",
    "InputError",
    "TranscriptError",
    "ConfigError",
    "TemplateError",
    "LLMError",
    "LLMTransportError",
    "LLMRefusalError",
    "LLMTruncatedError",
    "LLMValidationError",
    "LLMProtocolError",
    "ChatDashError",
    "ChatDashLookupError",
    "LedgerError",
    "redact",
    "error_class",
    "ErrorClass",
    "validation_errors",
    "validation_problems",
]


def _forms(value: str) -> set[str]:
    """The ways ``value`` can appear in a message: as it is, without the whitespace around it,
    escaped as a ``str`` or ``bytes`` repr shows it (the HTTP libraries' ``Illegal header value
    b'...\\r'``), and JSON-escaped (a server's answer quoting it)."""
    forms = {value, value.strip(), repr(value)[1:-1], json.dumps(value)[1:-1]}
    forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    for encoding in ("utf-8", "latin-1"):
        try:
            forms.add(repr(value.encode(encoding))[2:-1])
        except UnicodeEncodeError:
            pass
    return forms


def redact(text: str, secrets: Any) -> str:
    """Replace every secret value found in ``text`` with ``***``.

    ``secrets`` is an iterable of ``str`` or ``pydantic.SecretStr`` (``None`` items are ignored).
    A secret is also found escaped, as a ``str`` or ``bytes`` repr or in JSON shows it (a key
    with a ``\\r`` in an HTTP library's ``Illegal header value b'...'``), and with the whitespace
    around it removed. Secrets (and forms) shorter than 4 characters are not replaced (they would
    mangle ordinary words).
    """
    forms: set[str] = set()
    for secret in secrets or ():
        if secret is None:
            continue
        value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret)
        if len(value) >= 4:
            forms |= {f for f in _forms(value) if len(f) >= 4}
    for form in sorted(forms, key=len, reverse=True):  # the longest first: no half-replaced key
        text = text.replace(form, "***")
    return text


class EnrichError(Exception):
    """Base of every error enrich raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(EnrichError):
    """The input cannot be enriched. Nothing was sent to the LLM or to ChatDash."""


class TranscriptError(InputError):
    """A transcript that cannot be parsed: ``source`` names where it came from."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(f"{source}: {message}" if source else message)
        self.source = source
        self.reason = message


class ConfigError(EnrichError):
    """A setting is missing or invalid."""


class TemplateError(EnrichError):
    """A prompt template is missing, does not parse, or uses a variable that does not exist."""


class LLMError(EnrichError):
    """The LLM did not give a usable answer.

    ``attempts`` counts the requests made, ``usage`` (a :class:`~enrich.Usage`) sums their tokens
    and ``raw_outputs`` keeps every answer the model gave (they were paid for). The engine sets
    ``cost``, what that usage cost in USD (None: no price), for a batch's totals.
    """

    cost: float | None = None

    def __init__(
        self,
        message: str,
        *,
        attempts: int = 0,
        usage: Any = None,
        raw_outputs: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.usage = usage
        self.raw_outputs = list(raw_outputs or [])


class LLMTransportError(LLMError):
    """The request did not get an answer: timeout, connection, rate limit or server error, or the
    server refused the credentials. ``status_code`` is the last HTTP status, if there was one."""

    def __init__(self, message: str, *, status_code: int | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.status_code = status_code


class LLMRefusalError(LLMError):
    """The model refused to answer, or a content filter stopped it."""


class LLMTruncatedError(LLMError):
    """The answer hit the token limit (``finish_reason: length``) before it was complete."""


class LLMValidationError(LLMError):
    """The answer still failed validation after every re-ask. ``errors`` are the last ones."""

    def __init__(self, message: str, *, errors: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.errors = list(errors or [])


class LLMProtocolError(LLMError):
    """The server answered, but not as an OpenAI-compatible API does: an HTML page (a base URL
    pointing at a web UI), junk, text that is not UTF-8, JSON that is not a chat completion, or
    an answer over the size limit. Not retried: the same server gives the same answer."""


class ChatDashError(EnrichError):
    """ChatDash refused or did not answer a request, after retries where they apply.

    When the request was the write of an enrichment that was already paid for, ``result`` holds
    that :class:`~enrich.EnrichmentResult`, so the caller can keep it. ``permanent`` says that
    sending it again cannot succeed: ChatDash refused it with a 4xx, or (``permanent=True``) the
    request could not even be built (an id too long for a URL, a header value no HTTP library
    sends).
    """

    result: Any = None

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        url: str | None = None,
        status_code: int | None = None,
        permanent: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.url = url
        self.status_code = status_code
        self._permanent = permanent

    @property
    def permanent(self) -> bool:
        """ChatDash refused the request itself (a 4xx that is not transient: a bad key, an
        unknown id, a rejected body), or the request could not be built: sending it again cannot
        succeed until the cause is fixed. A 429, a 5xx or no answer at all is not permanent: a
        later replay may succeed."""
        if self._permanent is not None:
            return self._permanent
        return is_permanent(self.status_code)


class ChatDashLookupError(ChatDashError, InputError):
    """ChatDash refused a read (a conversation, its messages, a list) with a 4xx: the input or
    the configuration is wrong, and nothing was paid for. Exit 2, like other bad input."""


class LedgerError(EnrichError):
    """The ledger could not be read or written (locked by another process for longer than its
    busy timeout, a full disk, a corrupt page). ``location`` names the ledger. When it struck
    a result that was paid for, ``result`` holds that result and ``spilled`` the file it was kept
    in instead (``<ledger>.spill.jsonl``; None if that failed too)."""

    result: Any = None
    spilled: Any = None

    def __init__(self, message: str, *, location: str = "") -> None:
        super().__init__(message)
        self.location = location


def error_class(exc: BaseException) -> ErrorClass:
    """The family of ``exc``: the one classification the CLI's exit codes, batch results'
    stages and the server's statuses are tables over. A :class:`ChatDashLookupError` is
    ``input``: a read refused before anything was paid for."""
    if isinstance(exc, InputError):
        return "input"
    if isinstance(exc, (ConfigError, TemplateError)):
        return "config"
    if isinstance(exc, LLMError):
        return "llm"
    if isinstance(exc, ChatDashError):
        return "chatdash"
    if isinstance(exc, LedgerError):
        return "ledger"
    if isinstance(exc, EnrichError):
        return "enrich"
    return "internal"


class Problem(NamedTuple):
    """One problem of a pydantic ``ValidationError``: where, what (plain words), and its kind."""

    loc: tuple[Any, ...]
    msg: str
    type: str


def validation_problems(exc: Any) -> list[Problem]:
    """A pydantic ``ValidationError`` as :class:`Problem` s, each message without pydantic's
    ``Value error, `` prefix."""
    return [
        Problem(tuple(err["loc"]), err["msg"].removeprefix("Value error, "), err["type"])
        for err in exc.errors(include_url=False)
    ]


def validation_errors(exc: Any) -> list[str]:
    """A pydantic ``ValidationError`` as one line per problem: ``evaluation.is_success: Field
    required``, the form used in re-asks, configuration errors and batch results."""
    lines = []
    for loc, msg, _ in validation_problems(exc):
        where = ".".join(str(p) for p in loc)
        lines.append(f"{where}: {msg}" if where else msg)
    return lines
