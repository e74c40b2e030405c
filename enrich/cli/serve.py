"""``enrich serve``: receive the voice platforms' call-end webhooks, enrich and write each call
(:mod:`enrich.serve`; needs the ``serve`` extra)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import ConfigError
from ._common import ConfigOpt, ModelOpt, VerboseOpt, err, guard, load_config


def _needs_the_extra() -> None:
    """The ``serve`` extra's libraries, or a clear error naming the extra to install."""
    import importlib

    for module in ("starlette", "uvicorn", "prometheus_client"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(
                f"enrich serve needs the serve extra ({module} is not installed): "
                "pip install 'enrich[serve]'"
            ) from None


def serve(
    host: Annotated[
        str | None,
        typer.Option("--host", help="Address to listen on (serve.host).", show_default=False),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", "-p", min=0, max=65535, help="Port (serve.port).", show_default=False
        ),
    ] = None,
    insecure_no_verify: Annotated[
        bool,
        typer.Option(
            "--insecure-no-verify",
            help="Accept UNSIGNED webhooks of the platforms that have no secret configured "
            "(for a trial behind your own authentication; never on the internet).",
        ),
    ] = False,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            "-j",
            min=1,
            max=1024,
            help="Webhooks enriched at once (serve.concurrency).",
            show_default=False,
        ),
    ] = None,
    rpm: Annotated[
        float | None,
        typer.Option(
            "--rpm", min=1, help="LLM requests per minute to stay under.", show_default=False
        ),
    ] = None,
    tpm: Annotated[
        float | None,
        typer.Option(
            "--tpm", min=1, help="LLM tokens per minute to stay under.", show_default=False
        ),
    ] = None,
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log every request (method, path, status).")
    ] = False,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Receive Retell, Vapi and ElevenLabs call-end webhooks; enrich and write each call.

    POST /webhooks/{retell|vapi|elevenlabs}/<ChatDash agent id>. Each webhook is verified
    (RETELL_API_KEY, VAPI_WEBHOOK_SECRET, ELEVENLABS_WEBHOOK_SECRET), kept in the ledger before
    it is answered, and enriched in the background at --rpm/--tpm. GET /healthz, GET /metrics.
    SIGTERM stops it gracefully (exit 0).
    """
    with guard(verbose):
        _needs_the_extra()
        cfg = load_config(config, model=model, rpm=rpm, tpm=tpm)
        flags = {
            "host": host,
            "port": port,
            "concurrency": concurrency,
            "insecure_no_verify": insecure_no_verify or None,
        }
        cfg = cfg.model_copy(
            update={
                "serve": cfg.serve.model_copy(
                    update={k: v for k, v in flags.items() if v is not None}
                )
            }
        )
        from ..serve import run

        s = cfg.serve
        err(
            f"enrich: serving webhooks on http://{s.host}:{s.port}/webhooks/"
            "{retell|vapi|elevenlabs}/<agent id> (Ctrl-C or SIGTERM stops)"
        )
        run(cfg, access_log=access_log)
        err("enrich: stopped")
