"""The parts of the webhook that need no broker: signature, lenient parsing, publishing order,
per-minute summaries."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from soudan_ingress.background import BackgroundFacts, IngressMetrics
from soudan_ingress.events import (
    DERIVED_ID_PREFIX,
    InvalidWebhook,
    missing_fields,
    parse_webhook,
)
from soudan_ingress.publishing import publish_in_user_order
from soudan_ingress.signature import line_signature, signature_matches
from soudan_ingress.stats import LATENCY_BUCKETS_MS, WebhookStats
from soudan_shared.bus import PublishFailed
from soudan_shared.contracts import LineEventReceived, Message
from soudan_shared.fact_types import SIGNATURE_REJECTED, WEBHOOK_REQUESTS
from soudan_shared.facts import Facts
from soudan_shared.topology import ordering_key

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 1, 3, 4, 5, 678000, tzinfo=UTC)
# LINE's published example (Messaging API reference, "Verifying signatures").
LINE_SECRET = "8c570fa6dd201bb328f1c1eac23a96d8"
LINE_BODY = b'{"destination":"U8e742f61d673b39c7fff3cecb7536ef0","events":[]}'
LINE_SIGNATURE = "GhRKmvmHys4Pi8DxkF4+EayaH0OqtJtaZxgTD9fMDLs="


def _body(events: Any, destination: Any = "Udest") -> bytes:
    return json.dumps({"destination": destination, "events": events}).encode()


def _event(user: str | None, n: int, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "message",
        "timestamp": 1_780_000_000_000 + n,
        "webhookEventId": f"01J{n:023d}",
        "deliveryContext": {"isRedelivery": False},
        "message": {"id": str(n), "type": "text", "text": f"m{n}"},
    }
    if user is not None:
        event["source"] = {"type": "user", "userId": user}
    event.update(extra)
    return event


# -- signature -------------------------------------------------------------------------------


def test_lines_published_signature_example_matches() -> None:
    assert line_signature(LINE_SECRET.encode(), LINE_BODY).decode() == LINE_SIGNATURE
    assert signature_matches(LINE_SECRET.encode(), LINE_BODY, LINE_SIGNATURE)


@pytest.mark.parametrize(
    "signature",
    [
        "GhRKmvmHys4Pi8DxkF4+EayaH0OqtJtaZxgTD9fMDLs",  # padding dropped
        "ghRKmvmHys4Pi8DxkF4+EayaH0OqtJtaZxgTD9fMDLs=",  # one letter's case
        "not base64 at all",
        "ÿ\udcff",  # not ASCII, and an undecodable byte as aiohttp would pass it
    ],
)
def test_any_other_signature_does_not_match_and_never_raises(signature: str) -> None:
    assert not signature_matches(LINE_SECRET.encode(), LINE_BODY, signature)


def test_the_signature_covers_the_raw_bytes_not_the_json_they_encode() -> None:
    spaced = b'{"destination": "U8e742f61d673b39c7fff3cecb7536ef0", "events": []}'
    assert not signature_matches(LINE_SECRET.encode(), spaced, LINE_SIGNATURE)


# -- parsing ---------------------------------------------------------------------------------


def test_each_event_becomes_one_message_with_the_raw_event_kept_whole() -> None:
    unknown = {"type": "somethingNew", "timestamp": 5, "webhookEventId": "01JX", "novel": [1, 2.5]}
    text = _event("Ualice", 1, futureField={"nested": None})
    messages = parse_webhook(_body([text, unknown]), received_at=NOW)
    assert [m.event for m in messages] == [text, unknown]
    first = messages[0]
    assert first.destination == "Udest"
    assert first.webhook_event_id == text["webhookEventId"]
    assert first.user_id == "Ualice"
    assert first.event_type == "message"
    assert first.timestamp_ms == text["timestamp"]
    assert first.received_at == NOW
    assert first.is_redelivery is False
    assert messages[1].event_type == "somethingNew"
    assert messages[1].user_id is None


def test_a_redelivered_event_keeps_its_message_id_and_says_it_is_a_redelivery() -> None:
    event = _event("Ualice", 1)
    again = {**event, "deliveryContext": {"isRedelivery": True}}
    [first] = parse_webhook(_body([event]), received_at=NOW)
    [second] = parse_webhook(_body([again]), received_at=NOW)
    assert second.is_redelivery is True
    assert second.id == first.id
    assert second.webhook_event_id == first.webhook_event_id


def test_an_event_without_id_or_timestamp_still_goes_through_with_a_stable_derived_id() -> None:
    event = {"type": "message", "source": {"type": "user", "userId": "Ub"}, "message": {"id": "9"}}
    [message] = parse_webhook(_body([event]), received_at=NOW)
    assert message.webhook_event_id.startswith(DERIVED_ID_PREFIX)
    assert message.timestamp_ms == int(NOW.timestamp() * 1000)
    assert message.event == event
    assert missing_fields(message.event) == ["webhookEventId", "timestamp"]
    redelivered = {**event, "deliveryContext": {"isRedelivery": True}}
    [again] = parse_webhook(_body([redelivered]), received_at=NOW)
    assert again.webhook_event_id == message.webhook_event_id
    other = {**event, "message": {"id": "10"}}
    [different] = parse_webhook(_body([other]), received_at=NOW)
    assert different.webhook_event_id != message.webhook_event_id


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("webhookEventId", 42),
        ("webhookEventId", ""),
        ("timestamp", "1700000000000"),
        ("timestamp", True),
        ("timestamp", -1),
        ("timestamp", 2**70),
        ("source", "Ualice"),
        ("deliveryContext", {"isRedelivery": "yes"}),
        ("type", 7),
    ],
)
def test_lifted_fields_of_the_wrong_type_are_filled_in_and_the_event_kept_as_sent(
    field: str, value: Any
) -> None:
    event = {**_event("Ualice", 3), field: value}
    [message] = parse_webhook(_body([event]), received_at=NOW)
    assert message.event == event
    assert message.webhook_event_id
    assert message.is_redelivery is False


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        ('{"destination":"U","events":[]}'.encode("utf-16"), "not UTF-8"),
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b'{"destination":"U","events":[{"a":NaN}]}', "not JSON"),
        (b'{"destination":"U","events":[{"a":1e400}]}', "not JSON"),
        (b'{"destination":"U","events":[{"a":-Infinity}]}', "not JSON"),
        (b"[]", "not a JSON object"),
        (b'"x"', "not a JSON object"),
        (b'{"events":[]}', "destination"),
        (b'{"destination":5,"events":[]}', "destination"),
        (b'{"destination":"U"}', "events"),
        (b'{"destination":"U","events":{}}', "events"),
        (b'{"destination":"U","events":[{}, 3]}', "events[1] is not an object"),
        (b'{"destination":"U","events":[{"a":"\\ud800"}]}', "events[0] cannot be carried"),
        (b'{"destination":"U","events":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}", "deeply"),
        (b'{"destination":"U","events":[{"a":' + b"[" * 300 + b"]" * 300 + b"}]}", "events[0]"),
    ],
)
def test_what_is_not_a_webhook_body_is_refused_with_a_short_reason(
    body: bytes, reason: str
) -> None:
    with pytest.raises(InvalidWebhook) as refused:
        parse_webhook(body, received_at=NOW)
    assert reason in refused.value.reason
    assert len(refused.value.reason) < 120


def test_the_connectivity_check_has_no_events() -> None:
    assert parse_webhook(LINE_BODY, received_at=NOW) == []


def test_numbers_and_text_arrive_as_sent() -> None:
    event = _event("U", 1, big=10**30, small=-0.0, exact=0.1, kana="ｼﾈ 死にたい 🙏")
    [message] = parse_webhook(_body([event]), received_at=NOW)
    assert json.loads(message.to_json())["event"] == event


# -- publishing ------------------------------------------------------------------------------


class _FakeBroker:
    """A publisher that confirms after ``delay`` seconds, failing the ids in ``refuse``."""

    def __init__(self, delay: float = 0.01, refuse: frozenset[str] = frozenset()) -> None:
        self.delay = delay
        self.refuse = refuse
        self.confirmed: list[LineEventReceived] = []
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight_per_key = 0
        self.max_in_flight = 0
        self.timeouts: list[float | None] = []

    async def publish(self, message: Message, *, timeout: float | None = None) -> None:
        assert isinstance(message, LineEventReceived)
        key = ordering_key(message)
        self.timeouts.append(timeout)
        self.in_flight[key] += 1
        self.max_in_flight_per_key = max(self.max_in_flight_per_key, self.in_flight[key])
        self.max_in_flight = max(self.max_in_flight, sum(self.in_flight.values()))
        try:
            await asyncio.sleep(self.delay)
            if message.webhook_event_id in self.refuse:
                raise PublishFailed("nacked")
            self.confirmed.append(message)
        finally:
            self.in_flight[key] -= 1


async def test_one_users_events_are_published_one_after_another_in_request_order() -> None:
    events = [_event(user, n) for n, user in enumerate(["Ua", "Ub", "Ua", "Uc", "Ub", "Ua"])]
    messages = parse_webhook(_body(events), received_at=NOW)
    broker = _FakeBroker()
    await publish_in_user_order(broker, messages, timeout=1.0)
    assert broker.max_in_flight_per_key == 1
    assert broker.max_in_flight == 3  # the three users at once
    for user in ("Ua", "Ub", "Uc"):
        sent = [m.event for m in messages if m.user_id == user]
        assert [m.event for m in broker.confirmed if m.user_id == user] == sent


async def test_the_deadline_is_for_the_whole_request_not_each_publish() -> None:
    messages = parse_webhook(_body([_event("Ua", n) for n in range(5)]), received_at=NOW)
    broker = _FakeBroker(delay=0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PublishFailed):
        await publish_in_user_order(broker, messages, timeout=0.25)
    assert loop.time() - started < 0.35
    assert all(t is not None and t <= 0.25 for t in broker.timeouts)


async def test_one_refused_event_fails_the_request() -> None:
    messages = parse_webhook(_body([_event("Ua", 1), _event("Ub", 2)]), received_at=NOW)
    broker = _FakeBroker(refuse=frozenset({messages[1].webhook_event_id}))
    with pytest.raises(PublishFailed, match="nacked"):
        await publish_in_user_order(broker, messages, timeout=1.0)


async def test_a_publisher_bug_is_a_failed_request_not_a_crash() -> None:
    class Broken:
        async def publish(self, message: Message, *, timeout: float | None = None) -> None:
            raise RuntimeError("bug")

    messages = parse_webhook(_body([_event("Ua", 1), _event("Ub", 2)]), received_at=NOW)
    with pytest.raises(PublishFailed, match="RuntimeError"):
        await publish_in_user_order(Broken(), messages, timeout=1.0)
    with pytest.raises(PublishFailed, match="RuntimeError"):
        await publish_in_user_order(Broken(), messages[:1], timeout=1.0)


# -- per-minute summaries --------------------------------------------------------------------


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_requests_are_summarised_per_minute_with_cumulative_latency_buckets() -> None:
    start = NOW.replace(second=0, microsecond=0).timestamp()
    clock = _Clock(start + 5)
    stats = WebhookStats(clock=clock)
    stats.record(200, 3, 0.0021)
    stats.record(200, 1, 0.005)
    stats.record(401, 0, 0.0004)
    stats.record(503, 0, 7.0)
    assert stats.take_closed() == []
    clock.now = start + 61
    stats.record(200, 1, 0.001)
    [summary] = stats.take_closed()
    assert summary.start == NOW.replace(second=0, microsecond=0)
    data = summary.data
    assert data["window_start"] == "2026-11-01T03:04:00Z"
    assert data["window_seconds"] == 60
    assert (data["requests"], data["events"]) == (4, 4)
    assert data["by_status"] == {"200": 2, "401": 1, "503": 1}
    buckets = data["latency_ms_buckets"]
    assert list(buckets) == [f"<={b:g}" for b in LATENCY_BUCKETS_MS] + ["+Inf"]
    assert buckets["<=1"] == 1
    assert buckets["<=2.5"] == 2
    assert buckets["<=5"] == 3  # exactly 5 ms counts as at most 5 ms
    assert buckets["<=5000"] == 3
    assert buckets["+Inf"] == 4
    [rest] = stats.take_all()
    assert rest.data["requests"] == 1
    assert stats.take_all() == []


class _Recorder:
    """Sees every attempt; while ``failing``, the broker never confirms (it may have it all the
    same, as after a confirm timeout)."""

    def __init__(self) -> None:
        self.attempts: list[Message] = []
        self.published: list[Message] = []
        self.failing = False

    async def publish(self, message: Message, *, timeout: float | None = None) -> None:
        self.attempts.append(message)
        if self.failing:
            raise PublishFailed("no confirm within 0.1s")
        self.published.append(message)


async def test_an_unconfirmed_summary_is_offered_again_with_the_same_id() -> None:
    start = NOW.replace(second=0, microsecond=0).timestamp()
    clock = _Clock(start + 1)
    stats = WebhookStats(clock=clock)
    recorder = _Recorder()
    metrics = IngressMetrics(CollectorRegistry())
    background = BackgroundFacts(recorder, Facts(recorder, "ingress"), stats, metrics, timeout=0.1)
    stats.record(200, 1, 0.002)
    clock.now = start + 61
    recorder.failing = True
    await background.publish_summaries(stats.take_closed())
    [unconfirmed] = recorder.attempts
    assert recorder.published == []
    stats.record(200, 2, 0.002)
    clock.now = start + 121
    recorder.failing = False
    await background.publish_summaries(stats.take_closed())
    first, second = recorder.published
    assert first.id == unconfirmed.id
    assert first.type == second.type == WEBHOOK_REQUESTS
    assert first.at == NOW.replace(second=0, microsecond=0)
    assert [first.data["events"], second.data["events"]] == [1, 2]
    await background.close()


async def test_signature_facts_in_flight_are_bounded_and_the_excess_counted() -> None:
    release = asyncio.Event()

    class Stuck:
        def __init__(self) -> None:
            self.published: list[Message] = []

        async def publish(self, message: Message, *, timeout: float | None = None) -> None:
            await release.wait()
            self.published.append(message)

    stuck = Stuck()
    registry = CollectorRegistry()
    background = BackgroundFacts(
        stuck,
        Facts(stuck, "ingress"),
        WebhookStats(),
        IngressMetrics(registry),
        timeout=1.0,
        max_in_flight=3,
    )
    for _ in range(5):
        background.signature_rejected("192.0.2.1", "mismatch")
    dropped = registry.get_sample_value(
        "soudan_ingress_facts_dropped_total", {"type": SIGNATURE_REJECTED}
    )
    assert dropped == 2
    release.set()
    await background.close()
    assert [m.type for m in stuck.published] == [SIGNATURE_REJECTED] * 3
