"""The sections of the configuration (``llm``, ``chatdash``, ``analysis``, ``write``, ``input``,
``ledger``, ``serve``) and the price table: each a frozen pydantic model with its defaults,
checked when read. :mod:`enrich.config` assembles them into a :class:`~enrich.config.Config`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from ..errors import validation_errors
from ..models.fields import Criterion, CustomField, check_distinct, resolve_fields
from ..models.spec import WRITABLE_FIELDS, Topic

__all__ = [
    "Section",
    "LLMSettings",
    "ChatDashSettings",
    "AnalysisSettings",
    "WriteSettings",
    "InputSettings",
    "LedgerSettings",
    "ServeSettings",
    "EvalSettings",
    "Price",
    "DEFAULT_PRICING",
    "DEFAULT_CHATDASH_BASE_URL",
    "ENV_VARS",
    "key_problem",
    "default_max_tokens",
    "DEFAULT_CONTEXT_TOKENS",
    "DEFAULT_MAX_TOKENS",
]

DEFAULT_CHATDASH_BASE_URL = "https://api.chat-dash.com/v1/public"

#: Environment variables and the setting each one fills.
ENV_VARS: dict[str, tuple[str, ...]] = {
    "OPENAI_API_KEY": ("llm", "api_key"),
    "OPENAI_BASE_URL": ("llm", "base_url"),
    "ENRICH_MODEL": ("llm", "model"),
    "ENRICH_LLM_MODE": ("llm", "mode"),
    "ENRICH_LLM_SYSTEM_ROLE": ("llm", "system_role"),
    "CHATDASH_API_KEY": ("chatdash", "api_key"),
    "CHATDASH_BASE_URL": ("chatdash", "base_url"),
    "ENRICH_PROMPTS_DIR": ("analysis", "prompts_dir"),
    "ENRICH_LEDGER": ("ledger", "path"),
    "RETELL_API_KEY": ("serve", "retell_api_key"),
    "VAPI_WEBHOOK_SECRET": ("serve", "vapi_secret"),
    "ELEVENLABS_WEBHOOK_SECRET": ("serve", "elevenlabs_secret"),
}

#: The model's context window when ``llm.context_tokens`` is not set.
DEFAULT_CONTEXT_TOKENS = 128_000
#: The answer's budget (``llm.max_tokens``) when it is not set, in a context of 16k or more.
DEFAULT_MAX_TOKENS = 2000


def default_max_tokens(context_tokens: int) -> int:
    """``llm.max_tokens`` when it is not set: 2000, capped to an eighth of the context."""
    return max(16, min(DEFAULT_MAX_TOKENS, context_tokens // 8))


LLMMode = Literal["json_schema", "json_object", "tools"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_CONTROL_NAMES = {"\r": "a carriage return (\\r)", "\n": "a line feed (\\n)", "\t": "a tab"}


def key_problem(value: str) -> str | None:
    """What makes ``value`` unusable as an API key in an HTTP header, in words that never show
    the key: a control character (a ``\\r`` left by a Windows ``.env`` file), a character that is
    not ASCII, or whitespace around it. ``None`` for a usable key."""
    for i, char in enumerate(value):
        if ord(char) < 0x20 or ord(char) == 0x7F:
            what = _CONTROL_NAMES.get(char, f"a control character (U+{ord(char):04X})")
            where = "at its end" if not value[i:].strip() else f"at position {i + 1}"
            hint = {"\r": " (a Windows line ending?)", "\n": " (a line ending?)"}.get(char, "")
            return f"the key contains {what} {where}{hint}: remove it"
        if ord(char) > 0x7E:
            return (
                f"the key contains a character that is not ASCII (U+{ord(char):04X}, at position "
                f"{i + 1}): an HTTP header cannot carry it; copy the key again"
            )
    if value != value.strip():
        return "the key starts or ends with a space: remove it"
    return None


def _checked_key(v: SecretStr | None) -> SecretStr | None:
    if v is not None and (problem := key_problem(v.get_secret_value())) is not None:
        raise ValueError(problem)
    return v


class LLMSettings(Section):
    """The model and how to reach it (any OpenAI-compatible server)."""

    model: str = "gpt-4o-mini"
    mode: LLMMode = "json_schema"
    api_key: SecretStr | None = None
    base_url: str | None = None
    temperature: float | None = Field(default=0.0, ge=0, le=2)
    system_role: bool = Field(
        default=True,
        description="send the instructions as a system message; false: at the start of the "
        "first user message, for a model without a system role (Gemma: llama.cpp's "
        "--chat_format gemma drops system messages)",
    )
    max_tokens: int = Field(
        default=DEFAULT_MAX_TOKENS,
        ge=16,
        description="the answer's budget; default 2000, an eighth of a smaller context",
    )
    timeout: float = Field(
        default=60.0,
        gt=0,
        description="seconds for one request, its whole answer included (each try)",
    )
    max_retries: int = Field(default=2, ge=0, le=10, description="transport retries (429, 5xx)")
    max_reasks: int = Field(default=2, ge=0, le=10, description="re-asks after invalid output")
    context_tokens: int = Field(
        default=DEFAULT_CONTEXT_TOKENS, ge=1024, description="the model's context window, in tokens"
    )
    tokenizer: str = Field(default="estimate", description="'estimate' or 'tiktoken:ENCODING'")
    part_concurrency: int = Field(
        default=4, ge=1, le=64, description="parts of a long call summarised at once"
    )
    rpm: float | None = Field(default=None, gt=0, description="requests per minute allowed")
    tpm: float | None = Field(default=None, gt=0, description="tokens per minute allowed")
    batch_api_fallback: bool = Field(
        default=False,
        description="--via batch-api on a server without the Batch API: ask directly at the "
        "full price instead of failing",
    )

    # a rejected key must not show in a pydantic error's input_value either
    model_config = ConfigDict(hide_input_in_errors=True)

    @model_validator(mode="before")
    @classmethod
    def _answer_fits_the_context(cls, data: Any) -> Any:
        """``max_tokens`` left unset: 2000, or an eighth of a small context (512 of llama.cpp's
        4096), so that the answer, its re-asks and the transcript all fit in it."""
        if not isinstance(data, Mapping) or data.get("max_tokens") is not None:
            return data
        try:
            context = int(data.get("context_tokens", DEFAULT_CONTEXT_TOKENS))
        except (TypeError, ValueError):
            return data  # the field's own validation says what is wrong
        return {**data, "max_tokens": default_max_tokens(context)}

    @field_validator("api_key")
    @classmethod
    def _usable_key(cls, v: SecretStr | None) -> SecretStr | None:
        return _checked_key(v)

    @field_validator("base_url", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return v or None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v


class ChatDashSettings(Section):
    """Where enrichments are written."""

    api_key: SecretStr | None = None
    base_url: str = DEFAULT_CHATDASH_BASE_URL
    timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds for one request, its whole answer included (each try)",
    )
    max_attempts: int = Field(default=4, ge=1, le=20, description="tries of one request")
    max_total_seconds: float = Field(
        default=120.0, gt=0, description="no retry starts after this long on one request"
    )
    backoff: float = Field(default=0.5, ge=0, description="first retry delay in seconds")
    max_backoff: float = Field(default=30.0, ge=0, description="longest single wait")
    max_connections: int = Field(
        default=16, ge=1, le=256, description="requests to ChatDash at once (each is quick)"
    )

    # a rejected key must not show in a pydantic error's input_value either
    model_config = ConfigDict(hide_input_in_errors=True)

    @field_validator("api_key")
    @classmethod
    def _usable_key(cls, v: SecretStr | None) -> SecretStr | None:
        return _checked_key(v)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class AnalysisSettings(Section):
    """What the prompts know about the business."""

    language: str = "English"
    business_context: str = ""
    success_criteria: list[str | Criterion] = Field(
        default_factory=lambda: [
            "The user's request was resolved, or correctly routed to someone who can resolve it.",
            "The agent gave correct information and did not invent facts.",
            "The user did not leave frustrated or without an answer.",
        ],
        description="plain sentences, or {name, description}: a named criterion gets its own "
        "verdict (success, failure, unknown) and rationale",
    )
    taxonomy: list[Topic] = Field(default_factory=list)
    fields: list[CustomField] = Field(
        default_factory=list,
        description="your own typed fields: {name, type, description, values?, required?, schema?}",
    )
    presets: list[str] = Field(
        default_factory=list, description="packaged fields switched on by name (enrich presets)"
    )
    prompts_dir: Path | None = None
    min_user_turns: int = Field(
        default=1,
        ge=0,
        description="a transcript with fewer user turns is skipped (voicemail, no answer, a "
        "caller who hung up before speaking): no LLM call, nothing paid",
    )

    @field_validator("success_criteria", mode="before")
    @classmethod
    def _one_string_is_a_list(cls, v: Any) -> Any:
        v = [v] if isinstance(v, str) else v
        if not isinstance(v, list):
            return v
        out = []
        for i, item in enumerate(v):  # a mapping is a named criterion: say what is wrong with it
            if isinstance(item, Mapping):
                try:
                    item = Criterion.model_validate(item)
                except ValidationError as exc:
                    raise ValueError(f"item {i}: {validation_errors(exc)[0]}") from None
            out.append(item)
        return out

    @field_validator("taxonomy")
    @classmethod
    def _unique_topics(cls, v: list[Topic]) -> list[Topic]:
        check_distinct((t.name for t in v), "topic")
        return v

    @field_validator("success_criteria")
    @classmethod
    def _unique_criteria(cls, v: list[str | Criterion]) -> list[str | Criterion]:
        check_distinct((c.name for c in v if isinstance(c, Criterion)), "criterion")
        return v

    @field_validator("presets")
    @classmethod
    def _known_presets(cls, v: list[str]) -> list[str]:
        resolve_fields(v, ())  # an unknown preset names the known ones
        return v

    @field_validator("fields")
    @classmethod
    def _unique_fields(cls, v: list[CustomField]) -> list[CustomField]:
        resolve_fields((), v)  # a field listed twice
        return v

    def resolved_fields(self) -> tuple[CustomField, ...]:
        """The presets switched on, then the fields (one of the same name overrides a preset)."""
        return resolve_fields(self.presets, self.fields)


class WriteSettings(Section):
    """Which enriched fields are written to ChatDash (their wire names)."""

    fields: list[
        Literal[
            "summary", "topic", "subtopic", "evaluation", "mistunderstoodQueries", "customAnalysis"
        ]
    ] = Field(default_factory=lambda: list(WRITABLE_FIELDS), min_length=1)
    unknown_evaluation: Literal["skip", "false"] = Field(
        default="skip",
        description="an overall unknown verdict (named criteria): skip leaves evaluation "
        "unwritten; false writes isSuccess false",
    )
    criteria_key: str = Field(
        default="criteria",
        min_length=1,
        description="the key of customAnalysis under which the named criteria's verdicts go",
    )
    metadata: bool = Field(
        default=False,
        description="also write the call's platform metadata (platformId, phone, phoneSecondary, "
        "duration, endedReason, url) when the transcript's payload has it",
    )


class InputSettings(Section):
    max_bytes: int = Field(default=50 * 1024 * 1024, gt=0)


#: A value that starts like a URL (``scheme:``; not a one-letter Windows drive).
_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")


def _url_passwords(url: str) -> list[str]:
    """The password(s) a URL holds (its user information's, any ``password=`` of its query),
    as written and decoded."""
    rest = url.partition("://")[2]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    userinfo = authority.rpartition("@")[0]
    found = [userinfo.partition(":")[2]] if ":" in userinfo else []
    found += re.findall(r"[?&]password=([^&#]*)", rest)
    return [p for value in found for p in dict.fromkeys((value, unquote(value))) if p]


def _url_masked(url: str) -> str:
    """``url`` with its password(s) shown as ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, tail = re.match(r"([^/?#]*)(.*)", rest, re.DOTALL).groups()  # type: ignore[union-attr]
    userinfo, at, hostport = authority.rpartition("@")
    if ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    tail = re.sub(r"([?&]password=)[^&#]*", r"\1***", tail)
    return f"{scheme}://{userinfo}{at}{hostport}{tail}"


class LedgerSettings(Section):
    """Where results are kept (see :mod:`enrich.ledger`): a SQLite file's path, or a database
    URL (``postgresql://user:password@host/db``), kept as written: a URL is never made a path
    (``open_ledger`` uses it, or refuses a scheme it does not know). Its password is a secret:
    shown as ``***`` in the configuration's JSON (``enrich inspect config``)."""

    enabled: bool = True
    path: Path | str | None = Field(
        default=None,
        description="a SQLite file, or a postgresql:// URL; default: a file in the user's data "
        "directory",
    )

    # a URL's password must not show in a pydantic error's input_value either
    model_config = ConfigDict(hide_input_in_errors=True)

    @field_validator("path", mode="before")
    @classmethod
    def _path_or_url(cls, v: Any) -> Any:
        if not v:
            return None
        if isinstance(v, str):
            return v if _URL_START.match(v) else Path(v)
        return v

    @field_serializer("path", when_used="json")
    def _password_masked(self, v: Path | str | None) -> str | None:
        if v is None:
            return None
        return _url_masked(v) if isinstance(v, str) else str(v)

    def secrets(self) -> list[SecretStr]:
        """The password(s) of a database URL, redacted from what the command line prints."""
        if not isinstance(self.path, str):
            return []
        return [SecretStr(p) for p in _url_passwords(self.path)]


class EvalSettings(Section):
    """How ``enrich eval`` reads the labels of a labeled set (see :mod:`enrich.evaluation`)."""

    labels: dict[str, str] = Field(
        default_factory=dict,
        description="a label's name in the labeled set -> what it scores (topic, subtopic, "
        "is_success, summaries, misunderstood, or a custom field's name; '-' ignores it), over "
        "the shared datasets' own names",
    )
    values: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="per scored field, a label's value -> the taxonomy's ({topic: {ride: Rides}})",
    )


class ServeSettings(Section):
    """``enrich serve``: where it listens, the platforms' secrets, how its queue retries."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    retell_api_key: SecretStr | None = Field(
        default=None, description="verifies x-retell-signature (RETELL_API_KEY)"
    )
    retell_event: Literal["call_analyzed", "call_ended"] = Field(
        default="call_analyzed", description="the Retell event that is enriched"
    )
    elevenlabs_secret: SecretStr | None = Field(
        default=None,
        description="the webhook's HMAC secret, verifies ElevenLabs-Signature "
        "(ELEVENLABS_WEBHOOK_SECRET)",
    )
    vapi_secret: SecretStr | None = Field(
        default=None, description="the Vapi credential's secret (VAPI_WEBHOOK_SECRET)"
    )
    vapi_auth: Literal["token", "hmac"] = Field(
        default="token",
        description="token: the secret in Authorization: Bearer or X-Vapi-Secret; hmac: an "
        "HMAC credential's signature",
    )
    vapi_signature_header: str = Field(
        default="x-signature", min_length=1, description="the HMAC credential's signature header"
    )
    vapi_timestamp_header: str = Field(
        default="x-timestamp",
        description="the HMAC credential's timestamp header ('': none, the body alone is signed)",
    )
    vapi_algorithm: Literal["sha256", "sha512", "sha1"] = "sha256"
    insecure_no_verify: bool = Field(
        default=False, description="accept unsigned webhooks of platforms without a secret"
    )
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    concurrency: int = Field(default=8, ge=1, le=1024, description="webhooks enriched at once")
    retry_window: float = Field(
        default=1800.0,
        ge=0,
        description="seconds a call unknown to ChatDash (404) is retried before it fails",
    )
    retry_delay: float = Field(default=5.0, gt=0, description="the first retry's delay, doubled")
    max_retry_delay: float = Field(default=300.0, gt=0)
    grace_seconds: float = Field(
        default=25.0, ge=0, description="after SIGTERM, how long work in flight may finish"
    )

    # a rejected secret must not show in a pydantic error's input_value either
    model_config = ConfigDict(hide_input_in_errors=True)

    def secrets(self) -> list[SecretStr]:
        keys = (self.retell_api_key, self.elevenlabs_secret, self.vapi_secret)
        return [s for s in keys if s is not None]


class Price(Section):
    """US dollars per million tokens."""

    input: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0, description="default: input")
    output: float = Field(ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        cached = self.input if self.cached_input is None else self.cached_input
        fresh = max(0, prompt_tokens - cached_tokens)
        return (fresh * self.input + cached_tokens * cached + completion_tokens * self.output) / 1e6


#: OpenAI's list prices (USD per million tokens) as published in 2025; set `pricing` in the
#: configuration for your own models, discounts or newer prices.
DEFAULT_PRICING: dict[str, dict[str, float]] = {
    "gpt-4o-mini": {"input": 0.15, "cached_input": 0.075, "output": 0.60},
    "gpt-4o": {"input": 2.50, "cached_input": 1.25, "output": 10.00},
    "gpt-4.1": {"input": 2.00, "cached_input": 0.50, "output": 8.00},
    "gpt-4.1-mini": {"input": 0.40, "cached_input": 0.10, "output": 1.60},
    "gpt-4.1-nano": {"input": 0.10, "cached_input": 0.025, "output": 0.40},
}
