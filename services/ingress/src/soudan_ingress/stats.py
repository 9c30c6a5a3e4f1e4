"""Per-minute summaries of webhook requests, published as ``webhook.requests`` facts.

The monthly report needs the webhook's latency (median, p99) and request counts, from the
``events`` log alone, without a fact per request. Each process counts the requests of each
window (a minute by default, aligned on the clock) and publishes one fact per window that saw
any request::

    {"window_start": "2026-11-01T03:04:00Z", "window_seconds": 60,
     "requests": 12, "events": 15, "by_status": {"200": 11, "401": 1},
     "latency_ms_buckets": {"<=1": 0, "<=2.5": 4, …, "<=5000": 12, "+Inf": 12}}

- ``requests``: every ``POST /webhook`` answered, whatever its status.
- ``events``: the events of the requests answered 200 (confirmed by the broker).
- ``latency_ms_buckets``: fixed buckets (:data:`LATENCY_BUCKETS_MS`), **cumulative** as in
  Prometheus: ``"<=le"`` counts the requests answered in at most ``le`` milliseconds, and
  ``"+Inf"`` equals ``requests``. Windows (and processes) add up key by key; a percentile is the
  first bucket whose count reaches the rank.

The fact's ``at`` is the window's start, so a window is filed under the Tokyo day and hour it
began in. Its id is derived from this process's instance id and the window, so a summary that is
published again after an unconfirmed attempt is recorded once.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1,
    2.5,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2000,
    5000,
)


@dataclass
class _Window:
    start: int
    requests: int = 0
    events: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    # counts[i]: requests slower than bucket i-1 and at most bucket i; the last is +Inf
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))


@dataclass(frozen=True)
class WindowSummary:
    start: datetime
    data: dict[str, Any]


class WebhookStats:
    """Counts requests into clock-aligned windows; closed windows are taken as fact data."""

    def __init__(self, *, window_seconds: int = 60, clock: Callable[[], float] = time.time) -> None:
        self.window_seconds = window_seconds
        self._clock = clock
        self._windows: dict[int, _Window] = {}

    def record(self, status: int, events: int, seconds: float) -> None:
        now = self._clock()
        start = int(now // self.window_seconds * self.window_seconds)
        window = self._windows.get(start)
        if window is None:
            window = self._windows[start] = _Window(start)
        window.requests += 1
        window.events += events
        window.by_status[str(status)] += 1
        window.counts[bisect.bisect_left(LATENCY_BUCKETS_MS, seconds * 1000)] += 1

    def seconds_to_next_window(self) -> float:
        now = self._clock()
        return self.window_seconds - now % self.window_seconds

    def take_closed(self) -> list[WindowSummary]:
        """The windows that have ended, removed from the counts."""
        now = self._clock()
        closed = [s for s in self._windows if s + self.window_seconds <= now]
        return [self._summary(self._windows.pop(s)) for s in sorted(closed)]

    def take_all(self) -> list[WindowSummary]:
        """Every window, the current one included (at shutdown)."""
        windows = [self._windows.pop(s) for s in sorted(self._windows)]
        return [self._summary(w) for w in windows]

    def _summary(self, window: _Window) -> WindowSummary:
        start = datetime.fromtimestamp(window.start, UTC)
        buckets: dict[str, int] = {}
        total = 0
        for le, count in zip(LATENCY_BUCKETS_MS, window.counts, strict=False):
            total += count
            buckets[f"<={le:g}"] = total
        buckets["+Inf"] = total + window.counts[-1]
        data = {
            "window_start": start.isoformat().replace("+00:00", "Z"),
            "window_seconds": self.window_seconds,
            "requests": window.requests,
            "events": window.events,
            "by_status": dict(sorted(window.by_status.items())),
            "latency_ms_buckets": buckets,
        }
        return WindowSummary(start, data)
