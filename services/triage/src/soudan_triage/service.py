"""The handler of ``LineEventReceived``: each ``webhookEventId`` has its effect once.

For one event: if it is already ``done`` in ``triage_events``, nothing happens (LINE sends
duplicates, and the broker redelivers what was not acknowledged). Otherwise the decision is
made (:mod:`soudan_triage.decide`) and stored as a plan under the event id, *then* applied to
the store, its ``SendText`` commands and facts published, and the event marked ``done``; the bus
acknowledges the message after that. A crash anywhere before ``done`` leaves a stored plan that
the redelivered event replays unchanged: every step is idempotent (see
:mod:`soudan_triage.plan`), so nothing is lost and nothing happens twice.

If a counselor closes the case in the instant between deciding and applying, the fresh plan is
dropped and the event decided again (its message then opens a new case).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from soudan_shared.bus import Permanent
from soudan_shared.config import HoursConfig, KeywordsConfig
from soudan_shared.config_store import ConfigSource
from soudan_shared.contracts import LineEventReceived, utcnow
from soudan_shared.facts import Facts, Publisher

from soudan_triage.decide import Decider
from soudan_triage.hours import Hours
from soudan_triage.plan import Plan
from soudan_triage.store import TriageStore
from soudan_triage.urgency import Detector

log = structlog.get_logger(__name__)

REPLAN_ATTEMPTS = 3


class TriageMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        self.events = Counter(
            "soudan_triage_events",
            "LINE events handled, by event type and outcome",
            ["event_type", "outcome"],
            registry=registry,
        )
        self.seconds = Histogram(
            "soudan_triage_event_seconds",
            "Time to handle one LINE event (decide, store, publish)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )


class Triage:
    def __init__(
        self,
        store: TriageStore,
        config: ConfigSource,
        facts: Facts,
        publisher: Publisher,
        *,
        clock: Callable[[], datetime] = utcnow,
        metrics: TriageMetrics | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.publisher = publisher
        self.clock = clock
        self.metrics = metrics or TriageMetrics()
        self.decider = Decider(store, facts)
        self._hours: tuple[HoursConfig, Hours] | None = None
        self._detector: tuple[tuple[str, ...], Detector] | None = None
        self._official = Detector()

    def hours(self, config: HoursConfig) -> Hours:
        if self._hours is None or self._hours[0] != config:
            self._hours = (config, Hours(config))
        return self._hours[1]

    def detector(self, config: KeywordsConfig) -> Detector:
        if self._detector is None or self._detector[0] != config.extra:
            self._detector = (config.extra, Detector(config.extra))
        return self._detector[1]

    def looks_urgent(self, event: LineEventReceived) -> bool:
        """Whether the text of ``event`` alone holds a keyword, with the keywords last in force.

        The bus's priority test (it runs before the event is handled, without the store): an
        urgent-looking text jumps the events waiting ahead of it from other users. The verdict
        that counts is the handler's, which also reads the user's earlier messages.
        """
        if event.event_type != "message":
            return False
        message = event.event.get("message")
        if not isinstance(message, dict) or message.get("type") != "text":
            return False
        text = message.get("text")
        if not isinstance(text, str):
            return False
        detector = self._detector[1] if self._detector is not None else self._official
        return detector.detect(text).urgent

    async def handle(self, event: LineEventReceived) -> None:
        started = time.perf_counter()
        event_id = event.webhook_event_id
        record = await self.store.processed(event_id)
        if record is not None and record.get("state") == "done":
            self.metrics.events.labels(event.event_type, "duplicate").inc()
            log.info("line_event_duplicate", event_type=event.event_type)
            return
        if record is None:
            plan, fresh = await self._plan(event)
            if plan is None:
                self.metrics.events.labels(event.event_type, "duplicate").inc()
                return
        else:
            plan, fresh = Plan.from_document(record["plan"]), False
            log.info("line_event_replayed", event_type=event.event_type, outcome=plan.outcome)
        for _ in range(REPLAN_ATTEMPTS):
            if await self.store.apply(plan, guard_case=fresh) or not fresh:
                break
            log.info("case_closed_meanwhile_replanning", event_type=event.event_type)
            await self.store.drop_plan(event_id)
            plan, fresh = await self._plan(event)
            if plan is None:
                return
        else:
            await self.store.apply(plan, guard_case=False)
        # Independent and idempotent (fixed ids): wait for all the broker's confirms at once.
        await asyncio.gather(*(self.publisher.publish(m) for m in (*plan.commands, *plan.facts)))
        await self.store.mark_done(event_id)
        self.metrics.events.labels(event.event_type, plan.outcome.split(":")[0]).inc()
        self.metrics.seconds.observe(time.perf_counter() - started)
        log.info(
            "line_event_handled",
            event_type=event.event_type,
            outcome=plan.outcome,
            user_id=event.user_id,
            replies=[c.purpose for c in plan.commands],
        )

    async def _plan(self, event: LineEventReceived) -> tuple[Plan | None, bool]:
        """Decide and store the plan; (None, False) if another delivery stored one first."""
        config = await self.config.get()
        try:
            plan = await self.decider.decide(
                event,
                config=config,
                hours=self.hours(config.hours),
                detector=self.detector(config.keywords),
                now=self.clock(),
            )
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            # The event itself is malformed (an impossible time, a field of the wrong type):
            # trying again cannot help; dead-letter it with the reason.
            raise Permanent(f"cannot decide {event.event_type} event: {exc!r}"[:300]) from exc
        if await self.store.save_plan(event.webhook_event_id, event.event_type, plan):
            return plan, True
        record = await self.store.processed(event.webhook_event_id)
        if record is None or record.get("state") == "done":
            return None, False
        return Plan.from_document(record["plan"]), False
