"""Ingress's facts, published off the request path so that no answer waits on the broker.

- ``security.signature_rejected``: one per refused signature, fire and forget with a bounded
  timeout and a bounded number in flight. A broker outage must not turn a 401 into a hang, nor a
  flood of forged requests into a pile of waiting tasks: past the bound, facts are dropped and
  counted (``soudan_ingress_facts_dropped``). The per-minute ``webhook.requests`` summary counts
  every refused request by status all the same.
- ``webhook.requests``: the summaries of :mod:`soudan_ingress.stats`, published after each window
  closes; a summary the broker did not confirm is offered again at the next window (same id), and
  the last ones are published at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from prometheus_client import CollectorRegistry, Counter
from soudan_shared.bus import PublishFailed
from soudan_shared.contracts import Fact, new_id
from soudan_shared.fact_types import SIGNATURE_REJECTED, WEBHOOK_REQUESTS
from soudan_shared.facts import Facts, Publisher

from soudan_ingress.stats import WebhookStats, WindowSummary

log = structlog.get_logger(__name__)

MAX_FACTS_IN_FLIGHT = 64
MAX_PENDING_SUMMARIES = 24 * 60  # a day of unconfirmed minutes, then the oldest are dropped


class IngressMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.signature_rejections = Counter(
            "soudan_ingress_signature_rejections",
            "Webhook requests refused for their X-Line-Signature",
            ["reason"],
            registry=registry,
        )
        self.unconfirmed_requests = Counter(
            "soudan_ingress_unconfirmed_requests",
            "Webhook requests answered 503: an event was not confirmed by the broker in time",
            registry=registry,
        )
        self.events_accepted = Counter(
            "soudan_ingress_events_accepted",
            "LINE events confirmed by the broker (requests answered 200)",
            registry=registry,
        )
        self.filled_in_fields = Counter(
            "soudan_ingress_filled_in_fields",
            "Events that lacked a field LINE always sends, filled in by ingress",
            ["field"],
            registry=registry,
        )
        self.facts_dropped = Counter(
            "soudan_ingress_facts_dropped",
            "Facts ingress could not publish (broker down or too many in flight)",
            ["type"],
            registry=registry,
        )


class BackgroundFacts:
    def __init__(
        self,
        publisher: Publisher,
        facts: Facts,
        stats: WebhookStats,
        metrics: IngressMetrics,
        *,
        timeout: float,
        max_in_flight: int = MAX_FACTS_IN_FLIGHT,
    ) -> None:
        self._publisher = publisher
        self._facts = facts
        self._stats = stats
        self._metrics = metrics
        self._timeout = timeout
        self._max_in_flight = max_in_flight
        self._in_flight: set[asyncio.Task[None]] = set()
        self._pending: dict[str, Fact] = {}
        self._instance = new_id()
        self._loop_task: asyncio.Task[None] | None = None

    # -- signature rejections --------------------------------------------------------------

    def signature_rejected(self, source: str, reason: str) -> None:
        """Publish ``security.signature_rejected`` in the background; never waits."""
        if len(self._in_flight) >= self._max_in_flight:
            self._metrics.facts_dropped.labels(SIGNATURE_REJECTED).inc()
            return
        fact = self._facts.make(SIGNATURE_REJECTED, {"source": source, "reason": reason})
        task = asyncio.create_task(self._publish_once(fact))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _publish_once(self, fact: Fact) -> None:
        try:
            await self._publisher.publish(fact, timeout=self._timeout)
        except PublishFailed as exc:
            self._metrics.facts_dropped.labels(fact.type).inc()
            log.warning("fact_not_published", fact_type=fact.type, reason=str(exc)[:200])

    # -- per-minute summaries --------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._summaries_forever(), name="webhook-stats")

    async def _summaries_forever(self) -> None:
        while True:
            # A moment past the boundary, so the window is surely closed on this clock.
            await asyncio.sleep(self._stats.seconds_to_next_window() + 0.05)
            await self.publish_summaries(self._stats.take_closed())

    async def publish_summaries(self, summaries: list[WindowSummary]) -> None:
        """Publish ``summaries`` and any earlier ones not yet confirmed, oldest first."""
        for summary in summaries:
            cause = f"{self._instance}:{summary.data['window_start']}"
            fact = self._facts.make(WEBHOOK_REQUESTS, summary.data, cause=cause, at=summary.start)
            self._pending[fact.id] = fact
        while len(self._pending) > MAX_PENDING_SUMMARIES:
            del self._pending[next(iter(self._pending))]
            self._metrics.facts_dropped.labels(WEBHOOK_REQUESTS).inc()
        for fact_id, fact in list(self._pending.items()):
            try:
                await self._publisher.publish(fact, timeout=self._timeout)
            except PublishFailed as exc:
                log.warning(
                    "summary_not_published",
                    pending=len(self._pending),
                    reason=str(exc)[:200],
                )
                return
            del self._pending[fact_id]

    async def close(self) -> None:
        """Publish the last summaries and wait (bounded) for facts still in flight."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await self.publish_summaries(self._stats.take_all())
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=self._timeout + 1)
