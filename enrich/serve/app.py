"""The ASGI app of ``enrich serve`` (Starlette): the webhook routes, ``/healthz``, ``/metrics``.

``POST /webhooks/{platform}/{agent_id}`` (``retell``, ``vapi``, ``elevenlabs``; ``agent_id`` is
the ChatDash agent's id) answers, in this order:

- **401** if the platform has no secret configured (and ``--insecure-no-verify`` was not given),
  or the signature is missing, wrong or stale (:mod:`enrich.serve.verify`): nothing is stored;
- **413** for a body over ``serve.max_body_bytes`` (read no further), **400** for one that is
  not the platform's webhook (not JSON, no event, a call-end event without a call id, an id no
  URL can carry), with the reason: nothing is stored. The transcript itself is read by the
  worker, not here (reading a long call takes milliseconds a burst cannot spare): one that
  cannot be read fails its item, with the reason, in the ledger and the metrics;
- **204** for a verified event that does not end a call (it is ignored);
- **202** once a call-end webhook is committed to the ledger's queue (``{"status": "queued"}``),
  **200** for a call already queued (``{"status": "duplicate"}``: no second LLM call nor PUT);
  **503** if the ledger cannot take it now (the platform may deliver it again).

The answer never waits for the LLM: background workers (:mod:`enrich.serve.worker`) take the
queue. Errors are JSON ``{"error": "..."}`` and never quote a secret or a signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..chatdash import conversation_path
from ..errors import InputError, LedgerError
from .events import Malformed, read_event
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .verify import PLATFORMS, Rejected, verifiers
from .worker import Workers

if TYPE_CHECKING:
    from ..config import Config
    from ..engine import Enricher

__all__ = ["create_app"]

log = logging.getLogger("enrich.serve")

_SECRET_ENV = {
    "retell": "RETELL_API_KEY",
    "vapi": "VAPI_WEBHOOK_SECRET",
    "elevenlabs": "ELEVENLABS_WEBHOOK_SECRET",
}


class _TooLarge(Exception):
    pass


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _body(request: Request, limit: int) -> bytes:
    """The raw body, as received; :class:`_TooLarge` past ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _warm_up() -> None:
    """Import now what the first enrichment would (the openai SDK alone takes a second or two;
    the async backend httpcore loads on its first request), off the event loop."""
    import importlib

    for module in ("openai", "enrich.formats", "anyio._backends._asyncio"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def create_app(config: Config, *, enricher: Enricher | None = None) -> Starlette:
    """The app, from a configuration: its ledger holds the queue (it must be enabled) and its
    ``serve`` section says which platforms are verified how. ``enricher`` (default: one built
    from ``config``) enriches and writes; the app closes it when it stops."""
    from ..engine import Enricher
    from ..errors import ConfigError

    settings = config.serve
    if not config.ledger.enabled:
        raise ConfigError("enrich serve keeps its queue in the ledger: enable it (ledger.enabled)")
    checks = verifiers(settings)
    if all(v is None for v in checks.values()):
        raise ConfigError(
            "no platform can be served: set RETELL_API_KEY, VAPI_WEBHOOK_SECRET or "
            "ELEVENLABS_WEBHOOK_SECRET (or pass --insecure-no-verify to accept unsigned webhooks)"
        )
    enricher = enricher or Enricher(config)
    enricher.chatdash.check()  # no ChatDash key: known now, not at the first webhook
    ledger = enricher.ledger
    assert ledger is not None
    metrics = Metrics()
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for platform, check in checks.items():
            if check is None:
                log.warning(
                    "%s webhooks are refused: no secret (set %s)", platform, _SECRET_ENV[platform]
                )
            elif check.secret is None:
                log.warning("%s webhooks are accepted UNVERIFIED (--insecure-no-verify)", platform)
        await asyncio.to_thread(_warm_up)  # the first burst must not wait for imports
        workers = Workers(enricher, settings, metrics)
        state["workers"] = workers
        workers.start()
        try:
            yield
        finally:
            abandoned = await workers.stop(settings.grace_seconds)
            if abandoned:
                log.warning(
                    "stopped with %d webhook(s) unfinished after %gs: back in the queue",
                    abandoned,
                    settings.grace_seconds,
                )
            await enricher.aclose()

    async def accept(request: Request, platform: str, agent_id: str) -> Response:
        check = checks[platform]
        if check is None:
            metrics.rejected.labels(platform, "no_secret").inc()
            return _error(
                401,
                f"{platform} webhooks are refused: this server has no secret for them "
                f"({_SECRET_ENV[platform]})",
            )
        try:
            body = await _body(request, settings.max_body_bytes)
        except _TooLarge:
            metrics.rejected.labels(platform, "too_large").inc()
            return _error(413, f"the body is over {settings.max_body_bytes} bytes")
        try:
            check.verify(body, request.headers)
        except Rejected as exc:
            metrics.rejected.labels(platform, exc.reason).inc()
            log.warning("%s webhook refused (%s): %s", platform, exc.reason, exc)
            return _error(401, str(exc))
        try:
            event = read_event(platform, body, retell_event=settings.retell_event)
            if not event.ends:
                metrics.ignored.labels(platform).inc()
                return Response(status_code=204)
            call_id = event.call_id or ""
            conversation_path(agent_id, call_id)  # an id no URL can carry
        except (Malformed, InputError) as exc:
            metrics.rejected.labels(platform, "malformed").inc()
            log.warning("%s webhook refused (malformed): %s", platform, exc)
            return _error(400, str(exc)[:2000])
        received = datetime.now(UTC).isoformat(timespec="milliseconds")
        try:
            new = await ledger.awebhook_enqueue(platform, call_id, agent_id, body, received)
        except LedgerError as exc:
            log.error("%s call %s: the queue cannot take it: %s", platform, call_id, exc)
            return _error(503, "the queue cannot take this webhook now: deliver it again later")
        if not new:
            metrics.duplicates.labels(platform).inc()
            return JSONResponse({"status": "duplicate", "call_id": call_id})
        metrics.queued.labels(platform).inc()
        state["workers"].wake()
        return JSONResponse({"status": "queued", "call_id": call_id}, status_code=202)

    async def webhook(request: Request) -> Response:
        started = time.perf_counter()
        platform = request.path_params["platform"]
        if platform not in PLATFORMS:
            return _error(404, f"no such platform: use one of {', '.join(PLATFORMS)}")
        metrics.received.labels(platform).inc()
        try:
            return await accept(request, platform, request.path_params["agent_id"])
        except ClientDisconnect:
            return Response(status_code=400)
        finally:
            metrics.acceptance.observe(time.perf_counter() - started)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics_page(request: Request) -> Response:
        try:
            counts = await ledger.awebhook_counts()
        except LedgerError as exc:
            log.error("metrics: the ledger cannot be read: %s", exc)
            counts = {}
        return Response(metrics.render(counts), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/webhooks/{platform}/{agent_id}", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_page, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.enricher = enricher
    return app
