"""The handler of ``LineEventReceived``: each ``webhookEventId`` has its effect once.

For one event: the decision is made (:mod:`soudan_triage.decide`, which only reads) and stored
as a plan under the event id (an insert on the unique ``_id`` of ``triage_events``), *then*
applied to the store, its ``SendText`` commands and facts published, and the event marked
``done``; the bus acknowledges the message after that. If the insert finds the event already
there (LINE sends duplicates, and the broker redelivers what was not acknowledged), the new
decision is dropped: a ``done`` event changes nothing, and a crash anywhere before ``done`` left
a stored plan that the redelivered event replays unchanged: every step is idempotent (see
:mod:`soudan_triage.plan`), so nothing is lost and nothing happens twice. (Deciding before
looking saves a read per event; a duplicate, rare, costs the reads of a decision.)

If a counselor closes the case in the instant between deciding and applying, the fresh plan is
dropped and the event decided again (its message then opens a new case).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Literal

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
from soudan_triage.risk import load_lexicon
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
        self.facts = facts
        self.decider = Decider(store, facts)
        self._hours: tuple[HoursConfig, Hours] | None = None
        self._lexicon = load_lexicon(config.config_dir)
        self._official = Detector(lexicon=self._lexicon)
        self._detector: tuple[tuple[str, ...], Detector] | None = None

    def hours(self, config: HoursConfig) -> Hours:
        if self._hours is None or self._hours[0] != config:
            self._hours = (config, Hours(config))
        return self._hours[1]

    def detector(self, config: KeywordsConfig) -> Detector:
        if self._detector is None or self._detector[0] != config.extra:
            detector = Detector(config.extra, self._lexicon) if config.extra else self._official
            self._detector = (config.extra, detector)
        return self._detector[1]

    def looks_urgent(self, event: LineEventReceived) -> bool:
        """Whether the text of ``event`` alone holds a keyword or a risk, with the keywords last
        in force.

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
        # Decided first, stored if the event has no plan yet (one round trip, not a read and
        # then a write); a duplicate (rare) is told by the stored one and its decision dropped.
        plan, fresh = await self._plan(event)
        if plan is None:
            self.metrics.events.labels(event.event_type, "duplicate").inc()
            log.info("line_event_duplicate", event_type=event.event_type)
            return
        if not fresh:
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
        # Independent and idempotent (fixed ids): wait for all the broker's confirms at once;
        # the facts go in one message.
        await asyncio.gather(
            *(self.publisher.publish(command) for command in plan.commands),
            self.facts.publish_together(plan.facts),
        )
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
        """Decide and store the plan: (plan, True) if this delivery stored it; the plan stored
        by an earlier delivery, not yet done, and False (a replay); (None, False) if the event
        is done already."""
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
            if (stored := await self._stored(event)) is not False:
                return stored, False
            # The event itself is malformed (an impossible time, a field of the wrong type):
            # trying again cannot help; dead-letter it with the reason.
            raise Permanent(f"cannot decide {event.event_type} event: {exc!r}"[:300]) from exc
        if await self.store.save_plan(event.webhook_event_id, event.event_type, plan):
            return plan, True
        stored = await self._stored(event)
        return (stored or None), False

    async def _stored(self, event: LineEventReceived) -> Plan | Literal[False] | None:
        """The event's stored plan; None if the event is done; False if it has none."""
        record = await self.store.processed(event.webhook_event_id)
        if record is None:
            return False
        if record.get("state") == "done":
            return None
        return Plan.from_document(record["plan"])
