"""``POST /webhook`` against a real RabbitMQ: what LINE sends arrives on the bus exactly as sent,
and everything else gets a clear, bounded answer."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from linebot.v3.webhooks import models as line_models
from soudan_shared.fact_types import SIGNATURE_REJECTED, WEBHOOK_REQUESTS
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import Topology

if TYPE_CHECKING:  # the fixtures' types, from this directory's conftest.py
    from conftest import BusQueues, Ingress, LinePlatform, StartIngress

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _assert_arrived_as_sent(
    arrived: list[dict[str, Any]], sent: list[dict[str, Any]], line: LinePlatform
) -> None:
    by_id = {m["webhook_event_id"]: m for m in arrived}
    assert len(arrived) == len(sent), "each event exactly once"
    for event in sent:
        message = by_id[event["webhookEventId"]]
        assert message["type"] == "line.event_received"
        assert message["event"] == event
        assert message["destination"] == line.destination
        assert message["event_type"] == event["type"]
        assert message["timestamp_ms"] == event["timestamp"]
        assert message["is_redelivery"] == event["deliveryContext"]["isRedelivery"]
        assert message["user_id"] == event["source"].get("userId")


# -- the happy path --------------------------------------------------------------------------


async def test_lines_signature_example_is_answered_200(start_ingress: StartIngress) -> None:
    ingress = await start_ingress(secret="8c570fa6dd201bb328f1c1eac23a96d8")
    body = b'{"destination":"U8e742f61d673b39c7fff3cecb7536ef0","events":[]}'
    answer = await ingress.post(body, signature="GhRKmvmHys4Pi8DxkF4+EayaH0OqtJtaZxgTD9fMDLs=")
    assert answer.status == 200


def _model_example(name: str) -> dict[str, Any]:
    """An example of the line-bot-sdk model ``name``, every property filled in (its JSON schema
    is generated from LINE's webhook OpenAPI document, the one the SDK is built from)."""
    schema = getattr(line_models, name).schema(by_alias=True)
    value: dict[str, Any] = _example(schema, schema.get("definitions", {}))
    return value


def _discriminated(name: str) -> dict[str, str]:
    """The SDK's discriminator mapping of model ``name`` (type value → model), empty if none."""
    mapping: dict[str, str] = getattr(
        getattr(line_models, name), f"_{name}__discriminator_value_class_map", {}
    )
    return mapping


def _example(schema: dict[str, Any], definitions: dict[str, Any]) -> Any:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        mapping = _discriminated(name) if hasattr(line_models, name) else {}
        if mapping:  # an abstract type (Source, MessageContent, …): its first concrete kind
            key, concrete = next(iter(mapping.items()))
            return {**_model_example(concrete), "type": key}
        return _example(definitions[name], definitions)
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(_example(part, definitions))
        return merged
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if kind == "object":
        value = {name: _example(p, definitions) for name, p in schema.get("properties", {}).items()}
        if isinstance(schema.get("additionalProperties"), dict):
            value["someKey"] = _example(schema["additionalProperties"], definitions)
        return value
    if kind == "array":
        return [_example(schema["items"], definitions)]
    return {"string": "値 value", "integer": 3, "number": 43.0675, "boolean": True}[kind]


def _spec_event_bodies(line: LinePlatform) -> list[dict[str, Any]]:
    """One event per event type of LINE's webhook schema (one per content type for messages),
    every property filled in, plus follow both ways and a type nobody has heard of. The schema
    is the one line-bot-sdk's generated webhook models carry, so a clone needs nothing beside it."""

    def event_of(type_: str, model: str, user_id: str) -> dict[str, Any]:
        fields = _model_example(model)
        for base in ("type", "timestamp", "webhookEventId", "deliveryContext", "source", "mode"):
            fields.pop(base, None)
        return line.event(type_, user_id, **fields)

    mapping = _discriminated("Event")
    events = []
    for type_, model in mapping.items():
        if type_ == "message":
            for content_type, content_model in _discriminated("MessageContent").items():
                event = event_of(type_, model, line.user())
                event["message"] = {**_model_example(content_model), "type": content_type}
                events.append(event)
        else:
            events.append(event_of(type_, model, line.user()))
    follow = event_of("follow", mapping["follow"], line.user())
    events.append({**follow, "follow": {"isUnblocked": not follow["follow"]["isUnblocked"]}})
    events.append(
        line.event(
            "somethingLineAddsNextYear",
            line.user(),
            replyToken="r",
            surprise={"nested": [1, 2.5, "ｶﾀｶﾅ", None, True, {"deep": {}}]},
        )
    )
    return events


async def test_every_event_type_of_lines_schema_arrives_on_the_bus_exactly_as_sent(
    ingress: Ingress, line: LinePlatform, bus_queues: BusQueues
) -> None:
    events = _spec_event_bodies(line)
    types = {e["type"] for e in events}
    assert {"message", "follow", "unfollow", "postback", "unsend"} <= types
    assert {e["message"]["type"] for e in events if e["type"] == "message"} >= {
        "text", "image", "video", "audio", "file", "location", "sticker"
    }  # fmt: skip
    for event in events:  # one body per event
        answer = await ingress.post(line.body([event]))
        assert answer.status == 200, (event["type"], answer)
    arrived = await bus_queues.wait_line_events(len(events))
    _assert_arrived_as_sent(await bus_queues.settle_line_events(), events, line)
    assert len(arrived) == len(events)


async def test_one_body_of_several_users_keeps_each_users_events_in_order_on_one_shard(
    ingress: Ingress, line: LinePlatform, bus_queues: BusQueues, topology: Topology
) -> None:
    users = [line.user() for _ in range(5)]
    events = [line.text(users[n % 5], f"message {n}") for n in range(20)]
    events.insert(3, line.event("follow", users[1], replyToken="r", follow={"isUnblocked": False}))
    events.insert(7, line.event("postback", users[2], replyToken="r", postback={"data": "a=1"}))
    answer = await ingress.post(line.body(events))
    assert answer.status == 200
    await bus_queues.wait_line_events(len(events))
    _assert_arrived_as_sent(await bus_queues.settle_line_events(), events, line)
    for user in users:
        shard = topology.shard(user)
        on_shard = [m["event"] for m in bus_queues.shards[shard] if m["user_id"] == user]
        assert on_shard == [e for e in events if e["source"]["userId"] == user]
        others = [s for s in bus_queues.shards if s != shard]
        assert not any(m["user_id"] == user for s in others for m in bus_queues.shards[s])


async def test_ingress_set_to_seven_shards_spreads_the_users_over_all_seven_queues(
    start_ingress: StartIngress,
    line: LinePlatform,
    bus_queues: BusQueues,
    topology: Topology,
) -> None:
    ingress = await start_ingress(shards=7)
    seven = Topology(namespace=topology.namespace, line_event_shards=7)
    users: dict[int, str] = {}
    while len(users) < 7:
        user = line.user()
        users.setdefault(seven.shard(user), user)
    events = [line.text(users[shard], f"shard {shard}") for shard in sorted(users)]

    assert (await ingress.post(line.body(events))).status == 200

    bus_queues.topology = seven  # read the seven queues, not the test topology's four
    await bus_queues.wait_line_events(7)
    assert sorted(bus_queues.shards) == list(range(7))
    for shard, user in users.items():
        assert [m["user_id"] for m in bus_queues.shards[shard]] == [user]


async def test_a_redelivered_event_arrives_again_with_its_id_and_the_redelivery_flag(
    ingress: Ingress, line: LinePlatform, bus_queues: BusQueues
) -> None:
    event = line.text(line.user(), "もう一度")
    again = line.redelivered(event)
    assert (await ingress.post(line.body([event]))).status == 200
    assert (await ingress.post(line.body([again]))).status == 200
    first, second = await bus_queues.wait_line_events(2)
    assert first["id"] == second["id"]
    assert first["webhook_event_id"] == second["webhook_event_id"] == event["webhookEventId"]
    assert [first["is_redelivery"], second["is_redelivery"]] == [False, True]
    assert second["event"] == again


async def test_events_without_id_or_timestamp_are_passed_on_not_refused(
    ingress: Ingress, line: LinePlatform, bus_queues: BusQueues
) -> None:
    bare = {"type": "message", "source": {"type": "user", "userId": line.user()}}
    complete = line.text(line.user(), "hello")
    answer = await ingress.post(line.body([bare, complete]))
    assert answer.status == 200
    arrived = await bus_queues.wait_line_events(2)
    assert sorted(json.dumps(m["event"], sort_keys=True) for m in arrived) == sorted(
        json.dumps(e, sort_keys=True) for e in (bare, complete)
    )
    assert 'soudan_ingress_filled_in_fields_total{field="webhookEventId"} 1.0' in (
        await ingress.metrics()
    )


# -- refusals --------------------------------------------------------------------------------


async def test_a_missing_signature_is_400_and_a_wrong_one_401_each_reported_as_a_fact(
    ingress: Ingress, line: LinePlatform, bus_queues: BusQueues
) -> None:
    body = line.body([line.text(line.user(), "forged")])
    missing = await ingress.post(body, signature=None)
    assert missing.status == 400
    assert "X-Line-Signature" in missing.json["error"]
    wrong = await ingress.post(body, signature=line.sign(body, secret="another-secret"))
    assert wrong.status == 401
    facts = await bus_queues.wait_facts(SIGNATURE_REJECTED, 2)
    assert sorted(f["data"]["reason"] for f in facts) == ["mismatch", "missing"]
    for fact in facts:
        assert fact["data"]["source"] == "127.0.0.1"
        assert set(fact["data"]) == {"source", "reason"}  # never the body
    metrics = await ingress.metrics()
    assert 'soudan_ingress_signature_rejections_total{reason="missing"} 1.0' in metrics
    assert 'soudan_ingress_signature_rejections_total{reason="mismatch"} 1.0' in metrics
    assert await bus_queues.settle_line_events() == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x80not utf-8", "not UTF-8"),
        (b"<xml/>", "not JSON"),
        (b'{"destination":"U","events":"none"}', "events"),
        (b'{"destination":"U","events":[1]}', "events[0]"),
    ],
)
async def test_a_signed_body_that_is_not_a_webhook_is_400_with_a_reason(
    ingress: Ingress, body: bytes, reason: str
) -> None:
    answer = await ingress.post(body)
    assert answer.status == 400
    assert reason in answer.json["error"]


async def test_a_compressed_body_is_refused(ingress: Ingress, line: LinePlatform) -> None:
    body = line.body([])
    answer = await ingress.post(body, headers={"Content-Encoding": "gzip"})
    assert answer.status == 415


async def _raw_exchange(port: int, head: bytes, parts: list[bytes]) -> bytes:
    """Send ``head`` and ``parts`` without finishing the body; return the status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for part in parts:
            writer.write(part)
            await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.transport.abort()


async def test_a_declared_length_over_1_mib_is_413_before_the_body_is_read(
    ingress: Ingress, line: LinePlatform
) -> None:
    head = (
        b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Line-Signature: " + line.sign(b"").encode() + b"\r\n"
        b"Content-Length: 2097152\r\n\r\n"
    )
    # Only 10 bytes of the 2 MiB are ever sent: the answer cannot have waited for the rest.
    assert (await _raw_exchange(ingress.port, head, [b'{"destinat'])).startswith(b"HTTP/1.1 413")


async def test_a_chunked_body_is_cut_as_soon_as_it_passes_1_mib(
    ingress: Ingress, line: LinePlatform
) -> None:
    head = (
        b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Line-Signature: " + line.sign(b"").encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b" " * 65536
    parts = [b"10000\r\n" + chunk + b"\r\n"] * 17  # 1 MiB + 64 KiB, and no last chunk
    assert (await _raw_exchange(ingress.port, head, parts)).startswith(b"HTTP/1.1 413")


async def test_a_body_of_exactly_1_mib_is_read(ingress: Ingress, line: LinePlatform) -> None:
    prefix = b'{"destination":"' + line.destination.encode() + b'","events":[],"pad":"'
    body = prefix + b"x" * (1024**2 - len(prefix) - 2) + b'"}'
    assert len(body) == 1024**2
    assert (await ingress.post(body)).status == 200
    assert (await ingress.post(body + b" ")).status == 413


async def test_a_missing_signature_is_answered_without_waiting_for_the_body(
    ingress: Ingress,
) -> None:
    head = b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
    assert (await _raw_exchange(ingress.port, head, [b"{"])).startswith(b"HTTP/1.1 400")


# -- observability ---------------------------------------------------------------------------


async def test_metrics_count_requests_by_status_and_latency(
    ingress: Ingress, line: LinePlatform
) -> None:
    assert (await ingress.post(line.body([line.text(line.user(), "a")]))).status == 200
    assert (await ingress.post(b"{}", signature="bad")).status == 401
    metrics = await ingress.metrics()
    assert 'soudan_http_requests_total{route="/webhook",status="200"} 1.0' in metrics
    assert 'soudan_http_requests_total{route="/webhook",status="401"} 1.0' in metrics
    assert 'soudan_http_request_seconds_count{route="/webhook"} 2.0' in metrics
    assert "soudan_ingress_events_accepted_total 1.0" in metrics
    assert "# TYPE soudan_bus_publish_failures_total counter" in metrics  # exposed


async def test_the_minutes_requests_are_summarised_in_a_fact_at_shutdown(
    start_ingress: StartIngress, line: LinePlatform, bus_queues: BusQueues
) -> None:
    ingress = await start_ingress()
    for n in range(3):
        assert (await ingress.post(line.body([line.text(line.user(), str(n))] * 1))).status == 200
    assert (await ingress.post(b"{}", signature="bad")).status == 401
    await ingress.stop()

    def summaries() -> list[dict[str, Any]]:
        return [f["data"] for f in bus_queues.facts_of(WEBHOOK_REQUESTS)]

    await bus_queues.wait_facts(WEBHOOK_REQUESTS)
    await wait_until(
        lambda: sum(s["requests"] for s in summaries()) >= 4,
        message="the summaries of four requests",
    )
    summaries = summaries()
    assert sum(s["events"] for s in summaries) == 3
    assert sum(s["by_status"].get("200", 0) for s in summaries) == 3
    assert sum(s["by_status"].get("401", 0) for s in summaries) == 1
    assert sum(s["latency_ms_buckets"]["+Inf"] for s in summaries) == 4


# -- generated bodies ------------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_event = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["message", "follow", "unfollow", "postback", "unsend", "?"])
        | _json,
        "webhookEventId": st.text(min_size=1, max_size=30) | _json,
        "timestamp": st.integers(min_value=0, max_value=2**63) | _json,
        "source": st.fixed_dictionaries({"type": st.just("user"), "userId": st.text()}) | _json,
        "deliveryContext": st.fixed_dictionaries({"isRedelivery": st.booleans()}) | _json,
        "message": _json,
        "anything": _json,
    },
)
_body = st.one_of(
    st.fixed_dictionaries(
        {"destination": st.text(max_size=40), "events": st.lists(_event, max_size=6)}
    ).map(lambda b: json.dumps(b).encode()),
    st.fixed_dictionaries(
        {"destination": st.text(max_size=40) | _json, "events": st.lists(_event | _json) | _json}
    ).map(lambda b: json.dumps(b, ensure_ascii=False).encode()),
    _json.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)


@pytest.mark.timeout(300)
async def test_generated_signed_bodies_never_get_a_5xx_and_every_accepted_event_arrives(
    ingress: Ingress, line: LinePlatform, bus_queues: BusQueues
) -> None:
    loop = asyncio.get_running_loop()
    accepted = 0
    statuses: Counter[int] = Counter()

    # Hypothesis drives a plain function; it runs in a worker thread and hands each request to
    # the test's event loop, where the service runs.
    @settings(
        max_examples=250,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(body=_body)
    def check(body: bytes) -> None:
        nonlocal accepted
        answer = asyncio.run_coroutine_threadsafe(ingress.post(body), loop).result(timeout=10)
        assert answer.status in (200, 400), answer
        statuses[answer.status] += 1
        if answer.status == 200:
            accepted += len(json.loads(body)["events"])

    await asyncio.to_thread(check)
    print(f"generated bodies: {dict(statuses)}, {accepted} events accepted")
    assert statuses[200] >= 25
    assert statuses[400] >= 25
    assert await ingress.status("/healthz") == 200
    assert (await ingress.post(line.body([line.text(line.user(), "still here")]))).status == 200
    await bus_queues.wait_line_events(accepted + 1, timeout=30)
    assert len(await bus_queues.settle_line_events()) == accepted + 1
