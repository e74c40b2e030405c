"""``enrich serve``: the voice platforms' call-end webhooks, verified, queued durably in the
ledger, enriched and written to ChatDash at the LLM's rate limit.

- :mod:`.verify` checks each platform's signature on the raw body (constant time, replay window);
- :mod:`.events` reads which event a webhook is, and its call id;
- :mod:`.app` is the ASGI app (Starlette): the routes, the size cap, the answers, the metrics
  of :mod:`.metrics`;
- :mod:`.worker` holds the background workers that take the ledger's queue.

The queue is the ledger's (:class:`~enrich.ledger.LedgerBackend`'s webhook queue), so several
replicas sharing one ledger share one queue, and a webhook answered 2xx is never lost. This
package needs the ``serve`` extra (``pip install 'enrich[serve]'``: Starlette, Uvicorn,
prometheus-client).
"""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Any

from .app import create_app

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["create_app", "run"]


def run(config: Config, *, access_log: bool = False) -> bool:
    """Serve ``config.serve.host``:``config.serve.port`` until SIGINT or SIGTERM (Uvicorn), then
    stop accepting, let the work in flight finish within ``serve.grace_seconds``, and return.
    Returns True if it was stopped by SIGTERM (a deliberate stop: not an interruption)."""
    import uvicorn

    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.serve.host,
            port=config.serve.port,
            lifespan="on",
            log_config=None,
            access_log=access_log,
            timeout_graceful_shutdown=max(1, int(config.serve.grace_seconds)),
        )
    )
    terminated: list[int] = []

    def on_sigterm(signum: int, frame: Any) -> None:  # Uvicorn raises it again once stopped
        terminated.append(signum)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main else None
    try:
        server.run()
    except SystemExit:  # Uvicorn exits when it cannot listen
        if server.started:
            raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    if not server.started:
        from ..errors import ConfigError

        raise ConfigError(
            f"enrich serve could not listen on {config.serve.host}:{config.serve.port} "
            "(is the port in use, or the address not this machine's?)"
        )
    return bool(terminated)
