"""The server's metrics, in Prometheus' text format at ``GET /metrics`` (prometheus-client).

Each app has its own registry (two apps in one process do not mix their counts). Labels are the
platform and a fixed reason or state: never an id, a header or a secret.

=====================================================  ==========================================
``enrich_webhooks_received_total{platform}``           deliveries received (every POST)
``enrich_webhooks_rejected_total{platform,reason}``    refused: ``no_secret``,
                                                       ``missing_signature``, ``bad_signature``,
                                                       ``stale``, ``too_large``, ``malformed``
``enrich_webhooks_ignored_total{platform}``            verified, not a call-end event (204)
``enrich_webhooks_queued_total{platform}``             new items stored in the queue
``enrich_webhooks_duplicates_total{platform}``         deliveries of a call already queued
``enrich_webhooks_written_total{platform}``            conversations enriched and written
``enrich_webhooks_skipped_total{platform}``            nothing to analyse, or written before
``enrich_webhooks_retried_total{platform,reason}``     tries put off: ``not_found`` (ChatDash has
                                                       not imported the call yet), ``transient``
``enrich_webhooks_failed_total{platform}``             items given up (``enrich replay`` requeues)
``enrich_webhook_queue{state}``                        the ledger's items by state (all replicas)
``enrich_webhook_queue_depth``                         items queued, not yet done
``enrich_llm_tokens_total{kind}``                      ``prompt``, ``completion``, ``cached``
``enrich_llm_cost_usd_total``                          what those tokens cost (priced models)
``enrich_webhook_acceptance_seconds``                  from a delivery's arrival to its answer
=====================================================  ==========================================
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The counters of one app, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ("platform",)) -> Counter:
            return Counter(name, doc, labels, registry=r)

        self.received = counter("enrich_webhooks_received", "Webhook deliveries received")
        self.rejected = counter(
            "enrich_webhooks_rejected", "Deliveries refused", ("platform", "reason")
        )
        self.ignored = counter("enrich_webhooks_ignored", "Verified events that end no call")
        self.queued = counter("enrich_webhooks_queued", "New call-end webhooks queued")
        self.duplicates = counter("enrich_webhooks_duplicates", "Deliveries of a call queued")
        self.written = counter("enrich_webhooks_written", "Conversations enriched and written")
        self.skipped = counter("enrich_webhooks_skipped", "Nothing to analyse, or written before")
        self.retried = counter("enrich_webhooks_retried", "Tries put off", ("platform", "reason"))
        self.failed = counter("enrich_webhooks_failed", "Queued webhooks given up")
        self.queue = Gauge(
            "enrich_webhook_queue", "The ledger's webhook items by state", ("state",), registry=r
        )
        self.depth = Gauge("enrich_webhook_queue_depth", "Webhook items queued", registry=r)
        self.tokens = counter("enrich_llm_tokens", "LLM tokens spent", ("kind",))
        self.cost = Counter("enrich_llm_cost_usd", "LLM cost in USD (priced models)", registry=r)
        self.acceptance = Histogram(
            "enrich_webhook_acceptance_seconds",
            "From a delivery's arrival to its answer",
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )

    def spent(self, usage: Any, cost: float | None) -> None:
        """Count what an LLM call cost."""
        if usage is None:
            return
        self.tokens.labels("prompt").inc(usage.prompt_tokens)
        self.tokens.labels("completion").inc(usage.completion_tokens)
        self.tokens.labels("cached").inc(usage.cached_tokens)
        if cost:
            self.cost.inc(cost)

    def render(self, counts: dict[str, int]) -> bytes:
        """The text format, the queue's gauges set from the ledger's ``counts`` first."""
        for state, n in counts.items():
            if state != "deliveries":
                self.queue.labels(state).set(n)
        self.depth.set(counts.get("queued", 0))
        return generate_latest(self.registry)
